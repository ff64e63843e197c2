"""Benchmark: real-shape random-weight models, stage table, ours vs the official compute pattern.

    python -m omni2.bench --size 0.5B --baseline official
    python -m omni2.bench --size tiny --turns 3 --units 300 --json out.json

Compute depends on shapes and lengths, not weight values, so random weights at the released
sizes time the real thing. Weights are engineered (as in shared/spec/official-speed.md §3) so the
LLM never stops early and every TTS window writes exactly W units: lengths are fixed and both
sides do the same amount of work.

"ours" is the production engine (omni2.engine): utterances encoded once per conversation, LLM
prefix reused across turns, TTS KV cache across windows, last-position logits only, incremental
flow when the decoder supports it. "official" replays the official runtime's compute pattern in
the same process with the same modules: every past utterance re-encoded each turn (openai-whisper
attention without SDPA, as in the pinned 20231117 release), the whole conversation re-prefilled
with full-sequence logits, every TTS window re-reading its whole prefix through HF ``generate``,
and the flow re-run over all units on every vocoder call. Tests never assert times; this tool
prints them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

# (hidden, ffn, layers, heads, kv heads, vocab rows, tied) of the Qwen2.5-Instruct bases (spec §1.5)
LLM_DIMS = {
    "tiny": (64, 128, 2, 4, 2, 320, True),
    "0.5B": (896, 4864, 24, 14, 2, 151936, True),
    "1.5B": (1536, 8960, 28, 12, 2, 151936, True),
    "3B": (2048, 11008, 36, 16, 2, 151936, True),
    "7B": (3584, 18944, 28, 28, 4, 152064, False),
    "14B": (5120, 13824, 48, 40, 8, 152064, False),
}
TTS_DIMS = {"tiny": (48, 96, 2, 4, 2), "real": (896, 4864, 24, 14, 2)}  # Qwen2.5-0.5B body
REAL_TTS_VOCAB = 158227
REAL_UNITS = 6561


@dataclass
class RunStats:
    """Timings of one reply (seconds) as the benchmark saw them."""

    stages: dict[str, float] = field(default_factory=dict)  # first-audio path
    windows: list[dict[str, float]] = field(default_factory=list)  # per write window
    first_audio: float = 0.0
    total: float = 0.0
    units: int = 0
    text_tokens: int = 0
    audio_seconds: float = 0.0

    @property
    def rtf(self) -> float:
        return self.total / self.audio_seconds if self.audio_seconds else float("nan")


# ------------------------------------------------------------------------------------------------
# building real-shape models


def _qwen2(h: int, ffn: int, layers: int, heads: int, kv: int, vocab: int, tie: bool, bos: int, eos) -> dict:
    return {"hidden_size": h, "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv, "vocab_size": vocab, "tie_word_embeddings": tie, "bos_token_id": bos,
            "eos_token_id": eos, "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0,
            "max_position_embeddings": 32768, "hidden_act": "silu", "use_sliding_window": False,
            "sliding_window": None}


def build_model(size: str, device: torch.device, dtype: torch.dtype, workdir: Path):
    """An in-memory LoadedOmni2 of real shapes with engineered random weights and a stand-in tokenizer."""
    from transformers.modeling_utils import no_init_weights

    from omni2.checkpoint import GenerationDefaults, LoadedOmni2, load_tokenizer, read_tts_vocab
    from omni2.config import Omni2Config
    from omni2.model.omni2 import Omni2Model
    from omni2.model.speech_encoder import LARGE_V3, WhisperEncoderDims
    from omni2.tools.make_tiny import write_tokenizer

    tiny = size == "tiny"
    h, ffn, layers, heads, kv, vocab, tie = LLM_DIMS[size]
    first = 256 if tiny else 151643
    fillers = [] if tiny else [(f"<|reserved_{i}|>", True) for i in range(19)]  # real: <speech> = 151665
    llm_ids = write_tokenizer(workdir, [*fillers, ("<speech>", True)], first_added_id=first)
    n_units = 64 if tiny else REAL_UNITS
    tts_ids = write_tokenizer(workdir / "tts_tokenizer", [*fillers, ("<sep>", True)] +
                              [(f"<{u}>", False) for u in range(n_units)], first_added_id=first, eos="<|endoftext|>")
    eot, im_end = llm_ids["<|endoftext|>"], llm_ids["<|im_end|>"]
    tts_vocab_rows = max(tts_ids.values()) + 1 if tiny else REAL_TTS_VOCAB
    enc = WhisperEncoderDims(128, 1500, 64, 2, 2) if tiny else LARGE_V3
    cfg = Omni2Config.from_dict({
        **_qwen2(h, ffn, layers, heads, kv, vocab, tie, eot, im_end),
        "speech_encoder": "large-v3.pt", "speech_encoder_hidden_size": enc.n_state,
        "speech_generator": _qwen2(*TTS_DIMS["tiny" if tiny else "real"], tts_vocab_rows, True, eot, eot),
        "unit_vocab_size": n_units, "stream_params": "(3,10)",
    })
    old = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype)
        with no_init_weights(), torch.device(device):
            model = Omni2Model(cfg, enc, adapter_hidden=2048)
    finally:
        torch.set_default_dtype(old)
    gen = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "_ln.weight", "ln_post.weight", "layernorm.weight")):
                p.fill_(1.0)
            elif name.endswith("bias") and "speech_encoder" in name:
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).mul_(0.02).to(p.dtype))
        if not tie:
            model.llm.lm_head.weight.copy_(model.llm.model.embed_tokens.weight)
        else:
            model.llm.lm_head.weight = model.llm.model.embed_tokens.weight
        # LLM: only printable ASCII byte tokens can win (no eos, no dummies), so replies have a fixed
        # length and re-tokenize 1:1 when they come back as history.
        from omni2.tools.make_tiny import _byte_vocab

        keep = torch.zeros(vocab, dtype=torch.bool)
        for ch, i in _byte_vocab().items():
            keep[i] = len(ch) == 1 and 33 <= ord(ch) <= 126
        model.llm.model.embed_tokens.weight[~keep.to(device)] = 0
        # TTS: text rows small, eos row zero -> top-50 candidates are always units.
        tts_emb = model.speech_generator.model.model.embed_tokens.weight
        tts_emb[: tts_ids["<sep>"]] *= 0.1
        tts_emb[eot] = 0
        model.speech_generator.model.lm_head.weight = tts_emb
    model.eval().requires_grad_(False)
    tokenizer = load_tokenizer(workdir, use_fast=True)
    return LoadedOmni2(
        model=model, config=cfg, tokenizer=tokenizer, tts_vocab=read_tts_vocab(workdir / "tts_tokenizer", n_units),
        generation=GenerationDefaults(eos_ids=[im_end, eot]), speech_token_id=llm_ids["<speech>"], path=workdir,
        device=device, dtype=dtype, random_weights=True)


def build_decoder(size: str, device: torch.device, dtype: torch.dtype):
    """Real-size CosyVoice2 flow + HiFT (tiny for ``tiny``) with random weights."""
    from omni2.vocoder.tiny import build_random_decoder

    if size == "tiny":
        from omni2.vocoder.config import parse_config
        from omni2.vocoder.tiny import TINY_YAML

        cfg = parse_config(TINY_YAML.format(width=64, vocab=64, ffn=128))
    else:
        from omni2.vocoder.config import cosyvoice2_config

        cfg = cosyvoice2_config()
    return build_random_decoder(cfg, seed=0, device=device, dtype=torch.float32 if device.type == "cpu" else dtype)


# ------------------------------------------------------------------------------------------------
# timing hooks (no numeric work)


class Clock:
    def __init__(self) -> None:
        self.events: list[tuple[str, float, float, Any]] = []

    @contextlib.contextmanager
    def span(self, name: str, info: Any = None) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.events.append((name, t0, time.perf_counter(), info))

    def first(self, name: str) -> tuple[float, float] | None:
        for n, a, b, _ in self.events:
            if n == name:
                return a, b
        return None

    def all(self, name: str) -> list[tuple[float, float, Any]]:
        return [(a, b, i) for n, a, b, i in self.events if n == name]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------
# ours: the production engine


def run_ours(engine, session, audio: np.ndarray, text_tokens: int, clock: Clock, seed: int):
    from omni2.engine import ReplyOptions
    from omni2.events import AudioChunk, TextDelta, TurnEnd, Units
    from omni2.unit_writer import UnitWriter

    w = engine.loaded.config.stream_params[1]
    opts = ReplyOptions(max_new_tokens=text_tokens, max_drain=w, seed=seed, tts_seed=seed + 1)
    orig_write = UnitWriter.write

    def write(self, final=False):
        # Engineered control flow (like the zeroed eos row): only units, never eos, so every window
        # writes exactly W units on both sides.
        if self.sampler.allowed is not None:
            self.sampler.allowed[self.vocab.eos_id] = False
        with clock.span("tts_window"):
            return orig_write(self, final)

    UnitWriter.write = write
    try:
        t0 = time.perf_counter()
        first_text = None
        units = 0
        samples = 0
        end = None
        for ev in engine.respond(session, audio, opts):
            now = time.perf_counter()
            if isinstance(ev, TextDelta) and first_text is None:
                first_text = now
            elif isinstance(ev, Units):
                units += len(ev.units)
            elif isinstance(ev, AudioChunk):
                samples += ev.samples.size
                clock.events.append(("audio_out", now, now, ev.samples.size))
            elif isinstance(ev, TurnEnd):
                end = ev
        _sync(engine.loaded.device)
        total = time.perf_counter() - t0
    finally:
        UnitWriter.write = orig_write
    stats = RunStats(total=total, units=units, text_tokens=text_tokens,
                     audio_seconds=samples / 24_000, first_audio=end.first_audio_latency or float("nan"))
    for k in ("mel", "encoder", "adapter", "prefill"):
        stats.stages[k] = end.timings.get(k, 0.0)
    stats.stages["prefill positions"] = end.timings.get("prefill_positions", 0.0)
    # the engine times its front stages itself; mark where prefill ended for fill_path_stages
    front = sum(end.timings.get(k, 0.0) for k in ("audio", "mel", "encoder", "adapter", "prefill"))
    clock.events.append(("prefill", t0, t0 + front, None))
    return stats, t0


# ------------------------------------------------------------------------------------------------
# baseline: the official compute pattern, same modules


def run_official(engine, history: list[tuple[np.ndarray, str]], audio: np.ndarray, text_tokens: int,
                 clock: Clock, seed: int):
    """One reply as the official worker + web server compute it (see module docstring)."""
    import whisper.model as wm

    from omni2.audio import prepare_audio
    from omni2.model.speech_encoder import log_mel
    from omni2.prompt import ChatTurn, render_prompt_ids, splice_speech

    loaded = engine.loaded
    model, tok, dev = loaded.model, loaded.tokenizer, loaded.device
    r, w = loaded.config.stream_params
    gen = model.speech_generator
    vocab = loaded.tts_vocab
    non_units = [i for i in range(gen.model.config.vocab_size) if not vocab.is_unit(i)]  # fixed lengths
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    stats = RunStats()
    with torch.inference_mode():
        with clock.span("mel"):
            mels = torch.stack([log_mel(prepare_audio(a).samples, model.n_mels) for a, _ in history] +
                               [log_mel(prepare_audio(audio).samples, model.n_mels)])
        with clock.span("encoder"), wm.disable_sdpa():  # openai-whisper 20231117: explicit attention
            enc = model.encode(mels)
            _sync(dev)
        with clock.span("adapter"):
            speech = model.adapter(enc)
        turns = []
        for _, text in history:
            turns += [ChatTurn("user"), ChatTurn("assistant", text)]
        ids = render_prompt_ids(tok, [*turns, ChatTurn("user")])
        with clock.span("prefill"):
            embeds = splice_speech(ids, loaded.speech_token_id, list(speech), model.embed_text)
            out = model.llm(inputs_embeds=embeds[None], use_cache=True, output_hidden_states=True, logits_to_keep=0)
            _sync(dev)
        stats.stages["prefill positions"] = float(embeds.shape[0])
        past = out.past_key_values
        hidden = out.hidden_states[-1][0, -1]
        logits = out.logits[0, -1]
        tts_inputs = None
        pending_h, pending_ids = [], []
        stream = engine.vocoder.stream(incremental=False) if engine.vocoder is not None else None
        units_total = 0
        samples = 0
        for step in range(1, text_tokens + 1):
            with clock.span("llm_step"):
                tok_id = int(torch.argmax(logits))
                pending_h.append(hidden)
                pending_ids.append(tok_id)
                finished = step == text_tokens
                if not finished:
                    o = model.llm(input_ids=torch.tensor([[tok_id]], device=dev), past_key_values=past,
                                  use_cache=True, output_hidden_states=True)
                    past, hidden, logits = o.past_key_values, o.hidden_states[-1][0, -1], o.logits[0, -1]
            if len(pending_ids) < r and not finished:
                continue
            with clock.span("tts_window"):
                fused = gen.fuse(torch.stack(pending_h), torch.tensor(pending_ids, device=dev))
                tts_inputs = fused if tts_inputs is None else torch.cat([tts_inputs, fused])
                if finished:
                    tts_inputs = torch.cat([tts_inputs, gen.embed(torch.tensor([vocab.sep_id], device=dev))])
                new = gen.model.generate(inputs_embeds=tts_inputs[None], do_sample=True, temperature=1.0, top_p=1.0,
                                         top_k=50, max_new_tokens=w, min_new_tokens=w, pad_token_id=vocab.eos_id,
                                         eos_token_id=vocab.eos_id, suppress_tokens=non_units)[0]
                tts_inputs = torch.cat([tts_inputs, gen.embed(new)])
                units = [t - vocab.unit_offset for t in new.tolist() if vocab.is_unit(t)]
                _sync(dev)
            pending_h, pending_ids = [], []
            units_total += len(units)
            if stream is not None:
                wav = stream.push(units) if not finished else np.concatenate([stream.push(units), stream.finalize()])
                samples += wav.size
                now = time.perf_counter()
                clock.events.append(("audio_out", now, now, wav.size))
    stats.total = time.perf_counter() - t0
    stats.units = units_total
    stats.text_tokens = text_tokens
    stats.audio_seconds = samples / 24_000
    first_out = next((a for n, a, _, s in clock.events if n == "audio_out" and s), None)
    stats.first_audio = (first_out - t0) if first_out else float("nan")
    for k in ("mel", "encoder", "adapter", "prefill"):
        span = clock.first(k)
        stats.stages[k] = span[1] - span[0] if span else 0.0
    return stats, t0


# ------------------------------------------------------------------------------------------------
# analysis


def fill_path_stages(stats: RunStats, clock: Clock, t0: float) -> None:
    """First R tokens, first W units, first flow / HiFT chunk, per-window steady-state costs."""
    tts = clock.all("tts_window")
    flows = clock.all("flow")
    hifts = clock.all("hift")
    vocs = clock.all("vocoder")
    pre = clock.first("prefill")
    if tts:
        prefill_end = (pre[1] if pre else t0)
        stats.stages["first R tokens (after prefill)"] = max(0.0, tts[0][0] - prefill_end)
        stats.stages["first W units (TTS window 1)"] = tts[0][1] - tts[0][0]
    if flows:
        stats.stages["first flow chunk"] = flows[0][1] - flows[0][0]
    if hifts:
        stats.stages["first HiFT chunk"] = hifts[0][1] - hifts[0][0]
    stats.stages["first audio"] = stats.first_audio
    outs = [(b, n) for name, _, b, n in clock.events if name == "audio_out" and n]
    done = 0
    for when, n in outs:
        done += n
        if done >= 300 * 960 and "time to 300 units of audio" not in stats.stages:
            stats.stages["time to 300 units of audio"] = when - t0
    # steady state: wall time between consecutive window ends ~ cost of producing one chunk
    ends = [b for _, b, _ in tts]
    voc_ends = [b for _, b, _ in vocs] or ends
    marks = voc_ends if len(voc_ends) == len(ends) else ends
    prev = marks[0] if marks else 0.0
    for i, (a, b, _) in enumerate(tts):
        row = {"tts": b - a}
        if i < len(vocs):
            row["vocoder"] = vocs[i][1] - vocs[i][0]
        if i < len(flows):
            row["flow"] = flows[i][1] - flows[i][0]
        if i > 0 and i < len(marks):
            row["chunk"] = marks[i] - prev
            prev = marks[i]
        stats.windows.append(row)


def _peak_mem_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "–"
    return f"{x:.3f}"


def print_table(title: str, rows: list[tuple[str, float | None, float | None]]) -> None:
    print(f"\n{title}")
    print(f"| {'stage':40s} | {'ours (s)':>10s} | {'official (s)':>12s} | {'ours/official':>13s} |")
    print(f"|{'-' * 42}|{'-' * 12}|{'-' * 14}|{'-' * 15}|")
    for name, ours, base in rows:
        ratio = (ours / base) if (ours is not None and base and not np.isnan(base)) else None
        print(f"| {name:40s} | {_fmt(ours):>10s} | {_fmt(base):>12s} | {_fmt(ratio):>13s} |")


def speech_sample(seconds: float = 2.8) -> np.ndarray:
    """A spoken question (espeak-ng when installed, else a voiced synthetic signal); content is irrelevant."""
    import shutil
    import subprocess

    from omni2.audio import prepare_audio

    if shutil.which("espeak-ng"):
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "q.wav"
            subprocess.run(["espeak-ng", "-w", str(p), "What is the tallest mountain in the world?"],
                           check=True, capture_output=True)
            return prepare_audio(p).samples
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.2 * np.sin(2 * np.pi * 140 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m omni2.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=list(LLM_DIMS), default="0.5B")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="LLM/TTS/encoder dtype, same on both sides (flow+HiFT stay float32 on CPU, as official)")
    p.add_argument("--turns", type=int, default=3, help="measure turn N of a conversation (earlier turns run first)")
    p.add_argument("--text-tokens", type=int, default=120,
                   help="text tokens of the measured reply (default 120: 40 windows = 400 units with (3,10))")
    p.add_argument("--history-tokens", type=int, default=60, help="text tokens of each earlier reply")
    p.add_argument("--baseline", choices=["official", "none"], default="official")
    p.add_argument("--no-vocoder", action="store_true", help="skip flow + HiFT")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--json", type=Path, help="write all numbers here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]

    from omni2.engine import Engine
    from omni2.model.row_gemv import plain_linears

    t = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="omni2-bench-"))
    loaded = build_model(args.size, device, dtype, work)
    vocoder = None if args.no_vocoder else build_decoder(args.size, device, dtype)
    engine = Engine(loaded, vocoder)
    build_s = time.perf_counter() - t
    print(f"omni2.bench: size {args.size}, {device}, {args.dtype}, threads {torch.get_num_threads()}, "
          f"turn {args.turns}, {args.text_tokens} text tokens (R,W)={loaded.config.stream_params}; "
          f"random weights built in {build_s:.1f} s")

    clocks: dict[str, Clock] = {}
    if vocoder is not None:
        _instrument_vocoder(vocoder, clocks)
    audio = speech_sample()
    results: dict[str, RunStats] = {}

    # ours: earlier turns run for real (they fill the session's caches), then the measured turn
    session = engine.new_session()
    history: list[tuple[np.ndarray, str]] = []
    warm = Clock()
    clocks["current"] = warm
    for i in range(args.turns - 1):
        _progress(f"earlier turn {i + 1}/{args.turns - 1} (fills the session's caches)")
        run_ours(engine, session, audio, args.history_tokens, warm, seed=0)
        history.append((audio, session.turns[-1].text))
    clock = Clock()
    clocks["current"] = clock
    _progress(f"measuring ours: turn {args.turns}, {args.text_tokens} text tokens")
    stats, t0 = run_ours(engine, session, audio, args.text_tokens, clock, seed=1)
    fill_path_stages(stats, clock, t0)
    results["ours"] = stats
    mem_ours = _peak_mem_gib(device)

    if args.baseline == "official":
        clock = Clock()
        clocks["current"] = clock
        _progress("measuring the official compute pattern (the slow side)")
        with plain_linears(loaded.model):  # the official code runs plain nn.Linear
            stats, t0 = run_official(engine, history, audio, args.text_tokens, clock, seed=1)
        fill_path_stages(stats, clock, t0)
        results["official"] = stats
    mem_all = _peak_mem_gib(device)

    ours, base = results["ours"], results.get("official")
    names = list(ours.stages)
    print_table(f"First-audio path, turn {args.turns} (seconds)",
                [(k, ours.stages.get(k), base.stages.get(k) if base else None) for k in names])
    print_table("Whole reply", [
        ("total time", ours.total, base.total if base else None),
        ("units", ours.units, base.units if base else None),
        ("audio seconds", ours.audio_seconds, base.audio_seconds if base else None),
        ("RTF (time / audio)", ours.rtf, base.rtf if base else None),
        ("text tokens / s", ours.text_tokens / ours.total, base.text_tokens / base.total if base else None),
    ])
    rows = []
    for k in (1, 5, 10, 20, 30, 40):
        if k <= len(ours.windows):
            o = ours.windows[k - 1]
            b = base.windows[k - 1] if base and k <= len(base.windows) else {}
            rows.append((f"chunk {k}: TTS window", o.get("tts"), b.get("tts")))
            rows.append((f"chunk {k}: vocoder call", o.get("vocoder"), b.get("vocoder")))
            rows.append((f"chunk {k}: wall time since previous chunk", o.get("chunk"), b.get("chunk")))
    print_table("Steady state per chunk (W units each)", rows)
    c5, c40 = _chunk_cost(ours, 5), _chunk_cost(ours, 40)
    if c5 and c40:
        print(f"\nours: chunk 40 / chunk 5 cost = {c40 / c5:.2f} (wall time between consecutive chunks)")
    key = "time to 300 units of audio"
    t300 = (ours.stages.get(key), base.stages.get(key) if base else None)
    if all(t300):
        print(f"time to 300 units of audio: ours/official = {t300[0] / t300[1]:.2f}")
    fa = (ours.first_audio, base.first_audio if base else None)
    if all(fa):
        print(f"first-audio latency at turn {args.turns}: ours/official = {fa[0] / fa[1]:.2f}")
    print(f"peak memory: ours {mem_ours:.2f} GiB, process after baseline {mem_all:.2f} GiB")
    if args.json:
        args.json.write_text(json.dumps({
            "size": args.size, "device": str(device), "dtype": args.dtype, "threads": torch.get_num_threads(),
            "turn": args.turns, "text_tokens": args.text_tokens, "peak_mem_gib": {"ours": mem_ours, "all": mem_all},
            "runs": {k: {**asdict(v), "rtf": v.rtf} for k, v in results.items()},
        }, indent=2))
    return 0


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message} …", file=sys.stderr, flush=True)


def _chunk_cost(stats: RunStats, k: int) -> float | None:
    if k > len(stats.windows):
        return None
    return stats.windows[k - 1].get("chunk")


def _instrument_vocoder(vocoder, clocks: dict[str, Clock]) -> None:
    """Time flow and HiFT calls into whichever clock is current (hooks only, no numeric work)."""
    flow = vocoder.flow
    for attr in ("inference", "inference_incremental"):
        if hasattr(flow, attr):
            fn = getattr(flow, attr)
            setattr(flow, attr, _late_timed(fn, clocks, "flow"))
    vocoder.mel_to_wav = _late_timed(vocoder.mel_to_wav, clocks, "hift")
    orig_stream = vocoder.stream

    def stream(*a, **k):
        s = orig_stream(*a, **k)
        s.push = _late_timed(s.push, clocks, "vocoder")
        return s

    vocoder.stream = stream


def _late_timed(fn, clocks: dict[str, Clock], name: str):
    def timed(*a, **k):
        with clocks["current"].span(name):
            return fn(*a, **k)

    return timed


if __name__ == "__main__":
    sys.exit(main())

