#include <cmath>

#include "kernels/cpu/rows.h"
#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/embedding.cuh"
#include "kernels/cuda/pdl.cuh"

namespace stem::cuda {

namespace {

// One block per token; each thread moves 16-byte vectors of the row.
template <typename Out>
__global__ void embedding_kernel(Out* __restrict__ out, int64_t out_stride, const int32_t* __restrict__ ids,
                                 const bf16* __restrict__ table, int64_t table_stride, int64_t vocab, int vecs) {
  pdl_wait();  // ids and the table may be the kernel before's output (a sampled token, a row gather)
  pdl_launch_dependents();
  const int64_t t = blockIdx.x;
  const int32_t id = ids[t];
  const bool valid = id >= 0 && id < vocab;
  const bf16* src = table + (valid ? id : 0) * table_stride;
  Out* dst = out + t * out_stride;
  for (int i = threadIdx.x; i < vecs; i += blockDim.x) {
    float v[kVec];
    if (valid) {
      load8(src + i * kVec, v);
    } else {
#pragma unroll
      for (int j = 0; j < kVec; ++j) v[j] = __int_as_float(0x7fc00000);  // quiet NaN
    }
    store8(dst + i * kVec, v);
  }
}

}  // namespace

void embedding(const TensorView& out, const TensorView& ids, const TensorView& table, cudaStream_t stream) {
  STEM_CHECK(out.dtype == DType::F32 || out.dtype == DType::BF16, "embedding out must be f32 or bf16, got ", out.str());
  cpu::check_rows(out, "embedding out", out.dtype, 2);
  cpu::check_packed(ids, "embedding ids", DType::I32, 1);
  cpu::check_rows(table, "embedding table", DType::BF16, 2);
  const int64_t tokens = out.shape[0], hidden = out.shape[1];
  cpu::check_dim(ids, "embedding ids", 0, tokens, "tokens, as in out");
  cpu::check_dim(table, "embedding table", 1, hidden, "hidden size, as in out");
  check_vector_rows(out, "embedding out");
  check_vector_rows(table, "embedding table");
  if (tokens == 0 || hidden == 0) return;
  STEM_CHECK(tokens <= INT32_MAX, "embedding: ", tokens, " tokens is over one launch's grid");

  const int vecs = static_cast<int>(hidden / kVec);
  const int threads = threads_for(vecs, 256);
  const auto grid = static_cast<unsigned>(tokens);
  if (out.dtype == DType::F32)
    launch_pdl(embedding_kernel<float>, grid, threads, 0, stream, out.ptr<float>(), cpu::row_stride(out),
               ids.ptr<int32_t>(), table.ptr<bf16>(), cpu::row_stride(table), table.shape[0], vecs);
  else
    launch_pdl(embedding_kernel<bf16>, grid, threads, 0, stream, out.ptr<bf16>(), cpu::row_stride(out),
               ids.ptr<int32_t>(), table.ptr<bf16>(), cpu::row_stride(table), table.shape[0], vecs);
}

}  // namespace stem::cuda
