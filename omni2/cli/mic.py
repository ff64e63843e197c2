"""``launch.py mic``: talk to omni2 with your microphone and speakers (headphones recommended).

    python launch.py mic --list-devices
    python launch.py mic --model checkpoints/LLaMA-Omni2-0.5B --input-device 2
"""

from __future__ import annotations

import argparse

from omni2.cli.chat import add_audio_args, add_generation_args, add_model_args, reply_options


def _device(value: str):
    return int(value) if value.isdigit() else value


def register(sub) -> None:
    p = sub.add_parser("mic", help="voice chat with the local microphone and speakers", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_audio_args(p)
    g = p.add_argument_group("audio devices")
    g.add_argument("--list-devices", action="store_true", help="list audio devices and exit")
    g.add_argument("--input-device", type=_device, default=None, help="microphone: index or name (default: system)")
    g.add_argument("--output-device", type=_device, default=None, help="speaker: index or name (default: system)")
    g.add_argument("--silence", type=float, default=0.7, help="pause (s) that ends your turn (default 0.7)")
    g.add_argument("--no-barge-in", action="store_true",
                   help="do not stop the reply when you speak (for loudspeakers without echo cancellation)")
    add_generation_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from app.mic import MicChat, check_devices, list_devices

    if args.list_devices:
        print(list_devices())
        return 0
    check_devices(args.input_device, args.output_device)  # before the (slow) model load
    from app.vad import TurnConfig
    from omni2.runtime import load_engine

    engine = load_engine(args.model, decoder=args.decoder, voice=args.voice, device=args.device, dtype=args.dtype)
    if engine.loaded.random_weights:
        print("note: this checkpoint has RANDOM weights; its replies are noise")
    chat = MicChat(engine, reply_options(args, speak=True), input_device=args.input_device,
                   output_device=args.output_device, turn_config=TurnConfig(silence=args.silence),
                   barge_in=not args.no_barge_in)
    return chat.run()
