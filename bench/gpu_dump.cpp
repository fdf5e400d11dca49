// Fidelity dump on the GPU machine, for fixtures too large to carry with
// their references: runs full6s through the CUDA backend and writes what the
// fixture references describe, to compare here (bench/compare_stems.py).
//   gpu_dump CHECKPOINT MIX_3S.wav MIX_12S.wav OUT_DIR
// Writes forward_3s_<precision>.npy ([S, C, T] float32; the model's forward
// on the raw 3 s input) and separate_12s_<precision>.npy (the command path,
// shifts 0, overlap 0.25; fp32 as two float32 halves of the sources, the
// reduced precisions in float16, so that every file stays under 16 MiB).
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "fastdemucs/fastdemucs.h"
#include "io/audio_file.h"
#include "model/model.h"
#include "npy_file.h"

using namespace fastdemucs;
using fastdemucs_bench::write_npy;


int main(int argc, char** argv) {
    if (argc < 5) {
        std::fprintf(stderr, "usage: %s CHECKPOINT MIX_3S.wav MIX_12S.wav OUT_DIR\n", argv[0]);
        return 2;
    }
    try {
        const std::string checkpoint = argv[1], out = argv[4];
        Audio mix3 = read_audio(argv[2]), mix12 = read_audio(argv[3]);
        auto model = load_htdemucs(checkpoint);
        const int S = model->config.num_sources(), C = model->config.audio_channels;
        const std::pair<const char*, Precision> precisions[] = {
            {"fp32", Precision::Fp32}, {"fp16", Precision::Fp16}, {"bf16", Precision::Bf16}};
        for (const auto& [name, precision] : precisions) {
            const bool half = precision != Precision::Fp32;
            if (!std::getenv("GPU_DUMP_NO_FORWARD")) {
                auto backend = make_cuda_backend(model, 0, precision);
                std::vector<float> stems(int64_t(S) * C * mix3.samples);
                backend->forward(mix3.data.data(), 1, mix3.samples, stems.data());
                write_npy(out + "/forward_3s_" + name + ".npy", stems.data(), {S, C, mix3.samples}, false);
            }

            LoadParams load = load_default_params();
            load.checkpoint = checkpoint;
            load.device = DeviceKind::Cuda;
            load.precision = precision;
            SeparateParams params = separate_default_params();
            params.shifts = 0;
            Stems sep = Separator::load(load)->separate(mix12, params);
            const int64_t per_stem = int64_t(C) * mix12.samples;
            if (half) {
                write_npy(out + "/separate_12s_" + name + ".npy", sep.data.data(), {S, C, mix12.samples}, true);
            } else {
                write_npy(out + "/separate_12s_" + name + ".sources0-2.npy", sep.data.data(), {3, C, mix12.samples}, false);
                write_npy(out + "/separate_12s_" + name + ".sources3-5.npy", sep.data.data() + 3 * per_stem,
                          {S - 3, C, mix12.samples}, false);
            }
            std::printf("dumped %s\n", name);
        }
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "gpu_dump: %s\n", e.what());
        return 1;
    }
}
