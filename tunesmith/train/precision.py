"""Which mixed precision to train in: ``auto`` picks bf16 only where it is fast.

On CPUs without AVX512-BF16 or AMX, bf16 matmuls fall back to slow conversions: on a 2-core AVX2 EPYC,
bf16 autocast measured 6.5 tokens/s against ~150-200 in fp32 for LoRA on the default model (torch 2.13).
"""

from __future__ import annotations

from pathlib import Path

import torch

FAST_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


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


def cpu_has_fast_bf16() -> bool:
    """True when torch dispatches AVX512 kernels *and* the CPU has bf16 dot products (AVX512-BF16 or AMX)."""
    if "AVX512" not in torch.backends.cpu.get_cpu_capability().upper():
        return False
    return bool(FAST_BF16_FLAGS & cpu_flags())


def cuda_has_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def pick_mixed_precision(precision: str) -> str:
    """accelerate's mixed-precision name for ``train.precision``: ``bf16`` or ``no``.

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
