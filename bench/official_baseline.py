#!/usr/bin/env python3
"""Times the official Demucs code on the GPU, side by side with fastdemucs.

Not part of fastdemucs: a measuring tool. It imports the official `demucs`
package from --demucs-root (a checkout that is never committed here, plus
small stand-ins for the training-only imports: see make_stubs below).

Modes, all on the same deterministic track and the same checkpoint:
  segment     one forward of one training-length segment (the CPU figure),
              with --threads torch threads; prints the median only
  reference   float64 apply_model (the fidelity reference for the modes below)
  command     the official command path: normalise, apply_model(shifts, split, overlap), float32
  eager32     the official model, all chunks batched through one forward, eager float32
  compiled    an expert's version: every chunk batched through one forward,
              torch.compile (default mode) under fp16 autocast
Each timed mode prints one JSON line: median seconds, and per-stem SNR
against the float64 reference. The iSTFT is made Hermitian (imaginary parts
of the DC and Nyquist bins dropped) as the fixture README explains, so the
GPU float32 figures are not spoiled by cuFFT's C2R behaviour.
"""
import argparse
import json
import math
import os
import sys
import time
import types

import numpy as np


def make_stubs():
    """Stand-ins for imports the inference path never uses."""
    stubs = {
        "openunmix": types.ModuleType("openunmix"),
        "openunmix.filtering": types.ModuleType("openunmix.filtering"),
        "julius": types.ModuleType("julius"),
        "omegaconf": types.ModuleType("omegaconf"),
        "dora": types.ModuleType("dora"),
        "dora.log": types.ModuleType("dora.log"),
    }
    stubs["openunmix.filtering"].wiener = None
    stubs["openunmix"].filtering = stubs["openunmix.filtering"]
    stubs["omegaconf"].OmegaConf = object
    stubs["dora.log"].fatal = lambda *a, **k: sys.exit(1)
    stubs["dora.log"].bold = lambda s: s
    stubs["dora"].log = stubs["dora.log"]
    for name, module in stubs.items():
        sys.modules.setdefault(name, module)
    try:
        import tqdm  # noqa: F401
    except ImportError:
        tq = types.ModuleType("tqdm")
        tq.tqdm = lambda it, **k: it
        sys.modules["tqdm"] = tq


