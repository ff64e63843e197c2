"""The checkpoint loader: official layout, sharding, tying, and a specific error for every broken piece."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from omni2.checkpoint import RANDOM_WEIGHTS_NOTICE, find_checkpoint, load_omni2, route_tensors
from omni2.errors import CheckpointError, ConfigError


@pytest.fixture
def ckpt(tiny_dir, tmp_path) -> Path:
    """A private copy of the tiny checkpoint that a test may break."""
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, dst, ignore=shutil.ignore_patterns("cosy2_decoder"))
    return dst


def edit_weights(ckpt: Path, fn) -> None:
    path = ckpt / "model.safetensors"
    state = load_file(str(path))
    fn(state)
    save_file(state, str(path))


def test_tiny_loads_and_says_random(tiny, caplog) -> None:
    assert tiny.random_weights
    assert tiny.can_speak
    assert tiny.dtype == torch.float32 and tiny.device.type == "cpu"
    # special ids come from the tokenizers, not constants
    assert tiny.speech_token_id == tiny.tokenizer.convert_tokens_to_ids("<speech>")
    assert tiny.tts_vocab.sep_id != tiny.tts_vocab.eos_id
    assert tiny.tts_vocab.num_units == 64
    # tied LLM head shares the embedding; the stored TTS head was loaded as stored
    assert tiny.model.llm.lm_head.weight.data_ptr() == tiny.model.llm.model.embed_tokens.weight.data_ptr()
    assert RANDOM_WEIGHTS_NOTICE


def test_bf16_file_is_upcast_exactly(tiny, tiny_dir) -> None:
    stored = load_file(str(tiny_dir / "model.safetensors"))
    key = "model.layers.0.mlp.up_proj.weight"
    assert stored[key].dtype == torch.bfloat16
    assert torch.equal(tiny.model.llm.model.layers[0].mlp.up_proj.weight, stored[key].float())
    pe = stored["model.speech_encoder.positional_embedding"].float()
    assert torch.equal(tiny.model.speech_encoder.positional_embedding, pe)  # loaded, not recomputed


def test_bfloat16_and_text_only(ckpt) -> None:
    m = load_omni2(ckpt, dtype="bfloat16", device="cpu", load_tts=False)
    assert m.model.llm.lm_head.weight.dtype == torch.bfloat16
    assert m.model.speech_generator is None and not m.can_speak


def test_sharded_checkpoint(ckpt, tiny) -> None:
    state = load_file(str(ckpt / "model.safetensors"))
    keys = sorted(state)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    for name, ks in shards.items():
        save_file({k: state[k] for k in ks}, str(ckpt / name))
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}))
    (ckpt / "model.safetensors").unlink()
    m = load_omni2(ckpt, device="cpu", dtype="float32")
    assert torch.equal(m.model.adapter.linear1.weight, tiny.model.adapter.linear1.weight)
    (ckpt / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing shard.*00002"):
        load_omni2(ckpt, device="cpu")


def test_missing_weights_and_corrupt_file(ckpt) -> None:
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_omni2(ckpt, device="cpu")
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        load_omni2(ckpt, device="cpu")


def test_missing_key_is_listed(ckpt) -> None:
    edit_weights(ckpt, lambda s: s.pop("model.layers.1.mlp.down_proj.weight"))
    with pytest.raises(CheckpointError, match=r"LLM .*missing 1 tensor\(s\): model\.layers\.1\.mlp\.down_proj"):
        load_omni2(ckpt, device="cpu")


def test_unexpected_keys_are_listed(ckpt) -> None:
    edit_weights(ckpt, lambda s: s.update({"model.layers.9.foo": torch.zeros(2), "vision_tower.x": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match="vision_tower.x"):
        load_omni2(ckpt, device="cpu")
    edit_weights(ckpt, lambda s: s.pop("vision_tower.x"))
    with pytest.raises(CheckpointError, match=r"unexpected 1 tensor\(s\): model\.layers\.9\.foo"):
        load_omni2(ckpt, device="cpu")


def test_config_that_does_not_match_tensors(ckpt) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["intermediate_size"] = 256
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="config.json does not match the weights.*mlp"):
        load_omni2(ckpt, device="cpu")


def test_untied_head_must_be_present(ckpt) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="missing 1 tensor.*lm_head.weight"):
        load_omni2(ckpt, device="cpu")


def test_tts_head_tied_when_absent(ckpt) -> None:
    edit_weights(ckpt, lambda s: s.pop("speech_generator.model.lm_head.weight"))
    m = load_omni2(ckpt, device="cpu", dtype="float32")
    tts = m.model.speech_generator.model
    assert tts.lm_head.weight.data_ptr() == tts.model.embed_tokens.weight.data_ptr()


def test_missing_tts_pieces(ckpt) -> None:
    shutil.rmtree(ckpt / "tts_tokenizer")
    with pytest.raises(CheckpointError, match="missing TTS tokenizer folder"):
        load_omni2(ckpt, device="cpu")
    assert load_omni2(ckpt, device="cpu", load_tts=False).model.speech_generator is None


def test_missing_whisper_file(ckpt, tmp_path) -> None:
    (ckpt / "speech_encoder" / "tiny.pt").unlink()
    with pytest.raises(CheckpointError, match="Whisper file 'speech_encoder/tiny.pt'.*not found"):
        load_omni2(ckpt, device="cpu", checkpoints_root=tmp_path / "empty")


def test_whisper_file_found_under_checkpoints(ckpt, tiny_dir, tmp_path) -> None:
    root = tmp_path / "checkpoints"
    (root / "speech_encoder").mkdir(parents=True)
    shutil.move(ckpt / "speech_encoder" / "tiny.pt", root / "speech_encoder" / "tiny.pt")
    assert load_omni2(ckpt, device="cpu", checkpoints_root=root).model.encoder_dims.n_head == 2


def test_missing_folder_says_how_to_download(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="python launch.py download --model ICTNLP/LLaMA-Omni2-7B"):
        find_checkpoint("LLaMA-Omni2-7B", root=tmp_path)


def test_wrong_dtype_word(ckpt) -> None:
    with pytest.raises(ConfigError, match="unknown dtype"):
        load_omni2(ckpt, dtype="float8", device="cpu")


def test_routing_matches_official_prefixes() -> None:
    t = torch.zeros(1)
    groups, unknown = route_tensors({
        "model.embed_tokens.weight": t, "lm_head.weight": t, "model.speech_encoder.conv1.weight": t,
        "model.speech_projector.linear1.weight": t, "speech_generator.model.model.norm.weight": t,
        "speech_generator.model.lm_head.weight": t, "speech_generator.input_proj.0.weight": t,
        "speech_generator.gate.0.bias": t, "something.else": t,
    })
    assert set(groups["llm"]) == {"model.embed_tokens.weight", "lm_head.weight"}
    assert set(groups["speech_encoder"]) == {"conv1.weight"}
    assert set(groups["adapter"]) == {"linear1.weight"}
    assert set(groups["tts_lm"]) == {"model.norm.weight", "lm_head.weight"}
    assert set(groups["fusion"]) == {"input_proj.0.weight", "gate.0.bias"}
    assert unknown == ["something.else"]
