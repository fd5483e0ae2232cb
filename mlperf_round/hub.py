"""The Hugging Face Hub, through huggingface_hub: pinned revisions, sha256-checked files, the Hub cache.

huggingface_hub resumes a cut download from its `.incomplete` file, follows the Hub's redirect to
its CDN without the token (file_download.py drops `authorization` off the Hub's hosts), keeps
what it fetched in the Hub cache that transformers and diffusers also read, and shows a progress
bar per file. This module adds what a submission needs on top: the revision must be the pinned
commit, each pinned sha256 must be the Hub's own (LFS metadata) and the bytes' on disk, every
shard an index names must be pinned, and a file that fails its check leaves the cache.
"""

from __future__ import annotations

import errno
import os
import urllib.parse
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from . import checkpoints
from .errors import InputError, ParamsError, TransientError
from .params import TORCH_WEIGHTS, refused_pickle

TOKEN_ENV = "HF_TOKEN"  # huggingface_hub's name; gated repositories (Llama 2) need it. Sent only to the Hub's hosts.
DEFAULT_ENDPOINT = "https://huggingface.co"
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def endpoint(configured: str = "") -> str:
    return (configured or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def token_for(url: str, where: str) -> str | bool:
    """$HF_TOKEN for this endpoint, or False (huggingface_hub then sends none, not even a saved login)."""
    token = os.environ.get(TOKEN_ENV) or False
    parts = urllib.parse.urlsplit(url)
    if token and parts.scheme != "https" and parts.hostname not in _LOOPBACK:
        raise ParamsError(f"{where}: endpoint {url} is not https, and {TOKEN_ENV} is only sent over https")
    return token


def cache_dir(configured: str = "") -> Path:
    from huggingface_hub import constants

    return Path(configured or constants.HF_HUB_CACHE)


def snapshot_dir(repo: str, revision: str, configured_cache: str = "") -> Path:
    """Where the Hub cache keeps a repository's files at a commit (huggingface_hub's layout)."""
    return cache_dir(configured_cache) / f"models--{repo.replace('/', '--')}" / "snapshots" / revision


def _hub_error(err: Exception, what: str, url: str, token) -> Exception:
    """huggingface_hub's exceptions as the round's: bad input (exit 3) or worth a retry (exit 75)."""
    from huggingface_hub import errors as e

    if isinstance(err, e.GatedRepoError):
        hint = f"{TOKEN_ENV} was refused" if token else f"set {TOKEN_ENV} to a token that has been granted access"
        return InputError(f"{what}: gated repository on {url}; {hint}")
    if isinstance(err, e.RepositoryNotFoundError):
        hint = "" if token else f" (or private: set {TOKEN_ENV})"
        return InputError(f"{what}: no such repository on {url}{hint}")
    if isinstance(err, e.RevisionNotFoundError):
        return InputError(f"{what}: no such revision on {url}")
    if isinstance(err, e.RemoteEntryNotFoundError):
        return InputError(f"{what}: not in the repository at this revision (HTTP 404)")
    if isinstance(err, e.HfHubHTTPError):
        status = err.response.status_code if err.response is not None else 0
        kind = TransientError if status >= 500 or status in (0, 408, 429) else InputError
        return kind(
            f"{what}: download failed (HTTP {status}){'; a retry may succeed' if kind is TransientError else ''}"
        )
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return err
    reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
    return TransientError(f"{what}: cannot reach {url} ({reason}); a retry may succeed")


def call(fn, what: str, url: str, token):
    """fn(), with huggingface_hub's exceptions turned into the round's one-line errors."""
    from huggingface_hub import errors as e

    try:
        return fn()
    except (e.HfHubHTTPError, e.LocalEntryNotFoundError, e.FileMetadataError, ConnectionError, TimeoutError) as err:
        raise _hub_error(err, what, url, token) from None
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise
        raise _hub_error(err, what, url, token) from None
    except Exception as err:  # httpx's transport errors are not OSErrors
        if type(err).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore"):
            raise _hub_error(err, what, url, token) from None
        raise


def repo_files(repo: str, revision: str, url: str, token, where: str) -> tuple[str, dict[str, dict]]:
    """(the commit `revision` resolves to, {file: {size, sha256 of an LFS file or None}}) as the Hub lists them."""
    from huggingface_hub import HfApi

    info = call(
        lambda: HfApi(endpoint=url, token=token).model_info(repo, revision=revision, files_metadata=True),
        f"{where}: {repo}@{revision}",
        url,
        token,
    )
    files = {s.rfilename: {"size": s.size, "sha256": s.lfs.sha256 if s.lfs else None} for s in info.siblings or ()}
    return info.sha, files


def pickle_weights(names) -> list[str]:
    """A repository's pickle files that no loader reads (loading one can run code); transformers' weight shards are
    read, with weights_only."""
    return sorted(n for n in names if refused_pickle(n))


def has_weights(names) -> bool:
    """Weights a loader reads: safetensors, or transformers' pytorch_model*.bin shards."""
    return any(n.endswith(".safetensors") or TORCH_WEIGHTS.fullmatch(n) for n in names)


def download(hf, where: str) -> tuple[Path, dict[str, dict]]:
    """The pinned files of `hf` (params.HFSource) in the Hub cache, every one checked; returns the snapshot folder
    and each file's sha256, size and mtime. Files already verified stay in the cache when another one fails, so a
    retry fetches only what is missing."""
    from huggingface_hub import hf_hub_download

    url = endpoint(hf.endpoint)
    token = token_for(url, where)
    commit, listed = repo_files(hf.repo, hf.revision, url, token, where)
    if commit != hf.revision:
        raise InputError(f"{where}: {hf.repo}@{hf.revision}: the Hub resolves it to commit {commit}; pin the commit")
    for name, digest in sorted(hf.files.items()):
        if name not in listed:
            raise InputError(f"{where}: {hf.repo}@{hf.revision}: {name} is not in the repository")
        if listed[name]["sha256"] and listed[name]["sha256"] != digest:
            raise InputError(
                f"{where}: {hf.repo}@{hf.revision}: {name}: the pinned sha256 {digest} is not the Hub's "
                f"{listed[name]['sha256']}"
            )
    if not has_weights(hf.files):
        pickles = pickle_weights(listed)
        if pickles:
            raise InputError(
                f"{where}: {hf.repo}@{hf.revision}: weights only as pickle ({pickles[0]}), which can run "
                "code when loaded; pin a repository (or revision) with .safetensors weights"
            )
    root = snapshot_dir(hf.repo, hf.revision, hf.cache_dir)

    def fetch(name: str) -> None:
        call(
            lambda: hf_hub_download(
                hf.repo, name, revision=hf.revision, cache_dir=hf.cache_dir or None, endpoint=url, token=token
            ),
            f"{where}: {hf.repo}@{hf.revision}: {name}",
            url,
            token,
        )

    indexes = [n for n in hf.files if n.endswith(checkpoints.WEIGHT_INDEX_SUFFIXES)]
    for name in indexes:  # small: the shard list is checked before gigabytes move
        fetch(name)
    checkpoints.check_shards_pinned(set(hf.files), lambda n: (root / n).read_bytes(), f"{hf.repo}@{hf.revision}")
    rest = sorted((n for n in hf.files if n not in indexes), key=lambda n: -(listed[n]["size"] or 0))
    failures: list[Exception] = []
    with ThreadPoolExecutor(max_workers=min(hf.max_workers, max(len(rest), 1))) as pool:
        for fut in as_completed([pool.submit(fetch, n) for n in rest]):
            if fut.exception() is not None:
                failures.append(fut.exception())
    if failures:  # bad input first: retrying will not fix it
        raise next((f for f in failures if not isinstance(f, TransientError)), failures[0])
    return root, checkpoints.verify_directory(root, hf.files, on_mismatch=_evict)


def _evict(path: Path) -> None:
    """A file that failed its check leaves the Hub cache: the snapshot's link and the blob it points to."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    if blob != path:
        blob.unlink(missing_ok=True)
