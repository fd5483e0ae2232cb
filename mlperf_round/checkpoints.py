"""Checkpoints that stay where they are: a stage output holds a reference to them, never a copy.

A real checkpoint (24 GB GPT-J, 138 GB Llama 2 70B) lives once on disk, in the Hub cache or in a
directory the user already has. The download stage verifies it against the pinned sha256 and
publishes `<name>.ref.json`: the directory and, per file, its sha256, size and mtime. DVC caches
that small file, not the weights. Every later stage resolves the reference with `resolve`, which
checks sizes and mtimes (a stat per file, no hashing) and refuses a checkpoint that changed.

Hashing 140 GB takes minutes, so a directory already verified is not hashed again: a record per
directory under the state folder ($MLPERF_ROUND_STATE, default ~/.cache/mlperf-round) keeps each
file's sha256 with the size, mtime and inode it had when it was hashed. A file whose three still
match is trusted to hold the same bytes; any write through the filesystem changes its mtime.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import InputError
from .sources import sha256_file

REF_SUFFIX = ".ref.json"
STATE_ENV = "MLPERF_ROUND_STATE"
WEIGHT_INDEX_SUFFIXES = (".safetensors.index.json", "pytorch_model.bin.index.json")


def state_dir() -> Path:
    return Path(os.environ.get(STATE_ENV) or Path.home() / ".cache" / "mlperf-round")


def _stamp(path: Path) -> dict:
    st = path.stat()  # through symlinks: the Hub cache's snapshot links to its blobs
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _record_path(root: Path) -> Path:
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:32]
    return state_dir() / "verified" / f"{key}.json"


def _read_record(root: Path) -> dict:
    try:
        data = json.loads(_record_path(root).read_text())
        return data["files"] if data.get("root") == str(root.resolve()) else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _write_record(root: Path, files: dict) -> None:
    path = _record_path(root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.partial")
        tmp.write_text(json.dumps({"root": str(root.resolve()), "files": files}, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass  # a read-only state folder costs a re-hash next time, nothing else


def check_shards_pinned(names: set[str], read_index, where: str) -> None:
    """Every shard a weight index names must be pinned, or a checkpoint could be published incomplete."""
    for name in sorted(n for n in names if n.endswith(WEIGHT_INDEX_SUFFIXES)):
        folder = name.rsplit("/", 1)[0] + "/" if "/" in name else ""
        try:
            weight_map = json.loads(read_index(name))["weight_map"]
            shards = {folder + shard for shard in weight_map.values()}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise InputError(f"{where}/{name}: not a weight index (no weight_map)") from None
        missing = sorted(shards - names)
        if missing:
            raise InputError(
                f"{where}/{name}: names shard {missing[0]}, which is not among the pinned files "
                f"({len(missing)} missing); re-pin with mlperf-round pin"
            )


def hash_directory(root: Path, names: list[str]) -> dict[str, str]:
    """Each named file's sha256, recorded as verify_directory records it, so pinning a directory (a checkpoint
    that is on no Hub, such as MLCommons' GPT-J) hashes it once and its first download trusts the record."""
    from tqdm import tqdm

    known, record = _read_record(root), {}
    with tqdm(
        total=sum((root / n).stat().st_size for n in names),
        unit="B",
        unit_scale=True,
        desc="hash checkpoint",
        mininterval=2.0,
    ) as bar:
        for name in names:
            stamp = _stamp(root / name)
            same = known.get(name, {})
            digest = same["sha256"] if {k: same.get(k) for k in stamp} == stamp else sha256_file(root / name)
            record[name] = {**stamp, "sha256": digest}
            bar.update(stamp["size"])
    _write_record(root, {**known, **record})
    return {name: r["sha256"] for name, r in record.items()}


def verify_directory(root: Path, files: dict[str, str], on_mismatch=None) -> dict[str, dict]:
    """Check root's files against the pinned sha256 (hashing only what changed since it was last hashed here).
    Returns each file's sha256, size and mtime, the reference's content. `on_mismatch(path)` runs on a bad file
    before the error (the Hub cache drops it)."""
    from tqdm import tqdm

    if not root.is_dir():
        raise InputError(f"{root}: not a directory")
    known, checked = _read_record(root), {}
    todo = []
    for name, digest in sorted(files.items()):
        path = root / name
        if not path.is_file():
            raise InputError(f"{path}: missing (pinned in hf.files)")
        stamp = _stamp(path)
        if known.get(name) == {**stamp, "sha256": digest}:
            checked[name] = known[name]
        else:
            todo.append((name, digest, path, stamp))
    check_shards_pinned(set(files), lambda n: (root / n).read_bytes(), str(root))
    total = sum(s["size"] for *_, s in todo)
    with tqdm(
        total=total, unit="B", unit_scale=True, desc="verify checkpoint", disable=not todo, mininterval=2.0
    ) as bar:
        for name, digest, path, stamp in todo:
            actual = sha256_file(path)
            bar.update(stamp["size"])
            if actual != digest:
                _write_record(root, {**known, **checked})
                if on_mismatch is not None:
                    on_mismatch(path)
                raise InputError(f"{path}: sha256 {actual} does not match the pinned {digest}")
            checked[name] = {**stamp, "sha256": digest}
    _write_record(root, {**known, **checked})
    return checked


