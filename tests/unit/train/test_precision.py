"""precision: auto picks bf16 only where it is fast (decision tested with monkeypatched detection)."""

from __future__ import annotations

import pytest
import torch

from tunesmith.train import precision as prec


@pytest.mark.parametrize(
    ("cuda", "cuda_bf16", "capability", "flags", "expected"),
    [
        (True, True, "AVX2", set(), "bf16"),
        (True, False, "AVX512", {"avx512_bf16"}, "no"),  # a GPU without bf16: fp32, whatever the CPU
        (False, False, "AVX2", {"avx2", "fma"}, "no"),  # this machine: bf16 measured ~30x slower
        (False, False, "AVX512", {"avx512f"}, "no"),  # AVX512 without bf16 dot products
        (False, False, "AVX512", {"avx512f", "avx512_bf16"}, "bf16"),
        (False, False, "AMX", {"amx_bf16", "amx_tile"}, "no"),  # torch not dispatching AVX512 kernels
        (False, False, "AVX512", {"amx_bf16"}, "bf16"),
    ],
)
def test_auto_decision(monkeypatch, cuda, cuda_bf16, capability, flags, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(prec, "cpu_flags", lambda *a: flags)
    assert prec.pick_mixed_precision("auto") == expected
    assert prec.pick_mixed_precision("bf16") == "bf16"
    assert prec.pick_mixed_precision("fp32") == "no"


def test_cpu_flags_parses_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\nprocessor\t: 1\n")
    assert prec.cpu_flags(info) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert prec.cpu_flags(tmp_path / "missing") == set()
