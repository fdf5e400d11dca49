#!/usr/bin/env python3
"""Summary of an `ncu --metrics gpu__time_duration.sum --csv` log (as
bench/device/gpu_profile.sh writes it): total kernel time, time per kernel
name, and the longest launches of the kernels whose name contains FILTER.
Usage: ncu_summary.py NCU.csv [FILTER [TOP]]"""
import collections
import csv
import re
import sys


def main():
    rows = list(csv.reader(open(sys.argv[1])))
    header = next(i for i, r in enumerate(rows) if "Kernel Name" in r)
    names = rows[header]
    k_name, k_value, k_grid = names.index("Kernel Name"), names.index("Metric Value"), names.index("Grid Size")
    launches = []
    for r in rows[header + 1:]:
        try:
            launches.append((r[k_name], float(r[k_value].replace(",", "")), r[k_grid]))
        except (ValueError, IndexError):
            continue
    print(f"{len(launches)} launches, {sum(v for _, v, _ in launches) / 1e6:.2f} ms")
    per_kernel = collections.Counter()
    for name, ns, _ in launches:
        short = re.sub(r"\(.*", "", name).replace("fastdemucs::<unnamed>::", "")
        per_kernel[short[:70]] += ns
    for name, ns in per_kernel.most_common(12):
        print(f"{ns / 1e6:8.2f} ms  {name}")
    if len(sys.argv) > 2:
        top = int(sys.argv[3]) if len(sys.argv) > 3 else 12
        chosen = sorted(((ns, i, grid) for i, (name, ns, grid) in enumerate(launches) if sys.argv[2] in name),
                        reverse=True)
        print(f"longest launches of *{sys.argv[2]}* (launch index, grid):")
        for ns, i, grid in chosen[:top]:
            print(f"{ns / 1e3:8.0f} us  #{i}  grid {grid}")


if __name__ == "__main__":
    main()
