#!/usr/bin/env bash
# CPU benchmark of the htdemucs_6s architecture (the full6s fixture), 1 and 2
# threads, with the official PyTorch code timed in the same run when a
# checkout of it is given:
#   bench/run_cpu.sh [DEMUCS_ROOT]
# DEMUCS_ROOT holds the official `demucs` package (fetched, never committed);
# it runs on Debian's python3-torch with einops. Torch gets its fastest
# setting here (OMP_WAIT_POLICY=passive: its OpenMP workers otherwise spin
# against OpenBLAS's own threads).
set -euo pipefail
cd "$(dirname "$0")/.."
fixtures=${FASTDEMUCS_FIXTURES:-$(pwd)/../shared/fixtures}
checkpoint=$fixtures/full6s/full6s-86db6bad.th
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target cpu_bench >/dev/null
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
for threads in 1 2; do
  echo "== fastdemucs, $threads thread(s)"
  ./build/bench/cpu_bench "$checkpoint" "$threads" 5
done
if [ $# -ge 1 ]; then
  for threads in 1 2; do
    echo "== official demucs (torch $(python3 -c 'import torch; print(torch.__version__)')), $threads thread(s)"
    OMP_WAIT_POLICY=passive python3 bench/official_baseline.py --demucs-root "$1" --checkpoint "$checkpoint" \
      --device cpu --threads "$threads" --modes segment --seconds 8 --runs 5 --out "$(mktemp -d)"
  done
fi
