// config.json parsing: the supported variants, and a clear error for anything else.
#include "base/model_config.h"
#include "tests/test_util.h"

using namespace stem;
using stem::test::error_of;
using Catch::Matchers::Contains;

namespace {
const char* kLlama3 = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
  "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "max_position_embeddings": 131072, "tie_word_embeddings": false,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu"})";
}

TEST_CASE("Llama 3.1 config with llama3 rope scaling") {
  ModelConfig c = parse_model_config(kLlama3, "config.json");
  CHECK(c.architecture == "LlamaForCausalLM");
  CHECK(c.head_dim == 128);
  CHECK(c.q_dim() == 4096);
  CHECK(c.kv_dim() == 1024);
  CHECK(c.rope_theta == 500000.0);
  CHECK(c.rope_scaling.kind == cpu::RopeScaling::Kind::Llama3);
  CHECK(c.rope_scaling.factor == 8.0);
  CHECK(c.rope_scaling.original_max_position_embeddings == 8192);
  CHECK(c.eos_token_ids == std::vector<int32_t>{128001, 128008, 128009});
  CHECK_FALSE(c.attention_bias);
  CHECK(c.sliding_window == 0);
}

TEST_CASE("Mistral, Qwen2 and transformers-5 rope_parameters") {
  ModelConfig m = parse_model_config(R"({"architectures":["MistralForCausalLM"],"vocab_size":32000,"hidden_size":64,
    "intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"sliding_window":4096})",
                                     "m");
  CHECK(m.sliding_window == 4096);
  ModelConfig q = parse_model_config(R"({"architectures":["Qwen2ForCausalLM"],"vocab_size":100,"hidden_size":64,
    "intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
    "sliding_window":4096,"use_sliding_window":false,"tie_word_embeddings":true})",
                                     "q");
  CHECK(q.attention_bias);
  CHECK_FALSE(q.o_proj_bias);
  CHECK(q.sliding_window == 0);
  CHECK(q.tie_word_embeddings);
  ModelConfig r = parse_model_config(R"({"model_type":"llama","vocab_size":100,"hidden_size":64,"intermediate_size":128,
    "num_hidden_layers":2,"num_attention_heads":4,"head_dim":32,
    "rope_parameters":{"rope_type":"linear","factor":2.0,"rope_theta":1000.0}})",
                                     "r");
  CHECK(r.head_dim == 32);
  CHECK(r.num_key_value_heads == 4);
  CHECK(r.rope_theta == 1000.0);
  CHECK(r.rope_scaling.kind == cpu::RopeScaling::Kind::Linear);
  CHECK(r.rope_scaling.factor == 2.0);
}

TEST_CASE("unsupported or broken configs give a clear error") {
  CHECK_THAT(error_of([] { parse_model_config(R"({"architectures":["GPT2LMHeadModel"]})", "x/config.json"); }),
             Contains("x/config.json: architecture 'GPT2LMHeadModel' is not supported"));
  CHECK_THAT(error_of([] { parse_model_config("{oops", "x/config.json"); }), Contains("not valid JSON"));
  CHECK_THAT(error_of([] { parse_model_config(R"({"architectures":["LlamaForCausalLM"]})", "c"); }),
             Contains("\"vocab_size\" is missing"));
  CHECK_THAT(error_of([] {
               parse_model_config(R"({"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":64,
      "intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":4,"num_key_value_heads":3})",
                                  "c");
             }),
             Contains("must divide num_attention_heads"));
  CHECK_THAT(error_of([] {
               parse_model_config(R"({"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":64,
      "intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":4,"rope_scaling":{"type":"yarn","factor":4}})",
                                  "c");
             }),
             Contains("rope scaling type 'yarn' is not supported"));
  CHECK_THAT(error_of([] { load_model_config("/nonexistent-model-dir"); }), Contains("config.json: cannot open"));
}

TEST_CASE("a compressed-tensors FP8 checkpoint's quantization_config, and the layouts it refuses") {
  const std::string base = R"({"architectures":["LlamaForCausalLM"],"vocab_size":100,"hidden_size":64,
    "intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"quantization_config":)";
  const std::string weights = R"("weights":{"num_bits":8,"type":"float","strategy":"channel","dynamic":false})";
  auto config = [&](const std::string& method, const std::string& format, const std::string& group,
                    const std::string& extra = "") {
    return base + R"({"quant_method":")" + method + R"(","format":")" + format + R"(",)" + extra +
           R"("config_groups":{"group_0":{"targets":["Linear"],)" + group + "}}}}";
  };
  const std::string dynamic = weights + R"(,"input_activations":{"num_bits":8,"type":"float","strategy":"token","dynamic":true})";
  CHECK(parse_model_config(kLlama3, "c").quantization.empty());
  CHECK(parse_model_config(config("compressed-tensors", "float-quantized", dynamic), "c").quantization == "fp8");
  CHECK(parse_model_config(config("compressed-tensors", "float-quantized", weights), "c").quantization == "fp8");
  CHECK_THAT(error_of([&] { parse_model_config(config("fp8", "float-quantized", dynamic), "c"); }),
             Contains("c: \"quantization_config.quant_method\" is 'fp8'") && Contains("compressed-tensors"));
  CHECK_THAT(error_of([&] { parse_model_config(config("compressed-tensors", "int-quantized", dynamic), "c"); }),
             Contains("quantization_config.format\" is 'int-quantized'"));
  CHECK_THAT(error_of([&] {
               parse_model_config(config("compressed-tensors", "float-quantized",
                                         weights + R"(,"input_activations":{"dynamic":false,"strategy":"tensor"})"), "c");
             }),
             Contains("config_groups.group_0.input_activations.dynamic\" must be true"));
  const std::string group = R"("weights":{"num_bits":8,"type":"float","strategy":"group","group_size":128})";
  CHECK_THAT(error_of([&] { parse_model_config(config("compressed-tensors", "float-quantized", group), "c"); }),
             Contains("config_groups.group_0.weights.strategy\" is 'group'"));
  const std::string int8 = R"("weights":{"num_bits":8,"type":"int","strategy":"channel"})";
  CHECK_THAT(error_of([&] { parse_model_config(config("compressed-tensors", "float-quantized", int8), "c"); }),
             Contains("config_groups.group_0.weights\" must be 8-bit float"));
  CHECK_THAT(error_of([&] {
               parse_model_config(config("compressed-tensors", "float-quantized", dynamic, R"("kv_cache_scheme":{"num_bits":8},)"), "c");
             }),
             Contains("kv_cache_scheme\" is set"));
}
