#include "models/cuda/sampling.h"

#include <algorithm>
#include <cstring>

#include "kernels/cuda/sampling.cuh"
#include "kernels/cuda/token_mask.cuh"

namespace stem {

namespace {
size_t align16(size_t n) { return (n + 15) / 16 * 16; }
}  // namespace

CudaSampling::Layout CudaSampling::layout_for(int64_t rows, int64_t penalties, int64_t mask_words) {
  const auto R = static_cast<size_t>(rows), P = static_cast<size_t>(penalties), W = static_cast<size_t>(mask_words);
  const size_t top = R * kMaxTopLogprobs * 4;
  Layout l;
  l.rows = 0;
  l.offsets = align16(R * sizeof(SamplingRow));
  l.penalties = l.offsets + align16((R + 1) * sizeof(int32_t));
  l.mask_of_row = l.penalties + align16(P * sizeof(PenaltyToken));
  l.masks = l.mask_of_row + align16(W > 0 ? R * 4 : 0);
  l.in_total = l.masks + align16(W * 4);
  l.token = 0;
  l.logprob = align16(R * 4);
  l.top_ids = l.logprob + align16(R * 4);
  l.top_logprobs = l.top_ids + align16(top);
  l.out_total = l.top_logprobs + align16(top);
  return l;
}

void CudaSampling::launch(const SamplingBatch& batch, const TensorView& logits, cudaStream_t stream) {
  const int64_t R = batch.num_rows(), V = logits.shape[1];
  const auto P = static_cast<int64_t>(batch.penalties.size());
  rows_ = R;
  if (R == 0) return;
  const int64_t M = batch.num_masks();
  layout_ = layout_for(R, P, static_cast<int64_t>(batch.mask_words.size()));
  // Buffers only grow; the step before has synchronised, so nothing still reads the old ones.
  if (layout_.in_total > in_.bytes()) {
    in_ = cudabk::DeviceMemory(layout_.in_total * 2, "sampling parameters");
    in_host_ = cudabk::PinnedMemory(layout_.in_total * 2);
  }
  if (layout_.out_total > out_.bytes()) {
    out_ = cudabk::DeviceMemory(layout_.out_total * 2, "sampled tokens");
    out_host_ = cudabk::PinnedMemory(layout_.out_total * 2);
  }
  char* host = in_host_.as<char>();
  std::memcpy(host + layout_.rows, batch.rows.data(), static_cast<size_t>(R) * sizeof(SamplingRow));
  const SamplingInputs staged = batch.inputs();
  std::memcpy(host + layout_.offsets, staged.penalty_offsets, static_cast<size_t>(R + 1) * sizeof(int32_t));
  if (P > 0) std::memcpy(host + layout_.penalties, batch.penalties.data(), static_cast<size_t>(P) * sizeof(PenaltyToken));
  if (M > 0) {
    std::memcpy(host + layout_.mask_of_row, batch.mask_of_row.data(), static_cast<size_t>(R) * 4);
    std::memcpy(host + layout_.masks, batch.mask_words.data(), batch.mask_words.size() * 4);
  }
  CUDA_CHECK(cudaMemcpyAsync(in_.get(), host, layout_.in_total, cudaMemcpyHostToDevice, stream));

  // The op writes penalised rows to scratch; without any it never touches scratch, so the logits
  // themselves stand in and no [R, V] buffer is needed.
  bool penalised = false;
  for (int64_t r = 0; r < R; ++r)
    penalised |= batch.rows[r].has_penalties() && staged.penalty_offsets[r + 1] > staged.penalty_offsets[r];
  TensorView scratch = logits;
  if (penalised) {
    const size_t bytes = static_cast<size_t>(R * V) * 4;
    if (bytes > scratch_.bytes()) scratch_ = cudabk::DeviceMemory(bytes, "sampling scratch (penalised logits)");
    scratch = TensorView(scratch_.get(), DType::F32, {R, V});
  }
  const SamplingInputs in{reinterpret_cast<const SamplingRow*>(in_.bytes_ptr(layout_.rows)),
                          reinterpret_cast<const int32_t*>(in_.bytes_ptr(layout_.offsets)),
                          P > 0 ? reinterpret_cast<const PenaltyToken*>(in_.bytes_ptr(layout_.penalties)) : nullptr, R};
  const SamplingOutputs out{TensorView(out_.bytes_ptr(layout_.token), DType::I32, {R}),
                            TensorView(out_.bytes_ptr(layout_.logprob), DType::F32, {R}),
                            TensorView(out_.bytes_ptr(layout_.top_ids), DType::I32, {R, kMaxTopLogprobs}),
                            TensorView(out_.bytes_ptr(layout_.top_logprobs), DType::F32, {R, kMaxTopLogprobs})};
  // Constrained rows: their disallowed ids to −inf in the logits themselves (the step's own buffer,
  // written again by the next forward pass), before anything reads them.
  if (M > 0)
    cuda::apply_token_mask(logits, TensorView(in_.bytes_ptr(layout_.masks), DType::I32, {M, batch.mask_words_per_row}),
                           TensorView(in_.bytes_ptr(layout_.mask_of_row), DType::I32, {R}), stream);
  cuda::sample(out, logits, in, scratch, stream);
  CUDA_CHECK(cudaMemcpyAsync(out_host_.as<char>(), out_.get(), layout_.out_total, cudaMemcpyDeviceToHost, stream));
}

void CudaSampling::collect(SampledTokens& out) const {
  out.resize(rows_);
  if (rows_ == 0) return;
  const char* host = out_host_.as<char>();
  const auto R = static_cast<size_t>(rows_), top = R * kMaxTopLogprobs;
  std::memcpy(out.tokens.data(), host + layout_.token, R * 4);
  std::memcpy(out.logprobs.data(), host + layout_.logprob, R * 4);
  std::memcpy(out.top_ids.data(), host + layout_.top_ids, top * 4);
  std::memcpy(out.top_logprobs.data(), host + layout_.top_logprobs, top * 4);
}

}  // namespace stem
