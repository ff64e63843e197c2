"""Find, check and load official LLaMA-Omni2 checkpoint folders.

One loader serves every user: the real released checkpoints, the tiny random ones made by
``omni2.tools.make_tiny`` and the golden reference cases all go through :func:`load_omni2`.

The official file is one flat safetensors namespace (spec §2.4); tensors are routed by prefix:

    model.speech_encoder.*      -> openai-whisper AudioEncoder
    model.speech_projector.*    -> adapter
    speech_generator.model.*    -> TTS LM (Qwen2ForCausalLM)
    speech_generator.input_proj.* / .gate.*  -> gate fusion
    model.* and lm_head.weight  -> LLM (Qwen2ForCausalLM)

Checkpoints are stored in bf16 and upcast to the requested dtype. Heads are tied only when the
file lacks them (real files store the TTS head explicitly).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from omni2.config import Omni2Config
from omni2.errors import CheckpointError, ConfigError
from omni2.model.speech_encoder import LARGE_V3, WhisperEncoderDims

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINTS = Path(os.environ.get("OMNI2_CHECKPOINTS", REPO_ROOT / "checkpoints"))
DEFAULT_MODEL = "LLaMA-Omni2-0.5B"
RANDOM_WEIGHTS_KEY = "omni2_random_weights"
RANDOM_WEIGHTS_NOTICE = "NOTE: this checkpoint has RANDOM weights (made for tests); its replies are noise."

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOKENIZER_FILES = ("tokenizer_config.json",)


# --------------------------------------------------------------------------------------------
# locating things


def find_checkpoint(name_or_path: str | Path | None = None, root: Path | None = None) -> Path:
    """A model folder: an existing path, or a name/repo id under checkpoints/."""
    root = Path(root or DEFAULT_CHECKPOINTS)
    name = str(name_or_path or DEFAULT_MODEL)
    candidates = list(dict.fromkeys([Path(name).expanduser(), root / name, root / name.split("/")[-1]]))
    for c in candidates:
        if c.is_dir():
            return c
    raise CheckpointError(
        f"model folder not found: {name!r} (looked at {', '.join(str(c) for c in candidates)}).\n"
        f"Download it with:  python launch.py download --model ICTNLP/{name.split('/')[-1]}"
    )


def find_decoder(model_dir: Path | None = None, decoder: str | Path | None = None,
                 root: Path | None = None) -> Path | None:
    """The CosyVoice2 decoder folder: ``decoder`` if given (must exist), else ``<model>/cosy2_decoder``
    (tiny checkpoints), else ``checkpoints/cosy2_decoder``. None when there is none."""
    if decoder is not None:
        path = Path(decoder).expanduser()
        if not (path / "cosyvoice.yaml").is_file():
            raise CheckpointError(f"decoder folder {path} has no cosyvoice.yaml "
                                  "(download it with: python launch.py download --only decoder)")
        return path
    root = Path(root or DEFAULT_CHECKPOINTS)
    for c in ([model_dir / "cosy2_decoder"] if model_dir else []) + [root / "cosy2_decoder"]:
        if (c / "cosyvoice.yaml").is_file():
            return c
    return None


def resolve_speech_encoder_file(config: Omni2Config, ckpt_dir: Path, root: Path | None = None) -> Path | None:
    """The Whisper file named by ``speech_encoder``: as written, then relative to the checkpoint,
    then under checkpoints/speech_encoder/ by file name. None when none exists."""
    written = Path(config.speech_encoder).expanduser()
    root = Path(root or DEFAULT_CHECKPOINTS)
    for c in (written, ckpt_dir / written, root / "speech_encoder" / written.name):
        if c.is_file():
            return c
    return None


def read_whisper_dims(path: Path) -> WhisperEncoderDims:
    """Encoder dims from an openai-whisper checkpoint (memory-mapped: large-v3.pt is 3 GB)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        raise CheckpointError(f"cannot read the Whisper file {path}: {exc}") from exc
    if not isinstance(data, dict) or "dims" not in data:
        raise CheckpointError(f"{path} is not an openai-whisper checkpoint (no 'dims')")
    return WhisperEncoderDims.from_whisper_dims(data["dims"])


# --------------------------------------------------------------------------------------------
# tensors


