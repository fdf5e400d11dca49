#!/usr/bin/env python3
"""Per-stem SNR of stems .npy files against a reference .npy ([S, C, T]).
Usage: compare_stems.py REF.npy[+REF2.npy ...] OUT.npy ...
A reference given as parts joined by '+' is their concatenation over the
sources (as the fixtures split the 12 s command-path reference); an output
with fewer sources is compared with the first ones."""
import json
import math
import sys

import numpy as np


def main():
    ref = np.concatenate([np.load(part) for part in sys.argv[1].split("+")], axis=0).astype(np.float64)
    for path in sys.argv[2:]:
        out = np.load(path).astype(np.float64)
        snr = [-20 * math.log10(np.linalg.norm(o - r) / np.linalg.norm(r)) for o, r in zip(out, ref)]
        print(json.dumps({"file": path, "snr_db": [round(s, 1) for s in snr], "worst_db": round(min(snr), 1)}))


if __name__ == "__main__":
    main()
