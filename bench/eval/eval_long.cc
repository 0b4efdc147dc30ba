#include "bench/eval/eval_long.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "bench/eval/eval_calibrate.h"
#include "bench/eval/eval_data.h"
#include "bench/eval/eval_model.h"
#include "bench/eval/eval_score.h"
#include "kernels/check.h"

namespace stem::eval {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using nlohmann::json;

const std::vector<std::string> kRulerTasks = {"niah_single",     "niah_multikey", "niah_multivalue",
                                              "niah_multiquery", "vt",            "cwe"};

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

bool has(const std::vector<std::string>& v, const std::string& x) { return std::find(v.begin(), v.end(), x) != v.end(); }

std::string key_of(const std::string& method, const std::string& task, int64_t length, int64_t index) {
  return method + "|" + task + "|" + std::to_string(length) + "|" + std::to_string(index);
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

// The results file: methods (with their calibration), records keyed by method × task × length ×
// index, and the sessions that added them.
class Results {
 public:
  Results(const std::string& out_path, json head) : path_(out_path), doc_(std::move(head)) {
    doc_["methods"] = json::array();
    doc_["records"] = json::array();
    doc_["sessions"] = json::array();
  }

  // An earlier run's file: its records and sessions, and its methods for those named alike.
  void merge(const json& earlier) {
    for (const char* field : {"model", "data_seed", "tokenizer_sha256", "min_prompt_len"})
      if (earlier.contains(field) && doc_.contains(field) && earlier[field] != doc_[field])
        throw Error(std::string("--results: the earlier run's ") + field + " is " + earlier[field].dump() +
                    ", this run's " + doc_[field].dump() + ": their records do not mix");
    for (const json& r : earlier.value("records", json::array())) add(r, false);
    for (const json& s : earlier.value("sessions", json::array())) doc_["sessions"].push_back(s);
    for (const json& m : earlier.value("methods", json::array())) earlier_methods_[m.at("name").get<std::string>()] = m;
  }
  const json* earlier_method(const std::string& name) const {
    auto it = earlier_methods_.find(name);
    return it == earlier_methods_.end() ? nullptr : &it->second;
  }

  bool done(const std::string& key) const { return index_.count(key) > 0; }
  void add(const json& r, bool count = true) {
    const std::string key = key_of(r.at("method"), r.at("task"), r.at("length"), r.at("index"));
    auto it = index_.find(key);
    if (it != index_.end()) {
      doc_["records"][it->second] = r;
      added_ += count ? 1 : 0;
      return;
    }
    index_[key] = doc_["records"].size();
    doc_["records"].push_back(r);
    added_ += count ? 1 : 0;
  }
  void set_methods(const std::vector<Method>& methods) {
    // This run's methods, then the earlier file's others (their records stay meaningful).
    json all = json::array();
    std::set<std::string> names;
    for (const Method& m : methods) all.push_back(to_json(m)), names.insert(m.name);
    for (const auto& [name, m] : earlier_methods_)
      if (!names.count(name)) all.push_back(m);
    doc_["methods"] = all;
  }
  const json& records() const { return doc_["records"]; }
  json& doc() { return doc_; }
  int64_t added() const { return added_; }

  void write() {
    const std::string tmp = path_ + ".tmp";
    {
      std::ofstream out(tmp);
      // Generated text may end inside a UTF-8 character: replaced (U+FFFD), not an error.
      out << doc_.dump(1, ' ', false, json::error_handler_t::replace) << "\n";
      STEM_CHECK(out.good(), tmp, ": cannot write the results");
    }
    fs::rename(tmp, path_);
  }

 private:
  std::string path_;
  json doc_;
  std::map<std::string, size_t> index_;
  std::map<std::string, json> earlier_methods_;
  int64_t added_ = 0;
};

// The stop-watch of --time-budget, with a running estimate of each kind of unit's cost.
class Budget {
 public:
  explicit Budget(double seconds) : seconds_(seconds), start_(Clock::now()) {}
  // Whether a unit of `kind` still fits (the first of a kind always runs).
  bool fits(const std::string& kind, double units = 1) {
    if (seconds_ <= 0) return true;
    auto it = cost_.find(kind);
    const double need = it == cost_.end() ? 0 : it->second * units;
    if (since(start_) + need <= seconds_) return true;
    if (!stopped_) spdlog::warn("time budget: {:.0f} of {:.0f} s used; stopping before {} ({:.1f} s)", since(start_), seconds_, kind, need);
    stopped_ = true;
    return false;
  }
  void took(const std::string& kind, double seconds, double units = 1) {
    cost_[kind] = seconds / std::max(units, 1e-9);
  }
  bool stopped() const { return stopped_; }
  double elapsed() const { return since(start_); }

 private:
  double seconds_;
  Clock::time_point start_;
  std::map<std::string, double> cost_;
  bool stopped_ = false;
};

// At most n bytes of s, cut at a UTF-8 character boundary.
std::string clip(const std::string& s, size_t n) {
  if (s.size() <= n) return s;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return s.substr(0, n) + "…";
}

// The short table printed last: per method, density and attention time at the calibration
// length, the RULER average per length (and how many answers it rests on), code, perplexity.
void print_summary(const json& doc, const std::vector<Method>& methods, const std::vector<int64_t>& lengths) {
  struct Acc {
    double sum = 0;
    int64_t n = 0;
    void add(double x) { sum += x, ++n; }
    double mean() const { return n ? sum / static_cast<double>(n) : std::nan(""); }
  };
  std::map<std::string, std::map<int64_t, Acc>> ruler, code_em, code_es;
  std::map<std::string, std::map<std::string, double>> nll;  // method -> doc -> mean NLL
  std::map<std::string, json> timing;
  for (const json& r : doc["records"]) {
    const std::string m = r["method"], task = r["task"];
    if (has(kRulerTasks, task)) ruler[m][r["length"]].add(r["score"]);
    if (task == "code") code_em[m][r["length"]].add(r["em"]), code_es[m][r["length"]].add(r["es"]);
    if (task == "ppl") nll[m][r["doc"]] = r["nll"];
    if (task == "timing") timing[m] = r;
  }
  auto cell = [](double x, const char* fmt_) { return std::isnan(x) ? std::string("–") : fmt::format(fmt::runtime(fmt_), x); };
  std::string head = fmt::format("{:<24} {:>7} {:>8}", "method", "density", "attn ms");
  for (int64_t l : lengths) head += fmt::format(" {:>12}", fmt::format("ruler {}K", l / 1024));
  head += fmt::format(" {:>12} {:>9}", "code EM/ES", "ppl Δ");
  std::string text = head + "\n";
  const auto dense_it = std::find_if(methods.begin(), methods.end(), [](const Method& m) { return !m.sparse; });
  for (const Method& m : methods) {
    const json t = timing.count(m.name) ? timing[m.name] : json();
    double density = t.is_null() ? std::nan("") : t["density"].get<double>();
    if (std::isnan(density) && !m.calibration.is_null()) density = m.calibration.value("density", std::nan(""));
    const double attn = t.is_null() || t["attention_ms"].is_null() ? std::nan("") : t["attention_ms"].get<double>();
    std::string line = fmt::format("{:<24} {:>7} {:>8}", m.name, cell(100 * density, "{:.1f}%"), cell(attn, "{:.2f}"));
    for (int64_t l : lengths) {
      const Acc& a = ruler[m.name][l];
      line += fmt::format(" {:>12}", a.n ? fmt::format("{:.1f} ({})", 100 * a.mean(), a.n) : "–");
    }
    Acc em, es;
    for (auto& [l, a] : code_em[m.name]) em.sum += a.sum, em.n += a.n;
    for (auto& [l, a] : code_es[m.name]) es.sum += a.sum, es.n += a.n;
    line += fmt::format(" {:>12}", em.n ? fmt::format("{:.0f}/{:.0f}", 100 * em.mean(), 100 * es.mean()) : "–");
    Acc change;
    if (dense_it != methods.end())
      for (auto& [d, x] : nll[m.name])
        if (nll[dense_it->name].count(d)) change.add(std::exp(x - nll[dense_it->name][d]) - 1);
    line += fmt::format(" {:>9}", change.n ? fmt::format("{:+.2f}%", 100 * change.mean()) : "–");
    text += line + "\n";
  }
  spdlog::info("summary (density and attention time at the calibration length; RULER: mean string_match_all, "
               "answers; ppl: mean change against dense):\n{}",
               text);
}

}  // namespace

int run_long(const LongOptions& o) {
  const auto start = Clock::now();
  Budget budget(o.time_budget);
  const TaskData data(o.data);
  const json& index = data.index();

  std::vector<int64_t> lengths = o.lengths;
  if (lengths.empty()) {
    lengths = data.lengths();
    std::sort(lengths.rbegin(), lengths.rend());
  }
  std::vector<std::string> tasks;
  for (const std::string& t : o.tasks) {
    if (t == "ruler")
      tasks.insert(tasks.end(), kRulerTasks.begin(), kRulerTasks.end());
    else
      tasks.push_back(t);
  }
  if (tasks.empty()) {
    tasks = {"calibrate", "timing", "ppl"};
    for (const std::string& t : data.tasks()) tasks.push_back(t);
  }
  for (const std::string& t : tasks)
    STEM_CHECK(t == "calibrate" || t == "timing" || t == "ppl" || t == "code" || has(kRulerTasks, t),
               "--tasks: unknown task '", t, "' (calibrate, timing, ppl, ruler, ", fmt::format("{}", fmt::join(kRulerTasks, ", ")),
               ", code)");
  const std::vector<const Prompt*> docs_all = data.documents();
  std::vector<const Prompt*> docs = docs_all;
  if (o.docs >= 0 && static_cast<int64_t>(docs.size()) > o.docs) docs.resize(static_cast<size_t>(o.docs));

  // The earlier results this run continues, if any.
  json earlier;
  if (!o.results_in.empty()) {
    std::ifstream in(o.results_in);
    STEM_CHECK(in.good(), o.results_in, ": cannot read the earlier results");
    earlier = json::parse(in);
  }

  // The calibration length: one per results file, since a method's knob is its density at that
  // length. A run that continues earlier results keeps theirs (a run over shorter --lengths must
  // not calibrate its methods again at the longest of those); otherwise --calibrate-length, else
  // the longest of --lengths.
  const int64_t earlier_calib = earlier.is_object() ? earlier.value("calibrate_length", int64_t{0}) : 0;
  STEM_CHECK(o.calibrate_length <= 0 || earlier_calib <= 0 || o.calibrate_length == earlier_calib,
             "--calibrate-length ", o.calibrate_length, ": the results of ", o.results_in, " are calibrated at ",
             earlier_calib, " tokens (a results file holds one calibration length: start a new one)");
  const int64_t calib_len = o.calibrate_length > 0 ? o.calibrate_length
                            : earlier_calib > 0    ? earlier_calib
                                                   : *std::max_element(lengths.begin(), lengths.end());
  // The calibration prompt: the first document, cut to the calibration length.
  std::span<const int32_t> calib_ids;
  for (const Prompt* d : docs_all)
    if (static_cast<int64_t>(d->ids.size()) >= calib_len) {
      calib_ids = d->ids.subspan(0, static_cast<size_t>(calib_len));
      break;
    }
  STEM_CHECK(!calib_ids.empty(), "no document of the data holds ", calib_len,
             " tokens for the calibration prompt (make_tasks.py --doc-tokens)");

  // Methods: this run's selection, calibrated ones from --results taking their place.
  std::vector<Method> methods = o.quick ? quick_methods(o.min_prompt_len) : long_methods(o.targets, o.min_prompt_len);
  if (!o.families.empty()) std::erase_if(methods, [&](const Method& m) { return !has(o.families, m.family); });
  if (!o.methods.empty()) {
    for (const std::string& n : o.methods)
      STEM_CHECK(std::any_of(methods.begin(), methods.end(), [&](const Method& m) { return m.name == n; }),
                 "--methods: no method '", n, "' (with --targets ", fmt::format("{}", fmt::join(o.targets, ",")), ")");
    std::erase_if(methods, [&](const Method& m) { return !has(o.methods, m.name); });
  }

  const int64_t longest = std::min<int64_t>(data.longest(), 1 << 30);
  json head = {{"kind", "stem_eval_long"},
               {"model", fs::path(o.model).filename().string()},
               {"data_seed", index.value("seed", "")},
               {"tokenizer_sha256", index.value("tokenizer_sha256", "")},
               {"data_model", index.value("model", "")},
               {"per_task", index.value("per_task", 0)},
               {"lengths", index.value("lengths", json::array())},
               {"calibrate_length", calib_len},
               {"min_prompt_len", o.min_prompt_len}};
  Results results(o.json_out, head);
  if (!earlier.is_null()) results.merge(earlier);
  auto take_calibration = [&](Method& m, const std::string& name) {
    if (const json* e = results.earlier_method(name); e && e->contains("calibration")) {
      Method earlier = method_from_json(*e);
      if (earlier.calibration.value("tokens", int64_t{0}) == calib_len) m = earlier;
    }
  };
  for (Method& m : methods) take_calibration(m, m.name);
  STEM_CHECK(o.quantization.empty() || o.quantization == "fp8", "--quantization: \"fp8\" or none, got \"",
             o.quantization, "\"");
  if (!o.quantization.empty())
    for (Method& m : methods) {
      // The bf16 method's knob (taken above), unless the FP8 one was calibrated itself.
      m.name += "+" + o.quantization;
      take_calibration(m, m.name);
    }

  if (kv_cache_fp8(o.kv_cache_dtype))  // refuses an unknown dtype
    for (Method& m : methods) {
      m.name += "+fp8kv";
      take_calibration(m, m.name);
    }

  EvalModel model(o.model, o.device, longest, o.batch, o.quantization, o.kv_cache_dtype);
  STEM_CHECK(index.value("vocab_size", int64_t{0}) <= model.config().vocab_size, "the data's tokenizer has ",
             index.value("vocab_size", 0), " ids, the model ", model.config().vocab_size,
             ": the prompts were made for another model");
  spdlog::info("long eval: {} on {}; data {} ({} prompts, seed {}), lengths {}, tasks {}, {} methods, batch {}",
               o.model, o.device, o.data, data.prompts().size(), index.value("seed", ""),
               fmt::format("{}", fmt::join(lengths, ",")), fmt::format("{}", fmt::join(tasks, ",")), methods.size(),
               o.batch);

  json session = {{"started", utc_now()}, {"device", o.device}, {"gpu", o.gpu}, {"command", o.command}};
  auto save = [&] {
    results.set_methods(methods);
    json& sessions = results.doc()["sessions"];
    session["seconds"] = since(start);
    session["records_added"] = results.added();
    if (!sessions.empty() && sessions.back().value("started", "") == session["started"]) sessions.back() = session;
    else sessions.push_back(session);
    results.write();
  };

  // The plan: what runs (records already present are skipped).
  auto wanted = [&](const std::string& key) { return o.redo || !results.done(key); };
  {
    int64_t n_cal = 0, n_time = 0, n_ppl = 0;
    std::map<int64_t, int64_t> n_prompts;
    for (const Method& m : methods) {
      n_cal += (m.knob != Knob::None && m.target > 0 && m.calibration.is_null()) ? 1 : 0;
      if (has(tasks, "timing") && wanted(key_of(m.name, "timing", calib_len, 0))) ++n_time;
      if (has(tasks, "ppl"))
        for (size_t d = 0; d < docs.size(); ++d)
          n_ppl += wanted(key_of(m.name, "ppl", static_cast<int64_t>(docs[d]->ids.size()), static_cast<int64_t>(d)));
      for (int64_t l : lengths)
        for (const std::string& t : tasks)
          if (t == "code" || has(kRulerTasks, t))
            for (const Prompt* p : data.select(t, l, o.from, o.limit)) n_prompts[l] += wanted(key_of(m.name, t, l, p->index));
    }
    std::string per_length;
    for (auto& [l, n] : n_prompts) per_length += fmt::format(" {}@{}", n, l);
    spdlog::info("plan: calibrate {} methods at {} tokens, timing {}, perplexity {} (method, document) pairs of {} "
                 "tokens in chunks of {}, prompts{}{}",
                 n_cal, calib_len, n_time, n_ppl, docs.empty() ? 0 : docs[0]->ids.size(), o.chunk,
                 per_length.empty() ? " none" : per_length,
                 o.time_budget > 0 ? fmt::format("; time budget {:.0f} s", o.time_budget) : "");
  }

  const std::vector<int32_t> calib_vec(calib_ids.begin(), calib_ids.end());
  auto measure = [&](const Method& m) {
    model.use(m);
    return model.prefill(calib_vec, {static_cast<int32_t>(calib_vec.size() - 1)}).density;
  };

  // 1. Calibration (whenever a method needs it, whatever --tasks says: its records need its knob).
  for (Method& m : methods) {
    if (m.knob == Knob::None || m.target <= 0 || !m.calibration.is_null()) continue;
    if (!budget.fits("calibrate")) break;
    const auto t0 = Clock::now();
    const json c = calibrate(m, calib_len, measure);
    budget.took("calibrate", since(t0));
    spdlog::info("calibrate {:<22} knob {:.4g} -> density {:.2f}% (target {:.0f}%, {} model runs, {:.1f} s)", m.name,
                 c["knob"].get<double>(), 100 * c["density"].get<double>(), 100 * m.target, c["model_runs"].get<int>(),
                 c["seconds"].get<double>());
    save();
  }
  auto ready = [&](const Method& m) { return m.knob == Knob::None || m.target <= 0 || !m.calibration.is_null(); };

  // 2. Timing: one prefill of the calibration prompt per method.
  if (has(tasks, "timing"))
    for (const Method& m : methods) {
      const std::string key = key_of(m.name, "timing", calib_len, 0);
      if (!ready(m) || !wanted(key) || !budget.fits("timing")) continue;
      const auto t0 = Clock::now();
      model.use(m);
      const PrefillTiming t = model.timed_prefill(calib_ids, o.timing_reps);
      budget.took("timing", since(t0));
      json r = {{"method", m.name}, {"task", "timing"}, {"length", calib_len}, {"index", 0},
                {"tokens", calib_ids.size()}, {"step_ms", t.step_ms}, {"density", t.density}, {"reps", o.timing_reps},
                {"device", o.device}, {"gpu", o.gpu}};
      r["attention_ms"] = std::isnan(t.attention_ms) ? json() : json(t.attention_ms);
      results.add(r);
      spdlog::info("timing   {:<22} step {:.2f} ms, attention {:.2f} ms, density {:.2f}%", m.name, t.step_ms,
                   t.attention_ms, 100 * t.density);
      save();
    }

  // 3. Perplexity of the documents.
  if (has(tasks, "ppl"))
    for (const Method& m : methods)
      for (size_t d = 0; d < docs.size(); ++d) {
        const Prompt& doc = *docs[d];
        const int64_t len = static_cast<int64_t>(doc.ids.size());
        const std::string key = key_of(m.name, "ppl", len, static_cast<int64_t>(d));
        if (!ready(m) || !wanted(key) || !budget.fits("ppl")) continue;
        const auto t0 = Clock::now();
        model.use(m);
        const SequenceScore s = model.score(doc.ids, o.chunk);
        budget.took("ppl", since(t0));
        const double nll = s.nll_sum / static_cast<double>(s.count);
        results.add({{"method", m.name}, {"task", "ppl"}, {"length", len}, {"index", d}, {"doc", doc.name},
                     {"kind", doc.record->value("kind", "")}, {"nll_sum", s.nll_sum}, {"count", s.count},
                     {"nll", nll}, {"ppl", std::exp(nll)}, {"top1", static_cast<double>(s.correct) / s.count},
                     {"density", s.density}, {"seconds", s.seconds}});
        spdlog::info("ppl      {:<22} {:<22} {} tokens: {:.4f} (top-1 {:.1f}%, density {:.2f}%, {:.1f} s)", m.name,
                     doc.name, len, std::exp(nll), 100.0 * s.correct / s.count, 100 * s.density, s.seconds);
        save();
      }

  // 4. The generation tasks: per length, task and method, the missing prompts in batches.
  for (int64_t length : lengths)
    for (const std::string& task : tasks) {
      if (task != "code" && !has(kRulerTasks, task)) continue;
      const std::vector<const Prompt*> prompts = data.select(task, length, o.from, o.limit);
      if (prompts.empty()) {
        spdlog::warn("{} at {}: no prompts in the data", task, length);
        continue;
      }
      const std::string kind = task + "@" + std::to_string(length);
      for (const Method& m : methods) {
        if (!ready(m)) continue;
        std::vector<const Prompt*> todo;
        for (const Prompt* p : prompts)
          if (wanted(key_of(m.name, task, length, p->index))) todo.push_back(p);
        for (size_t at = 0; at < todo.size(); at += static_cast<size_t>(o.batch)) {
          const size_t n = std::min<size_t>(static_cast<size_t>(o.batch), todo.size() - at);
          if (!budget.fits(kind, static_cast<double>(n))) break;
          std::vector<std::span<const int32_t>> ids;
          std::vector<int> max_new;
          for (size_t i = 0; i < n; ++i) ids.push_back(todo[at + i]->ids), max_new.push_back(todo[at + i]->max_new);
          const auto t0 = Clock::now();
          model.use(m);
          const std::vector<Generation> gen =
              model.greedy_batch(ids, max_new, task == "code" ? StopRule::Line : StopRule::Eos);
          budget.took(kind, since(t0), static_cast<double>(n));
          double mean = 0;
          for (size_t i = 0; i < n; ++i) {
            const Prompt& p = *todo[at + i];
            json r = {{"method", m.name}, {"task", task}, {"length", length}, {"index", p.index},
                      {"tokens", p.ids.size()}, {"density", gen[i].density}, {"prefill_s", gen[i].prefill_seconds},
                      {"generated", gen[i].tokens.size()}, {"answers", p.answers}};
            if (task == "code") {
              const std::string pred = first_line(gen[i].text), want = strip(p.answers.at(0));
              r["prediction"] = clip(pred, 2000);
              r["em"] = pred == want ? 1.0 : 0.0;
              r["es"] = edit_similarity(pred, want);
            } else {
              r["prediction"] = clip(gen[i].text, 2000);
              r["score"] = string_match_all(gen[i].text, p.answers);
            }
            mean += (task == "code" ? r["em"] : r["score"]).get<double>() / static_cast<double>(n);
            results.add(r);
          }
          spdlog::info("{:<16} {:>6} {:<22} prompts {}..{}: {} {:.2f} ({:.1f} s)", task, length, m.name,
                       todo[at]->index, todo[at + n - 1]->index, task == "code" ? "EM" : "score", mean, since(t0));
          save();
        }
      }
    }

  save();
  print_summary(results.doc(), methods, lengths);
  spdlog::info("long eval: {} records added, {} in all, {:.0f} s{}; results in {}", results.added(),
               results.records().size(), since(start), budget.stopped() ? " (stopped by the time budget: run again for the rest)" : "",
               o.json_out);
  return 0;
}

}  // namespace stem::eval
