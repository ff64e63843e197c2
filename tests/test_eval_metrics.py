"""Evaluation pieces that need no model: metrics on known strings, manifests, results-file repair."""

from __future__ import annotations

import json

import pytest

from omni2.errors import ConfigError
from omni2.eval import metrics
from omni2.eval.manifests import load_manifest
from omni2.eval.runner import ResultsLog, prepare_run_dir, wav_name
from omni2.eval.sample import QUESTIONS, sample_size

# --------------------------------------------------------------------------------------------
# accuracy


@pytest.mark.parametrize("reply, answers, expected", [
    ("The capital of France is Paris.", ["Paris"], True),
    ("the capital of france is PARIS!", "paris", True),  # case and punctuation
    ("It is Jupiter's moon.", ["Jupiter"], True),  # possessive
    ("A spider has eight legs.", ["8"], True),  # spelled number vs digits (Whisper normaliser)
    ("A spider has 8 legs.", ["eight", "8"], True),
    ("There are 14 of them.", ["4"], False),  # whole words only
    ("Parisian food is good.", ["Paris"], False),
    ("Pelé was a footballer.", ["Pele"], True),  # accents
    ("It is Leonardo da Vinci.", ["da Vinci"], True),  # multi-word answers
    ("It is carbon dioxide, CO2.", ["carbon dioxide", "CO2"], True),
    ("Mars is red.", ["Venus"], False),
    ("", ["Paris"], False),
    ("Paris", [], False),  # no reference: never counted correct
    ("Paris", ["", "  "], False),
])
def test_answer_in_reply(reply, answers, expected):
    assert metrics.answer_in_reply(reply, answers) is expected


def test_normalisers():
    assert metrics.normalize_basic("  Hello,   World!! Café & Co. ") == "hello world cafe and co"
    assert metrics.normalize_whisper("Mr. Smith paid twenty dollars.") == "mister smith paid $20"
    assert metrics.accuracy([True, False, True, True]) == 0.75
    assert metrics.accuracy([]) is None


# --------------------------------------------------------------------------------------------
# WER


def test_wer_normalisation_and_counts():
    # Punctuation, case, contractions, spelled numbers and British spelling all vanish in normalisation.
    assert metrics.wer(["Hello, world! It's twenty past."], ["hello world it is 20 past"]).wer == 0.0
    assert metrics.wer(["The colour is grey."], ["the color is gray"]).wer == 0.0
    w = metrics.wer(["the cat sat down"], ["the cat down"])
    assert w.wer == pytest.approx(0.25) and (w.deletions, w.hits, w.reference_words) == (1, 3, 4)
    # Corpus level: errors summed over pairs, divided by all reference words (not a mean of rates).
    w = metrics.wer(["a b c d e f g h", "x y"], ["a b c d e f g h", "q"])
    assert w.wer == pytest.approx(2 / 10) and w.pairs == 2
    # Without normalisation, punctuation and case count as errors.
    assert metrics.wer(["Hello, world!"], ["hello world"], normalize=False).wer == 1.0
    # An empty transcript is all deletions; an empty reference cannot be scored.
    assert metrics.wer(["two words"], [""]).wer == 1.0
    w = metrics.wer(["...", "ok then"], ["noise", "ok then"])
    assert w.wer == 0.0 and w.skipped == 1 and w.pairs == 1
    assert metrics.wer(["!!!"], ["x"]).wer is None
    assert metrics.item_wer("good morning", "good evening") == 0.5
    with pytest.raises(ValueError):
        metrics.wer(["a"], [])


def test_percentiles_and_rtf():
    p = metrics.percentiles([float(i) for i in range(1, 101)] + [None])
    assert p["n"] == 100 and p["p50"] == pytest.approx(50.5)
    assert p["p90"] == pytest.approx(90.1) and p["p99"] == pytest.approx(99.01)
    assert p["min"] == 1 and p["max"] == 100 and p["mean"] == pytest.approx(50.5)
    empty = metrics.percentiles([None, None])
    assert empty["n"] == 0 and empty["p50"] is None
    assert metrics.rtf(2.0, 4.0) == 0.5
    assert metrics.rtf(2.0, 0.0) is None and metrics.rtf(None, 1.0) is None


# --------------------------------------------------------------------------------------------
# manifests


