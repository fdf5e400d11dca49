#!/usr/bin/env python3
"""Per-stem SNR of stems .npy files against a reference .npy ([S, C, T])."""
import json
import math
import sys

import numpy as np


def main():
    ref = np.load(sys.argv[1]).astype(np.float64)
    for path in sys.argv[2:]:
        out = np.load(path).astype(np.float64)
        snr = [-20 * math.log10(np.linalg.norm(o - r) / np.linalg.norm(r)) for o, r in zip(out, ref)]
        print(json.dumps({"file": path, "snr_db": [round(s, 1) for s in snr], "worst_db": round(min(snr), 1)}))


if __name__ == "__main__":
    main()
