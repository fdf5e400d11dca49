#!/usr/bin/env python3
"""Runs an ONNX model exported by `fastdemucs export` with ONNX Runtime (CPU).

usage: export_onnxruntime.py MODEL.onnx INPUT.npy OUTPUT.npy
INPUT is the mix [batch, channels, segment_samples] float32; OUTPUT receives
the stems [batch, sources, channels, segment_samples]. Exit status 77 when
onnxruntime or numpy cannot be imported (the caller skips).
"""
import sys

try:
    import numpy as np
    import onnxruntime as ort
except ImportError as e:  # pragma: no cover
    print(f"onnxruntime unavailable: {e}", file=sys.stderr)
    sys.exit(77)


def main():
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    model, inp, out = sys.argv[1:]
    options = ort.SessionOptions()
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    mix = np.load(inp).astype(np.float32)
    (stems,) = session.run(["stems"], {"mix": mix})
    np.save(out, stems.astype(np.float32))
    print(f"onnxruntime {ort.__version__}: {list(mix.shape)} -> {list(stems.shape)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
