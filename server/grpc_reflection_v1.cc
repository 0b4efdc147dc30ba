#include "server/grpc_reflection_v1.h"

#include <google/protobuf/descriptor.pb.h>
#include <grpcpp/impl/server_builder_plugin.h>
#include <grpcpp/impl/server_initializer.h>
#include <grpcpp/support/status.h>
#include <grpcpp/support/sync_stream.h>

#include "grpc/reflection/v1/reflection.grpc.pb.h"

namespace stem {

namespace rv1 = grpc::reflection::v1;
namespace pb = google::protobuf;

namespace {

void set_error(rv1::ServerReflectionResponse& out, grpc::StatusCode code, const std::string& message) {
  rv1::ErrorResponse* error = out.mutable_error_response();
  error->set_error_code(static_cast<int32_t>(code));
  error->set_error_message(message);
}

}  // namespace

rv1::ServerReflectionResponse ReflectionV1Answers::answer(const rv1::ServerReflectionRequest& request) {
  using Case = rv1::ServerReflectionRequest::MessageRequestCase;
  rv1::ServerReflectionResponse out;
  out.set_valid_host(request.host());
  *out.mutable_original_request() = request;
  switch (request.message_request_case()) {
    case Case::kListServices: {
      rv1::ListServiceResponse* list = out.mutable_list_services_response();
      if (services_)
        for (const std::string& name : *services_) list->add_service()->set_name(name);
      break;
    }
    case Case::kFileByFilename: {
      const std::string& name = request.file_by_filename();
      if (const pb::FileDescriptor* file = pool_->FindFileByName(name))
        add_file(file, *out.mutable_file_descriptor_response());
      else
        set_error(out, grpc::StatusCode::NOT_FOUND, "no file named '" + name + "'");
      break;
    }
    case Case::kFileContainingSymbol: {
      const std::string& symbol = request.file_containing_symbol();
      if (const pb::FileDescriptor* file = pool_->FindFileContainingSymbol(symbol))
        add_file(file, *out.mutable_file_descriptor_response());
      else
        set_error(out, grpc::StatusCode::NOT_FOUND, "no symbol named '" + symbol + "'");
      break;
    }
    case Case::kFileContainingExtension: {
      const rv1::ExtensionRequest& ext = request.file_containing_extension();
      const pb::Descriptor* type = pool_->FindMessageTypeByName(ext.containing_type());
      const pb::FieldDescriptor* field = type ? pool_->FindExtensionByNumber(type, ext.extension_number()) : nullptr;
      if (!type)
        set_error(out, grpc::StatusCode::NOT_FOUND, "no message type named '" + ext.containing_type() + "'");
      else if (!field)
        set_error(out, grpc::StatusCode::NOT_FOUND,
                  "no extension " + std::to_string(ext.extension_number()) + " of '" + ext.containing_type() + "'");
      else
        add_file(field->file(), *out.mutable_file_descriptor_response());
      break;
    }
    case Case::kAllExtensionNumbersOfType: {
      const std::string& name = request.all_extension_numbers_of_type();
      const pb::Descriptor* type = pool_->FindMessageTypeByName(name);
      if (!type) {
        set_error(out, grpc::StatusCode::NOT_FOUND, "no message type named '" + name + "'");
        break;
      }
      std::vector<const pb::FieldDescriptor*> extensions;
      pool_->FindAllExtensions(type, &extensions);
      rv1::ExtensionNumberResponse* numbers = out.mutable_all_extension_numbers_response();
      numbers->set_base_type_name(name);
      for (const pb::FieldDescriptor* field : extensions) numbers->add_extension_number(field->number());
      break;
    }
    case Case::MESSAGE_REQUEST_NOT_SET:
      set_error(out, grpc::StatusCode::INVALID_ARGUMENT,
                "the request asks nothing: set one of file_by_filename, file_containing_symbol, "
                "file_containing_extension, all_extension_numbers_of_type, list_services");
      break;
  }
  return out;
}

void ReflectionV1Answers::add_file(const pb::FileDescriptor* file, rv1::FileDescriptorResponse& out) {
  if (!sent_.insert(file->name()).second) return;
  pb::FileDescriptorProto proto;
  file->CopyTo(&proto);
  proto.SerializeToString(out.add_file_descriptor_proto());
  for (int i = 0; i < file->dependency_count(); ++i) add_file(file->dependency(i), out);
}

namespace {

// Synchronous, as gRPC's own v1alpha service is: each open stream holds one of gRPC's threads
// while it waits for the client's next request.
class ReflectionV1Service final : public rv1::ServerReflection::Service {
 public:
  void set_services(const std::vector<std::string>* services) { services_ = services; }

  grpc::Status ServerReflectionInfo(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<rv1::ServerReflectionResponse, rv1::ServerReflectionRequest>* stream) override {
    ReflectionV1Answers answers(services_, pb::DescriptorPool::generated_pool());
    rv1::ServerReflectionRequest request;
    while (stream->Read(&request))
      if (!stream->Write(answers.answer(request))) break;
    return grpc::Status::OK;
  }

 private:
  const std::vector<std::string>* services_ = nullptr;
};

// The way to reach the server's list of services (ServerInitializer::GetServiceList, the list the
// server keeps and adds the default health service to when it starts): a plugin, added by the
// option below. The server owns the service from InitServer on.
class ReflectionV1Plugin final : public grpc::ServerBuilderPlugin {
 public:
  std::string name() override { return "stemserve_reflection_v1"; }
  void InitServer(grpc::ServerInitializer* si) override {
    service_->set_services(si->GetServiceList());
    si->RegisterService(service_);
  }
  void Finish(grpc::ServerInitializer*) override {}
  void ChangeArguments(const std::string&, void*) override {}
  // Read before InitServer: the server makes its synchronous request queues only if asked.
  bool has_sync_methods() const override { return service_->has_synchronous_methods(); }
  bool has_async_methods() const override { return service_->has_async_methods(); }

 private:
  std::shared_ptr<ReflectionV1Service> service_ = std::make_shared<ReflectionV1Service>();
};

class ReflectionV1Option final : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->push_back(std::make_unique<ReflectionV1Plugin>());
  }
};

}  // namespace

std::unique_ptr<grpc::ServerBuilderOption> reflection_v1_option() { return std::make_unique<ReflectionV1Option>(); }

}  // namespace stem
