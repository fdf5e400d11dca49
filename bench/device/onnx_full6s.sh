#!/usr/bin/env bash
# Runs ON the GPU machine, over `PACK_CUDA=OFF PACK_EXPORT=ON PACK_BUILD=build-export bench/device/pack.sh full6s`:
# exports full6s to ONNX with `fastdemucs export`, runs it with the
# machine's onnxruntime on mix_3s (zero-padded to the 7.8 s segment, as the
# model does) and writes the first 3 s of the stems to $OUT/onnx_forward_3s.npy
# for comparison here with full6s_forward_3s.npy.
set -uo pipefail
out=${OUT:-/tmp}
. bench/device/common.sh
python3 - "$fx/mix_3s.wav" /tmp/onnx_in.npy <<'PY'
import sys, wave, numpy as np
with wave.open(sys.argv[1]) as f:
    pcm = np.frombuffer(f.readframes(f.getnframes()), "<i2").reshape(-1, f.getnchannels()).T
mix = np.zeros((1, 2, 343980), np.float32)
mix[0, :, :pcm.shape[1]] = pcm / 32768.0
np.save(sys.argv[2], mix)
PY
start=$EPOCHREALTIME
.device/bin/fastdemucs export -n full6s --repo "$fx" -o /tmp/full6s.onnx || exit 1
echo "export: $(python3 -c "print(round($EPOCHREALTIME - $start, 2))") s, $(stat -c %s /tmp/full6s.onnx) bytes"
python3 -c "import onnx; m = onnx.load('/tmp/full6s.onnx'); onnx.checker.check_model(m, full_check=True); print('onnx', onnx.__version__, 'checker: ok')"
python3 tests/export_onnxruntime.py /tmp/full6s.onnx /tmp/onnx_in.npy /tmp/onnx_out.npy || exit 1
python3 -c "import numpy as np; np.save('$out/onnx_forward_3s.npy', np.load('/tmp/onnx_out.npy')[0, :, :, :132300])"
