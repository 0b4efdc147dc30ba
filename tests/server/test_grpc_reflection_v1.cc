// gRPC reflection v1's answers (server/grpc_reflection_v1.h) without a network: over a small pool
// of our own (a file importing a file importing a file, an extension), then over the generated
// pool the server answers from. The served service: tests/integration/test_grpc.py.
#include "server/grpc_reflection_v1.h"

#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/text_format.h>

#include "grpc/health/v1/health.pb.h"
#include "stemserve/v1/stemserve.pb.h"
#include "tests/catch.h"

using namespace stem;
namespace rv1 = grpc::reflection::v1;
namespace pb = google::protobuf;

namespace {

// t/a.proto imports t/b.proto, which imports t/c.proto (and extends its t.Base with field 150);
// t/d.proto imports t/c.proto too.
const char* const kFiles[] = {
    R"(name: "t/c.proto" package: "t"
       message_type { name: "Base" extension_range { start: 100 end: 201 } })",
    R"(name: "t/b.proto" package: "t" dependency: "t/c.proto"
       message_type { name: "B"
         field { name: "base" number: 1 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".t.Base" } }
       extension { name: "tag" number: 150 label: LABEL_OPTIONAL type: TYPE_INT32 extendee: ".t.Base" })",
    R"(name: "t/a.proto" package: "t" dependency: "t/b.proto" syntax: "proto3"
       message_type { name: "A"
         field { name: "x" number: 1 label: LABEL_OPTIONAL type: TYPE_INT32 }
         field { name: "b" number: 2 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".t.B" }
         nested_type { name: "Inner" } }
       enum_type { name: "Color" value { name: "RED" number: 0 } }
       service { name: "Svc" method { name: "Call" input_type: ".t.A" output_type: ".t.B" } })",
    R"(name: "t/d.proto" package: "t" dependency: "t/c.proto" message_type { name: "D" })",
};

const pb::DescriptorPool& test_pool() {
  static pb::DescriptorPool pool;
  static bool built = [] {
    for (const char* text : kFiles) {
      pb::FileDescriptorProto file;
      REQUIRE(pb::TextFormat::ParseFromString(text, &file));
      REQUIRE(pool.BuildFile(file) != nullptr);
    }
    return true;
  }();
  (void)built;
  return pool;
}

rv1::ServerReflectionRequest symbol(const std::string& name) {
  rv1::ServerReflectionRequest r;
  r.set_file_containing_symbol(name);
  return r;
}

rv1::ServerReflectionRequest filename(const std::string& name) {
  rv1::ServerReflectionRequest r;
  r.set_file_by_filename(name);
  return r;
}

// The files of an answer, by name, in the order sent; each must parse as a FileDescriptorProto.
std::vector<std::string> files_of(const rv1::ServerReflectionResponse& r) {
  REQUIRE(r.message_response_case() == rv1::ServerReflectionResponse::kFileDescriptorResponse);
  std::vector<std::string> names;
  for (const std::string& bytes : r.file_descriptor_response().file_descriptor_proto()) {
    pb::FileDescriptorProto file;
    REQUIRE(file.ParseFromString(bytes));
    names.push_back(file.name());
  }
  return names;
}

using Names = std::vector<std::string>;

}  // namespace

TEST_CASE("reflection v1: list_services lists the server's services; answers echo host and request") {
  const std::vector<std::string> services = {"stemserve.v1.Stemserve", "grpc.health.v1.Health"};
  ReflectionV1Answers answers(&services, &test_pool());
  rv1::ServerReflectionRequest request;
  request.set_host("localhost:50051");
  request.set_list_services("anything");
  const rv1::ServerReflectionResponse r = answers.answer(request);
  REQUIRE(r.message_response_case() == rv1::ServerReflectionResponse::kListServicesResponse);
  REQUIRE(r.list_services_response().service_size() == 2);
  CHECK(r.list_services_response().service(0).name() == "stemserve.v1.Stemserve");
  CHECK(r.list_services_response().service(1).name() == "grpc.health.v1.Health");
  CHECK(r.valid_host() == "localhost:50051");
  CHECK(r.original_request().list_services() == "anything");
  CHECK(r.original_request().host() == "localhost:50051");

  ReflectionV1Answers none(nullptr, &test_pool());
  CHECK(none.answer(request).list_services_response().service_size() == 0);
}

TEST_CASE("reflection v1: a file comes with everything it imports, each file once per stream") {
  ReflectionV1Answers stream(nullptr, &test_pool());
  CHECK(files_of(stream.answer(filename("t/a.proto"))) == Names{"t/a.proto", "t/b.proto", "t/c.proto"});
  // t/c.proto went already: only t/d.proto.
  CHECK(files_of(stream.answer(symbol("t.D"))) == Names{"t/d.proto"});
  // Everything went: an answer with no files (not an error).
  const rv1::ServerReflectionResponse again = stream.answer(filename("t/a.proto"));
  CHECK(files_of(again).empty());
  CHECK(again.original_request().file_by_filename() == "t/a.proto");
  // Another stream starts afresh.
  ReflectionV1Answers other(nullptr, &test_pool());
  CHECK(files_of(other.answer(symbol("t.D"))) == Names{"t/d.proto", "t/c.proto"});
  // The bytes are the file's descriptor: t.A's fields and t.Svc's method are there.
  ReflectionV1Answers third(nullptr, &test_pool());
  const rv1::ServerReflectionResponse a = third.answer(symbol("t.Svc"));
  pb::FileDescriptorProto file;
  REQUIRE(file.ParseFromString(a.file_descriptor_response().file_descriptor_proto(0)));
  CHECK(file.dependency(0) == "t/b.proto");
  REQUIRE(file.service_size() == 1);
  CHECK(file.service(0).method(0).input_type() == ".t.A");
  CHECK(file.message_type(0).field_size() == 2);
}