def test_official_questions_json(tmp_path):
    (tmp_path / "wav").mkdir()
    for n in ("a0", "a1", "b0"):
        (tmp_path / "wav" / f"{n}.wav").write_bytes(b"x")
    questions = [
        {"id": "conv", "answers": ["Tokyo"], "conversation": [
            {"from": "human", "speech": "wav/a0.wav", "text": "<speech>\nPlease answer."},
            {"from": "gpt", "text": "Japan is in Asia."},
            {"from": "human", "speech": "wav/a1.wav", "text": "<speech>"}]},
        {"id": "single", "conversation": [{"from": "human", "speech": "wav/b0.wav"}]},
    ]
    path = tmp_path / "questions.json"
    path.write_text(json.dumps(questions))
    items = load_manifest(path)
    assert [it.id for it in items] == ["conv", "single"]
    conv = items[0]
    assert conv.audio == str(tmp_path / "wav" / "a1.wav")
    assert conv.history == [(str(tmp_path / "wav" / "a0.wav"), "Japan is in Asia.")]
    assert conv.answers == ["Tokyo"] and items[1].answers == [] and items[1].history == []

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "x", "conversation": [{"from": "human", "speech": "a.wav"},
                                                            {"from": "gpt", "text": "hi"}]}]))
    with pytest.raises(ConfigError, match="end with a user turn"):
        load_manifest(bad)
    bad.write_text(json.dumps([{"id": "x", "audio": "a.wav"}, {"id": "x", "audio": "b.wav"}]))
    with pytest.raises(ConfigError, match="duplicate item id"):
        load_manifest(bad)


def test_jsonl_and_folder(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join([
        json.dumps({"id": "one", "audio": "q1.wav", "answers": ["Paris"], "question": "Capital?"}),
        "# a comment",
        "",
        json.dumps({"id": "two", "turns": [{"audio": "h.wav"}, {"text": "Earlier reply."}, {"audio": "q2.wav"}],
                    "answer": 42}),
    ]) + "\n")
    one, two = load_manifest(path)
    assert one.audio == str(tmp_path / "q1.wav") and one.answers == ["Paris"] and one.question == "Capital?"
    assert two.history == [(str(tmp_path / "h.wav"), "Earlier reply.")] and two.answers == ["42"]
    path.write_text('{"id": "x", "audio": "a.wav"}\n{"id": broken\n')
    with pytest.raises(ConfigError, match=r"items.jsonl:2"):
        load_manifest(path)

    folder = tmp_path / "audio"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.wav", "a.flac", "sub/c.wav", "notes.txt"):
        (folder / name).write_bytes(b"x")
    (folder / "answers.json").write_text(json.dumps({"a": "yes", "sub/c": ["no", "nope"]}))
    items = load_manifest(folder)
    assert [it.id for it in items] == ["a", "b", "sub/c"]
    assert items[0].answers == ["yes"] and items[1].answers == [] and items[2].answers == ["no", "nope"]
    with pytest.raises(ConfigError, match="not found"):
        load_manifest(tmp_path / "missing.jsonl")


def test_sample_set_size():
    assert 18 <= sample_size() <= 25 and all(ans for _, _, ans in QUESTIONS)


def test_wav_names_are_distinct():
    names = {wav_name(i) for i in ("a/b", "a_b", "a b", "q01", "../x")}
    assert len(names) == 5 and wav_name("q01") == "q01.wav" and all("/" not in n for n in names)


# --------------------------------------------------------------------------------------------
# results.jsonl and run.json


def _line(i: int, status: str = "ok") -> str:
    return json.dumps({"id": f"q{i}", "status": status, "reply_text": f"reply {i}"}) + "\n"


def test_results_log_repairs_torn_tail(tmp_path):
    path = tmp_path / "results.jsonl"
    good = _line(1) + _line(2)
    path.write_text(good + _line(3)[:17])  # killed in the middle of writing line 3
    log = ResultsLog(path)
    assert list(log.load()) == ["q1", "q2"]
    assert path.read_text() == good  # the torn tail is cut off, so the next append starts a clean line
    log.append({"id": "q3", "status": "failed", "error": "bad audio"})
    assert list(log.load()) == ["q1", "q2", "q3"] and path.read_text().count("\n") == 3

    path.write_text(good + _line(3).rstrip("\n"))  # complete record, only its newline lost
    assert list(ResultsLog(path).load()) == ["q1", "q2", "q3"] and path.read_text().endswith("}\n")

    path.write_text(_line(1) + "garbage\n" + _line(2) + _line(1).replace("reply 1", "again"))
    recs = ResultsLog(path).load()  # unreadable middle line skipped; the last record of an id wins
    assert list(recs) == ["q1", "q2"] and recs["q1"]["reply_text"] == "again"


