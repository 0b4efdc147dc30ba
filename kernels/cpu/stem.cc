#include "kernels/cpu/stem.h"

#include <algorithm>
#include <cmath>

#include "kernels/check.h"

namespace stem {

void check_stem_kernel_params(const StemKernelParams& s) {
  STEM_CHECK(s.block_size > 0 && s.stride > 0 && s.block_size % s.stride == 0, "Stem: the stride (", s.stride,
             ") must divide the block size (", s.block_size, ")");
  STEM_CHECK(s.lambda >= 0 && std::isfinite(s.lambda), "Stem: lambda must be >= 0, got ", s.lambda);
  STEM_CHECK(s.sink_blocks >= 0 && s.window_blocks >= 1, "Stem: sink blocks must be >= 0 and window blocks >= 1 (the ",
             "diagonal block), got ", s.sink_blocks, " and ", s.window_blocks);
  STEM_CHECK(s.selector == StemSelector::TopK || s.selector == StemSelector::Threshold ||
                 s.selector == StemSelector::None || s.selector == StemSelector::Adaptive,
             "Stem: unknown selector ", static_cast<int>(s.selector));
  STEM_CHECK(s.threshold > 0 && s.threshold <= 1, "Stem: the threshold (softmax mass to keep) must be in (0, 1], got ",
             s.threshold);
}

void check_stem_query_blocks(std::span<const StemQueryBlock> blocks, std::span<const int32_t> kv_lens,
                             std::span<const int32_t> query_start, const StemKernelParams& params) {
  STEM_CHECK(query_start.size() == kv_lens.size() + 1, "Stem: ", kv_lens.size(), " kv_lens need ", kv_lens.size() + 1,
             " query_start entries, got ", query_start.size());
  const int64_t bs = params.block_size, seqs = static_cast<int64_t>(kv_lens.size());
  for (size_t n = 0; n < blocks.size(); ++n) {
    const StemQueryBlock& b = blocks[n];
    STEM_CHECK(b.seq >= 0 && b.seq < seqs, "Stem: query block ", n, " names sequence ", b.seq, " of ", seqs);
    STEM_CHECK(n == 0 || b.seq > blocks[n - 1].seq || (b.seq == blocks[n - 1].seq && b.block > blocks[n - 1].block),
               "Stem: query block ", n, " (sequence ", b.seq, ", block ", b.block,
               ") is out of order: sequences ascending, each one's blocks ascending");
    const int64_t kv_len = kv_lens[b.seq], first_pos = kv_len - (int64_t{query_start[b.seq + 1]} - query_start[b.seq]);
    const int64_t i = b.block;
    STEM_CHECK(i >= 0 && i * bs < kv_len && (i + 1) * bs > first_pos, "Stem: query block ", i, " of sequence ", b.seq,
               " has no rows in this step (positions ", first_pos, " to ", kv_len, ")");
    if (b.sparse) {
      STEM_CHECK(i * bs >= first_pos && b.key_end == std::min((i + 1) * bs, kv_len) && b.budget >= 0 &&
                     b.list_bound >= 1 && b.list_bound <= i + 1,
                 "Stem: sparse query block ", i, " of sequence ", b.seq, " is not whole in the step or has key_end ",
                 b.key_end, ", budget ", b.budget, ", list bound ", b.list_bound);
    } else {
      STEM_CHECK(b.first_key >= 0 && b.first_key <= i && b.list_bound == i - b.first_key + 1, "Stem: dense query block ",
                 i, " of sequence ", b.seq, " has first key block ", b.first_key, " and list bound ", b.list_bound);
    }
  }
}

}  // namespace stem
