"""Turn results.jsonl into the official answers.jsonl, summary.json, report.md and PNG plots.

Everything here is recomputed from the results records on every run (also after a resume or an
interruption), so the outputs always agree with results.jsonl. Scores that cannot be computed
are the string "not computed: <reason>" — never a number that looks like a measurement.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from omni2.eval import metrics
from omni2.eval.asr import utmos_unavailable
from omni2.eval.manifests import EvalItem

log = logging.getLogger(__name__)

STAGES = ("audio", "mel", "encoder", "adapter", "prefill", "llm", "tts", "vocoder")
LATENCIES = ("first_text_latency", "first_unit_latency", "first_audio_latency")

# arXiv v1 Table 1 (spec §5): Llama Questions / Web Questions accuracy (%), ASR-WER, UTMOS, latency (ms).
PAPER = {
    "0.5B": {"llamaq_s2t": 45.7, "llamaq_s2s": 38.7, "webq_s2t": 17.7, "webq_s2s": 16.8, "wer": 2.64,
             "utmos": 4.21, "latency_ms": 542.71},
    "1.5B": {"llamaq_s2t": 62.0, "llamaq_s2s": 52.7, "webq_s2t": 28.2, "webq_s2s": 26.6, "wer": 3.06,
             "utmos": 4.22, "latency_ms": 552.76},
    "3B": {"llamaq_s2t": 64.3, "llamaq_s2s": 55.7, "webq_s2t": 30.5, "webq_s2s": 28.0, "wer": 3.37,
           "utmos": 4.22, "latency_ms": 567.84},
    "7B": {"llamaq_s2t": 70.3, "llamaq_s2s": 60.7, "webq_s2t": 34.5, "webq_s2s": 31.3, "wer": 3.26,
           "utmos": 4.19, "latency_ms": 582.91},
    "14B": {"llamaq_s2t": 73.0, "llamaq_s2s": 62.7, "webq_s2t": 40.4, "webq_s2s": 37.1, "wer": 3.89,
            "utmos": 4.20, "latency_ms": 663.32},
}


def not_computed(reason: str) -> str:
    return f"not computed: {reason}"


def paper_reference(model_path: str | None) -> tuple[str, dict] | None:
    """The paper's row for an official English model folder name (LLaMA-Omni2-7B …), if any."""
    if not model_path:
        return None
    name = Path(model_path).name
    m = re.fullmatch(r"LLaMA-Omni2-(\d+(?:\.\d+)?B)", name, flags=re.IGNORECASE)
    if not m or m.group(1).upper() not in PAPER:
        return None
    return name, PAPER[m.group(1).upper()]


# --------------------------------------------------------------------------------------------
# summary


def _ms(stats: dict) -> dict:
    return {k: (v * 1000.0 if isinstance(v, float) and k != "n" else v) for k, v in stats.items()}


