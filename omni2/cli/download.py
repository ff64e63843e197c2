"""`launch.py download`: fetch the official checkpoints (model, decoder, Whisper, voices)."""

from __future__ import annotations

import argparse

from omni2 import download as dl

_DESCRIPTION = f"""\
Fetch the official LLaMA-Omni2 checkpoints into checkpoints/ (or --dest), with progress bars.
Re-running skips complete files and resumes partial ones.

  model    {dl.DEFAULT_MODEL} (or --model) -> <dest>/<repo name>/
  decoder  {dl.DECODER_REPO}: {", ".join(dl.DECODER_FILES)} -> <dest>/{dl.DECODER_DIR}/
  whisper  openai-whisper large-v3.pt (SHA256-checked) -> <dest>/{dl.WHISPER_DIR}/{dl.WHISPER_FILE}
  voices   official {", ".join(dl.VOICE_FILES)} -> <dest>/{dl.VOICES_DIR}/

Environment: HF_ENDPOINT (Hub mirror), HF_HUB_OFFLINE=1 (only check what is in place),
{dl.ENV_WHISPER_URL}, {dl.ENV_VOICES_URL} (other sources for the plain files).
Model weights: academic / non-commercial use only (official LLaMA-Omni2 README)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "download",
        help="fetch the official checkpoints into checkpoints/",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        default=dl.DEFAULT_MODEL,
        help="model repo: ICTNLP/LLaMA-Omni2-<size>[-Bilingual], or just <size>[-Bilingual] "
        f"(sizes {', '.join(dl.MODEL_SIZES)}; 32B only as -Bilingual). Default: %(default)s",
    )
    p.add_argument(
        "--allow-any-repo",
        action="store_true",
        help="accept a --model repo id that is not a known LLaMA-Omni2 checkpoint",
    )
    p.add_argument(
        "--only",
        action="append",
        choices=dl.PARTS,
        metavar="PART",
        help=f"fetch only this part ({', '.join(dl.PARTS)}); repeatable. Default: all",
    )
    p.add_argument("--revision", default="main", help="model repo branch, tag or commit (default: main)")
    p.add_argument(
        "--decoder-revision", default="main", help=f"{dl.DECODER_REPO} branch, tag or commit (default: main)"
    )
    p.add_argument(
        "--dest", default=str(dl.DEFAULT_DEST), help="destination folder (default: the repo's checkpoints/)"
    )
    p.add_argument("--endpoint", default=None, help="Hub base URL (default: $HF_ENDPOINT or huggingface.co)")
    p.add_argument(
        "--offline",
        action="store_true",
        help="no network: only check what is in place and list what is missing (also: HF_HUB_OFFLINE=1)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars for the plain-URL files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Download, then print a short summary; missing files raise CheckpointError (exit status 2)."""
    result = dl.download(
        args.dest,
        model=args.model,
        parts=args.only,
        revision=args.revision,
        decoder_revision=args.decoder_revision,
        allow_any_repo=args.allow_any_repo,
        endpoint=args.endpoint,
        offline=True if args.offline else None,
        progress=not args.no_progress,
    )
    print(
        f"All requested checkpoint files are in place under {result.dest} "
        f"({len(result.fetched)} fetched now, {len(result.present)} already there)."
    )
    if "model" in (args.only or dl.PARTS):
        print("Note: LLaMA-Omni2 model weights are for academic / non-commercial use only (official README).")
    return 0
