"""Golden kind ``omni2``: speech -> text -> streamed speech units (FORMAT-omni2.md).

The case's checkpoint/ folder is loaded with the same loader a user's real checkpoint goes
through, and the reply is produced by the same streaming engine every front end uses.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from omni2.audio import prepare_audio
from omni2.checkpoint import load_omni2
from omni2.engine import Engine, ReplyOptions
from omni2.model.speech_encoder import log_mel
from omni2.sampling import SamplingConfig
from tests.golden_checks import register
from tests.golden_checks.compare import GoldenMismatch, assert_match


def _sampling(mode: str) -> SamplingConfig:
    if mode != "greedy":
        raise GoldenMismatch(
            f"decoding mode {mode!r} is not reproducible (only 'greedy' cases can be checked)"
        )
    return SamplingConfig()


@register("omni2")
def check_omni2(case_dir: Path, case: dict) -> None:
    loaded = load_omni2(case_dir / "checkpoint", dtype="float32", device="cpu")
    inputs = load_file(str(case_dir / "inputs.safetensors"))
    expected = load_file(str(case_dir / "expected.safetensors"))
    engine = Engine(loaded)
    failures: list[str] = []

    def check(name: str, ours: torch.Tensor) -> None:
        if name not in expected:
            failures.append(f"{name}: not in expected.safetensors")
            return
        try:
            assert_match(name, ours, expected[name], case)
        except GoldenMismatch as exc:
            failures.append(str(exc))

    # Front end, per user turn: the same functions the engine calls.
    user_audio = [t["audio"] for t in case["turns"] if t["role"] == "user"]
    for i, key in enumerate(user_audio):
        samples = prepare_audio(inputs[key].numpy(), allow_silence=True).samples
        mel = log_mel(samples, loaded.model.n_mels)
        with torch.inference_mode():
            enc = loaded.model.encode(mel[None])[0]
            adapted = loaded.model.adapter(enc[None])[0]
        check(f"mel_{i}", mel)
        check(f"encoder_out_{i}", enc.float())
        check(f"adapter_out_{i}", adapted.float())

    # History, then the reply to the last user turn.
    session = engine.new_session()
    turns = case["turns"]
    if turns[-1]["role"] != "user":
        raise GoldenMismatch("case turns must end with a user turn")
    pending_audio = None
    for t in turns[:-1]:
        if t["role"] == "user":
            pending_audio = inputs[t["audio"]].numpy()
        else:
            engine.add_history(session, pending_audio, t["text"], allow_silence=True)
            pending_audio = None
    r, w = case["stream_params"]
    options = ReplyOptions(
        max_new_tokens=int(case["max_new_tokens"]),
        llm_sampling=_sampling(case.get("llm_decoding", "greedy")),
        tts_sampling=_sampling(case.get("tts_decoding", "greedy")),
        stream_params=(int(r), int(w)),
        allow_silence=True,  # the official code answers whatever audio it is given
        trace=True,
    )
    result = engine.respond(session, inputs[turns[-1]["audio"]].numpy(), options).collect()
    if result.error:
        raise GoldenMismatch(f"engine error: {result.error}")
    tr = result.trace
    check("prompt_ids", torch.tensor(tr.prompt_ids))
    check("text_ids", torch.tensor(tr.text_ids))
    check("hidden", torch.stack(tr.hidden))
    if tr.writer is None:
        failures.append("the engine produced no speech-unit trace (TTS branch not loaded?)")
    else:
        check("fused", torch.cat(tr.writer.fused))
        check("units", torch.tensor(result.units, dtype=torch.long))
        check("unit_window_ends", torch.tensor(tr.writer.unit_window_ends))
        check("text_window_ends", torch.tensor(tr.writer.text_window_ends))
        check("tts_token_ids", torch.tensor(tr.writer.tts_token_ids))
        check("tts_window_ends", torch.tensor(tr.writer.tts_window_ends))
    if failures:
        raise GoldenMismatch(f"{case_dir.name}: " + "\n  ".join(["parts differ:", *failures]))
