"""A resumable evaluation run: answer every item of a manifest, one durable results line per item.

Run folder (``--out``)::

    run.json        the settings the run was started with (a restart must match them)
    results.jsonl   append-only; one JSON line per finished item (ok or failed), fsynced
    wavs/<id>.wav   the spoken reply, 24 kHz (written and fsynced before its results line)
    answers.jsonl   the official format {question_id, prediction, prediction_units}
    summary.json, report.md, *.png
    sample/         the spoken sample set, for ``--data sample``

Why it cannot lose work: a results line is written with one ``write`` and fsynced before the
next item starts, and the line is the only thing that marks an item done. Killed at any point,
the run loses at most the item in flight; on restart a torn last line (a kill or power cut in
the middle of a write) is detected and cut off, finished ids are skipped, and answers/summary/
report are rebuilt from results.jsonl. A failing item (unreadable audio, an engine error) is
recorded with its error and the run goes on; ``--retry-failed`` runs those again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from omni2.errors import ConfigError, Omni2Error
from omni2.eval.manifests import EvalItem, load_manifest

log = logging.getLogger(__name__)

RUN_JSON = "run.json"
RESULTS = "results.jsonl"
ANSWERS = "answers.jsonl"
WAVS = "wavs"
SAMPLE_DIR = "sample"
LOCK = ".lock"
RUN_FORMAT = 1


# --------------------------------------------------------------------------------------------
# plan and settings


@dataclass
class EvalPlan:
    """What to evaluate and how; ``settings()`` is what a restart must repeat."""

    out: Path
    data: str  # "sample", a manifest file or a folder of audio files
    model: str | None = None
    decoder: str | None = None
    voice: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    options: Any = None  # omni2.engine.ReplyOptions
    generation: dict[str, Any] = field(default_factory=dict)  # the generation flags, as given
    asr: str = "whisper"
    asr_model: str | None = None
    asr_max_tokens: int | None = None
    text_only: bool = False
    limit: int | None = None
    force: bool = False
    retry_failed: bool = False
    warmup: bool = True
    progress: bool = True

    def settings(self) -> dict[str, Any]:
        """Everything that changes the results of an item (not --limit: a larger limit extends a run)."""
        from omni2.checkpoint import find_checkpoint

        model = str(find_checkpoint(self.model).resolve())
        if self.data == "sample":
            from omni2.eval.sample import sample_fingerprint

            data = f"sample@{sample_fingerprint()}"
        else:
            data = str(Path(self.data).expanduser().resolve())
        return {
            "format": RUN_FORMAT,
            "model": model,
            "decoder": _abs(self.decoder),
            "voice": _abs(self.voice),
            "data": data,
            "dtype": self.dtype,
            "device": self.device,
            "text_only": self.text_only,
            "asr": self.asr,
            "asr_model": _abs(self.asr_model),
            "asr_max_tokens": self.asr_max_tokens,
            "generation": _jsonable(self.generation),
        }


def _abs(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(_diff(a, b, f"{prefix}{key}."))
        elif a != b:
            out.append(f"  {prefix}{key}: {a!r} in {RUN_JSON}, {b!r} now")
    return out


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def prepare_run_dir(out: Path, settings: dict[str, Any], force: bool) -> dict[str, Any]:
    """Create or reopen ``out``; refuse other settings unless ``force`` (then archive the old run)."""
    out.mkdir(parents=True, exist_ok=True)
    run_json = out / RUN_JSON
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    if run_json.is_file():
        try:
            info = json.loads(run_json.read_text(encoding="utf-8"))
            old = info["settings"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"{run_json} is unreadable ({exc}); fix or delete it, or use another "
                              "--out") from exc
        diff = _diff(old, settings)
        if not diff:
            info["resumed"] = info.get("resumed", 0) + 1
            info["updated"] = now
            _atomic_write(run_json, json.dumps(info, indent=2) + "\n")
            return info
        if not force:
            raise ConfigError(
                f"{out} holds a run made with other settings:\n" + "\n".join(diff)
                + "\nRepeat the original options to resume it, choose another --out for a new run, or add "
                "--force to start over here (the old results are moved into a superseded-* folder)."
            )
        archive = out / time.strftime("superseded-%Y%m%d-%H%M%S")
        archive.mkdir()
        for name in os.listdir(out):
            if name in (SAMPLE_DIR, LOCK) or name.startswith("superseded-"):
                continue
            os.replace(out / name, archive / name)
        log.warning("settings changed (--force): the previous run was moved to %s", archive)
    info = {"settings": settings, "created": now, "updated": now, "resumed": 0}
    _atomic_write(run_json, json.dumps(info, indent=2) + "\n")
    return info


# --------------------------------------------------------------------------------------------
# results.jsonl


class ResultsLog:
    """The append-only results file: durable appends, torn-tail repair, last record per id wins."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, dict]:
        """Records by id; repairs the file in place when its last line is torn."""
        if not self.path.is_file():
            return {}
        data = self.path.read_bytes()
        records: dict[str, dict] = {}
        pos = 0
        good_end = 0
        duplicates = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            end = len(data) if nl < 0 else nl + 1
            line = data[pos:end]
            rec = _parse(line)
            if rec is None:
                if nl < 0 or data[end:].strip() == b"":
                    log.warning("%s: dropped a torn last line (%d bytes) left by an interrupted run",
                                self.path, len(line))
                    break
                log.warning("%s: skipped an unreadable line at byte %d", self.path, pos)
            else:
                duplicates += rec["id"] in records
                records[rec["id"]] = rec
            good_end = end
            pos = end
        if good_end < len(data) or (data and not data[:good_end].endswith(b"\n")):
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
                if good_end and not data[:good_end].endswith(b"\n"):
                    f.seek(good_end)
                    f.write(b"\n")  # a complete record that lost only its newline
                f.flush()
                os.fsync(f.fileno())
        if duplicates:
            log.warning("%s: %d repeated id(s); the last record of each is used", self.path, duplicates)
        return records

    def append(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with open(self.path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def rewrite(self, records: list[dict]) -> None:
        _atomic_write(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def _parse(line: bytes) -> dict | None:
    if not line.endswith(b"\n") and not line.strip():
        return None
    try:
        rec = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("id"), str) or "status" not in rec:
        return None
    return rec


# --------------------------------------------------------------------------------------------
# one item


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def wav_name(item_id: str) -> str:
    """A file name for an id (ids may hold slashes or spaces); distinct ids give distinct names."""
    safe = _UNSAFE.sub("_", item_id).strip("._") or "item"
    if safe != item_id:
        import hashlib

        safe = f"{safe}-{hashlib.sha1(item_id.encode()).hexdigest()[:8]}"
    return f"{safe}.wav"


def _write_wav_durable(path: Path, samples: np.ndarray, rate: int) -> None:
    from omni2.audio import write_wav

    tmp = path.with_name(f".{path.stem}.tmp.wav")
    write_wav(tmp, samples, rate)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def run_item(engine: Any, item: EvalItem, options: Any, out: Path, asr: Any = None) -> dict:
    """Answer one item; never raises for a bad item — the error goes into the record."""
    from omni2.events import AudioChunk, Notice, TurnEnd

    t0 = time.perf_counter()
    record: dict[str, Any] = {
        "id": item.id, "status": "failed", "error": None, "question": item.question,
        "answers": item.answers, "audio": item.audio, "history_turns": len(item.history),
        "reply_text": "", "units": [], "n_units": 0, "wav": None, "reply_seconds": 0.0,
        "stop_reason": "", "timings": {}, "first_text_latency": None, "first_unit_latency": None,
        "first_audio_latency": None, "rtf": None, "notices": [], "asr_text": None, "asr_error": None,
    }
    chunks: list[np.ndarray] = []
    rate = 24_000
    result: TurnEnd | None = None
    try:
        session = engine.new_session()
        for audio, reply in item.history:
            try:
                engine.add_history(session, audio, reply)
            except Omni2Error as exc:
                raise Omni2Error(f"history audio {audio}: {exc}") from exc
        turn = engine.respond(session, item.audio, options)
        for event in turn:
            if isinstance(event, AudioChunk):
                chunks.append(np.asarray(event.samples, dtype=np.float32))
                rate = event.sample_rate
            elif isinstance(event, Notice):
                record["notices"].append(event.message)
            elif isinstance(event, TurnEnd):
                result = event
        result = result or turn.result
        if result is None:
            raise RuntimeError("the engine ended the turn without a result")
    except Omni2Error as exc:
        record["error"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - one broken item must not stop the run
        log.debug("item %s failed", item.id, exc_info=True)
        record["error"] = f"{type(exc).__name__}: {exc}"
    if result is not None:
        record.update({
            "reply_text": result.text, "units": list(result.units), "n_units": len(result.units),
            "stop_reason": result.stop_reason, "timings": dict(result.timings),
            "first_text_latency": result.first_text_latency, "first_unit_latency": result.first_unit_latency,
            "first_audio_latency": result.first_audio_latency,
        })
        if result.error:
            record["error"] = result.error
    if record["error"] is None:
        record["status"] = "ok"
        if chunks:
            samples = np.concatenate(chunks)
            name = wav_name(item.id)
            _write_wav_durable(out / WAVS / name, samples, rate)
            record["wav"] = f"{WAVS}/{name}"
            record["reply_seconds"] = len(samples) / rate
            total = record["timings"].get("total")
            if total is not None and record["reply_seconds"] > 0:
                record["rtf"] = total / record["reply_seconds"]
            if asr is not None:
                try:
                    record["asr_text"] = asr.transcribe(samples, rate)
                except Exception as exc:  # noqa: BLE001 - ASR trouble is recorded, not fatal
                    log.warning("ASR failed on %s: %s", item.id, exc)
                    record["asr_error"] = f"{type(exc).__name__}: {exc}"
    record["wall_seconds"] = time.perf_counter() - t0
    record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return record


def warm_up(engine: Any, options: Any) -> None:
    """One short throw-away reply, so the first item's latency is not the first-call overhead."""
    t = np.arange(16_000, dtype=np.float32) / 16_000
    tone = (0.1 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    try:
        engine.respond(engine.new_session(), tone, replace(options, max_new_tokens=4), rate=16_000).collect()
    except Exception as exc:  # noqa: BLE001 - a failed warm-up only costs accuracy of one latency
        log.warning("warm-up reply failed (%s); the first item's latency includes start-up costs", exc)


# --------------------------------------------------------------------------------------------
# the run


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops like Ctrl-C, so the summary is still written (SIGKILL loses at most one item)."""
    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class RunOutcome:
    """What :func:`run_eval` did, for the CLI's closing lines."""

    out: Path
    total: int
    ran: int
    skipped: int
    failed: int
    summary: dict
    interrupted: bool = False


def load_items(plan: EvalPlan) -> list[EvalItem]:
    if plan.data == "sample":
        from omni2.eval.sample import build_sample

        items = load_manifest(build_sample(plan.out / SAMPLE_DIR))
    else:
        items = load_manifest(plan.data)
    if plan.limit is not None:
        if plan.limit < 1:
            raise ConfigError("--limit must be at least 1")
        items = items[: plan.limit]
    return items


def run_eval(plan: EvalPlan, engine_factory: Callable[[], Any] | None = None) -> RunOutcome:
    """Run (or resume) the plan and (re)write answers.jsonl, summary.json and report.md."""
    settings = plan.settings()
    plan.out.mkdir(parents=True, exist_ok=True)
    with _run_lock(plan.out):
        return _run_locked(plan, settings, engine_factory)


@contextmanager
def _run_lock(out: Path) -> Iterator[None]:
    """One eval per run folder at a time (two would both run the same items); freed even by kill -9."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(out / LOCK, "w") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise ConfigError(f"another evaluation is running in {out}; wait for it or stop it first") from exc
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _run_locked(plan: EvalPlan, settings: dict[str, Any], engine_factory: Callable[[], Any] | None) -> RunOutcome:
    from omni2.eval.report import write_outputs

    info = prepare_run_dir(plan.out, settings, plan.force)
    items = load_items(plan)
    results = ResultsLog(plan.out / RESULTS)
    records = results.load()
    if plan.retry_failed:
        failed = [rid for rid, r in records.items() if r.get("status") != "ok"]
        if failed:
            log.info("retrying %d failed item(s)", len(failed))
            records = {rid: r for rid, r in records.items() if r.get("status") == "ok"}
            results.rewrite(list(records.values()))
    known = {it.id for it in items}
    stray = [rid for rid in records if rid not in known]
    if stray:
        log.info("%d result(s) in %s are not among the selected items (another --limit?); they are kept "
                 "but not reported", len(stray), RESULTS)
    todo = [it for it in items if it.id not in records]
    skipped = len(items) - len(todo)
    if skipped:
        log.info("resuming: %d of %d item(s) already done", skipped, len(items))
    (plan.out / WAVS).mkdir(exist_ok=True)

    ran = failed_now = 0
    interrupted = False
    asr_reason: str | None = info.get("asr_reason")
    if todo:
        engine = (engine_factory or (lambda: _load_engine(plan)))()
        asr, asr_reason = _make_asr(plan, engine)
        info.update(_engine_info(engine, asr, asr_reason))
        _atomic_write(plan.out / RUN_JSON, json.dumps(info, indent=2) + "\n")
        if plan.warmup:
            warm_up(engine, plan.options)
        from tqdm import tqdm

        bar = tqdm(total=len(items), initial=skipped, unit="item", desc="eval", disable=not plan.progress,
                   dynamic_ncols=True)
        try:
            with _sigterm_as_interrupt():
                for item in todo:
                    bar.set_postfix_str(item.id[:24])
                    record = run_item(engine, item, plan.options, plan.out, asr)
                    results.append(record)
                    records[item.id] = record
                    ran += 1
                    if record["status"] != "ok":
                        failed_now += 1
                        log.warning("item %s failed: %s", item.id, record["error"])
                    bar.update(1)
        except KeyboardInterrupt:
            interrupted = True
            log.warning("interrupted: %d item(s) finished this time; run the same command to continue", ran)
        finally:
            bar.close()
    summary = write_outputs(plan.out, items, records, info, asr_reason, complete=not interrupted)
    failed_total = sum(1 for it in items if records.get(it.id, {}).get("status") not in (None, "ok"))
    outcome = RunOutcome(plan.out, len(items), ran, skipped, failed_total, summary, interrupted)
    if interrupted:
        raise KeyboardInterrupt
    return outcome


def _load_engine(plan: EvalPlan) -> Any:
    from omni2.runtime import load_engine

    return load_engine(plan.model, decoder=plan.decoder, voice=plan.voice, device=plan.device,
                       dtype=plan.dtype, speak=not plan.text_only)


def _make_asr(plan: EvalPlan, engine: Any) -> tuple[Any, str | None]:
    from omni2.eval.asr import ASRRequest, make_asr

    if plan.text_only:
        return None, "text-only run (no spoken replies to transcribe)"
    if getattr(engine, "vocoder", None) is None:
        return None, "no spoken replies (no CosyVoice2 decoder was found)"
    loaded = engine.loaded
    req = ASRRequest(model_dir=Path(loaded.path), weights=Path(plan.asr_model) if plan.asr_model else None,
                     device=str(loaded.device), max_tokens=plan.asr_max_tokens)
    return make_asr(plan.asr, req)


def _engine_info(engine: Any, asr: Any, asr_reason: str | None) -> dict[str, Any]:
    loaded = engine.loaded
    return {
        "model_path": str(loaded.path),
        "random_weights": bool(getattr(loaded, "random_weights", False)),
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).replace("torch.", ""),
        "vocoder": engine.vocoder is not None,
        "asr_backend": getattr(asr, "name", None),
        "asr_reason": asr_reason,
    }
