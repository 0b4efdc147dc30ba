// STEM_CHECK: an internal invariant; throws stem::Error with file:line and a message.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace stem {

// Every error stemserve raises is a stem::Error: a message a user can act on.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
[[noreturn]] inline void check_failed(const char* file, int line, const char* cond, const std::string& msg) {
  std::ostringstream os;
  os << file << ":" << line << ": check failed: " << cond;
  if (!msg.empty()) os << ": " << msg;
  throw Error(os.str());
}
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace stem

#define STEM_CHECK(cond, ...)                                                                \
  do {                                                                                       \
    if (!(cond)) ::stem::detail::check_failed(__FILE__, __LINE__, #cond,                      \
                                              ::stem::detail::concat("" __VA_OPT__(, ) __VA_ARGS__)); \
  } while (0)
