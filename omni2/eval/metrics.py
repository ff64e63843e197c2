"""Scores of the LLaMA-Omni2 paper (spec §5), as plain functions on strings and numbers.

* Spoken-QA accuracy: a reply is correct when one of the reference answers *appears in* it
  (paper protocol). Both sides are normalised first, and the answer must match whole words, so
  "Paris." matches "paris" but "4" does not match "14". Two normalisations are tried (either one
  matching counts): a plain one (case, accents, punctuation) and Whisper's English normaliser,
  which also turns spelled numbers into digits — speech transcripts write "eight" where the text
  reply wrote "8".
* ASR-WER: word error rate between the text reply (reference) and an ASR transcript of the
  spoken reply (hypothesis), both through Whisper's English normaliser, computed with jiwer over
  the whole corpus (errors summed, then divided by reference words), as the paper does.
* Latency percentiles and the real-time factor (processing seconds per second of reply audio).
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

log = logging.getLogger(__name__)

PERCENTILES = (50, 90, 99)
_WORD = re.compile(r"\w+")


# --------------------------------------------------------------------------------------------
# normalisation


def normalize_basic(text: str) -> str:
    """Lower case, accents removed, punctuation and symbols turned into spaces, spaces collapsed."""
    text = unicodedata.normalize("NFKD", text or "")
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = text.lower().replace("&", " and ")
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        out.append(" " if cat[0] in ("P", "S", "C", "Z") else ch)
    return " ".join("".join(out).split())


@lru_cache(maxsize=1)
def _whisper_normalizer():
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize_whisper(text: str) -> str:
    """Whisper's English text normaliser (the one the paper applies before ASR-WER).

    Tokens left without any letter or digit (a lone "." it keeps from "...") are dropped: they are
    not words a listener hears.
    """
    return " ".join(t for t in _whisper_normalizer()(text or "").split() if _WORD.search(t))


# --------------------------------------------------------------------------------------------
# accuracy


def _contains_words(haystack: str, needle: str) -> bool:
    return bool(needle) and f" {needle} " in f" {haystack} "


def answer_in_reply(reply: str, answers: str | Iterable[str]) -> bool:
    """True when any reference answer appears (as whole words) in the normalised reply."""
    if isinstance(answers, str):
        answers = [answers]
    answers = [a for a in answers if a and a.strip()]
    if not answers or not reply:
        return False
    for norm in (normalize_basic, normalize_whisper):
        r = norm(reply)
        if any(_contains_words(r, norm(a)) for a in answers):
            return True
    return False


def accuracy(flags: Sequence[bool]) -> float | None:
    """Fraction of True; None when there is nothing to score."""
    return None if not flags else sum(bool(f) for f in flags) / len(flags)


# --------------------------------------------------------------------------------------------
# WER


@dataclass
class WerResult:
    """Corpus WER plus its error counts (so reports can show what the number is made of)."""

    wer: float | None
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    hits: int = 0
    reference_words: int = 0
    pairs: int = 0
    skipped: int = 0  # pairs whose reference was empty after normalisation

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def wer(references: Sequence[str], hypotheses: Sequence[str], normalize: bool = True) -> WerResult:
    """Corpus WER of ``hypotheses`` against ``references`` (Whisper-normalised when ``normalize``).

    A pair whose reference normalises to nothing cannot be scored (jiwer needs reference words);
    it is skipped and counted in ``skipped``. An empty hypothesis counts as all deletions.
    """
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    refs: list[str] = []
    hyps: list[str] = []
    skipped = 0
    for ref, hyp in zip(references, hypotheses, strict=True):
        r = normalize_whisper(ref) if normalize else " ".join((ref or "").split())
        h = normalize_whisper(hyp) if normalize else " ".join((hyp or "").split())
        if not r:
            skipped += 1
            continue
        refs.append(r)
        hyps.append(h)
    if not refs:
        return WerResult(None, skipped=skipped)
    subs = dels = ins = hits = 0
    for r, h in zip(refs, hyps, strict=True):
        if not h:  # jiwer refuses empty hypotheses in some versions: every reference word is deleted
            dels += len(r.split())
            continue
        out = jiwer.process_words(r, h)
        subs, dels, ins, hits = (subs + out.substitutions, dels + out.deletions,
                                 ins + out.insertions, hits + out.hits)
    n_ref = sum(len(r.split()) for r in refs)
    return WerResult((subs + dels + ins) / n_ref, subs, dels, ins, hits, n_ref, len(refs), skipped)


def item_wer(reference: str, hypothesis: str) -> float | None:
    """WER of one pair (None when the reference has no words)."""
    return wer([reference], [hypothesis]).wer


# --------------------------------------------------------------------------------------------
# latency and speed


def _finite(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def percentiles(values: Iterable[float | None],
                ps: Sequence[int] = PERCENTILES) -> dict[str, float | int | None]:
    """``{"n", "mean", "min", "max", "p50", "p90", "p99"}`` of the values that are not None."""
    vals = _finite(values)
    out: dict[str, float | int | None] = {"n": len(vals)}
    if not vals:
        out.update({"mean": None, "min": None, "max": None, **{f"p{p}": None for p in ps}})
        return out
    arr = np.asarray(vals, dtype=np.float64)
    out.update({"mean": float(arr.mean()), "min": float(arr.min()), "max": float(arr.max())})
    for p in ps:
        out[f"p{p}"] = float(np.percentile(arr, p))
    return out


def rtf(processing_seconds: float | None, audio_seconds: float | None) -> float | None:
    """Real-time factor: seconds spent per second of reply audio (< 1 is faster than real time)."""
    if processing_seconds is None or not audio_seconds or audio_seconds <= 0:
        return None
    return float(processing_seconds) / float(audio_seconds)


def word_count(text: str) -> int:
    return len(_WORD.findall(text or ""))
