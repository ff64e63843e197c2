"""``launch.py chat``: answer spoken questions from files, streaming the reply text to the terminal.

    python launch.py chat --model DIR --audio q.wav --text-only
    python launch.py chat --model DIR --audio q1.wav --audio q2.wav          # a 2-turn conversation
    python launch.py chat --model DIR --audio q1.wav --history-text "It is Paris." --audio q2.wav
    python launch.py chat --model DIR                                        # asks for file paths
    python launch.py chat --model DIR --audio q.wav --units-out u.txt --answers-out answers.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omni2.errors import CheckpointError, ConfigError


def _stream_params(value: str) -> tuple[int, int]:
    from omni2.config import parse_stream_params

    try:
        return parse_stream_params(value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Options every sub-command that loads the model shares."""
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None,
                   help="model folder, or a name under checkpoints/ (default: LLaMA-Omni2-0.5B)")
    g.add_argument("--device", default="auto", help="auto (cuda if present, else cpu), cpu, cuda, cuda:1 …")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="compute dtype (auto: bfloat16 on GPUs and on CPUs with native bf16, else float32)")


def add_audio_args(p: argparse.ArgumentParser) -> None:
    """Decoder and voice options (every sub-command that speaks)."""
    g = p.add_argument_group("speech output")
    g.add_argument("--decoder", type=Path, default=None,
                   help="CosyVoice2 decoder folder (default: checkpoints/cosy2_decoder)")
    g.add_argument("--voice", type=Path, default=None,
                   help="speaker: a wav (through CAM++) or an x-vector .npy/.pt (default: the decoder's)")


def add_generation_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=256, help="reply length cap in tokens (default 256)")
    g.add_argument("--temperature", type=float, default=0.0, help="LLM temperature; 0 = greedy (default)")
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--seed", type=int, default=None, help="seed for LLM and TTS sampling")
    g.add_argument("--stream-params", type=_stream_params, default=None, metavar="R,W",
                   help="read R text tokens, write W units (default: the checkpoint's, (3,10))")
    g.add_argument("--tts-greedy", action="store_true",
                   help="greedy TTS decoding (official: sampling, temperature 1.0, top-k 50)")
    g.add_argument("--no-unit-mask", action="store_true",
                   help="let the TTS LM sample any token (official behaviour); default: units and eos only")


def reply_options(args: argparse.Namespace, speak: bool):
    from omni2.engine import ReplyOptions
    from omni2.sampling import TTS_OFFICIAL, SamplingConfig

    return ReplyOptions(
        max_new_tokens=args.max_new_tokens,
        llm_sampling=SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p),
        seed=args.seed,
        tts_seed=None if args.seed is None else args.seed + 1,
        speak=speak,
        stream_params=args.stream_params,
        tts_sampling=SamplingConfig() if args.tts_greedy else TTS_OFFICIAL,
        restrict_units=not args.no_unit_mask,
    )


def register(sub) -> None:
    p = sub.add_parser("chat", help="answer spoken questions from audio files (terminal)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--audio", action="append", default=[], metavar="FILE",
                   help="a spoken user turn (repeat for a conversation; any common format and rate)")
    p.add_argument("--history-text", action="append", default=[], metavar="TEXT",
                   help="earlier assistant replies: give one per --audio except the last to replay a "
                        "history and answer only the last question")
    p.add_argument("--text-only", action="store_true", help="text reply only (skip the speech branch)")
    p.add_argument("--units-out", type=Path, help="write speech units, one answer per line (<u><u>…)")
    p.add_argument("--answers-out", type=Path,
                   help="write answers.jsonl in the official format (question_id, prediction, prediction_units)")
    p.add_argument("--out-dir", type=Path,
                   help="write each spoken reply as <question>_reply.wav (24 kHz) here (needs the cosy2 decoder)")
    add_audio_args(p)
    add_generation_args(p)
    p.set_defaults(func=run)


def _questions(args: argparse.Namespace):
    """Yield audio paths: from --audio, or typed at a prompt when none were given."""
    if args.audio:
        yield from args.audio
        return
    if not sys.stdin.isatty():
        for line in sys.stdin:
            if line.strip():
                yield line.strip()
        return
    print("Type the path of an audio file per turn (empty line or Ctrl-D to quit).")
    while True:
        try:
            line = input("audio file> ").strip()
        except EOFError:
            return
        if not line or line in ("quit", "exit"):
            return
        yield line


def run(args: argparse.Namespace) -> int:
    from omni2.audio import write_wav
    from omni2.events import AudioChunk, Notice, TextDelta, TurnEnd
    from omni2.runtime import load_engine

    if args.history_text and len(args.history_text) != len(args.audio) - 1:
        raise ConfigError(f"--history-text must be given once per earlier turn: {len(args.audio)} --audio "
                          f"need {len(args.audio) - 1} --history-text, got {len(args.history_text)}")
    speak = not args.text_only or bool(args.units_out or args.answers_out or args.out_dir)
    engine = load_engine(args.model, decoder=args.decoder, voice=args.voice, device=args.device, dtype=args.dtype,
                         speak=speak, audio=args.out_dir is not None)
    if args.out_dir and engine.vocoder is None:
        raise CheckpointError("--out-dir needs the CosyVoice2 decoder: python launch.py download --only decoder "
                              "(or pass --decoder DIR)")
    session = engine.new_session()
    options = reply_options(args, speak)

    questions = _questions(args)
    if args.history_text:
        for audio, text in zip(args.audio[:-1], args.history_text, strict=True):
            engine.add_history(session, audio, text)
        questions = iter(args.audio[-1:])

    answers: list[dict] = []
    failures = 0
    for audio in questions:
        result = None
        pieces = []
        for event in engine.respond(session, audio, options):
            if isinstance(event, AudioChunk):
                pieces.append(event.samples)
            elif isinstance(event, Notice):
                print(f"[{event.message}]", file=sys.stderr)
            elif isinstance(event, TextDelta):
                print(event.text, end="", flush=True)
            elif isinstance(event, TurnEnd):
                result = event
        print()
        if result is None or result.error:
            failures += 1
            print(f"error: {audio}: {result.error if result else 'no result'}", file=sys.stderr)
            continue
        t = result.timings
        print(f"[{len(result.units)} units; first text {_ms(result.first_text_latency)}, first units "
              f"{_ms(result.first_unit_latency)}, total {_ms(t.get('total'))}]", file=sys.stderr)
        if args.out_dir and pieces:
            import numpy as np

            wav = write_wav(args.out_dir / f"{Path(str(audio)).stem}_reply.wav", np.concatenate(pieces),
                            engine.vocoder.sample_rate)
            print(f"[reply audio: {wav}]", file=sys.stderr)
        answers.append({"question_id": Path(str(audio)).stem, "prediction": result.text,
                        "prediction_units": "".join(f"<{u}>" for u in result.units)})
    if args.units_out:
        args.units_out.parent.mkdir(parents=True, exist_ok=True)
        args.units_out.write_text("".join(a["prediction_units"] + "\n" for a in answers))
    if args.answers_out:
        args.answers_out.parent.mkdir(parents=True, exist_ok=True)
        with args.answers_out.open("w", encoding="utf-8") as f:
            for a in answers:
                f.write(json.dumps(a, ensure_ascii=False) + "\n")
    return 1 if failures else 0


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:.0f} ms"
