"""CosyVoice2 decoder: config parsing, loading, offline/streaming behaviour and bad input.

Runs on the tiny random decoder that ``omni2.vocoder.tiny`` writes (the numerics against the
official code are covered by the cosy2-* goldens in test_golden.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from omni2.errors import CheckpointError, ConfigError, Omni2Error
from omni2.vocoder import UnitsError, load_decoder, parse_config
from omni2.vocoder.config import load_yaml_data
from omni2.vocoder.hift import fold_weight_norm
from omni2.vocoder.tiny import write_tiny_decoder

GOLDEN_YAML = Path(__file__).parent / "data" / "golden_shared" / "cosy2-decoder" / "cosyvoice.yaml"
SPU = 960  # samples per unit at 24 kHz


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_decoder(tmp_path_factory.mktemp("cosy2_tiny"), seed=0, vocab_size=500)


@pytest.fixture(scope="module")
def decoder(tiny_dir: Path):
    dec = load_decoder(tiny_dir)
    dec.set_deterministic(True)
    return dec


def _units(n: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(0, 500, n).tolist()


def _stream(dec, units: list[int], window: int) -> tuple[np.ndarray, list[int]]:
    """Push ``units`` in windows (last window with finalize); returns audio and piece lengths."""
    s = dec.stream()
    pieces = []
    windows = [units[i : i + window] for i in range(0, len(units), window)]
    for i, w in enumerate(windows):
        pieces.append(s.finalize(w) if i == len(windows) - 1 else s.push(w))
    return np.concatenate(pieces), [len(p) for p in pieces]


# ---- config -----------------------------------------------------------------------------------


def test_golden_yaml_parses_with_loader_chunk_sizes() -> None:
    cfg = parse_config(GOLDEN_YAML.read_text())
    assert cfg.sample_rate == 24000
    assert (cfg.flow.encoder_chunk, cfg.flow.estimator_chunk) == (50, 100)
    assert cfg.flow.estimator.channels == (32,) and cfg.hift.samples_per_frame == 480


def test_yaml_tags_are_data_not_code() -> None:
    data = load_yaml_data(
        "a: 2\nb: !ref <a> * 3 + 1\nc: !ref <d[e]>\nd: {e: 5}\n"
        "x: !apply:os.system ['echo hacked']\nf: !name:foo.bar {k: 1}\n"
    )
    assert data["b"] == 7 and data["c"] == 5
    assert data["x"].kind == "apply" and data["x"].target == "os.system"  # never executed
    assert data["f"].value == {"k": 1}


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda t: t.replace("CausalMaskedDiffWithXvec", "MaskedDiffWithXvec"), "unsupported class"),
        (lambda t: t.replace("macaron_style: False", "macaron_style: True"), "macaron_style"),
        (lambda t: t.replace("channels: [32]", "channels: [32, 32]"), "one UNet level"),
        (lambda t: t.replace("causal: True", "causal: False"), "causal"),
        (
            lambda t: t.replace("    num_heads: 2\n", "    num_heads: 2\n            wobble: 1\n"),
            "unknown key",
        ),
        (lambda t: t.replace("hift: !new", "hifi: !new"), "no 'hift:' section"),
        (lambda t: t.replace("!ref <sample_rate>", "!ref <nope>"), "does not exist"),
        (lambda t: t + "\n  bad: [unclosed\n", "not valid YAML"),
    ],
)
def test_unknown_yaml_structure_is_config_error(edit, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config(edit(GOLDEN_YAML.read_text()))


# ---- loading -----------------------------------------------------------------------------------


def test_weight_norm_styles_and_prefix_agree() -> None:
    v = torch.randn(4, 3, 5)
    g = torch.rand(4, 1, 1) + 0.5
    old = fold_weight_norm({"generator.conv.weight_g": g, "generator.conv.weight_v": v, "conv.bias": torch.ones(4)})
    new = fold_weight_norm({"conv.parametrizations.weight.original0": g, "conv.parametrizations.weight.original1": v})
    assert set(old) == {"conv.weight", "conv.bias"}
    torch.testing.assert_close(old["conv.weight"], new["conv.weight"])
    torch.testing.assert_close(old["conv.weight"].norm(dim=(1, 2)), g.flatten())


def _broken_copy(tiny_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "dec"
    shutil.copytree(tiny_dir, out)
    return out


@pytest.mark.parametrize("name", ["cosyvoice.yaml", "flow.pt", "hift.pt"])
def test_missing_decoder_file(tiny_dir: Path, tmp_path: Path, name: str) -> None:
    d = _broken_copy(tiny_dir, tmp_path)
    (d / name).unlink()
    with pytest.raises(CheckpointError, match=name):
        load_decoder(d)


@pytest.mark.parametrize("name", ["flow.pt", "hift.pt"])
def test_corrupt_decoder_file(tiny_dir: Path, tmp_path: Path, name: str) -> None:
    d = _broken_copy(tiny_dir, tmp_path)
    (d / name).write_bytes((d / name).read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=name):
        load_decoder(d)


def test_checkpoint_not_matching_yaml(tiny_dir: Path, tmp_path: Path) -> None:
    d = _broken_copy(tiny_dir, tmp_path)
    text = (d / "cosyvoice.yaml").read_text().replace("num_mid_blocks: 2", "num_mid_blocks: 3")
    (d / "cosyvoice.yaml").write_text(text)
    with pytest.raises(CheckpointError, match="flow.pt does not match"):
        load_decoder(d)
    state = torch.load(tiny_dir / "flow.pt", weights_only=True)
    state["encoder_proj.bias"] = torch.zeros(7)
    d2 = _broken_copy(tiny_dir, tmp_path / "b")
    torch.save(state, d2 / "flow.pt")
    with pytest.raises(CheckpointError, match="encoder_proj.bias has shape"):
        load_decoder(d2)


def test_bad_yaml_through_loader(tiny_dir: Path, tmp_path: Path) -> None:
    d = _broken_copy(tiny_dir, tmp_path)
    (d / "cosyvoice.yaml").write_text("flow: 3\nhift: 4\n")
    with pytest.raises(ConfigError, match="flow"):
        load_decoder(d)


# ---- offline -----------------------------------------------------------------------------------


def test_offline_length_and_range(decoder) -> None:
    wav = decoder.vocode(_units(37))
    assert wav.dtype == np.float32 and wav.shape == (37 * SPU,)
    assert np.all(np.isfinite(wav)) and np.abs(wav).max() <= 0.99 + 1e-6 and wav.std() > 1e-4


def test_hift_randomness_default_random_seedable(tiny_dir: Path) -> None:
    dec = load_decoder(tiny_dir)
    u = _units(20)
    a, b = dec.vocode(u), dec.vocode(u)
    assert not np.array_equal(a, b)  # official default: random phases and noise each call
    dec.set_deterministic(False, generator=torch.Generator().manual_seed(3))
    c = dec.vocode(u)
    dec.set_deterministic(False, generator=torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(c, dec.vocode(u))


# ---- streaming ---------------------------------------------------------------------------------


@pytest.mark.parametrize("window, n", [(1, 40), (7, 70), (10, 80), (50, 120)])
def test_stream_windows_length_nan_clicks(decoder, window: int, n: int) -> None:
    wav, lengths = _stream(decoder, _units(n, seed=window), window)
    assert wav.shape == (n * SPU,)
    assert np.all(np.isfinite(wav))
    joins = np.cumsum(lengths)[:-1]
    joins = joins[(joins > 0) & (joins < len(wav))]
    assert len(joins) > 0
    jumps = np.abs(np.diff(wav))
    at_joins = jumps[joins - 1]  # wav[j] - wav[j-1] across each join
    mask = np.ones_like(jumps, dtype=bool)
    mask[joins - 1] = False
    assert at_joins.max() <= jumps[mask].max(), "click at a window join"
    assert at_joins.max() <= 5 * np.percentile(jumps[mask], 99)


def test_hold_rule_first_call_needs_seven_units(decoder) -> None:
    s = decoder.stream()
    for _ in range(6):
        assert s.push([5]).size == 0
    assert s.calls == []
    first = s.push([5])  # 7 units: first call, fills the 8-frame cache, emits nothing yet
    assert [(c.n_tokens, c.offset, c.finalize) for c in s.calls] == [(7, 0, False)]
    assert first.size == 0
    assert s.push([5]).size == SPU
    tail = s.finalize()
    assert (s.calls[-1].n_tokens, s.calls[-1].offset, s.calls[-1].finalize) == (8, 5, True)
    assert tail.size == 8 * SPU - SPU


def test_empty_push_makes_no_call(decoder) -> None:
    s = decoder.stream()
    s.push(_units(10))
    n_calls = len(s.calls)
    assert s.push([]).size == 0 and len(s.calls) == n_calls


def test_official_schedule_piece_lengths(decoder) -> None:
    """Where the official driver works we make the same calls with the same piece lengths."""
    s = decoder.stream()
    sizes = [s.push(_units(10, seed=i)).size for i in range(3)] + [s.finalize(_units(5, seed=9)).size]
    assert [(c.n_tokens, c.offset, int(c.finalize)) for c in s.calls] == [
        (10, 0, 0),
        (20, 7, 0),
        (30, 17, 0),
        (35, 27, 1),
    ]
    assert sizes == [480 * (20 - 14), 9600, 9600, 480 * (2 * 8 + 8)]


def test_short_or_empty_utterances(decoder) -> None:
    s = decoder.stream()
    assert s.push(_units(3)).size == 0
    assert s.finalize().size == 3 * SPU  # never started: one offline call
    s = decoder.stream()
    assert s.finalize().size == 0
    with pytest.raises(RuntimeError):
        s.push([1])


def test_finalize_only_equals_offline(decoder) -> None:
    u = _units(40)
    np.testing.assert_allclose(decoder.stream().finalize(u), decoder.vocode(u), atol=1e-6)


def test_hop50_stream_mel_equals_offline_mel(decoder) -> None:
    """Spec 3.3: with windows on the 50-token chunk grid the streamed mel is the one-shot mel."""
    u = _units(110, seed=4)
    s = decoder.stream(record=True)
    s.push(u[:53])
    s.push(u[53:103])
    s.finalize(u[103:])
    mel = torch.cat([c.mel for c in s.calls], dim=2)
    full = decoder.units_to_mel(u).mel
    torch.testing.assert_close(mel, full, atol=1e-4, rtol=1e-4)


def test_streams_do_not_share_state(decoder) -> None:
    a_units, b_units = _units(30, seed=1), _units(30, seed=2)
    ref_a, _ = _stream(decoder, a_units, 10)
    ref_b, _ = _stream(decoder, b_units, 10)
    sa, sb = decoder.stream(), decoder.stream()
    out_a, out_b = [], []
    for i in range(0, 30, 10):
        last = i == 20
        out_a.append(sa.finalize(a_units[i : i + 10]) if last else sa.push(a_units[i : i + 10]))
        out_b.append(sb.finalize(b_units[i : i + 10]) if last else sb.push(b_units[i : i + 10]))
    np.testing.assert_array_equal(np.concatenate(out_a), ref_a)
    np.testing.assert_array_equal(np.concatenate(out_b), ref_b)


# ---- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("units, match", [([1, 500], "out of range"), ([-1, 2], "out of range"), ([1.5], "integers")])
def test_bad_units(decoder, units, match: str) -> None:
    with pytest.raises(UnitsError, match=match):
        decoder.vocode(units)
    with pytest.raises(UnitsError, match=match):
        decoder.stream().push(units)


def test_empty_units_offline(decoder) -> None:
    with pytest.raises(UnitsError, match="empty"):
        decoder.vocode([])


def test_wrong_xvector(decoder) -> None:
    with pytest.raises(Omni2Error, match="192"):
        decoder.stream(np.ones(10, dtype=np.float32))
    with pytest.raises(Omni2Error, match="zeros"):
        decoder.stream(np.zeros(192, dtype=np.float32))


# ---- CLI ---------------------------------------------------------------------------------------


def test_cli_vocode_units_and_jsonl(tiny_dir: Path, tmp_path: Path) -> None:
    import soundfile as sf

    from omni2.cli import main

    units = tmp_path / "units.txt"
    units.write_text("<1><2><3><4><5><6><7><8><9><10>\n11 12 13\n")
    out = tmp_path / "wavs"
    assert main(["vocode", "--decoder", str(tiny_dir), "--units", str(units), "--out-dir", str(out)]) == 0
    wav, sr = sf.read(out / "0_pred.wav")
    assert sr == 24000 and wav.shape == (10 * SPU,)
    assert sf.info(str(out / "1_pred.wav")).frames == 3 * SPU

    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"question_id": 0, "prediction_units": "<4><5><6><7><8><9><10><11>"}) + "\n")
    out2 = tmp_path / "wavs2"
    argv = ["vocode", "--decoder", str(tiny_dir), "--units", str(answers), "--out-dir", str(out2)]
    assert main([*argv, "--stream", "--hop", "3"]) == 0
    assert sf.info(str(out2 / "0_pred.wav")).frames == 8 * SPU


def test_cli_official_stream_schedule() -> None:
    from omni2.cli.vocode import official_windows, parse_unit_line

    assert official_windows(110, 50) == [53, 50, 7]
    assert official_windows(75, 50) == [53, 22]
    assert official_windows(40, 50) == [40]
    assert official_windows(23, 10) == [13, 10, 0]
    assert parse_unit_line("<12><4487> ") == [12, 4487]
    assert parse_unit_line("1, 2 3") == [1, 2, 3]


def test_cli_bad_input_is_clean_error(tiny_dir: Path, tmp_path: Path, capsys) -> None:
    from omni2.cli import main

    units = tmp_path / "units.txt"
    units.write_text("<1><2><99999>\n")
    rc = main(["vocode", "--decoder", str(tiny_dir), "--units", str(units), "--out-dir", str(tmp_path / "o")])
    assert rc == 2 and "out of range" in capsys.readouterr().err
    units.write_text("<1><2>hello<3>\n")
    rc = main(["vocode", "--decoder", str(tiny_dir), "--units", str(units), "--out-dir", str(tmp_path / "o")])
    assert rc == 2 and "unexpected text" in capsys.readouterr().err
    units.write_text("<1><2><3>\n")
    rc = main(["vocode", "--decoder", str(tmp_path / "nope"), "--units", str(units), "--out-dir", str(tmp_path)])
    assert rc == 2 and "decoder folder not found" in capsys.readouterr().err


@pytest.mark.parametrize("window, n", [(10, 160), (53, 160)])
def test_incremental_flow_equals_full_recompute(decoder, window: int, n: int) -> None:
    """Issue 7 path: freezing finished chunks gives the official recompute's frames and audio."""
    u = _units(n, seed=7)
    outs = []
    for incremental in (False, True):
        s = decoder.stream(record=True, incremental=incremental)
        windows = [u[i : i + window] for i in range(0, n, window)]
        pieces = [s.push(w) for w in windows[:-1]]
        state = s.flow_state
        pieces.append(s.finalize(windows[-1]))
        assert s.flow_state is None  # a finished stream frees its frozen state
        outs.append((np.concatenate(pieces), torch.cat([c.mel for c in s.calls], dim=2), state))
    (wav_full, mel_full, _), (wav_inc, mel_inc, state) = outs
    assert state is not None and state.frozen >= 200  # really skipped chunks
    assert state.encoder.frozen * 2 == state.frozen  # the encoder skipped them too
    torch.testing.assert_close(mel_inc, mel_full, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(wav_inc, wav_full, atol=2e-3)


def test_incremental_stream_falls_back_to_full_recompute_past_its_memory_cap(tmp_path) -> None:
    from omni2.vocoder.tiny import write_tiny_decoder
    from omni2.vocoder.token2wav import load_decoder

    dec = load_decoder(write_tiny_decoder(tmp_path / "dec", vocab_size=64))
    dec.set_deterministic(True)
    units = [(7 * i) % 64 for i in range(120)]
    ref = dec.stream(incremental=False)
    ref_wav = np.concatenate([ref.push(units[i:i + 20]) for i in range(0, 120, 20)] + [ref.finalize()])
    dec.max_flow_cache_bytes = 1  # first frozen chunk already exceeds it
    s = dec.stream(incremental=True)
    pieces = []
    for i in range(0, 120, 20):
        pieces.append(s.push(units[i:i + 20]))
        if i == 80:
            assert s.flow_state is None  # switched to full recompute
    wav = np.concatenate([*pieces, s.finalize()])
    np.testing.assert_allclose(wav, ref_wav, atol=5e-3)


def test_flow_memory_budget_is_shared_by_live_streams(tmp_path) -> None:
    """The frozen-state budget bounds all live incremental streams together; finishing frees a share."""
    from omni2.vocoder.tiny import write_tiny_decoder
    from omni2.vocoder.token2wav import MIN_FLOW_CACHE_BYTES, flow_cache_budget, load_decoder

    assert flow_cache_budget(torch.device("cpu")) >= MIN_FLOW_CACHE_BYTES
    assert flow_cache_budget(torch.device("meta")) == MIN_FLOW_CACHE_BYTES
    dec = load_decoder(write_tiny_decoder(tmp_path / "dec", vocab_size=64))
    assert dec.max_flow_cache_bytes >= MIN_FLOW_CACHE_BYTES
    units = [(5 * i) % 64 for i in range(60)]
    solo = dec.stream(incremental=True)
    for i in range(0, 60, 20):
        solo.push(units[i : i + 20])
    one = solo.flow_state.nbytes()
    assert one > 0
    solo.finalize()
    assert solo.flow_state is None

    dec.max_flow_cache_bytes = int(1.5 * one)  # room for one stream's state, not two
    a, b = dec.stream(incremental=True), dec.stream(incremental=True)
    for i in range(0, 60, 20):
        a.push(units[i : i + 20])
        b.push(units[i : i + 20])
    assert a.flow_state is not None and b.flow_state is None  # b pushed the total past the budget
    a.finalize()
    c = dec.stream(incremental=True)  # a's share is free again
    for i in range(0, 60, 20):
        c.push(units[i : i + 20])
    assert c.flow_state is not None


def test_incremental_encoder_equals_full_encoder(decoder) -> None:
    """Flow encoder with kept keys/values: every call's new frames equal a full re-run's."""
    from omni2.vocoder.conformer import EncoderState

    flow = decoder.flow
    enc, chunk = flow.encoder, flow.cfg.encoder_chunk
    tokens = torch.tensor([_units(170, seed=3)])
    state = EncoderState()
    with torch.inference_mode():
        for n in (7, 30, 53, 60, 104, 120, 153, 170):
            emb = flow.input_embedding(tokens[:, :n])
            start = 2 * state.frozen
            part = enc.forward_incremental(emb, chunk, state)
            full = enc(emb, chunk)
            torch.testing.assert_close(part, full[:, start:], atol=1e-5, rtol=1e-5)
    assert state.frozen == 150
