// Sampling on the device for the CUDA backend: stages a step's SamplingBatch (rows, penalty lists)
// and its token masks in one upload, masks the constrained rows' logits in place
// (cuda::apply_token_mask), runs cuda::sample on the step's f32 logits where they are, and brings
// back only the sampled tokens and logprobs (R × 176 bytes instead of R × vocab × 4).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "models/backend.h"
#include "models/cuda/memory.h"

namespace stem {

class CudaSampling {
 public:
  // Queues the upload, the op and the download on `stream`. logits: the step's f32 [R, V] on the
  // device, R = batch.num_rows().
  void launch(const SamplingBatch& batch, const TensorView& logits, cudaStream_t stream);
  // After the stream is synchronised: the results of the last launch.
  void collect(SampledTokens& out) const;
  size_t device_bytes() const { return in_.bytes() + out_.bytes() + scratch_.bytes(); }

 private:
  // The byte offsets of one step's inputs and outputs in their buffers.
  struct Layout {
    size_t rows = 0, offsets = 0, penalties = 0, mask_of_row = 0, masks = 0, in_total = 0;
    size_t token = 0, logprob = 0, top_ids = 0, top_logprobs = 0, out_total = 0;
  };
  static Layout layout_for(int64_t rows, int64_t penalties, int64_t mask_words);

  cudabk::DeviceMemory in_, out_, scratch_;
  cudabk::PinnedMemory in_host_, out_host_;
  Layout layout_;
  int64_t rows_ = 0;
};

}  // namespace stem