def summarize(items: list[EvalItem], records: dict[str, dict], info: dict, asr_reason: str | None,
              complete: bool = True) -> dict[str, Any]:
    """All summary numbers of the selected items (in manifest order)."""
    done = [records[it.id] for it in items if it.id in records]
    ok = [r for r in done if r.get("status") == "ok"]
    failed = [r for r in done if r.get("status") != "ok"]
    with_answers = [r for r in ok if r.get("answers")]
    per_item: list[dict[str, Any]] = []

    s2t_flags, s2s_flags, wer_refs, wer_hyps = [], [], [], []
    for r in done:
        row: dict[str, Any] = {"id": r["id"], "status": r.get("status"), "s2t": None, "s2s": None,
                               "wer": None}
        if r.get("status") == "ok":
            if r.get("answers"):
                row["s2t"] = metrics.answer_in_reply(r.get("reply_text", ""), r["answers"])
                s2t_flags.append(row["s2t"])
            if r.get("asr_text") is not None:
                if r.get("answers"):
                    row["s2s"] = metrics.answer_in_reply(r["asr_text"], r["answers"])
                    s2s_flags.append(row["s2s"])
                row["wer"] = metrics.item_wer(r.get("reply_text", ""), r["asr_text"])
                wer_refs.append(r.get("reply_text", ""))
                wer_hyps.append(r["asr_text"])
        fa = r.get("first_audio_latency")
        row["first_audio_ms"] = None if fa is None else fa * 1000
        per_item.append(row)

    no_answers = "the evaluation data has no reference answers"
    if s2t_flags:
        s2t: Any = {"value": metrics.accuracy(s2t_flags), "correct": sum(s2t_flags), "scored": len(s2t_flags)}
    else:
        s2t = not_computed(no_answers if ok else "no item was answered")
    if asr_reason:
        s2s: Any = not_computed(asr_reason)
        wer: Any = not_computed(asr_reason)
    else:
        n_asr_failed = sum(1 for r in ok if r.get("asr_error"))
        if s2s_flags:
            s2s = {"value": metrics.accuracy(s2s_flags), "correct": sum(s2s_flags), "scored": len(s2s_flags)}
        else:
            s2s = not_computed(no_answers if ok and not with_answers else "no spoken reply was transcribed")
        w = metrics.wer(wer_refs, wer_hyps) if wer_refs else None
        if w is not None and w.wer is not None:
            wer = {"value": w.wer, **{k: v for k, v in w.as_dict().items() if k != "wer"}}
        else:
            wer = not_computed("no transcribed reply with words to compare")
        if n_asr_failed and isinstance(s2s, dict):
            s2s["asr_failures"] = n_asr_failed

    latency = {name.replace("_latency", ""): _ms(metrics.percentiles(r.get(name) for r in ok))
               for name in LATENCIES}
    latency["total"] = _ms(metrics.percentiles(r.get("timings", {}).get("total") for r in ok))
    stages = {}
    for stage in STAGES:
        vals = [r.get("timings", {}).get(stage) for r in ok]
        vals = [v for v in vals if v is not None]
        if vals:
            stages[stage] = 1000.0 * sum(vals) / len(vals)
    total_time = sum(r.get("timings", {}).get("total", 0.0) for r in ok if r.get("reply_seconds"))
    total_audio = sum(r.get("reply_seconds") or 0.0 for r in ok)
    stop_reasons: dict[str, int] = {}
    for r in ok:
        stop_reasons[r.get("stop_reason") or "?"] = stop_reasons.get(r.get("stop_reason") or "?", 0) + 1

    return {
        "run": {
            "complete": complete and len(done) == len(items),
            "model_path": info.get("model_path", info.get("settings", {}).get("model")),
            "random_weights": info.get("random_weights"),
            "device": info.get("device"), "dtype": info.get("dtype"),
            "asr_backend": info.get("asr_backend"),
            "settings": info.get("settings", {}),
            "created": info.get("created"), "updated": info.get("updated"),
        },
        "items": {"selected": len(items), "done": len(done), "ok": len(ok), "failed": len(failed),
                  "pending": len(items) - len(done), "with_answers": len(with_answers)},
        "accuracy": {"s2t": s2t, "s2s": s2s},
        "asr_wer": wer,
        "utmos": not_computed(utmos_unavailable()),
        "latency_ms": latency,
        "stages_ms": stages,
        "rtf": {"overall": metrics.rtf(total_time, total_audio),
                "per_item": metrics.percentiles(r.get("rtf") for r in ok)},
        "time_per_item_s": metrics.percentiles(r.get("wall_seconds") for r in done),
        "reply": {"mean_units": _mean([r.get("n_units", 0) for r in ok]),
                  "mean_seconds": _mean([r.get("reply_seconds") or 0.0 for r in ok]),
                  "mean_words": _mean([metrics.word_count(r.get("reply_text", "")) for r in ok]),
                  "stop_reasons": stop_reasons},
        "failures": [{"id": r["id"], "error": r.get("error")} for r in failed],
        "per_item": per_item,
    }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


# --------------------------------------------------------------------------------------------
# files


def write_answers(path: Path, items: list[EvalItem], records: dict[str, dict]) -> int:
    """The official answers.jsonl (question_id, prediction, prediction_units) for answered items."""
    from omni2.eval.runner import _atomic_write

    lines = []
    for it in items:
        r = records.get(it.id)
        if r is None or r.get("status") != "ok":
            continue
        lines.append(json.dumps({"question_id": it.id, "prediction": r.get("reply_text", ""),
                                 "prediction_units": "".join(f"<{u}>" for u in r.get("units", []))},
                                ensure_ascii=False) + "\n")
    _atomic_write(path, "".join(lines))
    return len(lines)


