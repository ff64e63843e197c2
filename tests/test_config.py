"""config.json parsing: every omni2 key, safe stream_params, unknown keys kept, round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omni2.config import Omni2Config, parse_stream_params
from omni2.errors import ConfigError

GOLDEN_CONFIG = Path(__file__).parent / "data" / "golden_shared" / "omni2-tokenizer" / "config.json"


def golden() -> dict:
    return json.loads(GOLDEN_CONFIG.read_text())


def test_reads_every_omni2_key() -> None:
    cfg = Omni2Config.from_dict(golden())
    assert cfg.speech_encoder == "speech_encoder/tiny.pt"
    assert (cfg.speech_encoder_type, cfg.speech_encoder_ds_rate, cfg.speech_encoder_hidden_size) == ("whisper", 5, 64)
    assert cfg.speech_projector_type == "linear"
    assert cfg.stream_params == (3, 10)
    assert cfg.unit_vocab_size == 64
    assert cfg.tokenizer_model_max_length == 4096
    assert cfg.llm.hidden_size == 64 and cfg.llm.vocab_size == 512 and cfg.llm.tie_word_embeddings
    assert cfg.speech_generator.hidden_size == 48 and cfg.speech_generator.vocab_size == 568


def test_round_trip_keeps_unknown_keys() -> None:
    d = golden()
    d["some_future_key"] = {"nested": [1, 2]}
    d["speech_generator"]["rope_scaling"] = None
    back = Omni2Config.from_dict(d).to_dict()
    assert back == d
    assert Omni2Config.from_dict(json.loads(Omni2Config.from_dict(d).to_json())).to_dict() == d


@pytest.mark.parametrize("text,expected", [("(3,10)", (3, 10)), (" ( 1 , 5 ) ", (1, 5)), ("2,8", (2, 8)),
                                           ([4, 15], (4, 15))])
def test_stream_params_parsed(text, expected) -> None:
    assert parse_stream_params(text) == expected


@pytest.mark.parametrize("bad", ["__import__('os').system('true')", "(3,)", "(0,10)", "(3,10,2)", "three", None,
                                 "(-1,5)"])
def test_stream_params_rejected_without_eval(bad) -> None:
    with pytest.raises(ConfigError, match="stream_params"):
        parse_stream_params(bad)


def test_missing_and_wrong_keys_are_specific() -> None:
    d = golden()
    del d["speech_encoder"]
    with pytest.raises(ConfigError, match="speech_encoder"):
        Omni2Config.from_dict(d)
    d = golden()
    del d["hidden_size"]
    with pytest.raises(ConfigError, match="hidden_size"):
        Omni2Config.from_dict(d)
    d = golden()
    d["num_attention_heads"] = 5
    with pytest.raises(ConfigError, match="divisible"):
        Omni2Config.from_dict(d)
    d = golden()
    d["speech_projector_type"] = "qformer"
    with pytest.raises(ConfigError, match="qformer"):
        Omni2Config.from_dict(d)
    d = golden()
    d["unit_vocab_size"] = 10_000
    with pytest.raises(ConfigError, match="unit_vocab_size"):
        Omni2Config.from_dict(d)


def test_bad_json_file(tmp_path) -> None:
    p = tmp_path / "config.json"
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Omni2Config.from_file(p)
    with pytest.raises(ConfigError, match="missing config"):
        Omni2Config.from_file(tmp_path / "nope.json")
