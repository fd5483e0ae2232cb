"""Dataset files by URL, and the manifests that prove a stage output whole: pinned, checksummed, verified before
anything is kept."""

from __future__ import annotations

import errno
import hashlib
import json
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .errors import InputError, TransientError

MANIFEST = "manifest.json"
CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, dest: Path, sha256: str | None, timeout: float = 60.0) -> str:
    """Download `url` (a dataset file) to `dest`; a checksum mismatch leaves nothing behind. Returns its sha256
    (`sha256` None: whatever it is, for pinning). Checkpoints come from the Hub through hub.py."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(partial, "wb") as f:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
                while chunk := resp.read(CHUNK):
                    f.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as err:  # the server answered: only its own trouble is worth a retry
        partial.unlink(missing_ok=True)
        kind = TransientError if err.code >= 500 or err.code == 429 else InputError
        raise kind(f"{url}: download failed (HTTP {err.code} {err.reason})") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        partial.unlink(missing_ok=True)
        reason = getattr(err, "reason", err)
        raise TransientError(f"{url}: download failed ({reason}); a retry may succeed") from None
    except OSError as err:
        partial.unlink(missing_ok=True)
        if err.errno == errno.ENOSPC:  # the machine's state, not bad input: the stage reports a full disk (exit 74)
            raise
        raise InputError(f"{dest}: cannot write the download ({err})") from None
    if sha256 is not None and h.hexdigest() != sha256:
        partial.unlink(missing_ok=True)
        raise InputError(f"{url}: sha256 {h.hexdigest()} does not match the pinned {sha256}")
    partial.replace(dest)
    return h.hexdigest()


SHIPPED = "shipped"


def fetch_shipped(url: str, out: Path, sha256: str) -> Path:
    """A file as MLCommons ships it, under its own name in `out`/shipped/ (so an error names the file it is about),
    verified, for a reader to turn into the round's rows; `drop_shipped` removes it once read."""
    from urllib.parse import urlparse

    name = Path(urlparse(url).path).name or "download"
    dest = out / SHIPPED / name
    fetch(url, dest, sha256)
    return dest


def drop_shipped(out: Path) -> None:
    import shutil

    shutil.rmtree(out / SHIPPED, ignore_errors=True)


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
