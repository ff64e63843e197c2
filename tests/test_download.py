"""`launch.py download` against a local stand-in for the Hub and the file hosts (no real network)."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from omni2 import download as dl
from omni2.errors import CheckpointError
from tests.fake_hub import FakeHub, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent

MODEL_REPO = "ICTNLP/LLaMA-Omni2-0.5B"
MODEL_FILES: dict[str, bytes] = {
    "config.json": json.dumps({"model_type": "omni2_speech2s_qwen2", "hidden_size": 8}).encode(),
    "generation_config.json": b'{"eos_token_id": [151645, 151643]}',
    "tokenizer_config.json": b'{"model_max_length": 4096}',
    "vocab.json": b'{"a": 0}',
    "merges.txt": b"#version: 0.2\n",
    "model.safetensors": bytes(range(256)) * 64,
    "tts_tokenizer/tokenizer_config.json": b"{}",
    "tts_tokenizer/vocab.json": b'{"b": 0}',
    "tts_tokenizer/merges.txt": b"#version: 0.2\n",
    "README.md": b"# fake\n",
    "pytorch_model.bin": b"unused pickled weights",  # not matched by the model patterns
    ".gitattributes": b"*.safetensors filter=lfs\n",
}
DECODER_FILES: dict[str, bytes] = {
    "cosyvoice.yaml": b"sample_rate: 24000\n",
    "flow.pt": b"flow" * 500,
    "hift.pt": b"hift" * 500,
    "campplus.onnx": b"onnx" * 100,
    # the big ones omni2 never uses: must not be fetched
    "speech_tokenizer_v2.onnx": b"x",
    "flow.decoder.estimator.fp32.onnx": b"x",
    "flow.decoder.estimator.fp16.A10.plan": b"x",
    "flow.encoder.fp32.zip": b"x",
    "spk2info.pt": b"x",
    "CosyVoice-BlankEN/config.json": b"{}",
    "CosyVoice-BlankEN/model.safetensors": b"x",
}
SKIPPED_DECODER = [n for n in DECODER_FILES if n not in dl.DECODER_FILES]
WHISPER_BYTES = bytes((i * 7) % 251 for i in range(300_000))
WHISPER_SHA = hashlib.sha256(WHISPER_BYTES).hexdigest()


def _wav(seconds: float, rate: int = 22050) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x01\x00" * int(seconds * rate))
    return buf.getvalue()


VOICES = {"prompt_en.wav": _wav(0.05), "prompt_zh.wav": _wav(0.07)}


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A running fake Hub with the official repos and files; env points omni2 at it (online)."""
    server = FakeHub()
    server.add_repo(MODEL_REPO, MODEL_FILES)
    server.add_repo(dl.DECODER_REPO, DECODER_FILES)
    with server:
        server.add_file(f"/whisper/{WHISPER_SHA}/large-v3.pt", WHISPER_BYTES)
        for name, data in VOICES.items():
            server.add_file(f"/gh/llama_omni2/inference/{name}", data)
        for name in dl.ENV_OFFLINE:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv(dl.ENV_ENDPOINT, server.url)
        monkeypatch.setenv(dl.ENV_WHISPER_URL, f"{server.url}/whisper/{WHISPER_SHA}/large-v3.pt")
        monkeypatch.setenv(dl.ENV_VOICES_URL, f"{server.url}/gh/llama_omni2/inference")
        yield server


def _run(dest: Path, tmp_path: Path, **kwargs: object) -> dl.DownloadResult:
    return dl.download(dest, cache_dir=tmp_path / "hf-cache", progress=False, **kwargs)  # type: ignore[arg-type]


def _expected_paths(dest: Path) -> dict[Path, bytes]:
    skipped = ("pytorch_model.bin", ".gitattributes")
    want = {dest / "LLaMA-Omni2-0.5B" / n: b for n, b in MODEL_FILES.items() if n not in skipped}
    want |= {dest / "cosy2_decoder" / n: DECODER_FILES[n] for n in dl.DECODER_FILES}
    want[dest / "speech_encoder" / "large-v3.pt"] = WHISPER_BYTES
    want |= {dest / "voices" / n: b for n, b in VOICES.items()}
    return want


