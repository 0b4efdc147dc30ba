// The safetensors loader and WeightStore: good files load; every kind of corruption gives one
// clear error naming the file and the reason.
#include <cstring>
#include <nlohmann/json.hpp>

#include "base/safetensors.h"
#include "base/weights.h"
#include "tests/test_util.h"

using namespace stem;
using stem::test::error_of;
using stem::test::TempDir;
using Catch::Matchers::Contains;

namespace {

std::string with_header(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

// A valid file: "a" f32 [2,3] holding 0..5, "b" bf16 [2] holding 1.0, -2.0.
std::string good_file() {
  nlohmann::json h;
  h["a"] = {{"dtype", "F32"}, {"shape", {2, 3}}, {"data_offsets", {0, 24}}};
  h["b"] = {{"dtype", "BF16"}, {"shape", {2}}, {"data_offsets", {24, 28}}};
  h["__metadata__"] = {{"format", "pt"}};
  std::string data(28, '\0');
  for (int i = 0; i < 6; ++i) {
    float f = static_cast<float>(i);
    std::memcpy(data.data() + 4 * i, &f, 4);
  }
  uint16_t b[2] = {f32_to_bf16(1.0f), f32_to_bf16(-2.0f)};
  std::memcpy(data.data() + 24, b, 4);
  return with_header(h.dump(), data);
}

std::string open_error(const std::string& bytes) {
  TempDir dir;
  stem::test::write_file(dir / "model.safetensors", bytes);
  return error_of([&] { SafetensorsFile f(dir / "model.safetensors"); });
}

}  // namespace

TEST_CASE("a valid safetensors file loads with its dtypes, shapes and data") {
  TempDir dir;
  stem::test::write_file(dir / "model.safetensors", good_file());
  WeightStore w(dir.path());
  CHECK(w.has("a"));
  CHECK_FALSE(w.has("__metadata__"));
  Tensor a = w.load_f32("a", {2, 3});
  for (int i = 0; i < 6; ++i) CHECK(a.ptr<float>()[i] == static_cast<float>(i));
  Tensor b = w.load_f32("b", {2});
  CHECK(b.ptr<float>()[0] == 1.0f);
  CHECK(b.ptr<float>()[1] == -2.0f);
}

TEST_CASE("corrupt safetensors files fail at open with the reason") {
  nlohmann::json h;
  SECTION("shorter than the header length field") { CHECK_THAT(open_error("abc"), Contains("too short")); }
  SECTION("header length past the end") {
    std::string f = good_file();
    uint64_t big = 1u << 20;
    std::memcpy(f.data(), &big, 8);
    CHECK_THAT(open_error(f), Contains("runs past the end of the file"));
  }
  SECTION("header is not JSON") { CHECK_THAT(open_error(with_header("{not json", "")), Contains("not valid JSON")); }
  SECTION("header is not an object") { CHECK_THAT(open_error(with_header("[1,2]", "")), Contains("not a JSON object")); }
  SECTION("unknown dtype") {
    h["w"] = {{"dtype", "F8_E5M2"}, {"shape", {2}}, {"data_offsets", {0, 2}}};
    CHECK_THAT(open_error(with_header(h.dump(), "xx")), Contains("tensor 'w' has dtype 'F8_E5M2'"));
  }
  SECTION("offsets past the data") {
    h["w"] = {{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {0, 16}}};
    CHECK_THAT(open_error(with_header(h.dump(), std::string(8, '\0'))), Contains("past the data section"));
  }
  SECTION("offsets that disagree with the shape") {
    h["w"] = {{"dtype", "F32"}, {"shape", {3}}, {"data_offsets", {0, 8}}};
    CHECK_THAT(open_error(with_header(h.dump(), std::string(8, '\0'))), Contains("tensor 'w' has shape [3]"));
  }
  SECTION("reversed offsets") {
    h["w"] = {{"dtype", "F32"}, {"shape", {0}}, {"data_offsets", {8, 0}}};
    CHECK_THAT(open_error(with_header(h.dump(), std::string(8, '\0'))), Contains("reversed"));
  }
  SECTION("negative dims") {
    h["w"] = {{"dtype", "F32"}, {"shape", {-1}}, {"data_offsets", {0, 4}}};
    CHECK_THAT(open_error(with_header(h.dump(), std::string(4, '\0'))), Contains("negative"));
  }
  SECTION("overlapping tensors") {
    h["w1"] = {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {0, 8}}};
    h["w2"] = {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {4, 12}}};
    CHECK_THAT(open_error(with_header(h.dump(), std::string(12, '\0'))), Contains("overlap"));
  }
  SECTION("missing fields") {
    h["w"] = {{"dtype", "F32"}, {"shape", {2}}};
    CHECK_THAT(open_error(with_header(h.dump(), std::string(8, '\0'))), Contains("needs dtype, shape and data_offsets"));
  }
}

