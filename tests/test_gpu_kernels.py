"""Ferrum's CUDA kernels against torch on a real GPU: the checks of ``checks/cuda_kernels.py`` (which
``bench/kernel_bench.py`` also reports) as tests. Marked ``gpu`` and skipped where there is no CUDA
device with torch (CI); on the H100 they ran as ``bash bench/device/kernels.sh``
(``bench/results/h100_kernel_checks.json``)."""

from __future__ import annotations

import importlib.util

import pytest


def _cuda_torch() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not _cuda_torch(), reason="needs a CUDA GPU and torch")]


@pytest.fixture(scope="module")
def kern():
    import torch

    from checks.cuda_kernels import Kernels
    from compile.kernels.build import build_shared

    major, minor = torch.cuda.get_device_capability()
    arch = f"sm_{major}{minor}" + ("a" if (major, minor) == (9, 0) else "")
    return Kernels(str(build_shared((arch,))))


def test_linear_layers_match_torch(kern):
    from checks.cuda_kernels import check_linear

    failed = [r for r in check_linear(kern) if not r["ok"]]
    assert not failed, failed[:5]


def test_attention_and_rope_match_torch(kern):
    from checks.cuda_kernels import check_attention, check_decode_attention, check_rope

    for r in check_attention(kern) + check_decode_attention(kern):
        assert r["ok"], r
    assert check_rope(kern)["ok"]


def test_sampler_matches_the_host_contract(kern):
    from checks.cuda_kernels import check_sampler

    assert check_sampler(kern)["ok"]


def test_masked_sampler_picks_only_allowed_tokens(kern):
    from checks.cuda_kernels import check_masked_sampler

    result = check_masked_sampler(kern)
    assert result["ok"], result
