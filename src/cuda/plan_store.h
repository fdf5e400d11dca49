// A folder of serialised execution plans, kept between processes.
// cuDNN generates its Hopper attention kernels at run time (~80-100 ms of
// host time per shape); a plan serialised once and read back later skips that
// (cuda/cudnn_attention.h). The store knows nothing of cuDNN: it keeps bytes
// under a description of what they were made for (library versions, GPU,
// shape), and hands them back only for exactly that description.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fastdemucs::cuda {

class PlanStore {
public:
    // FASTDEMUCS_PLAN_CACHE when set ("off": no store), else
    // $XDG_CACHE_HOME/fastdemucs/plans, else ~/.cache/fastdemucs/plans; empty
    // (no store) where none of them can be named.
    static std::string default_folder();

    // An empty folder is no store: load() finds nothing, save() keeps nothing.
    explicit PlanStore(std::string folder);

    const std::string& folder() const { return folder_; }

    // The bytes saved under exactly `description` (empty: none, or a damaged
    // or mismatching file, which is then ignored). Never throws.
    std::vector<uint8_t> load(const std::string& description) const;

    // Keeps `bytes` under `description`: written beside the final name and
    // renamed over it, so that a reader never sees half a plan and
    // concurrent writers of one description leave one whole file. Returns
    // false where the folder cannot be made or written (a read-only home:
    // the plans are then made again next time). Never throws.
    bool save(const std::string& description, const std::vector<uint8_t>& bytes) const;

    // The file a description is kept in (folder/plan-HASH.bin).
    std::string path_of(const std::string& description) const;

private:
    std::string folder_;
};

}  // namespace fastdemucs::cuda