def test_run_dir_refuses_other_settings(tmp_path):
    settings = {"model": "m", "generation": {"max_new_tokens": 8}}
    prepare_run_dir(tmp_path, settings, force=False)
    (tmp_path / "results.jsonl").write_text(_line(1))
    assert prepare_run_dir(tmp_path, settings, force=False)["resumed"] == 1
    other = {"model": "m", "generation": {"max_new_tokens": 9}}
    with pytest.raises(ConfigError, match=r"generation\.max_new_tokens: 8 in run\.json, 9 now"):
        prepare_run_dir(tmp_path, other, force=False)
    assert (tmp_path / "results.jsonl").is_file()
    prepare_run_dir(tmp_path, other, force=True)
    archived = list(tmp_path.glob("superseded-*/results.jsonl"))
    assert len(archived) == 1 and not (tmp_path / "results.jsonl").exists()
    assert json.loads((tmp_path / "run.json").read_text())["settings"] == other


# --------------------------------------------------------------------------------------------
# summary and report from records


def test_summary_scores_and_not_computed(tmp_path):
    from omni2.eval.manifests import EvalItem
    from omni2.eval.report import render_markdown, summarize, write_answers

    ok = {"id": "a", "status": "ok", "answers": ["Paris"], "reply_text": "It is Paris.",
          "asr_text": "It is Paris!", "units": [3, 1], "n_units": 2, "reply_seconds": 2.0, "rtf": 0.5,
          "timings": {"total": 1.0, "llm": 0.25}, "first_text_latency": 0.1, "first_audio_latency": 0.4,
          "wall_seconds": 1.5, "stop_reason": "eos"}
    wrong = {**ok, "id": "b", "reply_text": "It is Lyon.", "asr_text": "It is lion.", "first_audio_latency": 0.6}
    failed = {"id": "c", "status": "failed", "error": "the audio is silent", "wall_seconds": 0.1}
    items = [EvalItem("a", "a.wav", answers=["Paris"]), EvalItem("b", "b.wav", answers=["Paris"]),
             EvalItem("c", "c.wav"), EvalItem("d", "d.wav")]
    records = {r["id"]: r for r in (ok, wrong, failed)}
    s = summarize(items, records, {"settings": {"data": "x"}, "random_weights": False}, None)
    assert s["items"] == {"selected": 4, "done": 3, "ok": 2, "failed": 1, "pending": 1, "with_answers": 2}
    assert s["run"]["complete"] is False
    assert s["accuracy"]["s2t"] == {"value": 0.5, "correct": 1, "scored": 2}
    assert s["accuracy"]["s2s"]["value"] == 0.5
    assert s["asr_wer"]["value"] == pytest.approx(1 / 6) and s["asr_wer"]["substitutions"] == 1
    assert s["latency_ms"]["first_audio"]["p50"] == pytest.approx(500.0)
    assert s["stages_ms"]["llm"] == pytest.approx(250.0) and s["rtf"]["overall"] == pytest.approx(0.5)
    assert s["failures"] == [{"id": "c", "error": "the audio is silent"}]
    md = render_markdown(s, {})
    assert "Incomplete run" in md and "50.0 % (1/2)" in md and "the audio is silent" in md

    s = summarize(items, records, {"settings": {}}, "ASR disabled (--asr none)")
    assert s["accuracy"]["s2s"] == s["asr_wer"] == "not computed: ASR disabled (--asr none)"
    assert "not computed: ASR disabled" in render_markdown(s, {})
    no_answers = [EvalItem("a", "a.wav")]
    s = summarize(no_answers, {"a": {**ok, "answers": []}}, {}, None)
    assert s["accuracy"]["s2t"] == "not computed: the evaluation data has no reference answers"

    assert write_answers(tmp_path / "answers.jsonl", items, records) == 2
    first = json.loads((tmp_path / "answers.jsonl").read_text().splitlines()[0])
    assert first == {"question_id": "a", "prediction": "It is Paris.", "prediction_units": "<3><1>"}


def test_asr_without_weights_says_why(tmp_path, monkeypatch):
    import omni2.checkpoint
    from omni2.eval.asr import ASRRequest, make_asr

    monkeypatch.setattr(omni2.checkpoint, "DEFAULT_CHECKPOINTS", tmp_path / "no_checkpoints")
    asr, reason = make_asr("whisper", ASRRequest(model_dir=None))
    assert asr is None and "no Whisper weights file" in reason and "download --only whisper" in reason
    asr, reason = make_asr("whisper", ASRRequest(weights=tmp_path / "missing.pt"))
    assert asr is None and "not found" in reason
    assert make_asr("none", ASRRequest()) == (None, "ASR disabled (--asr none)")
    assert "unknown ASR backend" in make_asr("nope", ASRRequest())[1]


def test_one_run_per_folder(tmp_path):
    from omni2.eval.runner import _run_lock

    with _run_lock(tmp_path):
        with pytest.raises(ConfigError, match="another evaluation is running"):
            with _run_lock(tmp_path):
                pass
    with _run_lock(tmp_path):  # released again
        pass
