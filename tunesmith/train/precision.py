"""Which mixed precision to train in: ``auto`` picks bf16 only where it is fast.

What ``auto`` picks, by machine (``train.precision: fp32`` or ``bf16`` forces either everywhere):

=====================================================  ======  ===============================================
machine                                                auto    why
=====================================================  ======  ===============================================
CUDA GPU with bf16 (Ampere and newer)                  bf16    tensor cores; half the activation memory
CUDA GPU without bf16                                  fp32    no fp16 path here (it needs loss scaling)
CPU with AVX512-BF16 or AMX, torch on AVX512 kernels,  bf16    an AMX Xeon multiplies bf16 at ~2 TFLOP/s
and a bf16 matmul measured >= 1.2x faster than fp32            against ~0.3 in fp32
the same flags, bf16 measured slower                   fp32    a 2-core AVX512-BF16 Xeon without AMX (VM):
                                                               bf16 65-76 GFLOP/s against fp32 112-130
any other CPU (AVX2-only EPYC, Apple, ARM)             fp32    bf16 is emulated: on a 2-core AVX2 EPYC LoRA on
                                                               the default model ran 6.5 tokens/s against
                                                               ~150-200 in fp32 (torch 2.13)
=====================================================  ======  ===============================================

The flags alone do not tell: a VM may list ``avx512_bf16`` while hiding AMX, and oneDNN then runs bf16 at
about half the fp32 rate. So where the flags allow bf16, one 1024x1024 matmul in each dtype is timed once per
process (~0.3 s on 2 cores) and bf16 is picked only when it is clearly faster.

``TUNESMITH_CPU_BF16=fast`` (or ``slow``) overrides the CPU probe: CI sets ``fast`` to run the suite down the
bf16 path on an AVX2 machine (correct there, only slow), and a user whose probe is wrong can set either.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import torch

from tunesmith.errors import ConfigError

FAST_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}
CPU_BF16_ENV = "TUNESMITH_CPU_BF16"
MIN_BF16_SPEEDUP = 1.2
"""bf16 must beat fp32 by this much to be worth its rounding (and a measurement's noise)."""


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo does not exist, e.g. macOS)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _forced_cpu_bf16() -> bool | None:
    """``TUNESMITH_CPU_BF16``: True for ``fast``, False for ``slow``, None when unset."""
    value = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if not value:
        return None
    if value not in ("fast", "slow"):
        raise ConfigError(f"{CPU_BF16_ENV}={value!r}: use 'fast' or 'slow' (or unset it to detect the CPU)")
    return value == "fast"


def cpu_has_fast_bf16() -> bool:
    """True when torch dispatches AVX512 kernels *and* the CPU has bf16 dot products (AVX512-BF16 or AMX);
    ``TUNESMITH_CPU_BF16`` overrides the detection."""
    forced = _forced_cpu_bf16()
    if forced is not None:
        return forced
    if "AVX512" not in torch.backends.cpu.get_cpu_capability().upper():
        return False
    if not FAST_BF16_FLAGS & cpu_flags():
        return False
    return bf16_matmul_speedup() >= MIN_BF16_SPEEDUP


@functools.cache
def bf16_matmul_speedup(size: int = 1024, repeats: int = 3) -> float:
    """fp32 time / bf16 time of one ``size`` x ``size`` matmul on this CPU, best of ``repeats`` each."""

    def best_seconds(dtype: torch.dtype) -> float:
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        a @ b  # warm-up: oneDNN picks and caches its kernel on the first call
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        return min(times)

    return best_seconds(torch.float32) / best_seconds(torch.bfloat16)


def cuda_has_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def pick_mixed_precision(precision: str) -> str:
    """accelerate's mixed-precision name for ``train.precision``: ``bf16`` or ``no`` (see the module table).

    ``auto`` -> bf16 on CUDA GPUs that support it; on CPU-only machines bf16 only when the CPU has fast bf16
    (see ``cpu_has_fast_bf16``), fp32 otherwise. ``bf16`` and ``fp32`` force the choice.
    """
    if precision == "bf16":
        return "bf16"
    if precision == "fp32":
        return "no"
    if torch.cuda.is_available():
        return "bf16" if cuda_has_bf16() else "no"
    return "bf16" if cpu_has_fast_bf16() else "no"
