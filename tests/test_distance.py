"""Query x gallery squared distances: the in-place form, the choice of the CPU product and its thread invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hardreid.evaluation.distance as distance
from hardreid.evaluation.pipeline import feature_distances

pytestmark = pytest.mark.exactness  # run again under other kernels and thread counts (dev.py kernels)


def unit_features(n: int, dim: int, seed: int) -> torch.Tensor:
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32))
    return torch.nn.functional.normalize(x, dim=1)


def numpy_product(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """numpy's product in one single-threaded call (what a single tile of ``_numpy_product`` is)."""
    with distance._blas_threads(1):
        return torch.from_numpy(q.numpy() @ g.numpy().T)


def plain(prod: torch.Tensor) -> torch.Tensor:
    """The formula as it was written before: ``(2 - 2 * prod).clamp(min=0)``, new tensors each step."""
    return (2.0 - 2.0 * prod).clamp(min=0.0)


@pytest.fixture(params=[True, False], ids=["numpy-blas", "torch"])
def numpy_path(request, monkeypatch):
    monkeypatch.setattr(distance, "numpy_blas_preferred", lambda: request.param)
    return request.param


def test_in_place_form_equals_the_plain_formula(numpy_path):
    """Bit for bit the plain formula applied to the chosen library's product, including the clamp at 0 (a
    feature against itself) and negative products (distances above 2)."""
    q, g = unit_features(37, 64, 0), unit_features(91, 64, 1)
    g = torch.cat([g, q[:5], -q[5:8]])
    prod = numpy_product(q, g) if numpy_path else q @ g.t()
    d = distance.squared_distance(q, g)
    assert d.dtype == torch.float32 and d.shape == (37, 99)
    assert torch.equal(d, plain(prod))
    assert bool((d >= 0).all()) and float(d[5:8, 96:99].diagonal().min()) > 3.99


def test_both_products_agree_with_float64(numpy_path):
    q, g = unit_features(20, 256, 2), unit_features(150, 256, 3)
    ref = (2.0 - 2.0 * (q.double() @ g.double().t())).clamp(min=0.0)
    d = distance.squared_distance(q, g)
    assert float((d.double() - ref).abs().max()) < 1e-5


def test_numpy_product_does_not_depend_on_the_thread_count(monkeypatch):
    """The same distances with 1 and 2 threads: fixed tiles (small here, so that there are several), each by one
    single-threaded BLAS call, spread over torch's thread count (OpenBLAS's AVX2 kernels, threaded themselves,
    change last bits with the thread count)."""
    monkeypatch.setattr(distance, "numpy_blas_preferred", lambda: True)
    monkeypatch.setattr(distance, "_TILE", (128, 256))
    q, g = unit_features(300, 512, 4), unit_features(700, 512, 5)
    before = torch.get_num_threads()
    seen = []
    real_limit = distance._blas_threads

    def spy(n):
        seen.append(n)
        return real_limit(n)

    monkeypatch.setattr(distance, "_blas_threads", spy)
    try:
        torch.set_num_threads(1)
        one = distance.squared_distance(q, g)
        torch.set_num_threads(2)
        two = distance.squared_distance(q, g)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two) and seen == [1, 1]  # each tile by one BLAS thread
    assert float((one.double() - plain(q.double() @ g.double().t())).abs().max()) < 1e-5
    controller = distance._thread_controller()
    if controller is not None and controller.select(user_api="blas").lib_controllers:
        with distance._blas_threads(1):
            assert all(info["num_threads"] == 1 for info in controller.select(user_api="blas").info())


def test_gradients_other_dtypes_and_devices_take_torch_product(monkeypatch):
    monkeypatch.setattr(distance, "numpy_blas_preferred", lambda: True)
    q, g = unit_features(6, 16, 6), unit_features(9, 16, 7)
    qd, gd = q.double(), g.double()
    assert torch.equal(distance.squared_distance(qd, gd), plain(qd @ gd.t()))
    qg = q.clone().requires_grad_(True)
    d = distance.squared_distance(qg, g)
    d.sum().backward()
    assert torch.equal(d.detach(), plain(q @ g.t())) and qg.grad is not None
    with torch.no_grad():  # no gradient needed: numpy's product even for a tensor that requires one
        assert torch.equal(distance.squared_distance(qg, g), plain(numpy_product(q, g)))


@pytest.mark.parametrize("machine, vendor, torch_mkl, numpy_blas, expected", [
    ("x86_64", "AuthenticAMD", True, "scipy-openblas", True),
    ("AMD64", "AuthenticAMD", True, "openblas", True),
    ("x86_64", "HygonGenuine", True, "scipy-openblas", True),
    ("x86_64", "GenuineIntel", True, "scipy-openblas", False),  # MKL is Intel's own: torch's product
    ("x86_64", "AuthenticAMD", False, "scipy-openblas", False),  # torch not on MKL
    ("x86_64", "AuthenticAMD", True, "mkl-sdl", False),  # numpy on MKL too: nothing to gain
    ("x86_64", "", True, "scipy-openblas", False),  # vendor unknown
    ("aarch64", "", True, "scipy-openblas", False),
])
def test_which_product_the_cpu_gets(monkeypatch, machine, vendor, torch_mkl, numpy_blas, expected):
    monkeypatch.setattr(distance.platform, "machine", lambda: machine)
    monkeypatch.setattr(distance, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(distance, "_numpy_blas_name", lambda: numpy_blas)
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: torch_mkl)
    distance.numpy_blas_preferred.cache_clear()
    try:
        assert distance.numpy_blas_preferred() is expected
    finally:
        distance.numpy_blas_preferred.cache_clear()


def test_cpu_vendor_and_numpy_blas_are_read():
    vendor = distance.cpu_vendor()
    assert isinstance(vendor, str) and (vendor == "" or vendor.isalpha())
    assert distance._numpy_blas_name() != ""


def test_pipeline_uses_it(numpy_path):
    q, g = unit_features(8, 32, 8), unit_features(30, 32, 9)
    assert torch.equal(feature_distances(q, g, None), distance.squared_distance(q, g))
