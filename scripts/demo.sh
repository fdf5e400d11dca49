#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine, in one command: installs what the
# build needs (scripts/install-deps.sh, via sudo when not root), builds, and
# separates the demo clip shipped in demo/ into six stems with the released
# htdemucs_6s model, by name, as a user would.
#
# Network: apt packages, and once the htdemucs_6s weights (52 MiB) from
# https://dl.fbaipublicfiles.com/demucs/ (or the mirror in
# FASTDEMUCS_MODEL_URL) into ~/.cache/torch/hub/checkpoints ($TORCH_HOME);
# later runs use the cached file.
#
# Extra arguments go to fastdemucs, e.g. ./scripts/demo.sh --mp3 -d cpu
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$(nproc)"
./build/fastdemucs -n htdemucs_6s -o separated "$@" demo/demo.flac
echo "Stems of demo/demo.flac:"
ls -l separated/htdemucs_6s/demo/
