#!/usr/bin/env bash
# Runs ON the GPU machine, from the repository root, over what
# `bench/device/pack.sh full6s DEMUCS_ROOT` laid out in .device/:
#   1. fidelity dump of the full6s fixture in fp32/fp16/bf16 (gpu_dump), to be
#      compared here with the fixture references (bench/compare_stems.py);
#   2. the official code on a deterministic 3-minute track through the same
#      checkpoint (the htdemucs_6s architecture): float64 reference, command
#      path fp32, all chunks batched in eager fp32, batched torch.compile fp16 (bench/official_baseline.py);
#   3. fastdemucs model time in fp32 / fp16 / bf16 (gpu_bench) and the
#      fidelity of each against that float64 reference, then fp16 / bf16 again
#      with our attention kernel instead of cuDNN's (FASTDEMUCS_ATTENTION=tc), and fp16
#      with cuDNN's plans tuned (FASTDEMUCS_CUDNN_AUTOTUNE=1);
#   4. the fastdemucs command end to end (process start to six WAV files),
#      BENCH_COMMAND_RUNS times per precision (default 3), and once in fp16
#      with an empty plan store (a machine's first run: cuDNN generates its
#      attention kernels, src/cuda/plan_store.h).
# cuDNN's plans are kept in $work/plans, emptied first: the dump (step 1) is
# the first process, and pays for making them.
# Everything goes to $OUT/bench.log (plus the dump's 7 .npy files); the
# summary is printed last.
set -uo pipefail
out=${OUT:-/tmp/bench}
mkdir -p "$out"
log=$out/bench.log
. bench/device/common.sh
export FASTDEMUCS_PLAN_CACHE=$work/plans
rm -rf "$FASTDEMUCS_PLAN_CACHE"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
  if [ "${BENCH_DUMP:-1}" = 1 ]; then
    .device/bin/gpu_dump "$ckpt" "$fx/mix_3s.wav" "$fx/mix_12s.wav" "$out"
  fi
  python3 bench/official_baseline.py --demucs-root .device/py --checkpoint "$ckpt" --seconds "${BENCH_SECONDS:-180}" \
    --runs "${BENCH_RUNS:-5}" --out "$work" --modes "${BENCH_MODES:-reference,command,eager32,compiled}" --shifts "${BENCH_SHIFTS:-0}"
  .device/bin/gpu_bench "$ckpt" "$work/track.wav" "$work" "${BENCH_RUNS:-5}"
  python3 bench/compare_stems.py "$work/reference.npy" "$work"/stems_*.npy
  # The same with our attention kernel instead of cuDNN's (src/cuda/cudnn_attention.h), float16 / bfloat16.
  FASTDEMUCS_ATTENTION=tc GPU_BENCH_PRECISIONS=fp16,bf16 .device/bin/gpu_bench "$ckpt" "$work/track.wav" "$work" \
    "${BENCH_RUNS:-5}" | sed 's/"mode": "fastdemucs_/"mode": "fastdemucs_tc_attention_/'
  # fp16 with cuDNN's attention plans timed and the fastest kept (FASTDEMUCS_CUDNN_AUTOTUNE=1, opt-in).
  FASTDEMUCS_CUDNN_AUTOTUNE=1 GPU_BENCH_PRECISIONS=fp16 .device/bin/gpu_bench "$ckpt" "$work/track.wav" "$work" \
    "${BENCH_RUNS:-5}" | sed 's/"mode": "fastdemucs_/"mode": "fastdemucs_tuned_attention_/'
  python3 bench/compare_stems.py "$work/reference.npy" "$work"/stems_fp16.npy "$work"/stems_bf16.npy |
    sed 's/"file": "/"attention": "tc", "file": "/'
  # The command's own output against the float64 reference (no shifts, float32 WAVs, no
  # clipping rescale: the same settings as the model-time rows).
  rm -rf "$work/sep"
  .device/bin/fastdemucs --repo "$fx" -n full6s -d cuda --shifts 0 --float32 --clip-mode none -o "$work/sep" "$work/track.wav" \
    > "$work/cli.log" 2>&1 || cat "$work/cli.log"
  d=$work/sep/full6s/track
  python3 bench/wav_stems_to_npy.py "$work/command_fp16.npy" "$d/drums.wav" "$d/bass.wav" "$d/other.wav" \
    "$d/vocals.wav" "$d/guitar.wav" "$d/piano.wav" && python3 bench/compare_stems.py "$work/reference.npy" "$work/command_fp16.npy"
  # The command, end to end: process start to exit, six WAV files written; first in
  # fp16 with an empty plan store of its own (a machine's first run).
  for precision in fp16_cold_plans fp16 fp32; do
    runs=${BENCH_COMMAND_RUNS:-3}
    store=$work/plans
    if [ "$precision" = fp16_cold_plans ]; then runs=1 store=$work/plans-cold && rm -rf "$store"; fi
    for run in $(seq "$runs"); do
      rm -rf "$work/sep"
      start=$EPOCHREALTIME
      FASTDEMUCS_PLAN_CACHE=$store .device/bin/fastdemucs -v --repo "$fx" -n full6s -d cuda --precision "${precision%%_*}" \
        -o "$work/sep" "$work/track.wav" > "$work/cli.log" 2>&1 || { cat "$work/cli.log"; break; }
      took=$(seconds_since "$start")
      grep -E "model ready|read .* separate" "$work/cli.log"
      echo "{\"mode\": \"command_$precision\", \"run\": $run, \"seconds\": $took, \"files\": $(ls "$work/sep/full6s/track" | wc -l)}"
    done
  done
} 2>&1 | tee "$log"
echo "== summary"
grep -E '^\{|NVIDIA|model ready|, separate ' "$log"