TEST_CASE("reflection v1: every kind of symbol leads to its file") {
  const std::pair<const char*, const char*> cases[] = {
      {"t.A", "t/a.proto"},      {"t.A.Inner", "t/a.proto"}, {"t.A.x", "t/a.proto"},
      {"t.Color", "t/a.proto"},  {"t.RED", "t/a.proto"},     {"t.Svc", "t/a.proto"},
      {"t.Svc.Call", "t/a.proto"}, {"t.B.base", "t/b.proto"}, {"t.tag", "t/b.proto"},
      {"t.Base", "t/c.proto"},
  };
  for (const auto& [name, file] : cases) {
    INFO(name);
    ReflectionV1Answers stream(nullptr, &test_pool());
    const Names files = files_of(stream.answer(symbol(name)));
    REQUIRE_FALSE(files.empty());
    CHECK(files[0] == file);
  }
}

TEST_CASE("reflection v1: extensions by number, and a type's extension numbers") {
  ReflectionV1Answers stream(nullptr, &test_pool());
  rv1::ServerReflectionRequest r;
  r.mutable_file_containing_extension()->set_containing_type("t.Base");
  r.mutable_file_containing_extension()->set_extension_number(150);
  CHECK(files_of(stream.answer(r)) == Names{"t/b.proto", "t/c.proto"});

  rv1::ServerReflectionRequest numbers;
  numbers.set_all_extension_numbers_of_type("t.Base");
  const rv1::ServerReflectionResponse n = stream.answer(numbers);
  REQUIRE(n.message_response_case() == rv1::ServerReflectionResponse::kAllExtensionNumbersResponse);
  CHECK(n.all_extension_numbers_response().base_type_name() == "t.Base");
  CHECK(std::vector<int32_t>(n.all_extension_numbers_response().extension_number().begin(),
                             n.all_extension_numbers_response().extension_number().end()) == std::vector<int32_t>{150});
  // A type without extensions: an empty list, as v1alpha answers.
  numbers.set_all_extension_numbers_of_type("t.D");
  const rv1::ServerReflectionResponse none = stream.answer(numbers);
  REQUIRE(none.message_response_case() == rv1::ServerReflectionResponse::kAllExtensionNumbersResponse);
  CHECK(none.all_extension_numbers_response().extension_number_size() == 0);
}

TEST_CASE("reflection v1: unknown names are NOT_FOUND, a request asking nothing INVALID_ARGUMENT") {
  ReflectionV1Answers stream(nullptr, &test_pool());
  auto error_of = [&](const rv1::ServerReflectionRequest& request) {
    const rv1::ServerReflectionResponse r = stream.answer(request);
    REQUIRE(r.message_response_case() == rv1::ServerReflectionResponse::kErrorResponse);
    CHECK(r.original_request().SerializeAsString() == request.SerializeAsString());
    return std::make_pair(r.error_response().error_code(), r.error_response().error_message());
  };
  const int not_found = static_cast<int>(grpc::StatusCode::NOT_FOUND);
  CHECK(error_of(symbol("t.Nope")) == std::make_pair(not_found, std::string("no symbol named 't.Nope'")));
  CHECK(error_of(symbol("")).first == not_found);
  CHECK(error_of(filename("t/nope.proto")) == std::make_pair(not_found, std::string("no file named 't/nope.proto'")));
  rv1::ServerReflectionRequest ext;
  ext.mutable_file_containing_extension()->set_containing_type("t.Base");
  ext.mutable_file_containing_extension()->set_extension_number(151);
  CHECK(error_of(ext) == std::make_pair(not_found, std::string("no extension 151 of 't.Base'")));
  ext.mutable_file_containing_extension()->set_containing_type("t.Nope");
  CHECK(error_of(ext) == std::make_pair(not_found, std::string("no message type named 't.Nope'")));
  rv1::ServerReflectionRequest numbers;
  numbers.set_all_extension_numbers_of_type("t.Nope");
  CHECK(error_of(numbers).first == not_found);
  rv1::ServerReflectionRequest empty;
  empty.set_host("h");
  const auto [code, message] = error_of(empty);
  CHECK(code == static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
  CHECK(message.find("file_containing_symbol") != std::string::npos);
}

TEST_CASE("reflection v1: the generated pool holds our API and the reflection v1 and health schemas") {
  // A generated file joins the pool when its object file is linked: this test names nothing else
  // of stemserve.proto's (the server links it through its service).
  REQUIRE(stemserve::v1::GenerateRequest::descriptor() != nullptr);
  REQUIRE(grpc::health::v1::HealthCheckRequest::descriptor() != nullptr);
  ReflectionV1Answers stream(nullptr, pb::DescriptorPool::generated_pool());
  const Names api = files_of(stream.answer(symbol("stemserve.v1.Stemserve")));
  REQUIRE_FALSE(api.empty());
  CHECK(api[0] == "stemserve/v1/stemserve.proto");
  CHECK(files_of(stream.answer(symbol("stemserve.v1.GenerateRequest"))).empty());  // sent already
  ReflectionV1Answers fresh(nullptr, pb::DescriptorPool::generated_pool());
  CHECK(files_of(fresh.answer(symbol("stemserve.v1.Stemserve.Generate")))[0] == "stemserve/v1/stemserve.proto");
  CHECK(files_of(fresh.answer(symbol("grpc.reflection.v1.ServerReflection"))) ==
        Names{"grpc/reflection/v1/reflection.proto"});
  CHECK(files_of(fresh.answer(symbol("grpc.health.v1.Health.Watch"))) == Names{"grpc/health/v1/health.proto"});
}
