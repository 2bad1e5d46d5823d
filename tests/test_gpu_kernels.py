"""Ferrum's CUDA kernels against torch on a real GPU: the checks of ``bench/kernel_bench.py`` as
tests. Marked ``gpu`` and skipped where there is no CUDA device with torch (CI); on the H100 they
ran as ``bash bench/device/kernels.sh`` (``bench/results/h100_kernel_checks.json``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _cuda_torch() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


pytestmark = [pytest.mark.gpu, pytest.mark.slow, pytest.mark.skipif(not _cuda_torch(), reason="needs a CUDA GPU and torch")]


@pytest.fixture(scope="module")
def bench():
    import torch

    from compile.kernels.build import build_shared

    sys.path.insert(0, str(ROOT / "bench"))
    import kernel_bench

    major, minor = torch.cuda.get_device_capability()
    arch = f"sm_{major}{minor}" + ("a" if (major, minor) == (9, 0) else "")
    return kernel_bench, kernel_bench.Kernels(str(build_shared((arch,))))


def test_linear_layers_match_torch(bench):
    module, kern = bench
    failed = [r for r in module.check_linear(kern) if not r["ok"]]
    assert not failed, failed[:5]


def test_attention_and_rope_match_torch(bench):
    module, kern = bench
    for r in module.check_attention(kern) + module.check_decode_attention(kern):
        assert r["ok"], r
    assert module.check_rope(kern)["ok"]


def test_sampler_matches_the_host_contract(bench):
    module, kern = bench
    assert module.check_sampler(kern)["ok"]
