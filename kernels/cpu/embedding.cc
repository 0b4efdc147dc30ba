#include "kernels/cpu/embedding.h"

#include "kernels/cpu/rows.h"

namespace stem::cpu {

namespace {

// Elem is the table's storage type; widen turns one stored value into f32.
template <typename Elem, typename Widen>
void gather_rows(const TensorView& out, const int32_t* ids, const TensorView& table, Widen widen) {
  const int64_t tokens = out.shape[0], hidden = out.shape[1];
  for (int64_t t = 0; t < tokens; ++t) {
    const Elem* src = table.ptr<Elem>() + ids[t] * row_stride(table);
    float* dst = out.ptr<float>() + t * row_stride(out);
    for (int64_t j = 0; j < hidden; ++j) dst[j] = widen(src[j]);
  }
}

}  // namespace

void embedding(const TensorView& out, const TensorView& ids, const TensorView& table) {
  check_rows(out, "embedding out", DType::F32, 2);
  check_packed(ids, "embedding ids", DType::I32, 1);
  STEM_CHECK(table.dtype == DType::F32 || table.dtype == DType::BF16 || table.dtype == DType::F16,
             "embedding table must be f32, bf16 or f16, got ", table.str());
  check_rows(table, "embedding table", table.dtype, 2);
  const int64_t tokens = out.shape[0], vocab = table.shape[0];
  check_dim(ids, "embedding ids", 0, tokens, "tokens, as in out");
  check_dim(table, "embedding table", 1, out.shape[1], "hidden size, as in out");

  // Validate first so that a bad id leaves out untouched.
  const int32_t* id = ids.ptr<int32_t>();
  for (int64_t t = 0; t < tokens; ++t)
    STEM_CHECK(id[t] >= 0 && id[t] < vocab, "embedding: token id ", id[t], " at position ", t,
               " is outside the vocabulary [0,", vocab, ")");

  switch (table.dtype) {
    case DType::F32:
      gather_rows<float>(out, id, table, [](float x) { return x; });
      break;
    case DType::BF16:
      gather_rows<uint16_t>(out, id, table, bf16_to_f32);
      break;
    default:
      gather_rows<uint16_t>(out, id, table, f16_to_f32);
      break;
  }
}

}  // namespace stem::cpu
