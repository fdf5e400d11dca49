#!/usr/bin/env python3
"""Two `ncu --metrics gpu__time_duration.sum --csv` logs of one batched forward
(bench/device/gpu_ab.sh writes them), A and B, side by side: total kernel time
per phase (before the first attention kernel: the encoders; up to the last:
the transformer; after it: the decoders and the iSTFT) and per kernel name,
largest differences first. What the ninth session's per-layer comparison of
the fused rewrite used (bench/results/h200-2026-11-28-session9-ab.log).
Usage: ncu_compare.py A.csv B.csv [TOP]"""
import collections
import sys

from ncu_summary import launches

TIME = "gpu__time_duration.sum"


def phases(items):
    """Microseconds before, within and after the attention kernels."""
    marks = [i for i, d in enumerate(items) if "attention" in d["name"]]
    if not marks:
        return {"all": sum(d.get(TIME, 0.0) for d in items) / 1e3}
    first, last = marks[0], marks[-1]
    spans = {"encoders": items[:first], "transformer": items[first:last + 1], "decoders": items[last + 1:]}
    return {name: sum(d.get(TIME, 0.0) for d in part) / 1e3 for name, part in spans.items()}


def per_kernel(items):
    totals = collections.defaultdict(lambda: [0.0, 0])
    for d in items:
        totals[d["name"]][0] += d.get(TIME, 0.0) / 1e3
        totals[d["name"]][1] += 1
    return totals


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    a, b = launches(sys.argv[1]), launches(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    print(f"A: {len(a)} launches, {sum(d.get(TIME, 0.0) for d in a) / 1e6:.2f} ms; "
          f"B: {len(b)} launches, {sum(d.get(TIME, 0.0) for d in b) / 1e6:.2f} ms")
    pa, pb = phases(a), phases(b)
    for name in pa:
        print(f"  {name:12s} {pa[name]:9.1f} -> {pb.get(name, 0.0):9.1f} us")
    ka, kb = per_kernel(a), per_kernel(b)
    names = sorted(set(ka) | set(kb), key=lambda n: -abs(kb.get(n, [0.0])[0] - ka.get(n, [0.0])[0]))
    for name in names[:top]:
        ta, ca = ka.get(name, [0.0, 0])
        tb, cb = kb.get(name, [0.0, 0])
        print(f"  {ta:8.1f} us {ca:4d}x -> {tb:8.1f} us {cb:4d}x  {tb - ta:+8.1f}  {name}")


if __name__ == "__main__":
    main()
