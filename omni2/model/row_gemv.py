"""Single-row linear layers as matrix-vector products, where that kernel is measured to be faster.

Token-by-token decoding multiplies one row by every weight matrix, so it is bound by reading the
weights. On CPUs with bf16 support, PyTorch 2.13's ``F.linear`` on one bf16 row streams the weights
at about half the bandwidth of fp32 (so bf16 decoding is no faster than fp32), while ``torch.mv``
on the same bf16 weight reaches about 1.5x the speed of ``F.linear``. Which kernel wins depends on
the CPU, so :func:`row_gemv_is_faster` times both once on a decoder-sized matrix and the engine
switches only when ``mv`` clearly wins. Results equal ``F.linear``'s up to float rounding; inputs
with several rows (prefill, encoders) still go through ``F.linear``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


def linear_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` that uses ``torch.mv`` when ``x`` holds a single row."""
    if x.numel() != x.size(-1):
        return F.linear(x, weight, bias)
    y = torch.mv(weight, x.reshape(-1))
    if bias is not None:
        y = y + bias
    return y.view(*x.shape[:-1], weight.size(0))


class RowGemvLinear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) whose single-row calls use ``torch.mv``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear_rows(x, self.weight, self.bias)


def use_row_gemv(module: nn.Module, on: bool = True) -> int:
    """Switch every plain ``nn.Linear`` inside ``module`` to :class:`RowGemvLinear` (or back).

    Only the class changes, so parameters, ties and hooks stay as they are. Returns how many
    layers were switched.
    """
    src, dst = (nn.Linear, RowGemvLinear) if on else (RowGemvLinear, nn.Linear)
    n = 0
    for m in module.modules():
        if type(m) is src:
            m.__class__ = dst
            n += 1
    return n


@contextlib.contextmanager
def plain_linears(module: nn.Module) -> Iterator[None]:
    """Temporarily undo :func:`use_row_gemv` (the benchmark's official-pattern replay uses this)."""
    n = use_row_gemv(module, on=False)
    try:
        yield
    finally:
        if n:
            use_row_gemv(module, on=True)


@functools.lru_cache(maxsize=8)
def row_gemv_is_faster(device: torch.device, dtype: torch.dtype, rows: int = 4864, cols: int = 896) -> bool:
    """Time one-row ``F.linear`` against ``torch.mv`` on a [rows, cols] weight (a 0.5B MLP matrix);
    True when ``mv`` takes at most 85% of the time. Only CPUs are considered (about 20 ms, once)."""
    if device.type != "cpu":
        return False
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(rows, cols, generator=gen).to(dtype)
    x = torch.randn(1, cols, generator=gen).to(dtype)

    def best(fn) -> float:
        times = []
        for _ in range(15):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times[3:])

    with torch.inference_mode():
        t_linear = best(lambda: F.linear(x, w))
        t_mv = best(lambda: torch.mv(w, x[0]))
    faster = t_mv <= 0.85 * t_linear
    log.info("one-row %s matmul: F.linear %.3f ms, torch.mv %.3f ms -> %s", str(dtype).replace("torch.", ""),
             t_linear * 1e3, t_mv * 1e3, "mv" if faster else "linear")
    return faster
