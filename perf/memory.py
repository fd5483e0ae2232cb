"""Peak memory of download, calibrate, quantize and build against the checkpoint's bytes, on a Llama built here.

    python perf/memory.py                      # tiny and mid scale (a ~1 GB bf16 Llama)
    python perf/memory.py --scales mid --keep /tmp/mem

A Llama checkpoint is written in bf16, sharded, with a tokenizer; a project copy points
llama2-70b at it as `model.source: local` and runs each stage of the llama2-70b-99p9 entry as its
own process. Peak host RSS is that process's ru_maxrss (wait4), so Python and torch themselves
count. Linux carries the parent's RSS into a child's ru_maxrss across fork and exec, so this script
never imports torch itself: the checkpoint is built in a child process too. Peak device memory is
the stage's `device_peak_bytes` metric (torch.cuda.max_memory_allocated, recorded by the runner when
the stage used CUDA). Goal: each stage at most 1.3 x the checkpoint's bytes in its own dtype, above
the fixed floor of the interpreter and libraries that the tiny scale measures. A second table gives
the disk each stage's output takes, hard links counted once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCALES = {  # hidden, intermediate, layers, heads, kv heads
    "tiny": (64, 128, 2, 4, 2),
    # Llama 2 7B's layer shapes (GQA as in 70B): per-layer temporaries and the allocator's handling of them are the
    # real models' (glibc maps blocks of 32 MB and more on their own; a narrow model's layers fragment its heap)
    "mid": (4096, 11008, 3, 32, 8),  # ~0.54 B parameters: ~1.1 GB in bf16
}
STAGES = [
    ("download", "llama2-70b"),
    ("calibrate", "llama2-70b"),
    ("quantize", "llama2-70b-99p9"),
    ("build", "llama2-70b-99p9"),
]


def build_checkpoint(out: Path, scale: str) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT))
    from mlperf_round.benchmarks import llama2

    hidden, inter, layers, heads, kv = SCALES[scale]
    llama2.build_tokenizer(out)
    tok = llama2.load_tokenizer(out)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
        max_position_embeddings=2048,
    )
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.save_pretrained(out, max_shard_size="300MB")
    return sum(p.stat().st_size for p in out.glob("*.safetensors"))


def build_in_child(out: Path, scale: str) -> int:
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT / 'perf')!r}); import memory; "
        f"print(memory.build_checkpoint(__import__('pathlib').Path({str(out)!r}), {scale!r}))"
    )
    done = subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.PIPE, text=True)
    return int(done.stdout.strip().splitlines()[-1])


def project(dest: Path, ckpt: Path) -> Path:
    import yaml

    sys.path.insert(0, str(ROOT))
    from mlperf_round.workspace import sync

    sync(ROOT, dest)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    sums = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in ckpt.iterdir() if p.is_file()}
    bench = params["benchmarks"]["llama2-70b"]
    bench["model"] = {"source": "local", "path": str(ckpt), "hf": {"files": sums}}
    bench["dataset"].update(size=8, calibration_size=4)
    bench["generation"]["max_new_tokens"] = 8
    entry = params["entries"]["llama2-70b-99p9"]
    entry["build"].update(dtype="bfloat16", max_batch_size=2)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dest


def run_stage(proj: Path, stage: str, key: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(proj), DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true")
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", f"stages.{stage}", key],
        cwd=proj,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    err = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{stage}@{key} failed:\n{err[-3000:]}")
    metrics = json.loads((proj / f"artifacts/{key}/{stage}/metrics.json").read_text())
    return {
        "rss": usage.ru_maxrss * 1024,
        "s": time.perf_counter() - start,
        "device_peak": metrics.get("device_peak_bytes"),
    }


def disk_bytes(root: Path, seen: set) -> int:
    """Bytes under root, each inode once (an engine's hard links to its checkpoint cost nothing)."""
    total = 0
    for path in root.rglob("*"):
        st = path.lstat()
        if path.is_file() and not path.is_symlink() and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", nargs="+", choices=sorted(SCALES), default=["tiny", "mid"])
    ap.add_argument("--keep", type=Path, help="work here and keep it (default: a temporary folder)")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="mlperf-memory-"))
    os.environ.setdefault("MLPERF_ROUND_STATE", str(root / "state"))
    from importlib.metadata import version

    cuda = (
        subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"], stdout=subprocess.PIPE, text=True
        ).stdout.strip()
        == "True"
    )
    print(f"host: {_cpu()}, torch {version('torch')}, CUDA: {cuda}")
    print(
        "| scale | checkpoint (bf16) | stage | peak RSS | RSS / checkpoint | (RSS - tiny's) / checkpoint | peak "
        "device | time |"
    )
    print("|---|---|---|---|---|---|---|---|")
    floor: dict[str, int] = {}  # the tiny scale's RSS per stage: the interpreter and libraries, not the model
    disks: dict[str, tuple[int, dict]] = {}
    for scale in args.scales:
        ckpt = root / scale / "checkpoint"
        ckpt.mkdir(parents=True, exist_ok=True)
        size = build_in_child(ckpt, scale)
        proj = project(root / scale / "project", ckpt)
        for stage, key in STAGES:
            r = run_stage(proj, stage, key)
            if scale == "tiny":
                floor[stage] = r["rss"]
            above = f"{(r['rss'] - floor[stage]) / size:.2f}" if stage in floor and scale != "tiny" else "-"
            dev = (
                (f"{r['device_peak'] / 2**30:.2f} GiB" if r["device_peak"] else "not recorded by the stage")
                if cuda
                else "no GPU here"
            )
            print(
                f"| {scale} | {size / 2**20:,.1f} MiB | {stage} | {r['rss'] / 2**20:,.0f} MiB | "
                f"{r['rss'] / size:.2f} | {above} | {dev} | {r['s']:.0f} s |",
                flush=True,
            )
        seen: set = set()
        disk = {stage: disk_bytes(proj / "artifacts" / key / stage, seen) for stage, key in STAGES}
        disks[scale] = (size, disk)
    print("\n| scale | checkpoint on disk | " + " | ".join(f"{s} output" for s, _ in STAGES) + " | all / checkpoint |")
    print("|---|---|" + "---|" * len(STAGES) + "---|")
    for scale, (size, disk) in disks.items():
        print(
            f"| {scale} | {size / 2**20:,.1f} MiB | "
            + " | ".join(f"{b / 2**20:,.1f} MiB" for b in disk.values())
            + f" | {(size + sum(disk.values())) / size:.2f} |"
        )


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


if __name__ == "__main__":
    main()
