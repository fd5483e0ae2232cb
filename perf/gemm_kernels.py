"""fp32 matmul against torch's FP8 (`_scaled_mm`) and INT8 (`_int_mm`) GEMMs on this machine, as ratios.

    python perf/gemm_kernels.py [--threads 1] [--shapes 16x64x64,32x64x256,128x1024x1024]

What `build.kernels: auto` decides per engine, shown bare: a low-precision kernel is not faster
everywhere (torch 2.13's CPU `_scaled_mm` runs a reference loop on some Xeons). Medians of warm
calls; a kernel slower than --cap-ms per call is timed once.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mlperf_round.backends.kernel_choice import host_fingerprint


def median_us(fn, cap_ms: float, repeats: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e6)
        if times[0] > cap_ms * 1e3:
            break
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--shapes", default="16x64x64,32x64x256,128x256x256,128x1024x1024", help="MxKxN,...")
    ap.add_argument("--cap-ms", type=float, default=200.0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(host_fingerprint(torch.device("cpu")))
    print(f"{'M x K x N':>16s} {'fp32 us':>10s} {'fp8 us':>12s} {'fp8/fp32':>9s} {'int8 us':>10s} {'int8/fp32':>9s}")
    one = torch.tensor(1.0)
    for shape in args.shapes.split(","):
        m, k, n = (int(v) for v in shape.split("x"))
        a, b = torch.randn(m, k), torch.randn(k, n)
        a8, b8 = a.to(torch.float8_e4m3fn), b.t().contiguous().to(torch.float8_e4m3fn).t()  # column-major B
        ai, bi = torch.randint(-127, 128, (m, k), dtype=torch.int8), torch.randint(-127, 128, (k, n), dtype=torch.int8)
        fp32 = median_us(lambda: a @ b, args.cap_ms)
        fp8 = median_us(
            lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.float32), args.cap_ms
        )
        int8 = median_us(lambda: torch._int_mm(ai, bi), args.cap_ms)
        print(f"{shape:>16s} {fp32:10.1f} {fp8:12.1f} {fp8 / fp32:9.1f} {int8:10.1f} {int8 / fp32:9.2f}")


if __name__ == "__main__":
    main()