def list_weight_files(ckpt_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint (single file, or shards named by the index)."""
    single = ckpt_dir / "model.safetensors"
    index = ckpt_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"{index} is not a valid safetensors index: {exc}") from exc
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (ckpt_dir / s).is_file()]
        if missing:
            raise CheckpointError(
                f"checkpoint {ckpt_dir} is incomplete: missing shard file(s) {missing} named in {index.name}"
            )
        return [ckpt_dir / s for s in shards]
    if single.is_file():
        return [single]
    raise CheckpointError(
        f"no weights in {ckpt_dir}: expected model.safetensors or model.safetensors.index.json + shards"
    )


def read_tensors(files: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            out.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read weights file {f} (corrupt or truncated?): {exc}") from exc
    return out


GROUPS = ("speech_encoder", "adapter", "llm", "tts_lm", "fusion")


def route_tensors(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """Split the official flat namespace into module state dicts; also return unroutable keys."""
    groups: dict[str, dict[str, torch.Tensor]] = {g: {} for g in GROUPS}
    unknown: list[str] = []
    for key, t in tensors.items():
        if key.startswith("model.speech_encoder."):
            groups["speech_encoder"][key[len("model.speech_encoder."):]] = t
        elif key.startswith("model.speech_projector."):
            groups["adapter"][key[len("model.speech_projector."):]] = t
        elif key.startswith("speech_generator.model."):
            groups["tts_lm"][key[len("speech_generator.model."):]] = t
        elif key.startswith(("speech_generator.input_proj.", "speech_generator.gate.")):
            groups["fusion"][key[len("speech_generator."):]] = t
        elif key.startswith("model.") or key == "lm_head.weight":
            groups["llm"][key] = t
        else:
            unknown.append(key)
    return groups, unknown


# --------------------------------------------------------------------------------------------
# tokenizers and vocabularies


@dataclass(frozen=True)
class TTSVocab:
    """Special ids of the TTS LM, read from tts_tokenizer/ (never hard-coded)."""

    sep_id: int
    eos_id: int
    unit_offset: int
    num_units: int

    def is_unit(self, token_id: int) -> bool:
        return self.unit_offset <= token_id < self.unit_offset + self.num_units


def _added_tokens(tok_dir: Path) -> dict[str, int]:
    """content -> id of a tokenizer folder's added tokens (tokenizer_config.json or added_tokens.json)."""
    out: dict[str, int] = {}
    cfg = tok_dir / "tokenizer_config.json"
    if cfg.is_file():
        for i, info in json.loads(cfg.read_text()).get("added_tokens_decoder", {}).items():
            out[info["content"]] = int(i)
    added = tok_dir / "added_tokens.json"
    if added.is_file():
        out.update({k: int(v) for k, v in json.loads(added.read_text()).items()})
    return out


def _token_content(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def read_tts_vocab(tok_dir: Path, num_units: int) -> TTSVocab:
    """``<sep>``, EOS and the id of ``<0>`` from a tts_tokenizer/ folder; units must be consecutive."""
    if not tok_dir.is_dir():
        raise CheckpointError(f"missing TTS tokenizer folder: {tok_dir}")
    added = _added_tokens(tok_dir)
    vocab_file = tok_dir / "vocab.json"
    vocab = json.loads(vocab_file.read_text()) if vocab_file.is_file() else {}
    lookup = {**vocab, **added}
    if "<sep>" not in lookup:
        raise CheckpointError(f"{tok_dir}: no '<sep>' token in the TTS tokenizer")
    eos_name = None
    for fname in ("special_tokens_map.json", "tokenizer_config.json"):
        f = tok_dir / fname
        if f.is_file():
            eos_name = _token_content(json.loads(f.read_text()).get("eos_token"))
            if eos_name:
                break
    if not eos_name or eos_name not in lookup:
        raise CheckpointError(f"{tok_dir}: cannot find the TTS eos token ({eos_name!r})")
    if "<0>" not in lookup:
        raise CheckpointError(f"{tok_dir}: no unit tokens ('<0>' missing)")
    offset = lookup["<0>"]
    last = f"<{num_units - 1}>"
    if lookup.get(last) != offset + num_units - 1:
        raise CheckpointError(
            f"{tok_dir}: unit tokens are not consecutive: '<0>'={offset} but {last!r}={lookup.get(last)} "
            f"(unit_vocab_size {num_units})"
        )
    return TTSVocab(sep_id=lookup["<sep>"], eos_id=lookup[eos_name], unit_offset=offset, num_units=num_units)


def load_tokenizer(ckpt_dir: Path, use_fast: bool = False):
    """The LLM tokenizer with the checkpoint's own chat template (slow by default, as official)."""
    from transformers import AutoTokenizer

    missing = [f for f in TOKENIZER_FILES if not (ckpt_dir / f).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {ckpt_dir} lacks tokenizer file(s): {missing}")
    try:
        tok = AutoTokenizer.from_pretrained(str(ckpt_dir), use_fast=use_fast)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load the tokenizer from {ckpt_dir}: {exc}") from exc
    if not getattr(tok, "chat_template", None):
        raise CheckpointError(f"the tokenizer in {ckpt_dir} has no chat_template")
    return tok


@dataclass
class GenerationDefaults:
    """What the checkpoint's generation_config.json asks of greedy/sampled decoding."""

    eos_ids: list[int]
    pad_id: int | None = None
    repetition_penalty: float = 1.0
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, ckpt_dir: Path, config: Omni2Config, tokenizer) -> GenerationDefaults:
        f = ckpt_dir / "generation_config.json"
        raw = json.loads(f.read_text()) if f.is_file() else {}
        eos = raw.get("eos_token_id", config.llm.eos_token_id)
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != tokenizer.unk_token_id and im_end not in eos_ids:
            eos_ids.append(im_end)  # the official server stops on <|im_end|> text as well
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
            eos_ids.append(tokenizer.eos_token_id)
        if not eos_ids:
            raise ConfigError(f"{ckpt_dir}: no eos_token_id in generation_config.json or config.json")
        return cls(eos_ids=eos_ids, pad_id=raw.get("pad_token_id"),
                   repetition_penalty=float(raw.get("repetition_penalty", 1.0)), raw=raw)


# --------------------------------------------------------------------------------------------
# loading


@dataclass
class LoadedOmni2:
    """A ready model plus everything needed to prompt it."""

    model: Any  # omni2.model.omni2.Omni2Model
    config: Omni2Config
    tokenizer: Any
    tts_vocab: TTSVocab | None
    generation: GenerationDefaults
    speech_token_id: int
    path: Path
    device: torch.device
    dtype: torch.dtype
    random_weights: bool = False
    load_seconds: float = 0.0

    @property
    def can_speak(self) -> bool:
        return self.model.speech_generator is not None and self.tts_vocab is not None


def pick_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 is ~4x faster than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def pick_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 (the released weights' dtype) on GPUs and on CPUs with native bf16, else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)} or 'auto'")
    return DTYPES[dtype]


def _load_group(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str,
                tied: tuple[str, ...] = ()) -> None:
    """Strictly load ``state`` into ``module``; list every missing/unexpected/misshapen key."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and k not in tied]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs config {tuple(expected[k].shape)}"
              for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {_short(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es) — config.json does not match the weights: "
                        f"{_short(shapes)}")
    if problems:
        raise CheckpointError(f"{what}: " + "; ".join(problems))
    with torch.no_grad():
        module.load_state_dict(state, strict=False)


def _short(items: list[str], n: int = 8) -> str:
    head = ", ".join(items[:n])
    return head + (f", … (+{len(items) - n} more)" if len(items) > n else "")


def load_omni2(
    path: str | Path | None = None,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "auto",
    load_tts: bool = True,
    use_fast_tokenizer: bool = False,
    checkpoints_root: Path | None = None,
) -> LoadedOmni2:
    """Load an official-layout LLaMA-Omni2 folder (or a name under checkpoints/) for inference."""
    from transformers.modeling_utils import no_init_weights

    from omni2.model.omni2 import Omni2Model

    t0 = time.perf_counter()
    ckpt = find_checkpoint(path, checkpoints_root)
    config = Omni2Config.from_file(ckpt / "config.json")
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    files = list_weight_files(ckpt)
    tokenizer = load_tokenizer(ckpt, use_fast=use_fast_tokenizer)
    speech_id = tokenizer.convert_tokens_to_ids("<speech>")
    if not isinstance(speech_id, int) or speech_id == tokenizer.unk_token_id or speech_id is None:
        raise CheckpointError(f"the tokenizer in {ckpt} has no '<speech>' token")

    groups, unknown = route_tensors(read_tensors(files))
    if unknown:
        raise CheckpointError(f"{ckpt}: unexpected tensor(s) with unknown prefix: {_short(sorted(unknown))}")
    if not groups["speech_encoder"]:
        raise CheckpointError(f"{ckpt}: no model.speech_encoder.* tensors in the weights")
    if not groups["adapter"]:
        raise CheckpointError(f"{ckpt}: no model.speech_projector.* tensors in the weights")

    whisper_file = resolve_speech_encoder_file(config, ckpt, checkpoints_root)
    if whisper_file is not None:
        enc_dims = read_whisper_dims(whisper_file)
    elif groups["speech_encoder"]["conv1.weight"].shape[0] == LARGE_V3.n_state:
        # The checkpoint carries every encoder tensor; only the head count is not in it, and
        # large-v3's is known. So a missing large-v3.pt is not fatal.
        log.info("Whisper file %r not found; using Whisper-large-v3 dims (weights come from the checkpoint)",
                 config.speech_encoder)
        enc_dims = LARGE_V3
    else:
        raise CheckpointError(
            f"Whisper file {config.speech_encoder!r} (config.json speech_encoder) not found: looked as written, "
            f"under {ckpt}, and under {Path(checkpoints_root or DEFAULT_CHECKPOINTS) / 'speech_encoder'}"
        )
    adapter_hidden = groups["adapter"]["linear1.weight"].shape[0] if "linear1.weight" in groups["adapter"] else 2048

    tts_vocab = None
    want_tts = load_tts and config.speech_generator is not None
    if want_tts:
        tts_vocab = read_tts_vocab(ckpt / "tts_tokenizer", config.unit_vocab_size)
    elif config.speech_generator is not None:
        config.speech_generator = None  # text-only load: skip building the TTS branch

    old_dtype = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dt)
        with no_init_weights(), torch.device(dev):
            model = Omni2Model(config, enc_dims, adapter_hidden)
    finally:
        torch.set_default_dtype(old_dtype)

    llm_tied = ("lm_head.weight",) if config.llm.tie_word_embeddings else ()
    _load_group(model.speech_encoder, groups["speech_encoder"], "speech encoder (model.speech_encoder.*)")
    _load_group(model.adapter, groups["adapter"], "adapter (model.speech_projector.*)")
    _load_group(model.llm, groups["llm"], "LLM (model.*, lm_head)", tied=llm_tied)
    if "lm_head.weight" not in groups["llm"]:
        model.llm.lm_head.weight = model.llm.model.embed_tokens.weight
    if want_tts:
        gen = model.speech_generator
        if not groups["tts_lm"]:
            raise CheckpointError(f"{ckpt}: config.json has speech_generator but the weights have no "
                                  "speech_generator.* tensors (load with load_tts=False for text only)")
        tts_tied = ("lm_head.weight",) if config.speech_generator.tie_word_embeddings else ()
        _load_group(gen.model, groups["tts_lm"], "TTS LM (speech_generator.model.*)", tied=tts_tied)
        if "lm_head.weight" not in groups["tts_lm"]:
            gen.model.lm_head.weight = gen.model.model.embed_tokens.weight
        _load_group(torch.nn.ModuleDict({"input_proj": gen.input_proj, "gate": gen.gate}), groups["fusion"],
                    "gate fusion (speech_generator.input_proj/gate)")
    model.eval().requires_grad_(False)

    random_weights = bool(config.llm.extra.get(RANDOM_WEIGHTS_KEY))
    if random_weights:
        log.warning(RANDOM_WEIGHTS_NOTICE)
    loaded = LoadedOmni2(
        model=model, config=config, tokenizer=tokenizer, tts_vocab=tts_vocab,
        generation=GenerationDefaults.read(ckpt, config, tokenizer), speech_token_id=speech_id,
        path=ckpt, device=dev, dtype=dt, random_weights=random_weights,
    )
    loaded.load_seconds = time.perf_counter() - t0
    log.info("loaded %s (%s, %s) in %.1f s", ckpt, dev, str(dt).replace("torch.", ""), loaded.load_seconds)
    return loaded
