#include "base/model_config.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "kernels/check.h"

namespace stem {

namespace {

using nlohmann::json;

struct Reader {
  const json& j;
  const std::string& where;

  [[noreturn]] void fail(const std::string& key, const std::string& why) const {
    throw Error(where + ": \"" + key + "\" " + why);
  }
  int64_t integer(const std::string& key, int64_t min_value) const {
    if (!j.contains(key) || j[key].is_null()) fail(key, "is missing");
    if (!j[key].is_number_integer()) fail(key, "must be an integer");
    int64_t v = j[key].get<int64_t>();
    if (v < min_value) fail(key, "must be at least " + std::to_string(min_value) + ", got " + std::to_string(v));
    return v;
  }
  int64_t integer_or(const std::string& key, int64_t fallback, int64_t min_value) const {
    if (!j.contains(key) || j[key].is_null()) return fallback;
    return integer(key, min_value);
  }
  double number_or(const std::string& key, double fallback) const {
    if (!j.contains(key) || j[key].is_null()) return fallback;
    if (!j[key].is_number()) fail(key, "must be a number");
    return j[key].get<double>();
  }
  bool boolean_or(const std::string& key, bool fallback) const {
    if (!j.contains(key) || j[key].is_null()) return fallback;
    if (!j[key].is_boolean()) fail(key, "must be true or false");
    return j[key].get<bool>();
  }
  std::vector<int32_t> ids(const std::string& key) const {
    std::vector<int32_t> out;
    if (!j.contains(key) || j[key].is_null()) return out;
    if (j[key].is_number_integer()) return {j[key].get<int32_t>()};
    if (!j[key].is_array()) fail(key, "must be a token id or a list of them");
    for (const auto& v : j[key]) {
      if (!v.is_number_integer()) fail(key, "must hold integers");
      out.push_back(v.get<int32_t>());
    }
    return out;
  }
};

// rope_scaling (transformers 4) or rope_parameters (transformers 5).
void parse_rope(const json& j, const std::string& where, ModelConfig& c) {
  const json* rope = nullptr;
  std::string key;
  for (const char* k : {"rope_parameters", "rope_scaling"})
    if (j.contains(k) && !j[k].is_null()) {
      rope = &j[k];
      key = k;
      break;
    }
  if (!rope) return;
  if (!rope->is_object()) throw Error(where + ": \"" + key + "\" must be an object or null");
  Reader r{*rope, where};
  if (rope->contains("rope_theta")) c.rope_theta = r.number_or("rope_theta", c.rope_theta);
  std::string type = "default";
  for (const char* k : {"rope_type", "type"})
    if (rope->contains(k) && (*rope)[k].is_string()) {
      type = (*rope)[k].get<std::string>();
      break;
    }
  auto& s = c.rope_scaling;
  if (type == "default") {
    s.kind = cpu::RopeScaling::Kind::None;
  } else if (type == "linear") {
    s.kind = cpu::RopeScaling::Kind::Linear;
    s.factor = r.number_or("factor", 0);
    if (!(s.factor > 0)) r.fail("factor", "must be a positive number for linear rope scaling");
  } else if (type == "llama3") {
    s.kind = cpu::RopeScaling::Kind::Llama3;
    s.factor = r.number_or("factor", 0);
    if (!(s.factor > 0)) r.fail("factor", "must be a positive number for llama3 rope scaling");
    s.low_freq_factor = r.number_or("low_freq_factor", 1.0);
    s.high_freq_factor = r.number_or("high_freq_factor", 4.0);
    s.original_max_position_embeddings = r.integer("original_max_position_embeddings", 1);
    if (!(s.high_freq_factor > s.low_freq_factor)) r.fail("high_freq_factor", "must be larger than low_freq_factor");
  } else {
    throw Error(where + ": rope scaling type '" + type + "' is not supported (none, linear, llama3)");
  }
}

// quantization_config: what stemserve runs is the compressed-tensors "FP8-Dynamic" family (the
// layout llm-compressor writes): 8-bit float weights per output channel (or per tensor), and
// activations quantized at run time (dynamic) or not at all. Anything else is refused by name.
std::string parse_quantization(const json& j, const std::string& where) {
  if (!j.contains("quantization_config") || j["quantization_config"].is_null()) return "";
  const json& q = j["quantization_config"];
  auto fail = [&](const std::string& key, const std::string& why) -> void {
    throw Error(where + ": \"quantization_config." + key + "\" " + why);
  };
  auto str = [](const json& o, const char* k) {
    return o.contains(k) && o[k].is_string() ? o[k].get<std::string>() : std::string();
  };
  if (!q.is_object()) throw Error(where + ": \"quantization_config\" must be an object");
  if (str(q, "quant_method") != "compressed-tensors")
    fail("quant_method",
         "is '" + str(q, "quant_method") + "': stemserve loads compressed-tensors FP8 checkpoints only");
  if (str(q, "format") != "float-quantized")
    fail("format", "is '" + str(q, "format") + "': stemserve loads the float-quantized (FP8) format only");
  if (q.contains("kv_cache_scheme") && !q["kv_cache_scheme"].is_null())
    fail("kv_cache_scheme", "is set: KV-cache scales from a checkpoint are not supported");
  if (!q.contains("config_groups") || !q["config_groups"].is_object() || q["config_groups"].empty())
    fail("config_groups", "must be an object of quantization groups");
  for (const auto& [name, g] : q["config_groups"].items()) {
    const std::string at = "config_groups." + name;
    if (!g.is_object() || !g.contains("weights") || !g["weights"].is_object()) fail(at + ".weights", "is missing");
    const json& w = g["weights"];
    if (str(w, "type") != "float" || !w.contains("num_bits") || w["num_bits"] != 8)
      fail(at + ".weights", "must be 8-bit float (type \"float\", num_bits 8)");
    if (str(w, "strategy") != "channel" && str(w, "strategy") != "tensor")
      fail(at + ".weights.strategy", "is '" + str(w, "strategy") + "': stemserve takes channel or tensor scales");
    if (g.contains("input_activations") && !g["input_activations"].is_null()) {
      const json& a = g["input_activations"];
      if (!a.is_object() || !a.contains("dynamic") || a["dynamic"] != true)
        fail(at + ".input_activations.dynamic", "must be true: static activation scales are not supported");
    }
  }
  return "fp8";
}

}  // namespace

ModelConfig parse_model_config(const std::string& text, const std::string& where) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number like 1E400
    throw Error(where + ": not valid JSON: " + e.what());
  }
  if (!j.is_object()) throw Error(where + ": not a JSON object");
  Reader r{j, where};
  ModelConfig c;

  static const std::pair<const char*, const char*> kSupported[] = {
      {"LlamaForCausalLM", "llama"}, {"MistralForCausalLM", "mistral"}, {"Qwen2ForCausalLM", "qwen2"}};
  if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty() &&
      j["architectures"][0].is_string()) {
    c.architecture = j["architectures"][0].get<std::string>();
  }
  if (j.contains("model_type") && j["model_type"].is_string()) c.model_type = j["model_type"].get<std::string>();
  bool ok = false;
  for (const auto& [arch, type] : kSupported) {
    if (c.architecture == arch || (c.architecture.empty() && c.model_type == type)) {
      c.architecture = arch;
      c.model_type = type;
      ok = true;
    }
  }
  if (!ok)
    throw Error(where + ": architecture '" + (c.architecture.empty() ? c.model_type : c.architecture) +
                "' is not supported (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)");

  c.vocab_size = r.integer("vocab_size", 1);
  c.hidden_size = r.integer("hidden_size", 1);
  c.intermediate_size = r.integer("intermediate_size", 1);
  c.num_hidden_layers = r.integer("num_hidden_layers", 1);
  c.num_attention_heads = r.integer("num_attention_heads", 1);
  c.num_key_value_heads = r.integer_or("num_key_value_heads", c.num_attention_heads, 1);
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    r.fail("num_key_value_heads", "(" + std::to_string(c.num_key_value_heads) +
                                      ") must divide num_attention_heads (" + std::to_string(c.num_attention_heads) + ")");
  if (c.hidden_size % c.num_attention_heads != 0 && !(j.contains("head_dim") && !j["head_dim"].is_null()))
    r.fail("hidden_size", "is not a multiple of num_attention_heads and no head_dim is given");
  c.head_dim = r.integer_or("head_dim", c.hidden_size / c.num_attention_heads, 2);
  if (c.head_dim % 2 != 0) r.fail("head_dim", "must be even for rotary embeddings");
  c.rms_norm_eps = r.number_or("rms_norm_eps", 1e-6);
  c.rope_theta = r.number_or("rope_theta", 10000.0);
  parse_rope(j, where, c);
  if (!(c.rope_theta > 0)) r.fail("rope_theta", "must be positive");
  c.max_position_embeddings = r.integer_or("max_position_embeddings", 2048, 1);
  c.tie_word_embeddings = r.boolean_or("tie_word_embeddings", false);
  c.bos_token_ids = r.ids("bos_token_id");
  c.eos_token_ids = r.ids("eos_token_id");

  if (c.model_type == "qwen2") {
    // Qwen2 always has q/k/v biases and no o_proj bias; its sliding window is off unless asked for.
    c.attention_bias = true;
    if (r.boolean_or("use_sliding_window", false))
      throw Error(where + ": Qwen2 use_sliding_window=true is not supported");
  } else {
    c.attention_bias = r.boolean_or("attention_bias", false);
    c.o_proj_bias = c.attention_bias;
    c.mlp_bias = r.boolean_or("mlp_bias", false);
    if (c.model_type == "mistral") c.sliding_window = r.integer_or("sliding_window", 0, 0);
  }
  c.quantization = parse_quantization(j, where);
  if (j.contains("hidden_act") && j["hidden_act"].is_string() && j["hidden_act"] != "silu")
    r.fail("hidden_act", "must be \"silu\", got \"" + j["hidden_act"].get<std::string>() + "\"");
  return c;
}

ModelConfig load_model_config(const std::filesystem::path& model_dir) {
  const auto path = model_dir / "config.json";
  std::ifstream in(path);
  if (!in) throw Error(path.string() + ": cannot open (is --model a Hugging Face model folder?)");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_model_config(ss.str(), path.string());
}

}  // namespace stem
