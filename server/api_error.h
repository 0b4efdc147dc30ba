// An error the HTTP API reports to the client as an OpenAI-style error object with a status code.
#pragma once
#include <string>

#include "kernels/check.h"

namespace stem {

class ApiError : public Error {
 public:
  ApiError(int status, std::string message, std::string param = {}, std::string type = {})
      : Error(message), status_(status), param_(std::move(param)), type_(std::move(type)) {
    if (type_.empty()) type_ = default_type(status);
  }
  int status() const { return status_; }
  const std::string& param() const { return param_; }
  const std::string& type() const { return type_; }

  static std::string default_type(int status) {
    switch (status) {
      case 401: return "authentication_error";
      case 404: return "not_found_error";
      case 413: return "request_too_large";
      case 429: return "rate_limit_error";
      case 503: return "service_unavailable";
      default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
  }

 private:
  int status_;
  std::string param_, type_;
};

}  // namespace stem
