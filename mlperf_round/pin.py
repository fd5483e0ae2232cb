"""`mlperf-round pin`: a repository's revision and its files' sha256 written into params.yaml, so nobody types one.

A branch or tag is resolved to its commit. The files kept are what the loaders read: the weights
as safetensors (never pickles), configs and the tokenizer; for a diffusers pipeline, the files of
the components model_index.json names. LFS files come with the Hub's own sha256; small files are
fetched into the Hub cache once and hashed. params.yaml is rewritten as a round trip (ruamel.yaml),
so its comments and layout stay.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path, PurePosixPath

from . import checkpoints, hub
from .checkpoints import TEXT_SUFFIXES
from .errors import InputError, ParamsError
from .params import TORCH_WEIGHTS

TORCH_INDEX = "pytorch_model.bin.index.json"
URL_TARGETS = {  # --into for --url: where the URL and its sha256 go under benchmarks.<name>
    "dataset": (("dataset",), "url", "sha256", ("source", "url")),
    "calibration": (("dataset",), "calibration_url", "calibration_sha256", None),
    "captions": (("dataset",), "captions_url", "captions_sha256", None),
    "model.latents": (("model", "latents"), "url", "sha256", None),
    "evaluation.inception": (("evaluation", "inception"), "url", "sha256", None),
    "evaluation.statistics": (("evaluation", "statistics"), "url", "sha256", None),
}
REPO_TARGETS = {"model": ("model",), "evaluation.clip": ("evaluation", "clip")}


def select_files(listed: dict[str, dict]) -> list[str]:
    """The files a loader reads, from a repository's listing: weights without a variant tag (model.fp16.safetensors
    is a variant, which the loaders do not ask for)."""
    names = set(listed)
    if "model_index.json" in names:  # diffusers: the components' folders, not the single-file checkpoints at the root
        folders = {n.split("/", 1)[0] for n in names if "/" in n}
        keep = ["model_index.json"]
        for n in sorted(names):
            p = PurePosixPath(n)
            if len(p.parts) == 2 and p.parts[0] in folders and _wanted(p):
                keep.append(n)
        return keep
    keep = sorted(n for n in names if "/" not in n and _wanted(PurePosixPath(n)))
    if not any(n.endswith(".safetensors") for n in keep):  # PyTorch shards only where no safetensors weights exist
        keep += sorted(n for n in names if TORCH_WEIGHTS.fullmatch(n) or n == TORCH_INDEX)
    return keep


def _wanted(p: PurePosixPath) -> bool:
    if p.suffix == ".safetensors":
        return len(p.suffixes) == 1
    if p.name.endswith(".safetensors.index.json"):
        return len(p.suffixes) == 3
    if p.name == TORCH_INDEX:  # with its shards, where there are no safetensors weights (select_files)
        return False
    return p.suffix in TEXT_SUFFIXES


def pin_repo(repo: str, revision: str, endpoint: str, cache: str) -> tuple[str, dict[str, str], int]:
    """(commit, {file: sha256}, bytes) for what `select_files` keeps."""
    from huggingface_hub import hf_hub_download

    from .sources import sha256_file

    url = hub.endpoint(endpoint)
    token = hub.token_for(url, "pin")
    commit, listed = hub.repo_files(repo, revision, url, token, "pin")
    chosen = select_files(listed)
    if not hub.has_weights(chosen):
        pickles = hub.pickle_weights(listed)
        why = (
            f"its weights are pickle only ({pickles[0]}), which can run code when loaded"
            if pickles
            else "it has no .safetensors weights"
        )
        raise InputError(f"pin: {repo}@{commit}: {why}")
    files: dict[str, str] = {}
    for name in chosen:
        digest = listed[name]["sha256"]
        if digest is None:  # a small file in git, not LFS: the Hub lists its git blob id only
            path = hub.call(
                lambda: hf_hub_download(
                    repo, name, revision=commit, cache_dir=cache or None, endpoint=url, token=token
                ),
                f"pin: {repo}@{commit}: {name}",
                url,
                token,
            )
            digest = sha256_file(Path(path))
        files[name] = digest
    return commit, files, sum(listed[n]["size"] or 0 for n in chosen)


def _node(doc, path: tuple[str, ...], where: str):
    from ruamel.yaml.comments import CommentedMap

    node = doc
    for key in path:
        if key not in node or node[key] is None:
            node[key] = CommentedMap()
        node = node[key]
        if not isinstance(node, dict):
            raise ParamsError(f"{where}: {key} is not a mapping")
    return node


def _main(args: argparse.Namespace) -> int:
    from ruamel.yaml import YAML

    from .params import load_params
    from .sources import fetch

    params_path = Path(args.params)
    yaml = YAML()  # round trip: comments and key order stay
    yaml.width = 4096
    try:
        doc = yaml.load(params_path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{params_path}: no such file") from None
    benchmarks = doc.get("benchmarks") or {}
    if args.benchmark not in benchmarks:
        raise ParamsError(
            f"{params_path}: benchmarks.{args.benchmark}: no such benchmark (have: {', '.join(benchmarks)})"
        )
    bench = benchmarks[args.benchmark]
    where = f"{params_path}: benchmarks.{args.benchmark}"
    if args.repo:
        target = REPO_TARGETS[args.into or "model"]
        commit, files, size = pin_repo(args.repo, args.revision, args.endpoint, args.cache_dir)
        hf = _node(bench, target + (("hf",) if target == ("model",) else ()), where)
        hf["repo"], hf["revision"], hf["files"] = args.repo, commit, dict(files)
        for key in ("endpoint", "cache_dir"):
            if getattr(args, key):
                hf[key] = getattr(args, key)
        if target == ("model",):
            bench["model"]["source"] = "local" if args.local else "hf"
        else:
            bench["evaluation"]["source"] = "url"
        what = f"{len(files)} files ({size / 1e9:.2f} GB) of {args.repo}@{commit}"
    elif args.path:
        root = Path(args.path).expanduser().resolve()
        if not root.is_dir():
            raise InputError(f"pin: --path {args.path}: not a directory")
        chosen = select_files({str(p.relative_to(root)): {} for p in root.rglob("*") if p.is_file()})
        if not hub.has_weights(chosen):
            raise InputError(f"pin: {root}: no .safetensors weights and no pytorch_model*.bin shards")
        files = checkpoints.hash_directory(root, chosen)
        model = _node(bench, ("model",), where)
        hf = _node(model, ("hf",), where)
        for key in ("repo", "revision"):  # a directory on disk, not a Hub snapshot
            hf.pop(key, None)
        hf["files"], model["path"], model["source"] = dict(files), str(root), "local"
        what = f"{len(files)} files of {root}"
    else:
        into = args.into or "dataset"
        path, url_key, sha_key, source = URL_TARGETS[into]
        with tempfile.TemporaryDirectory() as tmp:
            digest = fetch(args.url, Path(tmp) / "file", None)
        node = _node(bench, path, where)
        node[url_key], node[sha_key] = args.url, digest
        if source:
            node[source[0]] = source[1]
        what = f"{args.url} (sha256 {digest})"
    with tempfile.NamedTemporaryFile("w", dir=params_path.parent, suffix=".partial", delete=False) as tmp:
        yaml.dump(doc, tmp)
    try:
        load_params(tmp.name)  # what is written must be a valid round
    except Exception:
        Path(tmp.name).unlink()
        raise
    Path(tmp.name).replace(params_path)
    print(f"pinned {what} into {where}")
    return 0


def add_parser(sub) -> None:
    pin = sub.add_parser("pin", help="write a Hub repository's commit and files' sha256 (or a URL's) into params.yaml")
    pin.add_argument("benchmark", help="a key under benchmarks in params.yaml")
    what = pin.add_mutually_exclusive_group(required=True)
    what.add_argument("--repo", help="Hugging Face repository, e.g. EleutherAI/gpt-j-6b")
    what.add_argument("--url", help="a dataset (or other single) file to fetch once and pin by sha256")
    what.add_argument(
        "--path",
        help="a checkpoint directory on disk (one on no Hub, such as MLCommons' GPT-J "
        "checkpoint-final/): its loader files hashed once, model.source local",
    )
    pin.add_argument("--revision", default="main", help="branch, tag or commit (default: main); pinned as its commit")
    pin.add_argument(
        "--into",
        choices=sorted({*REPO_TARGETS, *URL_TARGETS}),
        help="where it goes (default: model for --repo, dataset for --url)",
    )
    pin.add_argument(
        "--local",
        action="store_true",
        help="model.source local: read the files where they lie "
        "(model.path, or the Hub cache) instead of downloading them",
    )
    pin.add_argument("--endpoint", default="", help="hub endpoint (default: $HF_ENDPOINT, else https://huggingface.co)")
    pin.add_argument("--cache-dir", default="", help="Hub cache for the small files hashed (default: $HF_HUB_CACHE)")
    pin.add_argument("--params", default="params.yaml", help="the round's params file, rewritten in place")


def run(args: argparse.Namespace) -> int:
    if args.repo and args.into and args.into not in REPO_TARGETS:
        raise ParamsError(f"--into {args.into}: a repository goes into {' or '.join(REPO_TARGETS)}")
    if args.url and args.into and args.into not in URL_TARGETS:
        raise ParamsError(f"--into {args.into}: a URL goes into {', '.join(URL_TARGETS)}")
    if args.path and args.into not in (None, "model"):
        raise ParamsError(f"--into {args.into}: a directory goes into model")
    if args.local and not args.repo:
        raise ParamsError("--local: only with --repo (a model read where it lies)")
    return _main(args)
