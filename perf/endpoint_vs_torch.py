"""The same tiny Llama entry served by the torch engine and by an endpoint (`transformers serve`), in one run:
LoadGen's Offline tokens/s, and Server tokens/s with TTFT and TPOT percentiles at one fixed load for both.

    python perf/endpoint_vs_torch.py [--workdir /tmp/endpoint-bench] [--repeats 3] [--server-qps 20]

A scratch round (the Llama 2 benchmark alone, two fp32 entries alike but for build.backend) is made in
--workdir and run by DVC up to performance; then each entry's performance stage is forced again, alternating,
and medians are reported. Both serve the same weights with the same batch limit (8 sequences in flight).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ENTRIES = {
    "torch-fp32": {"backend": "torch", "max_batch_size": 8, "scheduler": "inflight"},
    "endpoint-fp32": {"backend": "endpoint", "max_batch_size": 8, "endpoint": {"server": "transformers"}},
}
FIGURES = [
    ("Offline", "tokens_per_s"),
    ("Server", "tokens_per_s"),
    ("Server", "ttft_p50_ms"),
    ("Server", "ttft_p99_ms"),
    ("Server", "tpot_p50_ms"),
    ("Server", "latency_p99_ms"),
]


def scratch_round(workdir: Path, server_qps: float) -> Path:
    sys.path.insert(0, str(ROOT))
    from mlperf_round.workspace import select_benchmarks, sync

    ws = sync(ROOT, workdir / "project")
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["round"]["name"] = "endpoint-vs-torch"
    params.update(select_benchmarks(params, ["llama2-70b"]))
    template = params["entries"]["llama2-70b-99p9"]
    params["entries"] = {}
    for i, (key, build) in enumerate(ENTRIES.items()):
        entry = json.loads(json.dumps(template))
        entry.update(division="open" if i else "closed", recipe={"precision": "fp32"}, build=build)
        entry["loadgen"]["Server"].update(target_qps=server_qps)
        params["entries"][key] = entry
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return ws


def dvc(ws: Path, *args: str) -> None:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=".")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=ws, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"dvc {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/endpoint-bench"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--server-qps", type=float, default=20.0, help="the Server load offered to both engines")
    args = ap.parse_args()
    ws = scratch_round(args.workdir, args.server_qps)
    stages = [f"performance@{key}" for key in ENTRIES]
    dvc(ws, "repro", *stages)  # everything upstream, once; the first measurement of each
    runs: dict[str, list[dict]] = {key: [] for key in ENTRIES}
    for r in range(args.repeats):
        for key in ENTRIES:
            if r:
                dvc(ws, "repro", "--force", "--single-item", f"performance@{key}")
            runs[key].append(json.loads((ws / f"artifacts/{key}/performance/metrics.json").read_text()))
    table = {
        key: {
            f"{scenario} {name}": round(statistics.median(m[scenario].get(name, float("nan")) for m in ms), 2)
            for scenario, name in FIGURES
        }
        for key, ms in runs.items()
    }
    valid = {key: all(m[s]["valid"] for m in ms for s in ("Offline", "Server")) for key, ms in runs.items()}
    torch, served = table["torch-fp32"], table["endpoint-fp32"]
    print(f"{'figure (median of ' + str(args.repeats) + ')':34} {'torch':>10} {'endpoint':>10} {'endpoint/torch':>15}")
    for name in torch:
        ratio = served[name] / torch[name] if torch[name] else float("nan")
        print(f"{name:34} {torch[name]:>10} {served[name]:>10} {ratio:>15.2f}")
    print(json.dumps({"server_qps": args.server_qps, "valid": valid, "medians": table}, indent=1))


if __name__ == "__main__":
    main()
