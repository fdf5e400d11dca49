#!/usr/bin/env bash
# Builds the GPU-only configuration here (the GPU machine has the CUDA
# toolkit but none of our other libraries) and lays out .device/ — git-ignored,
# carried to the GPU machine with `carry: [".device"]`:
#   .device/bin      test binary, command, GPU benchmark
#   .device/lib      the shared libraries they need that a bare CUDA image lacks
#   .device/fixtures the fixture set asked for (tiny | full6s | none)
#   .device/py       the official demucs package for the side-by-side baseline (never committed)
# Usage: bench/device/pack.sh tiny|full6s|none [DEMUCS_ROOT]
# PACK_TINY_WEIGHTS=1 adds the tiny model and mix_4s.wav to any set.
# PACK_CUDA=OFF PACK_EXPORT=ON PACK_BUILD=build-export builds only what `fastdemucs export` needs
# (the ONNX check of full6s on the GPU machine: bench/device/onnx_full6s.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
set_name=${1:-tiny}
# A build folder per configuration, so that switching does not rebuild everything.
build=${PACK_BUILD:-build-device}
fixtures=${FASTDEMUCS_FIXTURES:-$(pwd)/../shared/fixtures}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFASTDEMUCS_CPU_BACKEND=OFF \
  -DFASTDEMUCS_CUDA=ON -DFASTDEMUCS_FFMPEG=OFF -DFASTDEMUCS_DOWNLOAD=OFF -DBUILD_SHARED_LIBS=ON \
  -DFASTDEMUCS_EXPORT=${PACK_EXPORT:-OFF} -DFASTDEMUCS_CUDA=${PACK_CUDA:-ON} >/dev/null
cmake --build "$build" >/dev/null
rm -rf .device && mkdir -p .device/bin .device/lib .device/fixtures
for f in tests/fastdemucs_tests fastdemucs bench/gpu_bench bench/gpu_dump bench/io_bench bench/host_copy_rate bench/cublas_first_use; do
  [ -f "$build/$f" ] && cp "$build/$f" .device/bin/
done
cp "$build"/libfastdemucs*.so .device/lib/
strip .device/bin/* .device/lib/* || true
# The engine's library is mostly GPU code (~18 MB): xz'd it leaves room for
# the full6s checkpoint under the 64 MiB limit (bench/device/common.sh unpacks it).
xz -T2 -6 .device/lib/libfastdemucs.so
# Everything the binaries link that is not glibc, the C++ runtime or CUDA.
# libcrypto, libssl and zlib are on every Ubuntu CUDA image (python3 needs them).
for bin in .device/bin/*; do ldd "$bin"; done | awk '/=> \//{print $3}' | sort -u | grep -v "$(pwd)/$build" |
  grep -v -E '/(libc|libm|libdl|librt|libpthread|libresolv|libnsl|libutil|libanl|libcrypto|libssl|libz|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas|libcublasLt|libcufft|libnvrtc|libnvJitLink)\.so' |
  while read -r lib; do cp -L "$lib" .device/lib/; done
case "$set_name" in
  tiny)
    mkdir -p .device/fixtures/tiny
    cp "$fixtures"/tiny/{0d0b2025,6325d78b,597c7e2b,2834c0f1}.th "$fixtures"/tiny/*.yaml \
       "$fixtures"/tiny/mix_{3,4}s.wav "$fixtures"/tiny/tiny_forward_1.5s.npz "$fixtures"/tiny/tiny_separate_4s*.npy \
       "$fixtures"/tiny/tiny_bag_separate_4s.npy .device/fixtures/tiny/ ;;
  full6s)
    # 52 MiB of float16 weights: xz saves the few MiB that make the call fit.
    mkdir -p .device/fixtures/full6s
    mkdir -p build-device
    [ -f build-device/full6s.th.xz ] || xz -T2 -6 -k -c "$fixtures"/full6s/full6s-86db6bad.th > build-device/full6s.th.xz
    cp build-device/full6s.th.xz "$fixtures"/full6s/{full6s.yaml,mix_3s.wav,mix_12s.wav} .device/fixtures/full6s/ ;;
  none) ;;
esac
# PACK_TINY_WEIGHTS=1: the tiny model and a mix beside any set (1.5 MB; the
# track-path tests that need no reference output or bag, e.g. beside full6s).
if [ "${PACK_TINY_WEIGHTS:-0}" = 1 ]; then
  mkdir -p .device/fixtures/tiny
  cp "$fixtures"/tiny/{0d0b2025.th,tiny.yaml,mix_4s.wav} .device/fixtures/tiny/
fi
if [ $# -ge 2 ]; then
  mkdir -p .device/py && cp -r "$2/demucs" .device/py/
  find .device/py -name '__pycache__' -prune -exec rm -rf {} +
fi
du -sh .device/* | sort -h
du -sh .device