def write_outputs(out: Path, items: list[EvalItem], records: dict[str, dict], info: dict,
                  asr_reason: str | None, complete: bool = True) -> dict[str, Any]:
    """answers.jsonl, summary.json, plots and report.md in ``out``; returns the summary."""
    from omni2.eval.runner import ANSWERS, _atomic_write

    write_answers(out / ANSWERS, items, records)
    summary = summarize(items, records, info, asr_reason, complete)
    _atomic_write(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    try:
        plots = write_plots(out, items, records, summary)
    except Exception as exc:  # noqa: BLE001 - a plotting problem must not hide the numbers
        log.warning("could not draw the plots: %s", exc)
        plots = {}
    _atomic_write(out / "report.md", render_markdown(summary, plots))
    return summary


def _figure(w: float = 6.4, h: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def write_plots(out: Path, items: list[EvalItem], records: dict[str, dict], summary: dict) -> dict[str, str]:
    """latency_hist.png, stages.png and accuracy.png (no pyplot: no global state, no display)."""
    ok = [records[it.id] for it in items if records.get(it.id, {}).get("status") == "ok"]
    plots: dict[str, str] = {}

    fig = _figure()
    ax = fig.add_subplot()
    drew = False
    for key, label in (("first_text_latency", "first text"), ("first_audio_latency", "first audio")):
        vals = [r[key] * 1000 for r in ok if r.get(key) is not None]
        if vals:
            ax.hist(vals, bins=min(30, max(5, len(vals))), alpha=0.6, label=f"{label} (n={len(vals)})")
            drew = True
    if drew:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no latencies recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("latency from end of question (ms)")
    ax.set_ylabel("items")
    ax.set_title("First-text and first-audio latency")
    fig.tight_layout()
    fig.savefig(out / "latency_hist.png")
    plots["latency"] = "latency_hist.png"

    fig = _figure()
    ax = fig.add_subplot()
    stages = summary["stages_ms"]
    if stages:
        names = list(stages)
        ax.bar(names, [stages[n] for n in names], color="tab:blue")
        for i, n in enumerate(names):
            ax.annotate(f"{stages[n]:.0f}", (i, stages[n]), ha="center", va="bottom", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no timings recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("mean time per reply (ms)")
    ax.set_title("Time per pipeline stage")
    fig.tight_layout()
    fig.savefig(out / "stages.png")
    plots["stages"] = "stages.png"

    fig = _figure(6.4, 2.0)
    ax = fig.add_subplot()
    ax.axis("off")
    rows = [[label, _shorten(_fmt_score(val, pct=pct), 72)] for label, val, pct in _headline(summary)]
    table = ax.table(cellText=rows, colLabels=["metric", "value"], loc="center", cellLoc="left",
                     colWidths=[0.35, 0.65])
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png")
    plots["accuracy"] = "accuracy.png"
    return plots


# --------------------------------------------------------------------------------------------
# markdown


def _headline(summary: dict) -> list[tuple[str, Any, bool]]:
    lat = summary["latency_ms"]["first_audio"]
    return [
        ("S2T accuracy", summary["accuracy"]["s2t"], True),
        ("S2S accuracy", summary["accuracy"]["s2s"], True),
        ("ASR-WER", summary["asr_wer"], True),
        ("UTMOS", summary["utmos"], False),
        ("first-audio latency p50 (ms)",
         lat["p50"] if lat["p50"] is not None else not_computed("no spoken replies"), False),
    ]


def _fmt_score(value: Any, pct: bool = False) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        v = value.get("value")
        extra = f" ({value['correct']}/{value['scored']})" if "correct" in value else ""
        if "reference_words" in value:
            extra = f" ({value['pairs']} replies, {value['reference_words']} words)"
        return ("–" if v is None else (f"{100 * v:.1f} %" if pct else f"{v:.3f}")) + extra
    if value is None:
        return "–"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def _num(v: Any, fmt: str = "{:.0f}") -> str:
    return "–" if v is None else fmt.format(v)


def render_markdown(summary: dict, plots: dict[str, str]) -> str:
    run, items = summary["run"], summary["items"]
    s = run.get("settings", {})
    lines = ["# omni2 evaluation report", ""]
    if run.get("random_weights"):
        from omni2.checkpoint import RANDOM_WEIGHTS_NOTICE

        lines += [f"> **{RANDOM_WEIGHTS_NOTICE}** The numbers below only show that the pipeline works.", ""]
    if not run.get("complete"):
        lines += [f"> **Incomplete run**: {items['done']} of {items['selected']} items done. Run the same "
                  "command again to finish it.", ""]
    lines += [
        f"- model: `{run.get('model_path')}` ({run.get('device')}, {run.get('dtype')})",
        f"- data: `{s.get('data')}`",
        f"- generation: `{json.dumps(s.get('generation', {}))}`"
        + (" (text only)" if s.get("text_only") else ""),
        f"- ASR: {run.get('asr_backend') or s.get('asr')}",
        f"- items: {items['selected']} selected, {items['done']} done, {items['ok']} answered, "
        f"{items['failed']} failed, {items['with_answers']} with reference answers",
        f"- time per item: {_num(summary['time_per_item_s'].get('mean'), '{:.2f}')} s (mean, wall clock)",
        "",
        "## Scores",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {label} | {_fmt_score(val, pct=pct)} |" for label, val, pct in _headline(summary)]
    ref = paper_reference(run.get("model_path"))
    if ref:
        name, p = ref
        lines += ["", f"Paper (arXiv v1, Table 1) for {name}: Llama Questions S2T {p['llamaq_s2t']} / S2S "
                  f"{p['llamaq_s2s']}, Web Questions S2T {p['webq_s2t']} / S2S {p['webq_s2s']}, ASR-WER "
                  f"{p['wer']}, UTMOS {p['utmos']}, latency {p['latency_ms']} ms (NVIDIA L40)."]
    if plots.get("accuracy"):
        lines += ["", f"![scores]({plots['accuracy']})"]

    lines += ["", "## Latency (ms, from the end of the question)", "",
              "| | n | mean | p50 | p90 | p99 | max |", "|---|---|---|---|---|---|---|"]
    for key, st in summary["latency_ms"].items():
        lines.append(f"| {key.replace('_', ' ')} | {st['n']} | {_num(st['mean'])} | {_num(st['p50'])} | "
                     f"{_num(st['p90'])} | {_num(st['p99'])} | {_num(st['max'])} |")
    rtf = summary["rtf"]
    f3 = "{:.3f}"
    lines += ["", f"Real-time factor (processing time / reply audio): overall {_num(rtf['overall'], f3)}, "
              f"per item p50 {_num(rtf['per_item']['p50'], f3)}, p90 {_num(rtf['per_item']['p90'], f3)}."]
    if plots.get("latency"):
        lines += ["", f"![latency histogram]({plots['latency']})"]

    lines += ["", "## Time per stage (mean ms per reply)", "", "| stage | ms |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in summary["stages_ms"].items()]
    if plots.get("stages"):
        lines += ["", f"![stages]({plots['stages']})"]

    if summary["failures"]:
        lines += ["", "## Failed items", "", "| id | error |", "|---|---|"]
        lines += [f"| {f['id']} | {_cell(f['error'])} |" for f in summary["failures"]]

    lines += ["", "## Items", "", "| id | status | S2T | S2S | WER | first audio ms |",
              "|---|---|---|---|---|---|"]
    for row in summary["per_item"][:500]:
        lines.append(f"| {row['id']} | {row['status']} | {_flag(row['s2t'])} | {_flag(row['s2s'])} | "
                     f"{_num(row['wer'], '{:.2f}')} | {_num(row['first_audio_ms'])} |")
    if len(summary["per_item"]) > 500:
        lines.append(f"| … {len(summary['per_item']) - 500} more in summary.json | | | | | |")
    lines += ["", "Accuracy: a reference answer appears (whole words, after normalisation) in the reply text "
              "(S2T) or in the ASR transcript of the spoken reply (S2S). ASR-WER: text reply vs transcript, "
              "Whisper English normaliser, corpus level.", ""]
    return "\n".join(lines)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _flag(v: bool | None) -> str:
    return "–" if v is None else ("yes" if v else "no")


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")[:200]