TEST_CASE("WeightStore reports missing tensors, wrong shapes and missing files by name") {
  TempDir dir;
  CHECK_THAT(error_of([&] { WeightStore w(dir.path()); }), Contains("no model.safetensors"));
  stem::test::write_file(dir / "model.safetensors", good_file());
  WeightStore w(dir.path());
  CHECK_THAT(error_of([&] { w.load_f32("model.norm.weight", {4}); }), Contains("tensor 'model.norm.weight' is missing"));
  std::string e = error_of([&] { w.load_f32("a", {3, 2}); });
  CHECK_THAT(e, Contains("model.safetensors: tensor 'a' has shape [2,3], config says [3,2]"));
}

TEST_CASE("sharded checkpoints load through model.safetensors.index.json") {
  TempDir dir;
  nlohmann::json h1, h2;
  h1["x"] = {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {0, 4}}};
  h2["y"] = {{"dtype", "F16"}, {"shape", {1}}, {"data_offsets", {0, 2}}};
  float one = 1.0f;
  std::string d1(4, '\0'), d2(2, '\0');
  std::memcpy(d1.data(), &one, 4);
  uint16_t half = f32_to_f16(0.5f);
  std::memcpy(d2.data(), &half, 2);
  stem::test::write_file(dir / "model-00001-of-00002.safetensors", with_header(h1.dump(), d1));
  stem::test::write_file(dir / "model-00002-of-00002.safetensors", with_header(h2.dump(), d2));
  nlohmann::json index = {{"weight_map", {{"x", "model-00001-of-00002.safetensors"}, {"y", "model-00002-of-00002.safetensors"}}}};
  stem::test::write_file(dir / "model.safetensors.index.json", index.dump());
  WeightStore w(dir.path());
  CHECK(w.load_f32("x", {1}).ptr<float>()[0] == 1.0f);
  CHECK(w.load_f32("y", {1}).ptr<float>()[0] == 0.5f);

  SECTION("a shard that is missing") {
    index["weight_map"]["z"] = "model-00003-of-00002.safetensors";
    stem::test::write_file(dir / "model.safetensors.index.json", index.dump());
    CHECK_THAT(error_of([&] { WeightStore w2(dir.path()); }), Contains("model-00003-of-00002.safetensors"));
  }
  SECTION("a shard name that leaves the folder") {
    index["weight_map"]["z"] = "../evil.safetensors";
    stem::test::write_file(dir / "model.safetensors.index.json", index.dump());
    CHECK_THAT(error_of([&] { WeightStore w2(dir.path()); }), Contains("not a plain file name"));
  }
}

TEST_CASE("an F8_E4M3 tensor loads as f8e4m3, one byte an element") {
  nlohmann::json h;
  h["w"] = {{"dtype", "F8_E4M3"}, {"shape", {2, 3}}, {"data_offsets", {0, 6}}};
  TempDir dir;
  stem::test::write_file(dir / "model.safetensors", with_header(h.dump(), std::string("\x38\xb8\x7e\x00\x01\x08", 6)));
  WeightStore w(dir.path());
  const TensorInfo& t = w.get("w", {2, 3});
  CHECK(t.dtype == DType::F8E4M3);
  CHECK(t.nbytes == 6);
  CHECK(static_cast<const uint8_t*>(t.data)[2] == 0x7e);
  CHECK(w.find("w") == &t);
  CHECK(w.find("w_scale") == nullptr);
}
