"""Tensor comparison that reports *which* part of a case differs and by how much."""

from __future__ import annotations

import torch


class GoldenMismatch(AssertionError):
    pass


def tolerance_for(case: dict, name: str) -> tuple[float, float]:
    """(atol, rtol) for tensor ``name``; per-tensor entries use ``_k`` for indexed names."""
    tol = case.get("tolerance", {})
    per = tol.get("per_tensor", {})
    base = name.rstrip("0123456789")
    key = name if name in per else (base + "k" if base.endswith("_") and base + "k" in per else None)
    if key is not None:
        return float(per[key]["atol"]), float(per[key]["rtol"])
    return float(tol.get("atol", 0.0)), float(tol.get("rtol", 0.0))


def assert_match(name: str, ours: torch.Tensor, expected: torch.Tensor, case: dict) -> None:
    """Ids exactly; floats with ``torch.allclose`` at the case's tolerance (never loosened)."""
    ours = ours.detach().cpu()
    expected = expected.detach().cpu()
    if tuple(ours.shape) != tuple(expected.shape):
        raise GoldenMismatch(f"{name}: shape {tuple(ours.shape)} != expected {tuple(expected.shape)}")
    if not expected.is_floating_point():
        ours = ours.to(expected.dtype)
        if not torch.equal(ours, expected):
            diff = (ours != expected).nonzero()
            first = diff[0].tolist() if len(diff) else []
            raise GoldenMismatch(
                f"{name}: {len(diff)} of {expected.numel()} ids differ (first at {first}: "
                f"ours {ours[tuple(first)].item()} vs expected {expected[tuple(first)].item()})"
            )
        return
    atol, rtol = tolerance_for(case, name)
    ours = ours.to(expected.dtype)
    if not torch.allclose(ours, expected, atol=atol, rtol=rtol):
        err = (ours - expected).abs()
        raise GoldenMismatch(
            f"{name}: max |diff| {err.max().item():.3e} at {tuple(int(i) for i in divmod_index(err))} "
            f"exceeds atol={atol} rtol={rtol}"
        )


def divmod_index(err: torch.Tensor) -> list[int]:
    flat = int(err.argmax())
    idx = []
    for size in reversed(err.shape):
        idx.append(flat % size)
        flat //= size
    return list(reversed(idx))
