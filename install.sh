#!/usr/bin/env bash
# omni2's one install command.
#   bash install.sh                 Python packages (torch 2.13.0 CPU pin + everything else)
#   bash install.sh --with-system   also the Debian packages for audio, the microphone, and the tests
#                                   (espeak-ng, sox, libportaudio2, libsndfile1, chromium)
set -euo pipefail
cd "$(dirname "$0")"

if [ "${1:-}" = "--with-system" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    espeak-ng sox libportaudio2 libsndfile1 chromium chromium-driver >/dev/null
fi

PY="${PYTHON:-python3}"
# torch is pinned to the CPU build; the pin also constrains every other package's torch needs.
"$PY" -m pip install -q -r requirements.txt
# openai-whisper would pull triton (1 GB, CUDA-only) and silero-vad torchaudio (breaks beside
# torch 2.13): install them without dependencies (theirs are listed in requirements.txt).
"$PY" -m pip install -q --no-deps -r requirements-nodeps.txt
"$PY" -c "import torch, transformers, whisper; print('omni2 install ok: torch', torch.__version__)"
