"""Recorded-audio evaluation of omni2 (spec §5): spoken-QA accuracy, ASR-WER, latency, RTF.

    python launch.py eval --model DIR --data sample --out runs/sample

``manifests`` reads evaluation sets, ``runner`` answers them resumably, ``asr`` transcribes the
spoken replies, ``metrics`` scores them and ``report`` writes summary.json / report.md / plots.
"""
