"""Fetching checkpoints and datasets: pinned, checksummed, verified before anything is kept."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .errors import InputError, ParamsError, TransientError

MANIFEST = "manifest.json"
CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class _AuthStaysOnItsHost(urllib.request.HTTPRedirectHandler):
    """urllib copies every header onto a redirect; the hub sends large files to a CDN on another host, which
    must never see the token (huggingface_hub drops it the same way)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        old, nxt = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(new.full_url) if new else None
        if new is not None and (nxt.netloc != old.netloc or nxt.scheme != old.scheme):
            new.remove_header("Authorization")
        return new


_OPENER = urllib.request.build_opener(_AuthStaysOnItsHost)


def fetch(url: str, dest: Path, sha256: str, timeout: float = 60.0, headers: dict[str, str] | None = None) -> None:
    """Download `url` to `dest`; a checksum mismatch leaves nothing behind. Headers (a token) are never printed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with _OPENER.open(request, timeout=timeout) as resp, open(partial, "wb") as f:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
                while chunk := resp.read(CHUNK):
                    f.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as err:  # the server answered: only its own trouble is worth a retry
        partial.unlink(missing_ok=True)
        kind = TransientError if err.code >= 500 or err.code == 429 else InputError
        hint = "; a gated repository needs HF_TOKEN" if err.code in (401, 403) and not headers else ""
        raise kind(f"{url}: download failed (HTTP {err.code} {err.reason}){hint}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        partial.unlink(missing_ok=True)
        reason = getattr(err, "reason", err)
        raise TransientError(f"{url}: download failed ({reason}); a retry may succeed") from None
    except OSError as err:
        partial.unlink(missing_ok=True)
        if err.errno == errno.ENOSPC:  # the machine's state, not bad input: the stage reports a full disk (exit 74)
            raise
        raise InputError(f"{dest}: cannot write the download ({err})") from None
    if h.hexdigest() != sha256:
        partial.unlink(missing_ok=True)
        raise InputError(f"{url}: sha256 {h.hexdigest()} does not match the pinned {sha256}")
    partial.replace(dest)


def hf_url(endpoint: str, repo: str, revision: str, filename: str) -> str:
    return f"{endpoint.rstrip('/')}/{repo}/resolve/{revision}/{filename}"


TOKEN_ENV = "HF_TOKEN"  # huggingface_hub's name; gated repositories (Llama 2) need it. Read here only, sent only to the hub.
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def fetch_hf(hf, filename: str, dest: Path, sha256: str) -> None:
    """One file of a pinned Hugging Face repository (`params.HFSource`), with $HF_TOKEN when it is set: over
    https only (a loopback endpoint, a local mirror, may be http), and never onto a redirect to another host."""
    token = os.environ.get(TOKEN_ENV)
    endpoint = urllib.parse.urlsplit(hf.endpoint)
    if token and endpoint.scheme != "https" and endpoint.hostname not in _LOOPBACK:
        raise ParamsError(f"{hf.repo}: endpoint {hf.endpoint} is not https, and {TOKEN_ENV} is only sent over https")
    fetch(hf_url(hf.endpoint, hf.repo, hf.revision, filename), dest, sha256,
          headers={"Authorization": f"Bearer {token}"} if token else None)


def write_manifest(root: Path) -> dict[str, str]:
    """sha256 of every file under root, so later stages can prove their inputs are whole."""
    files = {
        str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST
    }
    (root / MANIFEST).write_text(json.dumps(files, indent=1, sort_keys=True))
    return files


def verify_manifest(root: Path) -> None:
    """Refuse an input whose bytes changed since it was recorded."""
    manifest = root / MANIFEST
    try:
        files = json.loads(manifest.read_text())
    except FileNotFoundError:
        raise InputError(f"{manifest}: missing; re-run the stage that produced {root}") from None
    except json.JSONDecodeError:
        raise InputError(f"{manifest}: not valid JSON") from None
    for rel, digest in files.items():
        path = root / rel
        if not path.is_file():
            raise InputError(f"{path}: missing (listed in {manifest})")
        if sha256_file(path) != digest:
            raise InputError(f"{path}: sha256 does not match {manifest}; the file is corrupt")

