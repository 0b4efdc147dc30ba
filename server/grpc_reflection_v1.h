// gRPC server reflection v1 (grpc.reflection.v1.ServerReflection, proto/grpc/reflection/v1/
// reflection.proto), served beside Debian gRPC's grpc.reflection.v1alpha: current clients
// (grpcurl, Postman, recent grpcio-reflection) ask for v1 first, and gRPC 1.51 has no v1 service.
// Schemas come from a DescriptorPool: in the server, the generated pool (every .proto compiled
// into the binary: ours, health's, both reflection versions, protobuf's own).
#pragma once
#include <google/protobuf/descriptor.h>
#include <grpcpp/impl/server_builder_option.h>

#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "grpc/reflection/v1/reflection.pb.h"

namespace stem {

// The answers on one reflection stream, one per request:
// - list_services: the names in `services` (read at each request);
// - file_by_filename, file_containing_symbol (a service, method, message, enum, enum value, field
//   or extension, fully qualified), file_containing_extension: the file and every file it
//   imports, directly or not, each a serialized FileDescriptorProto, the asked file first; a file
//   already sent on this stream is not sent again (the answer's list may then be empty);
// - all_extension_numbers_of_type: the extension numbers the pool knows for a message type
//   (none: an empty list);
// - an unknown file, symbol, type or extension: error_response NOT_FOUND; a request that sets
//   none of these: INVALID_ARGUMENT. Each answer repeats the request's host as valid_host and the
//   request itself as original_request.
class ReflectionV1Answers {
 public:
  // Both must outlive this object; `services` may be null (list_services then lists none).
  ReflectionV1Answers(const std::vector<std::string>* services, const google::protobuf::DescriptorPool* pool)
      : services_(services), pool_(pool) {}

  grpc::reflection::v1::ServerReflectionResponse answer(const grpc::reflection::v1::ServerReflectionRequest& request);

 private:
  void add_file(const google::protobuf::FileDescriptor* file, grpc::reflection::v1::FileDescriptorResponse& out);

  const std::vector<std::string>* services_;
  const google::protobuf::DescriptorPool* pool_;
  std::unordered_set<std::string> sent_;  // the files already sent on this stream, by name
};

// A ServerBuilder option (builder.SetOption) that adds grpc.reflection.v1.ServerReflection to the
// server being built: it answers from the generated pool, and list_services names every service
// the server has (its own list, as v1alpha's does, health included once the server starts).
std::unique_ptr<grpc::ServerBuilderOption> reflection_v1_option();

}  // namespace stem
