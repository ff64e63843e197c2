"""One-row linears as torch.mv: same results as F.linear, same parameters, switchable both ways."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from omni2.lm_runner import LMRunner
from omni2.model.row_gemv import RowGemvLinear, linear_rows, plain_linears, row_gemv_is_faster, use_row_gemv


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("shape", [(7,), (1, 7), (1, 1, 7), (3, 7), (2, 5, 7)])
def test_linear_rows_equals_linear(dtype, tol, shape) -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(11, 7, generator=gen).to(dtype)
    b = torch.randn(11, generator=gen).to(dtype)
    x = torch.randn(*shape, generator=gen).to(dtype)
    for bias in (None, b):
        got, ref = linear_rows(x, w, bias), F.linear(x, w, bias)
        assert got.shape == ref.shape and got.dtype == ref.dtype
        torch.testing.assert_close(got.float(), ref.float(), atol=tol, rtol=tol)


def test_switching_keeps_parameters_ties_and_outputs(tiny) -> None:
    lm = copy.deepcopy(tiny.model.llm).to(torch.bfloat16)
    keys = list(lm.state_dict())
    tied = lm.lm_head.weight is lm.model.embed_tokens.weight
    embeds = torch.randn(12, lm.config.hidden_size, generator=torch.Generator().manual_seed(1)).bfloat16() * 0.1

    def decode() -> torch.Tensor:
        runner = LMRunner(lm)
        runner.feed(embeds[:8])  # prefill: several rows, F.linear either way
        return torch.cat([runner.feed(embeds[i : i + 1]) for i in range(8, 12)])  # one row each

    ref = decode()
    n = use_row_gemv(lm)
    assert n == sum(isinstance(m, RowGemvLinear) for m in lm.modules()) > 0
    assert list(lm.state_dict()) == keys and (lm.lm_head.weight is lm.model.embed_tokens.weight) == tied
    torch.testing.assert_close(decode().float(), ref.float(), atol=3e-2, rtol=3e-2)
    with plain_linears(lm):
        assert not any(isinstance(m, RowGemvLinear) for m in lm.modules())
    assert sum(isinstance(m, RowGemvLinear) for m in lm.modules()) == n
    assert use_row_gemv(lm, on=False) == n and use_row_gemv(lm, on=False) == 0


def test_kernel_choice_is_cpu_only_and_cached() -> None:
    assert row_gemv_is_faster(torch.device("meta"), torch.bfloat16) is False
    first = row_gemv_is_faster(torch.device("cpu"), torch.bfloat16)
    assert isinstance(first, bool) and row_gemv_is_faster(torch.device("cpu"), torch.bfloat16) is first
