#!/usr/bin/env python3
"""Summary of an `ncu --metrics gpu__time_duration.sum[,dram__bytes.sum] --csv`
log (as bench/device/gpu_profile.sh and gpu_ab.sh write it): total kernel
time, time / DRAM bytes / launches per kernel name, and the longest launches
of the kernels whose name contains FILTER.
Usage: ncu_summary.py NCU.csv [FILTER [TOP]]"""
import collections
import csv
import re
import sys


def launches(path):
    """One dict per launch (in order): name, grid, and each metric collected."""
    rows = list(csv.reader(open(path)))
    header = next(i for i, r in enumerate(rows) if "Kernel Name" in r)
    names = rows[header]
    k_id, k_name, k_grid = names.index("ID"), names.index("Kernel Name"), names.index("Grid Size")
    k_metric, k_value = names.index("Metric Name"), names.index("Metric Value")
    by_id = collections.OrderedDict()
    for r in rows[header + 1:]:
        try:
            key = int(r[k_id])
            value = float(r[k_value].replace(",", ""))
        except (ValueError, IndexError):
            continue
        short = re.sub(r"\(.*", "", r[k_name]).replace("fastdemucs::<unnamed>::", "").replace("void ", "")
        entry = by_id.setdefault(key, {"name": short[:70], "grid": r[k_grid]})
        entry[r[k_metric]] = value
    return list(by_id.values())


def main():
    items = launches(sys.argv[1])
    time = "gpu__time_duration.sum"
    total = sum(d.get(time, 0.0) for d in items)
    print(f"{len(items)} launches, {total / 1e6:.2f} ms")
    per_kernel = collections.defaultdict(lambda: [0.0, 0.0, 0])
    for d in items:
        k = per_kernel[d["name"]]
        k[0] += d.get(time, 0.0)
        k[1] += d.get("dram__bytes.sum", 0.0)
        k[2] += 1
    for name, (ns, dram, count) in sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:30]:
        rate = f"{dram / ns:6.0f} GB/s" if dram else ""
        print(f"{ns / 1e6:7.2f} ms {dram / 1e9:6.2f} GB {rate} {count:4d}x  {name}")
    if len(sys.argv) > 2:
        top = int(sys.argv[3]) if len(sys.argv) > 3 else 12
        chosen = sorted(((d.get(time, 0.0), i, d["grid"]) for i, d in enumerate(items) if sys.argv[2] in d["name"]),
                        reverse=True)
        print(f"longest launches of *{sys.argv[2]}* (launch index, grid):")
        for ns, i, grid in chosen[:top]:
            print(f"{ns / 1e3:8.0f} us  #{i}  grid {grid}")


if __name__ == "__main__":
    main()
