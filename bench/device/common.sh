# Sourced by the device scripts (run ON the GPU machine, from the repository
# root): library path, and the full6s checkpoint unpacked from .device/.
export LD_LIBRARY_PATH=$PWD/.device/lib:${LD_LIBRARY_PATH:-}
# pack.sh ships the engine's library xz-compressed.
for packed in .device/lib/*.xz; do
  [ -f "$packed" ] || continue
  python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "$packed" "${packed%.xz}"
  rm -f "$packed"
done
export PYTHONUNBUFFERED=1
fx=.device/fixtures/full6s
ckpt=$fx/full6s-86db6bad.th
if [ -f "$fx/full6s.th.xz" ]; then
  [ -f "$ckpt" ] || python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "$fx/full6s.th.xz" "$ckpt"
  rm -f "$fx/full6s.th.xz"
fi
# The scripts' shared scratch folder (the track, the reference, the stems).
work=/tmp/bench-work
mkdir -p "$work"
# Seconds since START (an $EPOCHREALTIME), to the millisecond.
seconds_since() { python3 -c "print(round($EPOCHREALTIME - $1, 3))"; }
