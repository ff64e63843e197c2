"""Checkers for the cosy2-* golden kinds (CosyVoice2 flow + HiFT as LLaMA-Omni2 runs them).

Every case loads its ``decoder/`` folder through :func:`omni2.vocoder.load_decoder` (the path real
files take), swaps in the case's noise buffer and switches HiFT's randomness off (the reference
was patched the same way), then compares mel first (so a flow bug is reported as such), then mu,
wav, per-call pieces, and the call schedule.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.golden_checks import register
from tests.golden_checks.compare import assert_match

_DECODERS: dict[Path, object] = {}


def _decoder(case_dir: Path):
    from omni2.vocoder import load_decoder

    path = (case_dir / "decoder").resolve()
    dec = _DECODERS.get(path)
    if dec is None:
        dec = load_decoder(path, device="cpu")
        _DECODERS[path] = dec
    dec.set_deterministic(True)
    return dec


def _chunks(dec, case: dict) -> None:
    want = case.get("static_chunk")
    if want is not None:
        have = [dec.cfg.flow.encoder_chunk, dec.cfg.flow.estimator_chunk]
        assert have == list(want), f"chunk sizes from cosyvoice.yaml {have} != case {want}"


@register("cosy2-flow")
def check_flow(case_dir: Path, case: dict) -> None:
    inputs = load_file(case_dir / "inputs.safetensors")
    expected = load_file(case_dir / "expected.safetensors")
    dec = _decoder(case_dir)
    _chunks(dec, case)
    dec.set_noise(inputs["noise"])
    out = dec.units_to_mel(inputs["tokens"][0], inputs["xvector"], finalize=True)
    assert_match("mel", out.mel, expected["mel"], case)
    assert_match("mu", out.mu, expected["mu"], case)
    wav = dec.mel_to_wav(out.mel).wav
    assert_match("wav", wav, expected["wav"], case)


@register("cosy2-hift")
def check_hift(case_dir: Path, case: dict) -> None:
    inputs = load_file(case_dir / "inputs.safetensors")
    expected = load_file(case_dir / "expected.safetensors")
    dec = _decoder(case_dir)
    out = dec.mel_to_wav(inputs["mel"])
    assert_match("f0", out.f0, expected["f0"], case)
    assert_match("source", out.source, expected["source"], case)
    assert_match("wav", out.wav, expected["wav"], case)


@register("cosy2-stream")
def check_stream(case_dir: Path, case: dict) -> None:
    inputs = load_file(case_dir / "inputs.safetensors")
    expected = load_file(case_dir / "expected.safetensors")
    dec = _decoder(case_dir)
    _chunks(dec, case)
    dec.set_noise(inputs["noise"])
    tokens = inputs["tokens"][0].tolist()
    windows = inputs["windows"].tolist()
    assert sum(windows) == len(tokens), "windows do not cover the tokens"
    stream = dec.stream(inputs["xvector"], record=True)
    pieces: list[torch.Tensor] = []
    pos = 0
    for i, w in enumerate(windows):
        chunk = tokens[pos : pos + w]
        pos += w
        last = i == len(windows) - 1
        piece = stream.finalize(chunk) if last else stream.push(chunk)
        pieces.append(torch.from_numpy(piece)[None])

    calls = torch.tensor([[c.n_tokens, c.offset, int(c.finalize)] for c in stream.calls], dtype=torch.int64)
    assert_match("calls", calls, expected["calls"], case)
    mels = [c.mel for c in stream.calls]
    assert_match("mel", torch.cat(mels, dim=2), expected["mel"], case)
    for i, m in enumerate(mels):
        assert_match(f"mel_{i}", m, expected[f"mel_{i}"], case)
    # One piece per call here (every golden window triggers exactly one official call).
    for i, p in enumerate(pieces):
        assert_match(f"piece_{i}", p, expected[f"piece_{i}"], case)
    assert_match("wav", torch.cat(pieces, dim=1), expected["wav"], case)