def deterministic_track(seconds, samplerate, seed=1234):
    """Tones, a bass line and noise bursts: [2, n] float32 in [-1, 1)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * samplerate)
    t = np.arange(n) / samplerate
    left = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 55 * t)
    right = 0.3 * np.sin(2 * np.pi * 330.5 * t + 1) + 0.2 * np.sin(2 * np.pi * 55 * t)
    bursts = (np.fmod(t, 0.5) < 0.05) * rng.normal(0, 0.2, n)
    wav = np.stack([left + bursts, right + bursts]) + rng.normal(0, 0.02, (2, n))
    wav = np.clip(wav, -1, 1 - 2**-15)
    return (np.round(wav * 32768) / 32768).astype(np.float32)  # exactly 16-bit PCM values


def write_wav16(path, wav, samplerate):
    import wave
    pcm = np.round(wav.T * 32768).clip(-32768, 32767).astype("<i2")
    with wave.open(path, "wb") as f:
        f.setnchannels(wav.shape[0])
        f.setsampwidth(2)
        f.setframerate(samplerate)
        f.writeframes(pcm.tobytes())


def snr_per_stem(out, ref):
    out = out.astype(np.float64)
    ref = ref.astype(np.float64)
    return [float(-20 * math.log10(np.linalg.norm(o - r) / np.linalg.norm(r))) for o, r in zip(out, ref)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--demucs-root", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--seconds", type=float, default=180)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--shifts", type=int, default=1)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True, help="folder for track.wav and reference.npy")
    p.add_argument("--modes", default="reference,command,compiled")
    p.add_argument("--device", default="cuda", help="cpu: CPU timings (segment mode) or a quick check")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args()

    make_stubs()
    sys.path.insert(0, args.demucs_root)
    import torch
    import random
    from demucs import spec as demucs_spec
    from demucs.apply import apply_model
    from demucs.states import load_model

    # The defined inverse STFT: a real inverse FFT of a Hermitian spectrum.
    original_ispectro = demucs_spec.ispectro

    def hermitian_ispectro(z, hop_length=None, length=None, pad=0):
        z = z.clone()
        z[..., 0, :] = z[..., 0, :].real.to(z.dtype)
        z[..., -1, :] = z[..., -1, :].real.to(z.dtype)
        return original_ispectro(z, hop_length, length, pad)

    import demucs.htdemucs as htdemucs_module
    htdemucs_module.ispectro = hermitian_ispectro

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.cuda.synchronize = lambda: None
        torch.cuda.reset_peak_memory_stats = lambda: None
        torch.cuda.max_memory_allocated = lambda: 0
        torch.cuda.empty_cache = lambda: None
    try:
        package = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    except TypeError:  # torch < 2.0 has no weights_only
        package = torch.load(args.checkpoint, map_location="cpu")
    model = load_model(package).eval().to(device)
    sr = model.samplerate
    wav_np = deterministic_track(args.seconds, sr)
    os.makedirs(args.out, exist_ok=True)
    write_wav16(os.path.join(args.out, "track.wav"), wav_np, sr)
    wav = wav_dev = torch.from_numpy(wav_np).to(device)

    def command_path(model, wav, dtype):
        random.seed(args.seed)
        w = wav.to(dtype)
        ref = w.mean(0)
        mean, std = ref.mean(), ref.std() + 1e-8
        out = apply_model(model, ((w - mean) / std)[None], shifts=args.shifts, split=True,
                          overlap=args.overlap, progress=False)[0]
        return out * std + mean

    def timed(fn, runs):
        times = []
        out = None
        for _ in range(runs):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = fn()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return out, sorted(times)[len(times) // 2], times

    results = {}
    modes = args.modes.split(",")
    if args.threads:
        torch.set_num_threads(args.threads)
    if "segment" in modes:
        import resource
        seg = wav[:, :int(sr * model.segment)][None]
        with torch.no_grad():
            model(seg)  # warm-up
            _, median, times = timed(lambda: model(seg), args.runs)
        results["official_segment_fp32"] = {
            "median_s": median, "times_s": times, "threads": torch.get_num_threads(),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        modes = [m for m in modes if m != "segment"]
        if not modes:
            for name, r in results.items():
                print(json.dumps({"mode": name, **r}))
            return
    ref_path = os.path.join(args.out, "reference.npy")
    if "reference" in modes:
        with torch.no_grad():
            model64 = load_model(package).eval().to(device).double()
            ref = command_path(model64, wav, torch.float64).cpu().numpy()
        np.save(ref_path, ref.astype(np.float32))
        del model64
        torch.cuda.empty_cache()
    ref = np.load(ref_path)

    if "command" in modes:
        with torch.no_grad():
            command_path(model, wav, torch.float32)  # warm-up
            torch.cuda.reset_peak_memory_stats()
            out, median, times = timed(lambda: command_path(model, wav, torch.float32), args.runs)
        results["official_command_fp32"] = {
            "median_s": median, "times_s": times, "snr_db": snr_per_stem(out.cpu().numpy(), ref),
            "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20}

    def batched(net, autocast_dtype, host=False):
        # Every chunk of the shifted, normalised track in one batch; the
        # same offsets, weights and trims as apply_model. host=True times
        # what fastdemucs's model-time rows time: the samples start in host
        # memory and the stems end there (upload, download and the host
        # tensor's allocation included).
        random.seed(args.seed)
        wav = torch.from_numpy(wav_np).to(device) if host else wav_dev
        ref_mono = wav.mean(0)
        mean, std = ref_mono.mean(), ref_mono.std() + 1e-8
        x = (wav - mean) / std
        length = x.shape[-1]
        max_shift = int(0.5 * sr)
        out = torch.zeros(len(model.sources), 2, length, device=device)
        shifts = max(1, args.shifts)
        for _ in range(shifts):
            offset = random.randint(0, max_shift) if args.shifts else max_shift
            padded = torch.nn.functional.pad(x, (max_shift, max_shift))
            view = padded[:, offset:offset + length + max_shift - offset]
            seg = int(sr * model.segment)
            stride = int((1 - args.overlap) * seg)
            starts = list(range(0, view.shape[-1], stride))
            chunks = []
            for s in starts:
                # apply_model pads short chunks centred, reading real samples where they exist.
                n = min(seg, view.shape[-1] - s)
                delta = seg - n
                a = offset + s - delta // 2
                lo, hi = max(0, a), min(padded.shape[-1], a + seg)
                c = torch.nn.functional.pad(padded[:, lo:hi], (lo - a, a + seg - hi))
                chunks.append(c)
            batch = torch.stack(chunks)
            with torch.autocast("cuda", dtype=autocast_dtype or torch.float16, enabled=autocast_dtype is not None):
                y = net(batch).float()
            weight = torch.cat([torch.arange(1, seg // 2 + 1, device=device),
                                torch.arange(seg - seg // 2, 0, -1, device=device)]).float()
            weight = weight / weight.max()
            acc = torch.zeros(len(model.sources), 2, view.shape[-1], device=device)
            wsum = torch.zeros(view.shape[-1], device=device)
            for i, s in enumerate(starts):
                n = min(seg, view.shape[-1] - s)
                d = seg - n
                acc[..., s:s + n] += weight[:n] * y[i][..., d // 2:d // 2 + n]
                wsum[s:s + n] += weight[:n]
            out += (acc / wsum)[..., max_shift - offset:max_shift - offset + length]
        out = out / shifts * std + mean
        return out.cpu() if host else out

    if "eager32" in modes:
        # The official model with all chunks batched, eager float32: the
        # issue's bar for our fp32 mode.
        with torch.no_grad():
            batched(model, None)  # warm-up
            torch.cuda.reset_peak_memory_stats()
            out, median, times = timed(lambda: batched(model, None), args.runs)
        results["official_batched_fp32"] = {
            "median_s": median, "times_s": times, "snr_db": snr_per_stem(out.cpu().numpy(), ref),
            "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20}
        with torch.no_grad():
            _, median, times = timed(lambda: batched(model, None, host=True), args.runs)
        results["official_batched_fp32_host_to_host"] = {"median_s": median, "times_s": times}

    if "compiled" in modes:
        compiled = torch.compile(model)
        with torch.no_grad():
            t0 = time.perf_counter()
            batched(compiled, torch.float16)
            compile_s = time.perf_counter() - t0
            torch.cuda.reset_peak_memory_stats()
            out, median, times = timed(lambda: batched(compiled, torch.float16), args.runs)
        results["official_compiled_fp16_batched"] = {
            "median_s": median, "times_s": times, "compile_s": compile_s,
            "snr_db": snr_per_stem(out.cpu().numpy(), ref),
            "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20}
        with torch.no_grad():
            _, median, times = timed(lambda: batched(compiled, torch.float16, host=True), args.runs)
        results["official_compiled_fp16_batched_host_to_host"] = {"median_s": median, "times_s": times}

    for name, r in results.items():
        print(json.dumps({"mode": name, **r}))


if __name__ == "__main__":
    main()
