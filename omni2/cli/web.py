"""``launch.py web`` (the default sub-command): the browser voice chat.

    python launch.py                                  # http://127.0.0.1:7860, checkpoints/LLaMA-Omni2-0.5B
    python launch.py web --model checkpoints/LLaMA-Omni2-7B --device cuda
    python launch.py web --host 0.0.0.0 --auth alice:secret --concurrency 2
"""

from __future__ import annotations

import argparse

from omni2.cli.chat import add_audio_args, add_model_args
from omni2.errors import ConfigError


def _auth(value: str) -> tuple[str, str]:
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise argparse.ArgumentTypeError("expected USER:PASSWORD")
    return user, password


def register(sub) -> None:
    p = sub.add_parser("web", help="browser voice chat (default)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_audio_args(p)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    g.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    g.add_argument("--share", action="store_true", help="also open a public gradio.live link (opt-in)")
    g.add_argument("--auth", type=_auth, default=None, metavar="USER:PASSWORD", help="require a login")
    g.add_argument("--concurrency", type=int, default=1,
                   help="replies generated at once; further requests wait in the queue (default 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.concurrency < 1:
        raise ConfigError("--concurrency must be at least 1")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be 1..65535, got {args.port}")
    from app.web import launch
    from omni2.runtime import load_engine

    engine = load_engine(args.model, decoder=args.decoder, voice=args.voice, device=args.device, dtype=args.dtype)
    if args.host not in ("127.0.0.1", "localhost", "::1") and args.auth is None:
        print(f"warning: serving on {args.host} without --auth: anyone who can reach it can use the model")
    print(f"omni2: serving {engine.loaded.path.name} on http://{args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    launch(engine, host=args.host, port=args.port, share=args.share, auth=args.auth,
           concurrency=args.concurrency, decoder_dir=args.decoder,
           voices=[args.voice] if args.voice else None)
    return 0
