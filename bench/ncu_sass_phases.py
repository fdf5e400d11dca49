#!/usr/bin/env python3
"""Where a kernel's instructions and stalls go, phase by phase: reads the
per-instruction table of an ncu report's SourceCounters section
(`ncu --import R.ncu-rep --page source --csv --print-source sass > R.csv`,
the report taken with `--section SourceCounters`) and cuts each kernel's SASS
at its barriers (BAR.SYNC): the phases of a block-synchronous kernel such as
src/cuda/dconv_rows_tc.cu (load, in-convolution, statistics, apply, ...).
Per phase: warp instructions executed (per block when BLOCKS is given, as
the launch's grid size), their share, the share of the warp-stall samples,
and the counts of the instruction kinds that say what the phase does.
What the thirteenth session's breakdown of the rows kernel came from
(bench/results/h200-2026-11-29-session13-ab.log).
Usage: ncu_sass_phases.py R.csv [BLOCKS [KERNEL_SUBSTRING]]"""
import collections
import csv
import sys

KINDS = ("HMMA", "LDSM", "MUFU", "LDG", "LDS", "STS", "STG", "SHFL", "DADD", "LDGSTS")


def kernels(path):
    """(name, rows) per kernel in the file; rows: (sass text, executed, stall samples)."""
    rows = list(csv.reader(open(path)))
    out, i = [], 0
    while i < len(rows):
        if rows[i] and rows[i][0] == "Kernel Name":
            name, header = rows[i][1], rows[i + 1]
            src, executed = header.index("Source"), header.index("Instructions Executed")
            samples = header.index("Warp Stall Sampling (All Samples)")
            body, i = [], i + 2
            while i < len(rows) and not (rows[i] and rows[i][0] == "Kernel Name"):
                r = rows[i]
                if len(r) > max(src, executed, samples):
                    body.append((r[src].strip(), int(r[executed] or 0), int(r[samples] or 0)))
                i += 1
            out.append((name, body))
        else:
            i += 1
    return out


def opcode(sass):
    words = sass.split()
    if not words:
        return ""
    word = words[1] if words[0].startswith("@") and len(words) > 1 else words[0]
    return word.split(".")[0]


def phases(body):
    """Runs of instructions ending at each BAR.SYNC (the barrier counted in its phase)."""
    cut, start = [], 0
    for k, (sass, _, _) in enumerate(body):
        if opcode(sass) == "BAR":
            cut.append((start, k + 1))
            start = k + 1
    cut.append((start, len(body)))
    return [(a, b) for a, b in cut if any(e for _, e, _ in body[a:b])]


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    blocks = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    want = sys.argv[3] if len(sys.argv) > 3 else ""
    for name, body in kernels(sys.argv[1]):
        if want not in name:
            continue
        total = sum(e for _, e, _ in body) or 1
        stalls = sum(s for _, _, s in body) or 1
        unit = "a block" if blocks else "in all"
        print(f"{name[:110]}\n  {total / (blocks or 1):.0f} warp instructions {unit}, {stalls} stall samples")
        for a, b in phases(body):
            part = body[a:b]
            executed = sum(e for _, e, _ in part)
            sampled = sum(s for _, _, s in part)
            kinds = collections.Counter()
            for sass, e, _ in part:
                if opcode(sass) in KINDS and e:
                    kinds[opcode(sass)] += 1
            top = max(part, key=lambda x: x[2])
            print(f"  [{a:5d}, {b:5d}) {executed / (blocks or 1):9.0f} ({100 * executed / total:4.1f} %)"
                  f"  stalls {100 * sampled / stalls:4.1f} %  {dict(kinds)}  top stall: {top[0][:40]} ({top[2]})")


if __name__ == "__main__":
    main()
