"""End-to-end evaluation runs on the tiny random checkpoint: outputs, failures, kill -9 and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

from omni2.cli import main
from tests.conftest import REPO_ROOT, speak

QUICK = ["--max-new-tokens", "4", "--device", "cpu", "--dtype", "float32", "--no-progress"]


def _results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def sample_run(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    argv = ["eval", "--model", str(tiny_dir), "--data", "sample", "--out", str(out), "--limit", "5",
            "--asr-max-tokens", "4", *QUICK]
    assert main(argv) == 0
    return out, argv


def test_sample_run_writes_every_output(sample_run):
    out, _ = sample_run
    # The built-in set: 20 spoken questions (two of them two-turn conversations), made with espeak-ng.
    manifest = (out / "sample" / "manifest.jsonl").read_text().splitlines()
    assert len(manifest) == 20 and len(list((out / "sample").glob("*.wav"))) == 22

    results = _results(out)
    assert [r["id"] for r in results] == ["q01", "q02", "q03", "q04", "q05"]
    for r in results:
        assert r["status"] == "ok" and r["error"] is None, r
        assert r["units"] and r["n_units"] == len(r["units"])
        assert {"mel", "encoder", "adapter", "prefill", "llm", "tts", "vocoder", "total"} <= set(r["timings"])
        assert r["first_text_latency"] is not None or r["reply_text"] == ""
        assert 0 < r["first_audio_latency"] <= r["timings"]["total"]
        assert r["rtf"] == pytest.approx(r["timings"]["total"] / r["reply_seconds"])
        assert isinstance(r["asr_text"], str)  # the tiny checkpoint's random Whisper file: garbage, but run
        info = sf.info(str(out / r["wav"]))
        assert info.samplerate == 24_000 and info.frames == pytest.approx(r["reply_seconds"] * 24_000, abs=1)

    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [a["question_id"] for a in answers] == [r["id"] for r in results]
    assert set(answers[0]) == {"question_id", "prediction", "prediction_units"}
    assert answers[0]["prediction_units"] == "".join(f"<{u}>" for u in results[0]["units"])

    summary = json.loads((out / "summary.json").read_text())
    assert summary["items"] == {"selected": 5, "done": 5, "ok": 5, "failed": 0, "pending": 0, "with_answers": 5}
    assert summary["run"]["random_weights"] is True and summary["run"]["complete"] is True
    assert summary["accuracy"]["s2t"]["scored"] == 5 and summary["accuracy"]["s2s"]["scored"] == 5
    wer = summary["asr_wer"]
    assert isinstance(wer, dict) or wer.startswith("not computed: ")
    assert summary["utmos"].startswith("not computed: ")
    for key in ("first_text", "first_audio", "total"):
        assert {"p50", "p90", "p99"} <= set(summary["latency_ms"][key])
    assert summary["latency_ms"]["first_audio"]["n"] == 5 and summary["rtf"]["overall"] > 0
    assert summary["stages_ms"]["vocoder"] > 0

    report = (out / "report.md").read_text()
    assert "RANDOM weights" in report and "S2T accuracy" in report and "p99" in report
    for png in ("latency_hist.png", "stages.png", "accuracy.png"):
        assert f"]({png})" in report and (out / png).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "run.json").read_text())["settings"]["generation"]["max_new_tokens"] == 4


def test_rerun_skips_finished_and_refuses_other_settings(sample_run, capsys):
    out, argv = sample_run
    before = (out / "results.jsonl").read_bytes()
    t = time.perf_counter()
    assert main(argv) == 0  # nothing left to do: no model load, outputs rebuilt
    assert time.perf_counter() - t < 20
    assert (out / "results.jsonl").read_bytes() == before
    assert "5 already done, 0 run now" in capsys.readouterr().err

    changed = [a if a != "4" else "5" for a in argv]  # --max-new-tokens 5 (and --asr-max-tokens 5)
    assert main(changed) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "max_new_tokens: 4 in run.json, 5 now" in err and "--force" in err
    assert (out / "results.jsonl").read_bytes() == before


def test_failing_items_are_recorded_and_the_run_goes_on(tiny_dir, tmp_path, capsys):
    speak("What is the capital of Italy?", tmp_path / "good.wav")
    first = speak("Who wrote Hamlet?", tmp_path / "first.wav")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage" + os.urandom(200))
    sf.write(str(tmp_path / "silent.wav"), [0.0] * 16000, 16000)
    items = [
        {"id": "corrupt", "audio": "corrupt.wav", "answers": ["Rome"]},
        {"id": "missing", "audio": "no_such_file.wav"},
        {"id": "silent", "audio": "silent.wav"},
        {"id": "bad_history", "turns": [{"audio": "corrupt.wav"}, {"text": "Hi."}, {"audio": "first.wav"}]},
        {"id": "conv", "turns": [{"audio": "first.wav"}, {"text": "Shakespeare wrote it."}, {"audio": "good.wav"}],
         "answers": ["Rome"]},
    ]
    assert first.is_file()
    manifest = tmp_path / "items.jsonl"
    manifest.write_text("".join(json.dumps(i) + "\n" for i in items))
    out = tmp_path / "run"
    argv = ["eval", "--model", str(tiny_dir), "--data", str(manifest), "--out", str(out), "--asr", "none",
            "--no-warmup", *QUICK]
    assert main(argv) == 0
    results = {r["id"]: r for r in _results(out)}
    assert list(results) == ["corrupt", "missing", "silent", "bad_history", "conv"]
    assert {k for k, r in results.items() if r["status"] == "ok"} == {"conv"}
    for bad in ("corrupt", "missing", "silent", "bad_history"):
        assert results[bad]["status"] == "failed" and results[bad]["error"] and results[bad]["wav"] is None
    assert "silent" in results["silent"]["error"] and "history audio" in results["bad_history"]["error"]
    assert results["conv"]["history_turns"] == 1 and results["conv"]["units"]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["items"]["failed"] == 4
    assert {f["id"] for f in summary["failures"]} == {"corrupt", "missing", "silent", "bad_history"}
    assert summary["accuracy"]["s2s"] == "not computed: ASR disabled (--asr none)"
    assert summary["asr_wer"] == "not computed: ASR disabled (--asr none)"
    assert summary["accuracy"]["s2t"]["scored"] == 1
    answers = [json.loads(line)["question_id"] for line in (out / "answers.jsonl").read_text().splitlines()]
    assert answers == ["conv"]
    assert "## Failed items" in (out / "report.md").read_text()
    assert "4 failed" in capsys.readouterr().err

    # --retry-failed runs only the failed items again, without duplicating lines.
    assert main([*argv, "--retry-failed"]) == 0
    ids = [r["id"] for r in _results(out)]
    assert sorted(ids) == sorted(results) and len(ids) == len(set(ids))
    assert "1 already done, 4 run now" in capsys.readouterr().err


def test_kill_and_resume(tiny_dir, tmp_path):
    """SIGKILL the real CLI mid-run, tear its last line, restart: same lines kept, no duplicates, all done."""
    out = tmp_path / "run"
    cmd = [sys.executable, "launch.py", "eval", "--model", str(tiny_dir), "--data", "sample", "--out", str(out),
           "--limit", "6", "--asr", "none", "--max-new-tokens", "4", "--device", "cpu", "--dtype", "float32",
           "--no-warmup"]
    # One thread: on a small shared CI machine two OpenMP threads per process slow the vocoder 5-20x.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    results = out / "results.jsonl"
    with open(tmp_path / "first.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 180
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                if results.is_file() and results.read_bytes().count(b"\n") >= 1:
                    break
                time.sleep(0.02)
            running = proc.poll() is None
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert running, "the run finished before it could be killed:\n" + (tmp_path / "first.log").read_text()
    before = results.read_bytes()
    done_before = [json.loads(line)["id"] for line in before.decode().splitlines() if line.endswith("}")]
    assert 1 <= len(done_before) < 6
    complete = before[: before.rfind(b"\n") + 1]
    # A kill in the middle of a write leaves a torn last line: simulate one for certain.
    with open(results, "ab") as f:
        f.write(b'{"id": "q06", "status": "o')

    second = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=400, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "torn last line" in second.stderr and "already done" in second.stderr
    after = results.read_bytes()
    assert after.startswith(complete)  # nothing finished before the kill was lost or rewritten
    ids = [json.loads(line)["id"] for line in after.decode().splitlines()]
    assert len(ids) == len(set(ids)) == 6 and ids == [f"q{i:02d}" for i in range(1, 7)]
    assert len((out / "answers.jsonl").read_text().splitlines()) == 6
    assert json.loads((out / "summary.json").read_text())["run"]["complete"] is True
    assert "eval: 100%" in second.stderr  # the progress bar ran
