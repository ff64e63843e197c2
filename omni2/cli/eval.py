"""``launch.py eval``: answer a set of recorded questions and score them as the paper does.

    python launch.py eval --model DIR --data sample --out runs/sample            # built-in spoken set
    python launch.py eval --model DIR --data questions.json --out runs/llamaq    # official format
    python launch.py eval --model DIR --data items.jsonl --out runs/x --limit 50 --asr none

--data: "sample" (20 factual questions spoken with espeak-ng), the official questions.json, a JSONL
manifest ({"id", "audio" | "turns", "answers"?} per line), or a folder of audio files.

Writes into --out: results.jsonl (one line per finished item), answers.jsonl (official format),
wavs/, summary.json, report.md and PNG plots. The run is resumable: run the same command again
after an interruption (even kill -9) and it continues where it stopped. A restart with other
settings is refused unless --force (which moves the old results aside and starts over).
Failed items (corrupt audio, …) are recorded with their error; the exit status is still 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omni2.cli.chat import add_generation_args, add_model_args, reply_options


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate on recorded questions (accuracy, ASR-WER, latency; resumable)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--decoder", default=None,
                   help="CosyVoice2 decoder folder (default: found next to the model)")
    p.add_argument("--voice", default=None, help="reply voice: a wav, or an x-vector file (.npy/.pt)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--data", required=True, metavar="MANIFEST|FOLDER|sample",
                   help="questions.json, a JSONL manifest, a folder of audio files, or 'sample'")
    g.add_argument("--out", required=True, type=Path, metavar="RUN_DIR", help="run folder (created; resumed)")
    g.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N items")
    g.add_argument("--asr", default="whisper", metavar="BACKEND",
                   help="ASR for S2S accuracy and ASR-WER: whisper (default; the model's Whisper file) "
                        "or none")
    g.add_argument("--asr-model", default=None, metavar="FILE",
                   help="openai-whisper weights file (default: the speech encoder's, e.g. large-v3.pt)")
    g.add_argument("--asr-max-tokens", type=int, default=None, metavar="N",
                   help="cap ASR decoding at N tokens per 30 s window (quick plumbing runs)")
    g.add_argument("--text-only", action="store_true", help="text replies only (no units, audio, S2S, WER)")
    g.add_argument("--force", action="store_true",
                   help="start over in a run folder made with other settings (old results are moved aside)")
    g.add_argument("--retry-failed", action="store_true", help="run the items recorded as failed again")
    g.add_argument("--no-warmup", action="store_true", help="skip the throw-away reply before timing starts")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_generation_args(p)
    p.set_defaults(func=run, seed=0)  # reproducible by default (TTS sampling is random otherwise)


def _generation(args: argparse.Namespace) -> dict:
    return {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
            "top_k": args.top_k, "seed": args.seed,
            "stream_params": list(args.stream_params) if args.stream_params else None,
            "tts_greedy": args.tts_greedy, "no_unit_mask": args.no_unit_mask}


def plan_from_args(args: argparse.Namespace):
    from omni2.errors import ConfigError
    from omni2.eval.asr import backends
    from omni2.eval.runner import EvalPlan

    if args.asr not in backends():
        raise ConfigError(f"unknown --asr {args.asr!r}; choose one of: {', '.join(backends())}")
    return EvalPlan(
        out=args.out, data=args.data, model=args.model, decoder=args.decoder, voice=args.voice,
        device=args.device, dtype=args.dtype, options=reply_options(args, speak=not args.text_only),
        generation=_generation(args), asr=args.asr, asr_model=args.asr_model,
        asr_max_tokens=args.asr_max_tokens, text_only=args.text_only, limit=args.limit, force=args.force,
        retry_failed=args.retry_failed, warmup=not args.no_warmup, progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    from omni2.eval.report import _fmt_score
    from omni2.eval.runner import run_eval

    outcome = run_eval(plan_from_args(args))
    s = outcome.summary
    lat = s["latency_ms"]["first_audio"]
    print(f"{outcome.total} items: {outcome.skipped} already done, {outcome.ran} run now, "
          f"{outcome.failed} failed", file=sys.stderr)
    print(f"S2T accuracy: {_fmt_score(s['accuracy']['s2t'], pct=True)}")
    print(f"S2S accuracy: {_fmt_score(s['accuracy']['s2s'], pct=True)}")
    print(f"ASR-WER: {_fmt_score(s['asr_wer'], pct=True)}")
    print(f"first-audio latency p50/p90/p99: {_ms(lat['p50'])} / {_ms(lat['p90'])} / {_ms(lat['p99'])}")
    print(f"report: {outcome.out / 'report.md'}")
    return 0


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:.0f} ms"
