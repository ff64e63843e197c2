"""``launch.py vocode``: speech units -> 24 kHz wavs with the CosyVoice2 decoder.

    python launch.py vocode --decoder checkpoints/cosy2_decoder --units units.txt --out-dir wavs/
    python launch.py vocode --decoder DIR --units answers.jsonl --out-dir wavs/ --stream --hop 10
    python launch.py vocode --decoder DIR --units units.txt --out-dir wavs/ --voice me.wav

Input: the official unit-string format (one utterance per line, ``<12><4487>...``; plain
space/comma-separated integers also work) or an answers.jsonl whose lines carry
``prediction_units``. Output: ``{i}_pred.wav`` (float, 24 kHz), i = 0-based line index, like
LLaMA-Omni2's ``run_cosy2_decoder.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

import numpy as np

from omni2.errors import AudioError, Omni2Error

log = logging.getLogger(__name__)

_UNIT_TAG = re.compile(r"<(-?\d+)>")


def parse_unit_line(line: str, where: str = "line") -> list[int]:
    """``<1><2><3>`` or ``1 2 3`` / ``1,2,3`` -> [1, 2, 3]; anything else is an error."""
    text = line.strip()
    if not text:
        return []
    if "<" in text:
        rest = _UNIT_TAG.sub("", text).strip()
        if rest:
            raise Omni2Error(f"{where}: unexpected text {rest[:30]!r} between <unit> tags")
        return [int(u) for u in _UNIT_TAG.findall(text)]
    parts = [p for p in re.split(r"[\s,]+", text) if p]
    try:
        return [int(p) for p in parts]
    except ValueError as exc:
        raise Omni2Error(f"{where}: not a list of integer units ({exc})") from exc


def read_units_file(path: Path) -> list[list[int]]:
    """Utterances from a units text file or an answers.jsonl (``prediction_units``)."""
    if not path.is_file():
        raise Omni2Error(f"units file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise Omni2Error(f"cannot read units file {path}: {exc}") from exc
    is_jsonl = path.suffix == ".jsonl" or (lines and lines[0].lstrip().startswith("{"))
    out: list[list[int]] = []
    for i, line in enumerate(lines):
        where = f"{path.name}:{i + 1}"
        if is_jsonl:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise Omni2Error(f"{where}: invalid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict) or "prediction_units" not in obj:
                raise Omni2Error(f"{where}: no 'prediction_units' field")
            units = obj["prediction_units"]
            out.append(parse_unit_line(units, where) if isinstance(units, str) else [int(u) for u in units])
        else:
            out.append(parse_unit_line(line, where))
    if not out:
        raise Omni2Error(f"{path} holds no utterances")
    return out


def _write_wav(path: Path, wav: np.ndarray, sr: int) -> None:
    import soundfile as sf

    sf.write(str(path), wav.astype(np.float32), sr, subtype="FLOAT")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "vocode",
        help="turn speech units into wavs with the CosyVoice2 decoder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--decoder",
        type=Path,
        default=Path("checkpoints/cosy2_decoder"),
        help="decoder folder with cosyvoice.yaml, flow.pt, hift.pt (default: %(default)s)",
    )
    p.add_argument("--units", type=Path, required=True, help="units.txt (one utterance per line) or answers.jsonl")
    p.add_argument("--out-dir", type=Path, required=True, help="where {i}_pred.wav files go")
    p.add_argument("--stream", action="store_true", help="decode in streaming windows (as a live session would)")
    p.add_argument(
        "--hop",
        type=int,
        default=None,
        help="with --stream: units per window (default 2*token_frame_rate = 50, as the official --stream)",
    )
    p.add_argument(
        "--voice",
        type=Path,
        default=None,
        help="speaker: a prompt wav (via campplus.onnx) or a .npy/.pt x-vector (default: the decoder's default voice)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default: %(default)s)")
    p.add_argument("--seed", type=int, default=None, help="seed HiFT's random phases/noise (reproducible output)")
    p.set_defaults(func=run)


def official_windows(n: int, hop: int, lookahead: int = 3) -> list[int]:
    """Units added per call by LLaMA-Omni2's ``--stream`` loop: calls on tokens[:off+hop+3] while
    ``n - off >= hop + 3`` (off += hop), then one final call on all n; e.g. 110, 50 -> [53, 50, 7]."""
    windows, off, passed = [], 0, 0
    while n - off >= hop + lookahead:
        end = off + hop + lookahead
        windows.append(end - passed)
        passed, off = end, off + hop
    windows.append(n - passed)
    return windows


def vocode_stream(decoder, units: list[int], hop: int) -> np.ndarray:
    """Stream ``units`` on the official ``--stream`` schedule; the last window goes with finalize."""
    stream = decoder.stream()
    pieces, pos = [], 0
    windows = official_windows(len(units), hop, decoder.cfg.flow.pre_lookahead_len)
    for i, w in enumerate(windows):
        chunk = units[pos : pos + w]
        pos += w
        pieces.append(stream.finalize(chunk) if i == len(windows) - 1 else stream.push(chunk))
    return np.concatenate(pieces)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from omni2.vocoder import UnitsError, load_decoder

    utterances = read_units_file(args.units)
    if args.hop is not None and args.hop < 1:
        raise Omni2Error("--hop must be at least 1")
    decoder = load_decoder(args.decoder, device=args.device, voice=args.voice)
    if decoder.xvector is None:
        raise AudioError(f"no default voice found for {args.decoder}; pass --voice prompt.wav (or .npy)")
    if args.seed is not None:
        gen = torch.Generator(device=decoder.device).manual_seed(args.seed)
        decoder.set_deterministic(False, generator=gen)
    hop = args.hop or 2 * decoder.cfg.flow.input_frame_rate
    args.out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for i, units in enumerate(tqdm(utterances, desc="vocode", unit="utt")):
        if not units:
            log.warning("utterance %d has no units; skipped", i)
            continue
        try:
            wav = vocode_stream(decoder, units, hop) if args.stream else decoder.vocode(units)
        except UnitsError as exc:
            raise UnitsError(f"utterance {i} (line {i + 1}): {exc}") from exc
        _write_wav(args.out_dir / f"{i}_pred.wav", wav, decoder.sample_rate)
        written += 1
    print(f"wrote {written} wav file(s) to {args.out_dir}")
    return 0
