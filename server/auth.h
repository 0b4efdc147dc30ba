// The API key check shared by the HTTP and gRPC front ends.
#pragma once
#include <string>
#include <string_view>

namespace stem {

// True when `given` equals `expected`. The time taken depends only on expected.size(), never on
// `given` or on how many leading bytes match, so response timing does not reveal how much of a
// guessed key was right. (The expected key's length is not hidden; keys should be long.)
bool constant_time_equal(std::string_view given, std::string_view expected);

// The Authorization value a request must carry: "Bearer <key>", or "" when there is no key.
std::string expected_authorization(const std::string& api_key);

}  // namespace stem
