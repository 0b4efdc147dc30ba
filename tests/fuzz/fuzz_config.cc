// config.json parsing and validation on arbitrary text: a config it accepts has the sizes the
// model code divides and allocates by.
#include <string>

#include "base/model_config.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  stem::fuzz::expect_ok_or_error([&] {
    const stem::ModelConfig c = stem::parse_model_config(text, "config.json");
    FUZZ_CHECK(c.vocab_size > 0 && c.hidden_size > 0 && c.num_hidden_layers > 0);
    FUZZ_CHECK(c.num_attention_heads > 0 && c.num_key_value_heads > 0 && c.head_dim > 0);
    FUZZ_CHECK(c.num_attention_heads % c.num_key_value_heads == 0);
    // The products the model code sizes its tensors by must not overflow (UBSan would say so).
    FUZZ_CHECK(c.q_dim() > 0 && c.kv_dim() > 0);
  });
  return 0;
}
