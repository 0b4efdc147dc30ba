// stem_eval: Stem's accuracy against dense attention and the baselines at matched block density
// (issue 7; docs/stem.md "Accuracy"). One model, one process:
//   1. attention  the Q/K/V of every sparse layer from one dense fp32 forward (the CPU backend's) of a
//                 real-text prompt (the documents, concatenated, cut to --attention-tokens); each family's
//                 knob calibrated to the target densities on it; per method the density and, on
//                 sampled query blocks of some layers, the attention output's error against dense;
//   2. passkey    a 5-digit key at --depths depths in filler of each --lengths, greedy, chat template;
//   3. ppl        perplexity of each document, every position scored from one prefill.
// Results go to --json (rewritten after each stage); bench/eval/report.py makes the table and plot.
// bench/eval/run.sh is the one command (build, run, report).
//
// With --data DIR (prompts from bench/eval/make_tasks.py) it runs the long-context evaluation
// instead (issue 21; bench/eval/eval_long.h): calibration, attention timing, perplexity, the
// RULER-style tasks and next-line completion, accumulating into --json (and --results).
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "bench/eval/eval_attention.h"
#include "bench/eval/eval_long.h"
#include "bench/eval/eval_tasks.h"

using namespace stem;
using namespace stem::eval;
namespace fs = std::filesystem;

