"""precision: auto picks bf16 only where it is fast (decision tested with monkeypatched detection)."""

from __future__ import annotations

import pytest
import torch

from tunesmith.train import precision as prec


@pytest.mark.parametrize(
    ("cuda", "cuda_bf16", "capability", "flags", "speedup", "expected"),
    [
        (True, True, "AVX2", set(), 0.03, "bf16"),
        (True, False, "AVX512", {"avx512_bf16"}, 6.0, "no"),  # a GPU without bf16: fp32, whatever the CPU
        (False, False, "AVX2", {"avx2", "fma"}, 6.0, "no"),  # AVX2 EPYC: bf16 measured ~30x slower
        (False, False, "AVX512", {"avx512f"}, 6.0, "no"),  # AVX512 without bf16 dot products
        (False, False, "AVX512", {"avx512f", "avx512_bf16"}, 1.5, "bf16"),
        (False, False, "AVX512", {"avx512f", "avx512_bf16"}, 0.55, "no"),  # flags, but bf16 measured slower
        (False, False, "AMX", {"amx_bf16", "amx_tile"}, 6.0, "no"),  # torch not dispatching AVX512 kernels
        (False, False, "AVX512", {"amx_bf16"}, 6.0, "bf16"),
    ],
)
def test_auto_decision(monkeypatch, cuda, cuda_bf16, capability, flags, speedup, expected):
    monkeypatch.delenv(prec.CPU_BF16_ENV, raising=False)  # CI's bf16 pass sets it; the probe is tested here
    monkeypatch.setattr(prec, "bf16_matmul_speedup", lambda: speedup)
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


@pytest.mark.parametrize(("value", "expected"), [("fast", "bf16"), ("slow", "no"), (" FAST ", "bf16")])
def test_env_switch_overrides_the_cpu_probe_both_ways(monkeypatch, value, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # The probe says the opposite of the switch, so only the switch can produce the expected answer.
    fast_cpu = expected == "no"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512" if fast_cpu else "AVX2")
    monkeypatch.setattr(prec, "cpu_flags", lambda *a: {"avx512_bf16"} if fast_cpu else {"avx2"})
    monkeypatch.setenv(prec.CPU_BF16_ENV, value)
    assert prec.pick_mixed_precision("auto") == expected
    assert prec.pick_mixed_precision("fp32") == "no"  # explicit choices ignore the switch


def test_env_switch_rejects_other_values(monkeypatch):
    from tunesmith.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(prec.CPU_BF16_ENV, "yes")
    with pytest.raises(ConfigError, match="TUNESMITH_CPU_BF16='yes': use 'fast' or 'slow'"):
        prec.pick_mixed_precision("auto")


def test_auto_decision_ignores_an_unset_switch(monkeypatch):
    monkeypatch.delenv(prec.CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(prec, "cpu_flags", lambda *a: {"avx2"})
    assert prec.pick_mixed_precision("auto") == "no"


def test_speedup_measurement_is_a_positive_ratio():
    prec.bf16_matmul_speedup.cache_clear()
    ratio = prec.bf16_matmul_speedup(size=64, repeats=1)
    assert 0 < ratio < 1000 and prec.bf16_matmul_speedup(size=64, repeats=1) == ratio  # cached per process
