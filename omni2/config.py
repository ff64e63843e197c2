"""Model configuration read from an official LLaMA-Omni2 ``config.json``.

The file is the single source of truth: every field the official loader reads becomes a typed
attribute, every other key is kept verbatim in ``extra`` so that ``to_dict()`` round-trips the
file. ``stream_params`` is the string ``"(R,W)"`` in the official file (the official code
``eval``s it); here it is parsed with a strict pattern.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omni2.errors import ConfigError

_STREAM_RE = re.compile(r"^\s*\(?\s*(\d+)\s*,\s*(\d+)\s*\)?\s*$")


def parse_stream_params(value: Any) -> tuple[int, int]:
    """Parse ``"(3,10)"`` / ``[3, 10]`` into (R, W) without evaluating anything."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        r, w = value
    elif isinstance(value, str) and (m := _STREAM_RE.match(value)):
        r, w = m.group(1), m.group(2)
    else:
        raise ConfigError(f"stream_params must look like \"(R,W)\" with two positive integers, got {value!r}")
    try:
        r, w = int(r), int(w)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"stream_params must hold integers, got {value!r}") from exc
    if r < 1 or w < 1:
        raise ConfigError(f"stream_params (R,W) must both be >= 1, got ({r},{w})")
    return r, w


@dataclass
class Qwen2Dims:
    """The Qwen2 fields both the LLM and the TTS LM are built from."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    hidden_act: str = "silu"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> Qwen2Dims:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in d]
        if missing:
            raise ConfigError(f"{where}: missing required key(s) {missing}")
        kwargs = {k: d[k] for k in names if k in d}
        for k in required:
            if not isinstance(kwargs[k], int) or isinstance(kwargs[k], bool) or kwargs[k] <= 0:
                raise ConfigError(f"{where}: {k} must be a positive integer, got {kwargs[k]!r}")
        if kwargs["hidden_size"] % kwargs["num_attention_heads"]:
            raise ConfigError(f"{where}: hidden_size {kwargs['hidden_size']} is not divisible by "
                              f"num_attention_heads {kwargs['num_attention_heads']}")
        if kwargs["num_attention_heads"] % kwargs["num_key_value_heads"]:
            raise ConfigError(f"{where}: num_attention_heads is not a multiple of num_key_value_heads")
        extra = {k: v for k, v in d.items() if k not in names}
        return cls(**kwargs, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **d}

    def to_hf(self) -> Any:
        """A transformers ``Qwen2Config`` (eager-free: attention implementation chosen by caller)."""
        from transformers import Qwen2Config

        d = self.to_dict()
        for k in ("architectures", "model_type", "transformers_version", "_name_or_path", "torch_dtype"):
            d.pop(k, None)
        return Qwen2Config(**d)


@dataclass
class Omni2Config:
    """Everything the official ``Omni2Speech2SQwen2ForCausalLM`` reads from config.json.

    Unknown top-level keys are kept in ``llm.extra`` (they sit beside the Qwen2 fields in the file).
    """

    llm: Qwen2Dims
    speech_encoder: str
    speech_encoder_type: str = "whisper"
    speech_encoder_ds_rate: int = 5
    speech_encoder_hidden_size: int = 1280
    speech_projector_type: str = "linear"
    speech_generator: Qwen2Dims | None = None
    unit_vocab_size: int = 6561
    stream_params: tuple[int, int] = (3, 10)
    tokenizer_model_max_length: int | None = 4096
    tokenizer_padding_side: str = "right"
    model_type: str = "omni2_speech2s_qwen2"

    # Keys this class owns at the top level (everything else at top level belongs to the LLM).
    _OWN = (
        "speech_encoder", "speech_encoder_type", "speech_encoder_ds_rate", "speech_encoder_hidden_size",
        "speech_projector_type", "speech_generator", "unit_vocab_size", "stream_params",
        "tokenizer_model_max_length", "tokenizer_padding_side", "model_type",
    )

    @property
    def has_speech_generator(self) -> bool:
        return self.speech_generator is not None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Omni2Config:
        if not isinstance(d, dict):
            raise ConfigError("config.json must hold a JSON object")
        if "speech_encoder" not in d:
            raise ConfigError("config.json has no 'speech_encoder' key: this is not a LLaMA-Omni2 checkpoint "
                              f"(model_type={d.get('model_type')!r})")
        enc_type = d.get("speech_encoder_type", "whisper")
        if enc_type != "whisper":
            raise ConfigError(f"speech_encoder_type {enc_type!r} is not supported (only 'whisper')")
        proj_type = d.get("speech_projector_type", "linear")
        if proj_type != "linear":
            raise ConfigError(f"speech_projector_type {proj_type!r} is not supported (only 'linear')")
        llm_keys = {k: v for k, v in d.items() if k not in cls._OWN}
        llm = Qwen2Dims.from_dict(llm_keys, "config.json")
        gen = d.get("speech_generator")
        if gen is not None and not isinstance(gen, dict):
            raise ConfigError("config.json: speech_generator must be a JSON object (a Qwen2 config)")
        generator = Qwen2Dims.from_dict(gen, "config.json speech_generator") if gen else None
        ds = d.get("speech_encoder_ds_rate", 5)
        if not isinstance(ds, int) or ds < 1:
            raise ConfigError(f"speech_encoder_ds_rate must be a positive integer, got {ds!r}")
        unit_vocab = d.get("unit_vocab_size", 6561)
        if generator is not None and unit_vocab >= generator.vocab_size:
            raise ConfigError(f"unit_vocab_size {unit_vocab} does not fit the TTS vocabulary "
                              f"({generator.vocab_size})")
        return cls(
            llm=llm,
            speech_encoder=str(d["speech_encoder"]),
            speech_encoder_type=enc_type,
            speech_encoder_ds_rate=ds,
            speech_encoder_hidden_size=int(d.get("speech_encoder_hidden_size", 1280)),
            speech_projector_type=proj_type,
            speech_generator=generator,
            unit_vocab_size=int(unit_vocab),
            stream_params=parse_stream_params(d.get("stream_params", "(3,10)")),
            tokenizer_model_max_length=d.get("tokenizer_model_max_length", 4096),
            tokenizer_padding_side=d.get("tokenizer_padding_side", "right"),
            model_type=d.get("model_type", "omni2_speech2s_qwen2"),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> Omni2Config:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"missing config file: {path}") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """The official config.json layout (stream_params written back as "(R,W)")."""
        d = self.llm.to_dict()
        d.update(
            speech_encoder=self.speech_encoder,
            speech_encoder_type=self.speech_encoder_type,
            speech_encoder_ds_rate=self.speech_encoder_ds_rate,
            speech_encoder_hidden_size=self.speech_encoder_hidden_size,
            speech_projector_type=self.speech_projector_type,
            unit_vocab_size=self.unit_vocab_size,
            stream_params=f"({self.stream_params[0]},{self.stream_params[1]})",
            tokenizer_model_max_length=self.tokenizer_model_max_length,
            tokenizer_padding_side=self.tokenizer_padding_side,
            model_type=self.model_type,
        )
        if self.speech_generator is not None:
            d["speech_generator"] = self.speech_generator.to_dict()
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
