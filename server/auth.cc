#include "server/auth.h"

namespace stem {

bool constant_time_equal(std::string_view given, std::string_view expected) {
  // Every byte of `expected` is visited; `given` is read at the same index or stands in as 0.
  // volatile keeps the compiler from ending the loop early once `diff` is non-zero.
  volatile unsigned char diff = given.size() != expected.size();
  for (size_t i = 0; i < expected.size(); ++i) {
    const unsigned char g = i < given.size() ? static_cast<unsigned char>(given[i]) : 0;
    diff = diff | static_cast<unsigned char>(g ^ static_cast<unsigned char>(expected[i]));
  }
  return diff == 0;
}

std::string expected_authorization(const std::string& api_key) {
  return api_key.empty() ? std::string() : "Bearer " + api_key;
}

}  // namespace stem
