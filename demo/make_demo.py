#!/usr/bin/env python3
"""Synthesizes demo/demo.flac: 8 s of a little band, made from scratch here
(so it is ours to ship, no third-party audio): drums (kick, snare, hi-hat),
a bass line, chords and a sung-like lead, 120 BPM, A minor - F - C - G,
44.1 kHz stereo. Needs only python3 and the ffmpeg program (for FLAC).

    python3 demo/make_demo.py   # rewrites demo/demo.flac
"""
import math
import os
import random
import struct
import subprocess
import tempfile
import wave

RATE = 44100
BEAT = 0.5                      # seconds per beat at 120 BPM
BARS = 4
LENGTH = int(RATE * BEAT * 4 * BARS)
rng = random.Random(20240601)

left = [0.0] * LENGTH
right = [0.0] * LENGTH


def add(start, samples, pan=0.0):
    """Mixes mono `samples` in at time `start` (s), pan -1 (left) .. 1 (right)."""
    gain_l = math.cos((pan + 1) * math.pi / 4)
    gain_r = math.sin((pan + 1) * math.pi / 4)
    first = int(start * RATE)
    for i, x in enumerate(samples):
        if first + i >= LENGTH:
            break
        left[first + i] += gain_l * x
        right[first + i] += gain_r * x


def freq(midi):
    return 440.0 * 2 ** ((midi - 69) / 12)


def kick():
    n = int(0.35 * RATE)
    phase, out = 0.0, []
    for i in range(n):
        t = i / RATE
        f = 45 + 90 * math.exp(-t * 30)
        phase += 2 * math.pi * f / RATE
        out.append(0.9 * math.sin(phase) * math.exp(-t * 9))
    return out


def snare():
    n = int(0.2 * RATE)
    return [(0.45 * rng.uniform(-1, 1) + 0.3 * math.sin(2 * math.pi * 190 * i / RATE)) * math.exp(-i / RATE * 22)
            for i in range(n)]


def hihat():
    n = int(0.05 * RATE)
    previous, out = 0.0, []
    for i in range(n):
        x = rng.uniform(-1, 1)
        out.append(0.18 * (x - previous) * math.exp(-i / RATE * 80))  # crude high-pass
        previous = x
    return out


def tone(midi, seconds, harmonics, attack=0.01, release=0.08, vibrato=0.0):
    n = int(seconds * RATE)
    f0, phase, out = freq(midi), 0.0, []
    for i in range(n):
        t = i / RATE
        f = f0 * (1 + vibrato * math.sin(2 * math.pi * 5.5 * t) * min(1.0, t * 3))
        phase += 2 * math.pi * f / RATE
        env = min(1.0, t / attack) * min(1.0, (seconds - t) / release)
        out.append(env * sum(a * math.sin(k * phase) for k, a in harmonics))
    return out


chords = [(57, [57, 60, 64]), (53, [53, 57, 60]), (48, [55, 60, 64]), (55, [55, 59, 62])]  # Am F C G
melody = [(76, 1), (74, 0.5), (72, 0.5), (71, 1), (72, 1),
          (72, 1), (69, 1), (65, 1), (69, 1),
          (67, 1), (72, 1), (76, 1), (79, 1),
          (79, 1.5), (77, 0.5), (74, 2)]

for bar, (root, triad) in enumerate(chords):
    start = bar * 4 * BEAT
    for beat in range(4):
        add(start + beat * BEAT, kick() if beat % 2 == 0 else snare(), 0.0)
        for half in range(2):
            add(start + (beat + half / 2) * BEAT, hihat(), 0.35)
        for half in range(2):  # bass in eighths
            note = root - 12 if half == 0 else root
            add(start + (beat + half / 2) * BEAT, tone(note, BEAT / 2 * 0.9, [(1, 0.35), (2, 0.15), (3, 0.07)]), -0.1)
    for i, note in enumerate(triad):  # chords held for the bar
        add(start, tone(note, 4 * BEAT, [(1, 0.07), (2, 0.03), (4, 0.01)], attack=0.05, release=0.3), -0.5 + 0.5 * i)

t = 0.0
for note, beats in melody:  # the lead, with vibrato and vowel-like harmonics
    add(t, tone(note, beats * BEAT * 0.95, [(1, 0.2), (2, 0.12), (3, 0.1), (4, 0.04), (5, 0.03)],
                attack=0.04, release=0.1, vibrato=0.006), 0.1)
    t += beats * BEAT

peak = max(max(abs(x) for x in left), max(abs(x) for x in right))
scale = 0.8 / peak
here = os.path.dirname(os.path.abspath(__file__))
with tempfile.TemporaryDirectory() as tmp:
    wav_path = os.path.join(tmp, "demo.wav")
    with wave.open(wav_path, "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(b"".join(struct.pack("<hh", round(l * scale * 32767), round(r * scale * 32767))
                                 for l, r in zip(left, right)))
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", wav_path, "-c:a", "flac", "-compression_level", "12",
                    os.path.join(here, "demo.flac")], check=True)
print("wrote", os.path.join(here, "demo.flac"))
