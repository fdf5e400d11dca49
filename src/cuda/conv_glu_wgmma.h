// conv_glu's convolution on Hopper's warpgroup MMAs (wgmma, sm_90a only):
// the same packed input, tap-major weights, GLU on the accumulators and
// output as conv_glu_kernel (cuda/conv_glu.cu), chosen by conv_glu where
// conv_glu_wgmma_available says the device runs it.
//
// Why: conv_glu's mma.sync kernel runs the outer decoders' 3x3 rewrites at
// ~240 TFLOP/s on an H200 (0.89 ms of a forward of 8 chunks, the 1x3 ones
// 0.32 ms); wgmma issues a 64 x 96 x 16 product per warpgroup from shared
// memory without ldmatrix or register fragments for the operands, which
// mma.sync on Hopper cannot match.
#pragma once

#include <cuda_runtime.h>

#include "cuda/common.h"

namespace fastdemucs::cuda {

struct ConvGluWgmmaArgs {
    const void* xp;      // [B, H, W, C] operand type (C a multiple of 16)
    const void* weight;  // [taps][2C][C] operand type
    const float* bias;   // [2C] or null
    float* out;          // [B, C, H, W]
    int C, H, W, B;
};

// Whether this build carries the sm_90a kernels and `device` is compute
// capability 9.0 (sm_90a code runs there only).
bool conv_glu_wgmma_available(int device);
// Whether a GLU tile's weights for C input channels fit in shared memory
// beside the stages (C a multiple of 16, at most 96 with 3x3 taps).
bool conv_glu_wgmma_fits(int64_t C);
// out = GLU(conv(xp) + bias) for a 1x3 (kh = 1) or 3x3 (kh = 3) "same"
// convolution; t is DType::F16 or DType::BF16.
void conv_glu_wgmma(cudaStream_t stream, DType t, int kh, const ConvGluWgmmaArgs& a);

// The encoders' pointwise rewrites with their GLU (and the first encoder's
// frequency embedding), out [B, C, P] = GLU(W x + bias) (+ emb), from the
// DConv's operand copy x [B, Cin, ld] (planes of positions, ld a multiple
// of 8 and >= P).
struct Conv1x1GluArgs {
    const void* x;       // [B, Cin, ld] operand type
    const void* weight;  // [2C, Cin] operand type
    const float* bias;   // [2C] or null
    float* out;          // [B, C, P]
    int Cin = 0, C = 0, B = 0;
    int64_t P = 0, ld = 0;
    // Or null: out[b, c, p] += k * (table[p / T, c] * s), as the GLU pass adds it.
    const float* emb_table = nullptr;
    int64_t emb_T = 1;
    float emb_k = 0.0f, emb_s = 0.0f;
};
// Whether it takes Cin input channels: a multiple of 16, at most 96 (the
// first two encoders' rewrites; the deeper ones' GEMMs are bound by the
// tensor cores and stay on cuBLAS).
bool conv1x1_glu_wgmma_fits(int64_t cin, int64_t C);
void conv1x1_glu_wgmma(cudaStream_t stream, DType t, const Conv1x1GluArgs& a);

}  // namespace fastdemucs::cuda
