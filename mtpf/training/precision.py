"""bf16 on CPU only where the CPU computes it natively.

On a CPU with AVX512-BF16 or AMX, `torch.matmul` in bf16 runs 2.2-2.7x its fp32 rate (measured on two such CPUs);
elsewhere PyTorch emulates bf16 and autocast makes a step several times *slower* (measured: all-MiniLM-L6-v2
inference 2,140 tok/s fp32 vs 352 tok/s bf16 on an AVX2-only EPYC). So `--bf16 true` on a CPU turns autocast on
where it pays and otherwise falls back to fp32 with a warning that carries the slowdown measured on this machine.
Master weights, optimizer state and the InfoNCE similarities/softmax stay fp32 either way (autocast only lowers
matmul inputs).
"""

from __future__ import annotations

import logging
import time

import torch

logger = logging.getLogger(__name__)


def cpu_bf16_capability() -> dict[str, bool]:
    """What this CPU offers for bf16 (recorded by the benchmarks, so a figure is never read as another CPU's)."""
    avx512_bf16 = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
    amx = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    return {"avx512_bf16": avx512_bf16, "amx": amx, "native": avx512_bf16 or amx}


def matmul_gflops(dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 5) -> float:
    """This process's `torch.matmul` rate on size x size matrices (the roofline benchmarks read figures against)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.matmul(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def bf16_matmul_speedup(size: int = 512, repeats: int = 5) -> float:
    """bf16 / fp32 matmul rate on this CPU (below 1: emulated bf16 is slower)."""
    return matmul_gflops(torch.bfloat16, size, repeats) / matmul_gflops(torch.float32, size, repeats)


def use_cpu_bf16() -> bool:
    """Whether a CPU run asked for bf16 gets it: yes where native; else a warning and fp32."""
    if cpu_bf16_capability()["native"]:
        logger.info("bf16 autocast on CPU: native bf16 (AVX512-BF16/AMX); weights and optimizer stay fp32.")
        return True
    speedup = bf16_matmul_speedup()
    logger.warning(
        "--bf16 ignored: this CPU has no native bf16 (no AVX512-BF16, no AMX); emulated bf16 matmuls run at %.2fx "
        "the fp32 rate here, so training continues in fp32.",
        speedup,
    )
    return False
