"""The benchmark tool runs end to end on the tiny size and both sides do the same work (no times asserted)."""

from __future__ import annotations

import json

from omni2.bench import main


def test_bench_tiny_side_by_side(tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    assert main(["--size", "tiny", "--turns", "2", "--text-tokens", "9", "--history-tokens", "6",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "First-audio path, turn 2" in printed and "ours/official" in printed
    runs = json.loads(out.read_text())["runs"]
    ours, official = runs["ours"], runs["official"]
    # engineered lengths: 9 text tokens -> 3 windows of W=10 units on both sides
    assert ours["units"] == official["units"] == 30
    assert ours["audio_seconds"] == official["audio_seconds"] == 30 * 960 / 24000
    assert len(ours["windows"]) == len(official["windows"]) == 3
    # the official pattern re-prefills the whole history; ours only what is new
    assert ours["stages"]["prefill positions"] < official["stages"]["prefill positions"]
