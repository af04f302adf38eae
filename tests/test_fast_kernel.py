"""The CPU kernel of ``cluster.search: fast`` (``pseudo_labels/knn.py``, ``choose_cpu_kernel``): chosen by what the
CPU has and a one-off block product against float32, never a path slower than exact.

Capabilities and timings are mocked (no timing is measured or asserted); one test runs the real choice once.
"""

from __future__ import annotations

import logging

import pytest
import torch

import hardreid.pseudo_labels.knn as knn
from hardreid.errors import UserError
from hardreid.pseudo_labels.knn import choose_cpu_kernel

AVX2_ONLY = {"sse4_2", "avx", "avx2", "fma"}  # the AMD EPYC of the issue: no VNNI, no AMX, no bf16
VNNI = AVX2_ONLY | {"avx512f", "avx512_vnni"}
SAPPHIRE = VNNI | {"avx512_bf16", "amx_int8", "amx_bf16"}
ARM = {"fp", "asimd", "asimddp", "i8mm", "bf16"}  # /proc/cpuinfo "Features" of an ARM server: no x86 hint


def timer_of(**seconds: float):
    """A fake ``timer(kernel)`` returning the given seconds and recording which kernels were timed."""
    calls: list[str] = []

    def timer(kernel: str) -> float:
        calls.append(kernel)
        return seconds[kernel]

    timer.calls = calls  # type: ignore[attr-defined]
    return timer


def test_avx2_only_cpu_runs_exact_without_timing_anything():
    timer = timer_of()
    kernel, reason = choose_cpu_kernel("AVX2", AVX2_ONLY, int8_runs=True, timer=timer)
    assert kernel == "exact" and "AVX2" in reason
    assert timer.calls == []  # known slow: not even benchmarked


def test_lowered_aten_capability_counts_as_avx2_even_with_vnni_flags():
    # ATEN_CPU_CAPABILITY=avx2 on an AVX-512 VNNI machine: the way of emulating the AMD CPU
    kernel, reason = choose_cpu_kernel("AVX2", SAPPHIRE, int8_runs=True, timer=timer_of())
    assert kernel == "exact" and "capability AVX2" in reason


def test_avx512_without_int8_or_bf16_units_runs_exact():
    kernel, reason = choose_cpu_kernel("AVX512", AVX2_ONLY | {"avx512f"}, int8_runs=True, timer=timer_of())
    assert kernel == "exact" and "VNNI" in reason


def test_vnni_cpu_takes_int8_when_it_beats_float32():
    timer = timer_of(exact=0.040, int8=0.010)
    kernel, reason = choose_cpu_kernel("AVX512", VNNI, int8_runs=True, timer=timer)
    assert kernel == "int8" and "float32" in reason
    assert sorted(timer.calls) == ["exact", "int8"]  # no bf16 units: bf16 not a candidate


def test_int8_slower_than_float32_falls_back_to_exact():
    # flags say VNNI, but the build's _int_mm is slow (the 0.784 s against 0.038 s)
    kernel, reason = choose_cpu_kernel("AVX512", VNNI, int8_runs=True, timer=timer_of(exact=0.038, int8=0.784))
    assert kernel == "exact" and "beat float32" in reason


def test_a_kernel_just_under_float32_is_not_enough():
    # within the margin (timing noise): exact, never a path that may be slower
    kernel, _ = choose_cpu_kernel("AVX512", VNNI, int8_runs=True,
                                  timer=timer_of(exact=0.040, int8=0.040 * (knn._KERNEL_MARGIN + 0.05)))
    assert kernel == "exact"


def test_fastest_candidate_wins():
    assert choose_cpu_kernel("AVX512", SAPPHIRE, True, timer_of(exact=0.04, int8=0.012, bf16=0.008))[0] == "bf16"
    assert choose_cpu_kernel("AVX512", SAPPHIRE, True, timer_of(exact=0.04, int8=0.008, bf16=0.012))[0] == "int8"
    # _int_mm missing from the build: bf16 only
    timer = timer_of(exact=0.04, bf16=0.01)
    assert choose_cpu_kernel("AVX512", SAPPHIRE, False, timer)[0] == "bf16" and "int8" not in timer.calls


def test_non_x86_cpu_is_decided_by_the_benchmark():
    assert choose_cpu_kernel("DEFAULT", ARM, True, timer_of(exact=0.04, int8=0.01, bf16=0.03))[0] == "int8"
    assert choose_cpu_kernel("DEFAULT", ARM, True, timer_of(exact=0.04, int8=0.05, bf16=0.05))[0] == "exact"
    assert choose_cpu_kernel("DEFAULT", set(), False, timer_of(exact=0.04, bf16=0.02))[0] == "bf16"


@pytest.fixture
def fresh_choice(monkeypatch):
    """An empty per-process cache, restored afterwards."""
    monkeypatch.setattr(knn, "_CPU_KERNEL", {})
    monkeypatch.delenv("HARDREID_FAST_KERNEL", raising=False)


def test_choice_is_made_once_per_process_and_logged(fresh_choice, monkeypatch, caplog):
    calls = []

    def fake_choose(capability, flags, int8_runs, timer=None):
        calls.append((capability, int8_runs))
        return "exact", "mocked AVX2-only CPU"

    monkeypatch.setattr(knn, "choose_cpu_kernel", fake_choose)
    monkeypatch.setattr(knn, "_torch_cpu_capability", lambda: "AVX2")
    with caplog.at_level(logging.INFO, logger="hardreid"):
        assert knn._fast_precision(torch.device("cpu"), 2048) == "exact"
        assert knn._fast_precision(torch.device("cpu"), 2048) == "exact"
    assert calls == [("AVX2", knn._int8_matmul_available())]
    assert [r.getMessage() for r in caplog.records] == ["cluster.search fast on CPU: exact products (mocked AVX2-only CPU)"]
    assert knn._fast_precision(torch.device("cuda"), 2048) == "fp16"  # CUDA: fp16, no CPU choice
    assert knn._fast_precision(torch.device("cpu"), 256) == "exact"  # below 512 dimensions: exact


def test_exact_choice_makes_fast_mode_identical_to_exact(fresh_choice, monkeypatch):
    from hardreid.pseudo_labels import compute_jaccard_distance

    monkeypatch.setattr(knn, "_CPU_KERNEL", {"cpu": ("exact", "mocked")})
    g = torch.Generator().manual_seed(3)
    feats = torch.nn.functional.normalize(torch.randn(300, 512, generator=g), dim=1)
    fast = compute_jaccard_distance(feats, k1=10, k2=4, mode="fast")
    exact = compute_jaccard_distance(feats, k1=10, k2=4)
    assert (fast != exact).nnz == 0


def test_environment_variable_forces_a_kernel(fresh_choice, monkeypatch):
    monkeypatch.setenv("HARDREID_FAST_KERNEL", "bf16")
    assert knn._cpu_fast_kernel() == ("bf16", "set by HARDREID_FAST_KERNEL")
    monkeypatch.setattr(knn, "_CPU_KERNEL", {})
    monkeypatch.setenv("HARDREID_FAST_KERNEL", "fp8")
    with pytest.raises(UserError, match=r"HARDREID_FAST_KERNEL='fp8'.*auto, int8, bf16, exact"):
        knn._cpu_fast_kernel()


def test_real_choice_on_this_cpu_is_a_known_kernel(fresh_choice):
    kernel, reason = knn._cpu_fast_kernel()  # one real micro-benchmark (a few 512 x 1024 x 512 products)
    assert kernel in ("int8", "bf16", "exact") and reason
