// config.json of a Llama-family checkpoint (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM).
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "kernels/cpu/rope.h"

namespace stem {

struct ModelConfig {
  std::string architecture;  // "LlamaForCausalLM", ...
  std::string model_type;    // "llama", "mistral", "qwen2"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  cpu::RopeScaling rope_scaling;
  int64_t max_position_embeddings = 2048;
  int64_t sliding_window = 0;  // 0: none
  bool attention_bias = false;  // q/k/v projections carry a bias
  bool o_proj_bias = false;
  bool mlp_bias = false;
  bool tie_word_embeddings = false;
  std::vector<int32_t> bos_token_ids, eos_token_ids;
  // "fp8": a compressed-tensors FP8 checkpoint (quantization_config: float-quantized, E4M3 weights
  // with a scale per output channel or tensor, activations dynamic); "": none.
  std::string quantization;

  int64_t q_dim() const { return num_attention_heads * head_dim; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }
};

// Reads and validates DIR/config.json; the error names the file and the field.
ModelConfig load_model_config(const std::filesystem::path& model_dir);
ModelConfig parse_model_config(const std::string& json_text, const std::string& where);

}  // namespace stem
