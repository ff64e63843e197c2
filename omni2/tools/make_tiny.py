"""Write a complete tiny LLaMA-Omni2 checkpoint with RANDOM weights, in the official layout.

    python -m omni2.tools.make_tiny DIR [--seed 0] [--no-decoder]

Everything a real checkpoint folder has is there (config.json with the omni2 keys, bf16
model.safetensors with the official key names, slow + fast tokenizer files with a chat template,
generation_config.json, tts_tokenizer/, the openai-whisper file named by ``speech_encoder``), plus
a tiny CosyVoice2 decoder folder (``DIR/cosy2_decoder``) so the whole pipeline speaks (noise).
It exists so tests, demos and CI can run every code path in seconds without downloads. The
config carries ``omni2_random_weights: true``; whatever loads it says so.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from omni2.checkpoint import RANDOM_WEIGHTS_KEY, RANDOM_WEIGHTS_NOTICE

log = logging.getLogger(__name__)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
NUM_UNITS = 64
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set system = 'You are a helpful assistant.' %}"
    "{%- set loop_messages = messages %}{%- endif %}{{- '<|im_start|>system\\n' + system + '<|im_end|>\\n' }}"
    "{%- for message in loop_messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _byte_vocab() -> dict[str, int]:
    """GPT-2/Qwen byte-level alphabet: one token per byte (no merges), ids 0..255."""
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    return {ch: i for i, ch in enumerate(bytes_to_unicode().values())}


def _added(content: str, special: bool = True) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": special}


def write_tokenizer(out: Path, extra: list[tuple[str, bool]], first_added_id: int | None = None,
                    eos: str = "<|im_end|>") -> dict[str, int]:
    """Write slow (vocab.json/merges.txt) and fast (tokenizer.json) Qwen2 tokenizer files.

    ``extra`` = (content, special) tokens added after the specials. With ``first_added_id`` the
    vocabulary is padded with unreachable dummy tokens so the specials sit at the real Qwen2.5 ids
    (151643…), as benchmarks at real sizes need. ``eos``: the LLM's is ``<|im_end|>``, the TTS
    tokenizer's ``<|endoftext|>`` (as released). Returns content -> id.
    """
    from tokenizers import AddedToken as FastAdded
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    out.mkdir(parents=True, exist_ok=True)
    vocab = _byte_vocab()
    if first_added_id is not None:
        vocab.update({f"<|dummy_{i}|>": i for i in range(len(vocab), first_added_id)})
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n")
    ids: dict[str, int] = {}
    tokens = [(s, True) for s in SPECIALS] + extra
    for i, (content, _) in enumerate(tokens):
        ids[content] = len(vocab) + i
    fast = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False, byte_fallback=False))
    fast.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    fast.decoder = decoders.ByteLevel()
    fast.add_tokens([FastAdded(c, special=s, normalized=False) for c, s in tokens])
    fast.save(str(out / "tokenizer.json"))
    (out / "added_tokens.json").write_text(json.dumps(ids, indent=2))
    specials_in_map = [c for c, s in tokens if s]
    (out / "special_tokens_map.json").write_text(json.dumps({
        "additional_special_tokens": specials_in_map,
        "eos_token": {k: v for k, v in _added(eos).items() if k != "special"},
        "pad_token": {k: v for k, v in _added("<|endoftext|>").items() if k != "special"},
    }, indent=2))
    cfg = {
        "added_tokens_decoder": {str(ids[c]): _added(c, s) for c, s in tokens},
        "additional_special_tokens": specials_in_map,
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": eos,
        "errors": "replace",
        "model_max_length": 4096,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    return ids


def _qwen2(hidden: int, layers: int, heads: int, kv: int, ffn: int, vocab: int, bos: int, eos,
           tie: bool) -> dict:
    return {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": bos,
        "eos_token_id": eos, "hidden_act": "silu", "hidden_size": hidden, "initializer_range": 0.02,
        "intermediate_size": ffn, "max_position_embeddings": 32768, "max_window_layers": layers,
        "model_type": "qwen2", "num_attention_heads": heads, "num_hidden_layers": layers,
        "num_key_value_heads": kv, "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0, "sliding_window": None,
        "tie_word_embeddings": tie, "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False,
        "vocab_size": vocab,
    }


def make_tiny(out: str | Path, seed: int = 0, decoder: bool = True) -> Path:
    """Write the tiny checkpoint into ``out`` (created); returns the folder."""
    import whisper.model as wm
    from safetensors.torch import save_file
    from transformers.modeling_utils import no_init_weights  # noqa: F401  (import check only)

    from omni2.config import Omni2Config
    from omni2.model.omni2 import Omni2Model
    from omni2.model.speech_encoder import WhisperEncoderDims

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    llm_ids = write_tokenizer(out, [("<speech>", True)])
    tts_extra = [("<sep>", True)] + [(f"<{u}>", False) for u in range(NUM_UNITS)]
    tts_ids = write_tokenizer(out / "tts_tokenizer", tts_extra, eos="<|endoftext|>")

    eot, im_end = llm_ids["<|endoftext|>"], llm_ids["<|im_end|>"]
    llm_vocab = 320  # rows past the last token id are padding, as in the real embedding tables
    tts_vocab = max(tts_ids.values()) + 1
    enc = WhisperEncoderDims(n_mels=128, n_ctx=1500, n_state=64, n_head=2, n_layer=2)
    config = {
        **_qwen2(64, 2, 4, 2, 128, llm_vocab, eot, im_end, tie=True),
        "architectures": ["Omni2Speech2SQwen2ForCausalLM"],
        "model_type": "omni2_speech2s_qwen2",
        "speech_encoder": "speech_encoder/tiny.pt",
        "speech_encoder_ds_rate": 5,
        "speech_encoder_hidden_size": enc.n_state,
        "speech_encoder_type": "whisper",
        "speech_generator": _qwen2(48, 2, 4, 2, 96, tts_vocab, eot, eot, tie=True),
        "speech_projector_type": "linear",
        "stream_params": "(3,10)",
        "tokenizer_model_max_length": 4096,
        "tokenizer_padding_side": "right",
        "unit_vocab_size": NUM_UNITS,
        "transformers_version": "4.43.4",
        "_name_or_path": "tiny-llama-omni2",
        RANDOM_WEIGHTS_KEY: True,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": eot, "eos_token_id": [im_end, eot], "pad_token_id": eot, "do_sample": False}, indent=2))

    model = Omni2Model(Omni2Config.from_dict(config), enc, adapter_hidden=128)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    state: dict[str, torch.Tensor] = {}
    for k, v in model.speech_encoder.state_dict().items():
        state[f"model.speech_encoder.{k}"] = v
    for k, v in model.adapter.state_dict().items():
        state[f"model.speech_projector.{k}"] = v
    for k, v in model.llm.state_dict().items():
        if k != "lm_head.weight":  # tied, absent from the file as in the 0.5B–3B releases
            state[k] = v
    gen = model.speech_generator
    for k, v in gen.model.state_dict().items():
        state[f"speech_generator.model.{k}"] = v  # the TTS head is stored explicitly, as released
    for name in ("input_proj", "gate"):
        for k, v in getattr(gen, name).state_dict().items():
            state[f"speech_generator.{name}.{k}"] = v
    save_file({k: v.detach().to(torch.bfloat16).contiguous() for k, v in state.items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})

    # openai-whisper file for `speech_encoder` (its encoder = the checkpoint's, as in real releases).
    dims = wm.ModelDimensions(n_mels=enc.n_mels, n_audio_ctx=enc.n_ctx, n_audio_state=enc.n_state,
                              n_audio_head=enc.n_head, n_audio_layer=enc.n_layer, n_vocab=51866,
                              n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=1)
    whisper = wm.Whisper(dims)
    whisper.encoder.load_state_dict(model.speech_encoder.state_dict(), strict=False)
    (out / "speech_encoder").mkdir(exist_ok=True)
    torch.save({"dims": dims.__dict__, "model_state_dict": whisper.half().state_dict()},
               out / "speech_encoder" / "tiny.pt")

    if decoder:
        write_decoder = _tiny_decoder_writer()
        if write_decoder is not None:
            write_decoder(out / "cosy2_decoder", seed=seed, vocab_size=NUM_UNITS)
    (out / "README.md").write_text(f"# tiny LLaMA-Omni2 checkpoint\n\n{RANDOM_WEIGHTS_NOTICE}\n"
                                   "Made by `python -m omni2.tools.make_tiny`.\n")
    return out


def _tiny_decoder_writer():
    try:
        from omni2.vocoder.tiny import write_tiny_decoder
    except ImportError:
        log.warning("omni2.vocoder is not available: no tiny decoder written")
        return None
    return write_tiny_decoder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omni2.tools.make_tiny", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to write (created)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-decoder", action="store_true", help="skip the tiny CosyVoice2 decoder folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = make_tiny(args.out, seed=args.seed, decoder=not args.no_decoder)
    print(f"wrote a tiny checkpoint to {out}\n{RANDOM_WEIGHTS_NOTICE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