def write_reference(out: Path, name: str, root: Path, files: dict[str, dict], origin: dict) -> None:
    """`<out>/<name>.ref.json`: the verified checkpoint `root`, by reference."""
    ref = {
        "path": str(root.resolve()),
        "origin": origin,
        "files": {n: {k: v for k, v in f.items() if k != "inode"} for n, f in files.items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / (name + REF_SUFFIX)).write_text(json.dumps(ref, indent=1, sort_keys=True))


def resolve(parent: Path, name: str = "model") -> Path:
    """The checkpoint directory a stage output names: its own folder (tiny), or the referenced one, unchanged."""
    own = parent / name
    if own.is_dir():
        return own
    ref_path = parent / (name + REF_SUFFIX)
    try:
        ref = json.loads(ref_path.read_text())
        root, files = Path(ref["path"]), ref["files"]
    except FileNotFoundError:
        raise InputError(f"{own}: missing, and no {ref_path.name} names where it is; re-run download") from None
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{ref_path}: not a checkpoint reference") from None
    for rel, want in files.items():
        path = root / rel
        try:
            stamp = _stamp(path)
        except OSError:
            raise InputError(
                f"{path}: missing; the checkpoint that {ref_path} names has moved or been deleted (re-run download)"
            ) from None
        if (stamp["size"], stamp["mtime_ns"]) != (want["size"], want["mtime_ns"]):
            raise InputError(f"{path}: changed since download verified it (size or mtime); re-run download")
    return root


def checkpoint_bytes(parent: Path, name: str = "model") -> int:
    ref = parent / (name + REF_SUFFIX)
    if ref.is_file():
        return sum(f["size"] for f in json.loads(ref.read_text())["files"].values())
    return sum(p.stat().st_size for p in (parent / name).rglob("*") if p.is_file())


def stored_dtype(model_dir: Path) -> str:
    """The dtype a checkpoint's config says its weights are in: an unoptimized reference runs in it (Llama 2 70B
    in bf16, 138 GB; not in fp32, 280 GB). float32 where the config names none."""
    path = Path(model_dir) / "config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    return dtype if dtype in ("float32", "bfloat16", "float16") else "float32"


def publish(model, out: Path, name: str, where: str) -> None:
    """A real checkpoint (params.ModelParams with source hf or local; or an HFSource) verified and referenced as
    `<out>/<name>.ref.json`."""
    from . import hub

    hf = getattr(model, "hf", model)
    source = getattr(model, "source", "hf")
    if source == "hf":
        root, files = hub.download(hf, where)
        origin = {"source": "hf", "repo": hf.repo, "revision": hf.revision, "endpoint": hub.endpoint(hf.endpoint)}
    else:
        root = Path(model.path).expanduser() if model.path else hub.snapshot_dir(hf.repo, hf.revision, hf.cache_dir)
        if not root.is_dir():
            raise InputError(
                f"{where}.path: {root}: no such directory"
                + ("" if model.path else f" (the Hub cache holds no snapshot of {hf.repo}@{hf.revision})")
            )
        files = verify_directory(root, hf.files)
        origin = {"source": "local", "repo": hf.repo, "revision": hf.revision}
    write_reference(out, name, root, files, origin)


def link_tree(src: Path, dst: Path) -> None:
    """`src` under `dst` by hard links (a symlink across filesystems): an engine holds the checkpoint it serves
    without a second copy of its bytes."""
    src = Path(src)
    for path in sorted(src.rglob("*")):
        if not path.is_file():
            continue
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        real = path.resolve()
        try:
            os.link(real, target)
        except OSError:  # another filesystem, or links refused
            os.symlink(real, target)


SOURCE_FILE = "source.json"
TEXT_SUFFIXES = {".json", ".model", ".txt", ".tiktoken", ".jinja"}  # configs, tokenizers, chat templates: no weights


def link_source(out: Path, source: Path) -> None:
    """Name, from `out`, the checkpoint it was made from and still needs (a directory, or a download stage output
    that holds or references one), by its path relative to `out`: the same bytes in every workspace (DVC's hash,
    the run cache), and right wherever `out`'s files are linked at the same depth (an engine links its
    checkpoint so)."""
    out.mkdir(parents=True, exist_ok=True)
    relative = os.path.relpath(Path(source).resolve(), out.resolve())
    (out / SOURCE_FILE).write_text(json.dumps({"relative": relative}, indent=1))


def linked_source(out: Path) -> Path:
    """The checkpoint directory `link_source` named, checked as `resolve` checks it."""
    path = out / SOURCE_FILE
    try:
        candidate = out / json.loads(path.read_text())["relative"]
    except FileNotFoundError:
        raise InputError(f"{path}: missing; {out} does not name the checkpoint it was made from") from None
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{path}: not a source reference") from None
    if (candidate / "model").is_dir() or (candidate / ("model" + REF_SUFFIX)).is_file():  # a stage output
        return resolve(candidate)
    if any((candidate / name).is_file() for name in ("config.json", "model_index.json")):  # a checkpoint
        return candidate
    raise InputError(f"{path}: the checkpoint it names ({os.path.normpath(candidate)}) is gone; re-run download")


def copy_tokenizer(src: Path, dst: Path) -> None:
    """A tokenizer's files out of a checkpoint directory, without its weights."""
    import shutil

    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(Path(src).iterdir()):
        if path.is_file() and path.suffix in TEXT_SUFFIXES and not path.name.endswith(WEIGHT_INDEX_SUFFIXES):
            shutil.copy2(path, dst / path.name)
