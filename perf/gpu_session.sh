#!/usr/bin/env bash
# Issues 11 and 12 on a lent GPU, as one prepared call: the GPU tests, then the fast-engine benchmarks at real shapes.
#
#   perf/gpu_session.sh wheels    # here, once: the packages the GPU image lacks, as wheels in .whl/ (git-ignored)
#   perf/gpu_session.sh run tests llama        # there (device tool, carry [".whl"]): results under $OUT
#
# One device call runs at most 600 s and a session has 15 minutes of device time, the machine's start included:
# choose the steps per call (their limits: tests 240 s, llama 420 s, gptj 300 s, sdxl 540 s).
#
# The image has PyTorch, Triton and transformers; it lacks LoadGen, Model Optimizer, diffusers, pydantic and their
# own needs, which travel as cp312 wheels. Every step has its own time limit, so one that hangs still leaves the
# others' figures, and each writes its JSON and log under $OUT as it finishes.
set -uo pipefail
cd "$(dirname "$0")/.."

wheels() {
  mkdir -p .whl
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  local plat=()
  for n in 28 27 17; do plat+=(--platform "manylinux_2_${n}_x86_64"); done
  plat+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" -d .whl \
    mlcommons-loadgen==5.0.21 nvidia-modelopt==0.47.0 omegaconf pulp \
    pydantic==2.14.4 pydantic-core annotated-types typing-inspection diffusers==0.42.1 importlib-metadata
  # omegaconf pins antlr4 4.9, published as a source archive only: built here into a pure-Python wheel
  python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
  ls -la .whl
}

run() {
  local out=${OUT:-/tmp/gpu_out}
  mkdir -p "$out"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 MLPERF_ROUND_TIMING_LOCK=off
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$out/gpu.txt"
  for step in "$@"; do
    case "$step" in
      tests)  # correctness first: native kernels, the paged engine and the compiled SDXL engine on CUDA
        timeout 240 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_native_kernels.py \
          tests/test_inflight.py tests/test_fast_sdxl.py -k cuda > "$out/tests.log" 2>&1 ;;
      llama) timeout 420 python3 perf/fast_llm.py --model llama2-70b --shape real --device cuda --queries 1024 \
          --out /tmp/llama > "$out/llama.log" 2>&1; cp /tmp/llama/fast_llm.json "$out/llama.json" ;;
      gptj) timeout 300 python3 perf/fast_llm.py --model gptj --shape real --device cuda --queries 256 \
          --out /tmp/gptj > "$out/gptj.log" 2>&1; cp /tmp/gptj/fast_llm.json "$out/gptj.json" ;;
      sdxl) timeout 540 python3 perf/fast_sdxl.py --shape real --device cuda --out /tmp/sdxl > "$out/sdxl.log" 2>&1
          cp /tmp/sdxl/fast_sdxl.json "$out/sdxl.json" ;;
      *) echo "unknown step $step (tests, llama, gptj, sdxl)" >&2 ;;
    esac
    tail -5 "$out/$step.log" 2>/dev/null
  done
}

case "${1:-}" in
  wheels) wheels ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 wheels | run STEP... (tests, llama, gptj, sdxl)" >&2; exit 2 ;;
esac