namespace {

struct Args {
  std::string model = "models/cache/SmolLM2-135M-Instruct", device = "cpu", json = "stem_eval.json";
  bool quick = false;
  std::vector<int64_t> lengths;
  int depths = 0;
  std::vector<std::string> docs;
  std::vector<double> targets = {0.2, 0.3, 0.5};
  int64_t attention_tokens = 0, min_prompt_len = 0, error_every = 0, min_doc_tokens = 0;
  std::vector<std::string> tasks = {"attention", "passkey", "ppl"}, families, names;
  std::string methods_from;
  int answer_tokens = 8;
  LongOptions long_run;
};

bool has(const std::vector<std::string>& v, const std::string& x) { return std::find(v.begin(), v.end(), x) != v.end(); }

void write_json(const std::string& path, const nlohmann::json& j) {
  std::ofstream out(path);
  out << j.dump(1) << "\n";
  STEM_CHECK(out.good(), path, ": cannot write the results");
}

double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Default documents: Debian's GPL-3 and two chapters of Vim's user manual (all over 6K tokens
// with SmolLM2's tokenizer), where present.
std::vector<std::string> default_docs() {
  std::vector<std::string> docs;
  for (const char* f : {"/usr/share/common-licenses/GPL-3", "/usr/share/vim/vim90/doc/usr_03.txt",
                        "/usr/share/vim/vim90/doc/usr_05.txt"})
    if (fs::exists(f)) docs.push_back(f);
  return docs;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  CLI::App app{"Stem accuracy evaluation: passkey, perplexity and attention error at matched density"};
  app.add_option("--model", a.model, "model folder")->capture_default_str();
  app.add_option("--device", a.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  app.add_flag("--quick", a.quick, "a few short prompts, dense and one Stem setting (the CPU CTest)");
  app.add_option("--json", a.json, "results file")->capture_default_str();
  app.add_option("--lengths", a.lengths, "passkey prompt lengths (default 2048,4096,6144,8192; quick 1024)")->delimiter(',');
  app.add_option("--depths", a.depths, "passkey depths per length (default 10; quick 1)");
  app.add_option("--docs", a.docs, "perplexity documents (default GPL-3 and Vim's usr_03/usr_05; quick: the first, 1K tokens)")->delimiter(',');
  app.add_option("--targets", a.targets, "block densities at --attention-tokens to calibrate to")->delimiter(',');
  app.add_option("--attention-tokens", a.attention_tokens, "length of the attention prompt (default 8192; quick 1024)");
  app.add_option("--min-prompt-len", a.min_prompt_len, "Stem's min_prompt_len for every method (default 1024; quick 512)");
  app.add_option("--error-every", a.error_every, "attention error on every n-th query block (default 8; quick 2)");
  app.add_option("--tasks", a.tasks, "attention,passkey,ppl")->delimiter(',');
  app.add_option("--families", a.families, "only these method families (default all)")->delimiter(',');
  app.add_option("--methods", a.names, "only these methods, by name (e.g. dense,stem@30%)")->delimiter(',');
  app.add_option("--answer-tokens", a.answer_tokens, "passkey: greedy tokens to generate")->capture_default_str();
  app.add_option("--methods-from", a.methods_from,
                 "take the methods (calibrated settings, densities, errors) from an earlier run's JSON instead of "
                 "calibrating; with --tasks passkey,ppl the attention stage can run elsewhere (it is CPU work)");
  LongOptions& L = a.long_run;
  app.add_option("--data", L.data, "long-context evaluation: the prompts' folder (bench/eval/make_tasks.py)");
  app.add_option("--results", L.results_in, "long: an earlier run's JSON to continue (its calibrated methods and records are kept)");
  app.add_option("--from", L.from, "long: the first prompt index of each task and length")->capture_default_str();
  app.add_option("--limit", L.limit, "long: prompts per task and length from --from (default all)");
  app.add_option("--ppl-docs", L.docs, "long: the first n perplexity documents (default all)");
  app.add_option("--batch", L.batch, "long: prompts decoded together")->capture_default_str();
  app.add_option("--chunk", L.chunk, "long: perplexity prefill chunk, a multiple of 128 (0: one step)")->capture_default_str();
  app.add_option("--calibrate-length", L.calibrate_length, "long: calibration prompt length (default: that of --results, else the longest length)");
  app.add_option("--timing-reps", L.timing_reps, "long: timed prefills per method")->capture_default_str();
  app.add_option("--time-budget", L.time_budget, "long: stop before a unit of work that would end past this many seconds");
  app.add_flag("--redo", L.redo, "long: run records again that the results already hold");
  app.add_option("--gpu-name", L.gpu, "long: the card's name, recorded with the timings (gpu.sh passes nvidia-smi's)");
  app.add_option("--quantization", L.quantization,
                 "long: fp8: the model in FP8 (weights and activations); methods named <name>+fp8, with the bf16 "
                 "method's calibrated knob")->check(CLI::IsMember({"fp8"}));
  app.add_option("--kv-cache-dtype", L.kv_cache_dtype,
                 "long: fp8: the KV cache in FP8 (E4M3, a scale per token and KV head); methods named <name>+fp8kv, "
                 "with the knob calibrated without it")->check(CLI::IsMember({"auto", "bf16", "fp8"}));
  auto* targets_opt = app.get_option("--targets");
  auto* tasks_opt = app.get_option("--tasks");
  auto* min_len_opt = app.get_option("--min-prompt-len");
  CLI11_PARSE(app, argc, argv);
  if (!L.data.empty()) {
    L.model = a.model;
    L.device = a.device;
    L.json_out = a.json;
    L.lengths = a.lengths;
    L.methods = a.names;
    L.families = a.families;
    if (targets_opt->count() > 0) L.targets = a.targets;
    if (tasks_opt->count() > 0) L.tasks = a.tasks;
    if (min_len_opt->count() > 0) L.min_prompt_len = a.min_prompt_len;
    L.quick = a.quick;
    if (L.quick && min_len_opt->count() == 0) L.min_prompt_len = 512;
    for (int i = 0; i < argc; ++i) L.command += (i ? " " : "") + std::string(argv[i]);
    try {
      return run_long(L);
    } catch (const std::exception& e) {
      spdlog::error("stem_eval: {}", e.what());
      return 1;
    }
  }
  if (a.lengths.empty()) a.lengths = a.quick ? std::vector<int64_t>{1024} : std::vector<int64_t>{2048, 4096, 6144, 8192};
  if (a.depths == 0) a.depths = a.quick ? 1 : 10;
  if (a.docs.empty()) a.docs = default_docs();
  if (a.quick && a.docs.size() > 1) a.docs.resize(1);
  if (a.attention_tokens == 0) a.attention_tokens = a.quick ? 1024 : 8192;
  if (a.min_prompt_len == 0) a.min_prompt_len = a.quick ? 512 : 1024;
  if (a.error_every == 0) a.error_every = a.quick ? 2 : 8;
  a.min_doc_tokens = a.quick ? 1024 : 6000;
  const int64_t doc_tokens = a.quick ? 1024 : 8192;

  try {
    const auto start = std::chrono::steady_clock::now();
    const ModelConfig config = load_model_config(a.model);
    // Passkey prompts leave room for the answer inside the model's positions.
    int64_t longest = std::max(a.attention_tokens, doc_tokens);
    for (int64_t l : a.lengths) longest = std::max(longest, l);
    longest = std::min(longest, config.max_position_embeddings);
    EvalModel model(a.model, a.device, longest);
    spdlog::info("stem_eval: {} on {}, {} layers, max_position_embeddings {}; lengths up to {} tokens",
                 a.model, a.device, config.num_hidden_layers, config.max_position_embeddings, longest);
    if (a.attention_tokens > config.max_position_embeddings)
      throw Error("--attention-tokens " + std::to_string(a.attention_tokens) + " is past the model's " +
                  std::to_string(config.max_position_embeddings) + " positions");

    std::vector<Method> methods = a.quick ? quick_methods(a.min_prompt_len) : full_methods(a.targets, a.min_prompt_len);
    nlohmann::json earlier;
    if (!a.methods_from.empty()) {
      std::ifstream in(a.methods_from);
      STEM_CHECK(in.good(), a.methods_from, ": cannot read it");
      earlier = nlohmann::json::parse(in);
      methods.clear();
      for (const nlohmann::json& j : earlier.at("methods")) methods.push_back(method_from_json(j));
    }
    if (!a.families.empty())
      std::erase_if(methods, [&](const Method& m) { return !has(a.families, m.family); });
    if (!a.names.empty()) std::erase_if(methods, [&](const Method& m) { return !has(a.names, m.name); });
    nlohmann::json out = {{"model", a.model},
                          {"device", a.device},
                          {"quick", a.quick},
                          {"max_position_embeddings", config.max_position_embeddings},
                          {"attention_tokens", a.attention_tokens},
                          {"min_prompt_len", a.min_prompt_len}};
    const std::vector<Document> docs = load_documents(
        model, std::vector<fs::path>(a.docs.begin(), a.docs.end()), std::min(doc_tokens, longest), a.min_doc_tokens);
    for (const Document& d : docs) out["documents"].push_back({{"name", d.name}, {"tokens", d.ids.size()}});

    // 1. Attention: capture, calibrate, density and error per method.
    nlohmann::json method_json = nlohmann::json::array();
    if (has(a.tasks, "attention")) {
      std::vector<int32_t> text;
      for (const Document& d : docs) text.insert(text.end(), d.ids.begin(), d.ids.end());
      STEM_CHECK(static_cast<int64_t>(text.size()) >= a.attention_tokens, "the documents hold ", text.size(),
                 " tokens, the attention prompt needs ", a.attention_tokens);
      text.resize(static_cast<size_t>(a.attention_tokens));
      const int64_t first_layer = StemSettings{}.dense_layers;
      // The capture runs on the CPU backend (fp32): the model's own, or one made for it.
      const Capture cap = [&] {
        if (a.device == "cpu") return capture_qkv(model, text, first_layer);
        EvalModel cpu(a.model, "cpu", a.attention_tokens);
        return capture_qkv(cpu, text, first_layer);
      }();
      spdlog::info("attention: captured Q/K/V of layers {}..{} from a {}-token dense forward in {:.1f} s", first_layer,
                   config.num_hidden_layers - 1, text.size(), cap.seconds);
      std::vector<size_t> layers;
      for (size_t li = 0; li < cap.layers.size(); li += a.quick ? cap.layers.size() - 1 : 4) layers.push_back(li);
      if (layers.back() != cap.layers.size() - 1) layers.push_back(cap.layers.size() - 1);
      const auto t_err = std::chrono::steady_clock::now();
      const ErrorSample sample = make_error_sample(cap, layers, a.error_every, StemSettings{}.block_size);
      spdlog::info("attention: dense reference on {} layers in {:.1f} s", layers.size(), since(t_err));
      for (size_t li : layers) out["attention_layers"].push_back(cap.layers[li].layer);
      for (Method& m : methods) {
        const auto t0 = std::chrono::steady_clock::now();
        if (!a.quick) calibrate_method(cap, m, 0.004);
        const Density d = measure_density(cap, m);
        const double reached = d.total;
        const std::vector<double> err = attention_error(cap, m, sample);
        nlohmann::json j = to_json(m);
        j["density"] = reached;
        j["density_by_layer"] = d.by_layer;
        j["attention_error_by_layer"] = err;
        double mean = 0;
        for (double e : err) mean += e / static_cast<double>(err.size());
        j["attention_error_mean"] = mean;
        method_json.push_back(j);
        spdlog::info("attention {:<22} density {:.3f} (knob {:.4g}), error mean {:.4f}, {:.1f} s", m.name, reached,
                     m.knob_value(), mean, since(t0));
      }
    } else if (!earlier.is_null()) {
      // The earlier run's attention results stand for these methods.
      for (const nlohmann::json& j : earlier["methods"])
        if (std::any_of(methods.begin(), methods.end(), [&](const Method& m) { return m.name == j["name"]; }))
          method_json.push_back(j);
      if (earlier.contains("attention_layers")) out["attention_layers"] = earlier["attention_layers"];
      out["attention_from"] = {{"file", a.methods_from}, {"device", earlier.value("device", "")},
                               {"attention_tokens", earlier.value("attention_tokens", 0)}};
      out["attention_tokens"] = earlier.value("attention_tokens", a.attention_tokens);
    } else {
      for (const Method& m : methods) method_json.push_back(to_json(m));
    }
    out["methods"] = method_json;
    write_json(a.json, out);

    // 2. Passkey retrieval.
    if (has(a.tasks, "passkey")) {
      const auto t0 = std::chrono::steady_clock::now();
      const std::vector<PasskeyCase> cases = make_passkey_cases(model, a.lengths, a.depths, a.answer_tokens);
      out["passkey"] = nlohmann::json::array();
      for (const Method& m : methods) {
        for (const nlohmann::json& r : run_passkey(model, m, cases, a.answer_tokens)) out["passkey"].push_back(r);
        write_json(a.json, out);  // after each method: a long run that is cut short keeps what it did
      }
      spdlog::info("passkey: {} cases x {} methods in {:.1f} s", cases.size(), methods.size(), since(t0));
      write_json(a.json, out);
    }

    // 3. Perplexity.
    if (has(a.tasks, "ppl")) {
      const auto t0 = std::chrono::steady_clock::now();
      out["perplexity"] = nlohmann::json::array();
      for (const Method& m : methods) {
        for (const nlohmann::json& r : run_perplexity(model, m, docs, a.quick ? 512 : 4096)) out["perplexity"].push_back(r);
        write_json(a.json, out);
      }
      spdlog::info("ppl: {} documents x {} methods in {:.1f} s", docs.size(), methods.size(), since(t0));
    }
    out["seconds"] = since(start);
    write_json(a.json, out);
    spdlog::info("stem_eval: done in {:.1f} s; results in {}", since(start), a.json);
  } catch (const std::exception& e) {
    spdlog::error("stem_eval: {}", e.what());
    return 1;
  }
  return 0;
}
