#!/usr/bin/env bash
# Runs ON the GPU machine over `bench/device/pack.sh full6s DEMUCS_ROOT`'s
# .device/: A/B model time of environment variants in one call, then the
# kernel durations of one batched forward (ncu) for the default variant.
#   AB="NAME=VALUE ..."  the variants, in turn (default: one run of the defaults)
#   AB_PREC=fp16,fp32    precisions (default fp16); AB_RUNS runs each (default 5)
#   NCU_DETAIL=REGEX     also ncu sections of the first NCU_COUNT launches matching REGEX
# Output: stdout, $OUT/ncu_fp16.csv, $OUT/ncu_detail.txt (bench/ncu_summary.py reads the csv).
set -uo pipefail
out=${OUT:-/tmp/ab}
mkdir -p "$out"
. bench/device/common.sh
python3 -c "import sys; sys.path.insert(0, 'bench'); import official_baseline as ob; ob.write_wav16('$work/track.wav', ob.deterministic_track(180, 44100), 44100)"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for ab in ${AB:-FASTDEMUCS_AB=default}; do
  echo "== $ab"
  env "$ab" GPU_BENCH_PRECISIONS=${AB_PREC:-fp16} .device/bin/gpu_bench "$ckpt" "$work/track.wav" "$work" "${AB_RUNS:-5}"
done
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
[ -n "$ncu" ] || exit 0
GPU_BENCH_NCU=1 GPU_BENCH_PRECISIONS=fp16 FASTDEMUCS_NO_GRAPH=1 timeout 200 "$ncu" --clock-control none \
  --profile-from-start off --metrics gpu__time_duration.sum,dram__bytes.sum --csv \
  .device/bin/gpu_bench "$ckpt" "$work/track.wav" "$work" 1 > "$out/ncu_fp16.csv" 2>&1
if [ -n "${NCU_DETAIL:-}" ]; then
  GPU_BENCH_NCU=1 GPU_BENCH_PRECISIONS=fp16 FASTDEMUCS_NO_GRAPH=1 timeout 200 "$ncu" --clock-control none \
    --profile-from-start off --kernel-name "regex:$NCU_DETAIL" --launch-count "${NCU_COUNT:-6}" \
    --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats \
    --section MemoryWorkloadAnalysis .device/bin/gpu_bench "$ckpt" "$work/track.wav" "$work" 1 > "$out/ncu_detail.txt" 2>&1
fi
exit 0
