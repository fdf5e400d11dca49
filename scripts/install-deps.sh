#!/usr/bin/env bash
# Installs what fastdemucs needs to build and test on Debian 12 (run as root
# or through sudo). Idempotent: quick when everything is already there.
set -euo pipefail
packages=(
  build-essential cmake ninja-build pkg-config
  libopenblas-openmp-dev libfftw3-dev libzip-dev libyaml-cpp-dev libssl-dev
  libsndfile1-dev libcli11-dev libgtest-dev libcurl4-openssl-dev python3
  libsoxr-dev libmp3lame-dev libavformat-dev libavcodec-dev libavutil-dev ffmpeg
  libonnx-dev libprotobuf-dev protobuf-compiler
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

# The ONNX export tests run the exported model with ONNX Runtime (CPU) from
# PyPI; they skip themselves when it cannot be installed (no network).
if ! python3 -c "import onnxruntime, numpy" 2>/dev/null; then
  python3 -m pip install --quiet onnxruntime numpy 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages onnxruntime numpy ||
    echo "install-deps: could not install onnxruntime (the ONNX export tests will skip)" >&2
fi

# The cuDNN frontend (header-only, from PyPI) for the GPU build's fused
# attention: its headers unpacked in .deps/ (the build uses our own attention
# kernels alone where they are missing). Only where the CUDA toolkit is; a
# wheel only (no source package), one quick try: no network, no frontend.
frontend_version=1.32.0
frontend="$(cd "$(dirname "$0")/.." && pwd)/.deps/cudnn_frontend"
if [ ! -f "$frontend/include/cudnn_frontend.h" ] &&
   { command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; }; then
  wheels=$(mktemp -d)
  # Unpacked beside its folder, then moved in whole: an interrupted run leaves no half folder.
  rm -rf "$frontend.part"
  if ! { { python3 -m pip download --quiet --no-deps --only-binary=:all: --retries 1 --timeout 15 --dest "$wheels" \
           "nvidia-cudnn-frontend==$frontend_version" 2>/dev/null &&
         python3 - "$wheels" "$frontend.part" <<'EOF'
import glob, os, sys, zipfile
wheels = glob.glob(os.path.join(sys.argv[1], "*.whl"))
if not wheels:
    sys.exit(1)
with zipfile.ZipFile(wheels[0]) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("include/")])
EOF
  } && rm -rf "$frontend" && mv "$frontend.part" "$frontend"; }; then
    echo "install-deps: could not fetch the cuDNN frontend (GPU builds use our attention kernels only)" >&2
  fi
  rm -rf "$wheels" "$frontend.part"
fi
