#!/usr/bin/env python3
"""Times torch's scaled_dot_product_attention backends (cuDNN, flash,
memory-efficient) on the cross-transformer's attention shapes of
htdemucs_6s at batch 8, float16: the comparison point for fastdemucs's own
attention kernel (cuda/attention.cu; its ncu time is in bench/README.md).

Not part of fastdemucs: a measuring tool for the GPU machine.
  python3 bench/attention_sdpa.py [--batch 8] [--heads 8] [--head-dim 48]
Prints one JSON line per backend and shape (median of 20 after 5 warm-ups,
CUDA events) and the total over one forward's 10 attention calls.
"""
import argparse
import json

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=48)
    ap.add_argument("--freq-tokens", type=int, default=2688)  # 8 bins x 336 frames
    ap.add_argument("--time-tokens", type=int, default=1344)
    args = ap.parse_args()
    b, h, d, nf, nt = args.batch, args.heads, args.head_dim, args.freq_tokens, args.time_tokens
    # One forward: 3 self-attention layers (both branches) and 2 cross layers (each branch
    # attending to the other): (queries, keys, calls).
    shapes = [(nf, nf, 3), (nt, nt, 3), (nf, nt, 2), (nt, nf, 2)]
    backends = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}
    print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "cudnn": torch.backends.cudnn.version()}))
    for name, backend in backends.items():
        total, flops = 0.0, 0.0
        for nq, nk, calls in shapes:
            q = torch.randn(b, h, nq, d, device="cuda", dtype=torch.float16)
            k = torch.randn(b, h, nk, d, device="cuda", dtype=torch.float16)
            v = torch.randn(b, h, nk, d, device="cuda", dtype=torch.float16)
            try:
                with sdpa_kernel(backend):
                    for _ in range(5):
                        torch.nn.functional.scaled_dot_product_attention(q, k, v)
                    times = []
                    for _ in range(20):
                        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        start.record()
                        torch.nn.functional.scaled_dot_product_attention(q, k, v)
                        end.record()
                        torch.cuda.synchronize()
                        times.append(start.elapsed_time(end))
            except RuntimeError as e:
                print(json.dumps({"backend": name, "queries": nq, "keys": nk, "error": str(e).splitlines()[0]}))
                total = float("nan")
                continue
            ms = sorted(times)[len(times) // 2]
            f = 4.0 * b * h * nq * nk * d
            total += ms * calls
            flops += f * calls
            print(json.dumps({"backend": name, "queries": nq, "keys": nk, "median_ms": round(ms, 4),
                              "tflops": round(f / ms / 1e9, 1)}))
        print(json.dumps({"backend": name, "forward_total_ms": round(total, 3),
                          "tflops": round(flops / total / 1e9, 1) if total == total else None}))


if __name__ == "__main__":
    main()
