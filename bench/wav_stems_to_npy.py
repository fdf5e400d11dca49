#!/usr/bin/env python3
"""Stacks float32 WAV stems (as `fastdemucs --float32` writes them) into one
.npy [S, C, T], in the order given, for bench/compare_stems.py.
Usage: wav_stems_to_npy.py OUT.npy STEM.wav..."""
import struct
import sys

import numpy as np


def read_float_wav(path):
    data = open(path, "rb").read()
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise SystemExit(f"{path}: not a WAV file")
    pos, channels, samples = 12, None, None
    while pos + 8 <= len(data):
        tag, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = data[pos + 8:pos + 8 + size]
        if tag == b"fmt ":
            fmt, channels = struct.unpack("<HH", body[:4])
            bits = struct.unpack("<H", body[14:16])[0]
            if not (fmt in (3, 0xFFFE) and bits == 32):
                raise SystemExit(f"{path}: not 32-bit float samples")
        elif tag == b"data":
            samples = np.frombuffer(body, dtype="<f4")
        pos += 8 + size + (size & 1)
    if channels is None or samples is None:
        raise SystemExit(f"{path}: no fmt or data chunk")
    return samples.reshape(-1, channels).T  # [C, T]


def main():
    stems = [read_float_wav(p) for p in sys.argv[2:]]
    np.save(sys.argv[1], np.stack(stems))


if __name__ == "__main__":
    main()