def test_full_download_layout_then_rerun_skips(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "checkpoints"
    result = _run(dest, tmp_path)
    want = _expected_paths(dest)
    for path, data in want.items():
        assert path.read_bytes() == data, path
    assert sorted(result.fetched) == sorted(want)
    assert not result.missing
    assert not (dest / "LLaMA-Omni2-0.5B" / "pytorch_model.bin").exists()
    for name in SKIPPED_DECODER:
        assert not (dest / "cosy2_decoder" / name).exists(), name
    assert not list(dest.rglob("*.part"))
    assert dl.missing_model_files(dest / "LLaMA-Omni2-0.5B") == []

    hub.clear()
    again = _run(dest, tmp_path)
    assert again.fetched == []
    assert sorted(again.present) == sorted(want)
    # Only the repo listings are asked for; no file content moves a second time.
    assert [s.path for s in hub.requests("GET") if "/api/" not in s.path] == []
    assert hub.requests("HEAD") == []

    # Offline (HF_HUB_OFFLINE read now): only local checks, zero requests, still a success.
    hub.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = _run(dest, tmp_path)
    assert hub.seen == []
    assert offline.fetched == [] and not offline.missing


def test_part_file_is_resumed_with_range(hub: FakeHub, tmp_path: Path) -> None:
    dest = tmp_path / "ck"
    part = dest / "speech_encoder" / "large-v3.pt.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(WHISPER_BYTES[:123_456])
    result = _run(dest, tmp_path, parts=["whisper"])
    target = dest / "speech_encoder" / "large-v3.pt"
    assert result.fetched == [target]
    assert target.read_bytes() == WHISPER_BYTES
    assert not part.exists()
    ranges = [s.range for s in hub.requests("GET", "/whisper/")]
    assert ranges == ["bytes=123456-"]


def test_complete_part_file_is_kept(hub: FakeHub, tmp_path: Path) -> None:
    dest = tmp_path / "ck"
    part = dest / "voices" / "prompt_en.wav.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(VOICES["prompt_en.wav"])  # whole file, rename never happened
    _run(dest, tmp_path, parts=["voices"])
    assert (dest / "voices" / "prompt_en.wav").read_bytes() == VOICES["prompt_en.wav"]
    assert not part.exists()


def test_sha256_mismatch_is_an_error_and_leaves_nothing(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = hashlib.sha256(b"something else").hexdigest()
    url = hub.add_file(f"/whisper/{wrong}/large-v3.pt", WHISPER_BYTES)
    monkeypatch.setenv(dl.ENV_WHISPER_URL, url)
    dest = tmp_path / "ck"
    with pytest.raises(CheckpointError, match="SHA256") as info:
        _run(dest, tmp_path, parts=["whisper"])
    target = dest / "speech_encoder" / "large-v3.pt"
    assert str(target) in str(info.value)
    assert not target.exists()
    assert not target.with_name("large-v3.pt.part").exists()


def test_corrupt_existing_whisper_is_replaced(hub: FakeHub, tmp_path: Path) -> None:
    target = tmp_path / "ck" / "speech_encoder" / "large-v3.pt"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"truncated")
    result = _run(tmp_path / "ck", tmp_path, parts=["whisper"])
    assert result.fetched == [target]
    assert target.read_bytes() == WHISPER_BYTES


def test_non_wav_voice_is_rejected(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add_file("/lfs/prompt_en.wav", b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n")
    hub.add_file("/lfs/prompt_zh.wav", VOICES["prompt_zh.wav"])
    monkeypatch.setenv(dl.ENV_VOICES_URL, f"{hub.url}/lfs/")
    dest = tmp_path / "ck"
    with pytest.raises(CheckpointError, match="not a WAV file"):
        _run(dest, tmp_path, parts=["voices"])
    assert not (dest / "voices" / "prompt_en.wav").exists()
    assert not (dest / "voices" / "prompt_en.wav.part").exists()
    assert (dest / "voices" / "prompt_zh.wav").read_bytes() == VOICES["prompt_zh.wav"]


def test_only_and_model_choice(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo("ICTNLP/LLaMA-Omni2-7B-Bilingual", MODEL_FILES)
    dest = tmp_path / "ck"
    result = _run(dest, tmp_path, parts=["model"], model="7b-bilingual", revision="main")
    assert (dest / "LLaMA-Omni2-7B-Bilingual" / "config.json").is_file()
    assert sorted(p.name for p in dest.iterdir()) == ["LLaMA-Omni2-7B-Bilingual"]
    assert all("LLaMA-Omni2-7B-Bilingual" in str(p) for p in result.fetched)


def test_model_names() -> None:
    assert dl.resolve_model_repo("ICTNLP/LLaMA-Omni2-7B-Bilingual") == "ICTNLP/LLaMA-Omni2-7B-Bilingual"
    assert dl.resolve_model_repo("llama-omni2-1.5b") == "ICTNLP/LLaMA-Omni2-1.5B"
    assert dl.resolve_model_repo("32B-Bilingual") == "ICTNLP/LLaMA-Omni2-32B-Bilingual"
    assert len(dl.KNOWN_MODELS) == 11
    for bad in ("32B", "LLaMA-Omni2-2B", "someone/other"):
        with pytest.raises(CheckpointError, match="--allow-any-repo"):
            dl.resolve_model_repo(bad)
    assert dl.resolve_model_repo("someone/other", allow_any_repo=True) == "someone/other"
    with pytest.raises(CheckpointError, match="owner/name"):
        dl.resolve_model_repo("no slash here", allow_any_repo=True)


def test_any_repo_and_unknown_repo(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo("someone/tiny-omni2", MODEL_FILES)
    dest = tmp_path / "ck"
    _run(dest, tmp_path, parts=["model"], model="someone/tiny-omni2", allow_any_repo=True)
    assert (dest / "tiny-omni2" / "model.safetensors").is_file()
    with pytest.raises(CheckpointError, match="not found") as info:
        _run(dest, tmp_path, parts=["model"], model="someone/absent", allow_any_repo=True)
    assert str(dest / "absent" / "config.json") in str(info.value)


def test_missing_model_files_checks_shards(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    (folder / "tts_tokenizer").mkdir(parents=True)
    for name in ("config.json", "generation_config.json", "tokenizer_config.json", "tokenizer.json"):
        (folder / name).write_text("{}")
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: f"model-0000{k}-of-00002.safetensors" for k in "12"}})
    )
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"x")
    missing = dl.missing_model_files(folder)
    assert "model-00002-of-00002.safetensors" in missing
    assert "tts_tokenizer/tokenizer_config.json" in missing
    assert not any(m.startswith("config.json") for m in missing)


def test_whisper_url_is_openai_whispers_own() -> None:
    """The URL (and so the SHA256) must be exactly the one openai-whisper downloads."""
    spec = importlib.util.find_spec("whisper")
    if spec is None or spec.origin is None:
        pytest.fail("openai-whisper is not installed")
    source = Path(spec.origin).read_text(encoding="utf-8")  # read, not imported: importing pulls in torch
    m = re.search(r'"large-v3":\s*"([^"]+)"', source)
    assert m and m.group(1) == dl.WHISPER_URL
    assert dl.sha256_from_url(dl.WHISPER_URL) == dl.WHISPER_URL.split("/")[-2]


def test_server_down_names_every_missing_file(tmp_path: Path) -> None:
    """The real entry point, no server listening: exit status 2, every target path, no traceback."""
    dead = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if k not in dl.ENV_OFFLINE}
    env |= {
        dl.ENV_ENDPOINT: dead,
        dl.ENV_WHISPER_URL: f"{dead}/whisper/{WHISPER_SHA}/large-v3.pt",
        dl.ENV_VOICES_URL: f"{dead}/voices/",
        "HF_HOME": str(tmp_path / "hf-home"),
    }
    dest = tmp_path / "ck"
    proc = subprocess.run(
        [sys.executable, "launch.py", "download", "--dest", str(dest), "--no-progress"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    assert "cannot reach 127.0.0.1" in out or f"cannot reach {dead}" in out
    model = dest / "LLaMA-Omni2-0.5B"
    for path in [
        model / "config.json",
        model / "generation_config.json",
        model / "model.safetensors",
        model / "tokenizer_config.json",
        model / "tts_tokenizer" / "tokenizer_config.json",
        *(dest / "cosy2_decoder" / n for n in dl.DECODER_FILES),
        dest / "speech_encoder" / "large-v3.pt",
        *(dest / "voices" / n for n in dl.VOICE_FILES),
    ]:
        assert f"put at: {path}\n" in out + "\n", f"{path} not named in:\n{out}"


def test_dropped_connection_is_resumed(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dl, "RESUME_BACKOFF_S", 0.0)
    hub.cut_once[f"/whisper/{WHISPER_SHA}/large-v3.pt"] = 100_000
    result = _run(tmp_path / "ck", tmp_path, parts=["whisper"])
    assert result.fetched[0].read_bytes() == WHISPER_BYTES
    assert [s.range for s in hub.requests("GET", "/whisper/")] == [None, "bytes=100000-"]
