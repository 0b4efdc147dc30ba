// Stop strings on streamed text: finds the first stop string in the output and holds back
// any tail that could still grow into one, so streamed text never shows part of a stop string.
#pragma once
#include <string>
#include <vector>

namespace stem {

class StopChecker {
 public:
  explicit StopChecker(std::vector<std::string> stops);

  // Appends newly decoded text. Returns the text that is now safe to emit.
  std::string push(const std::string& text);
  // Text held back at the end of the stream (no stop string came).
  std::string flush();
  bool stopped() const { return stopped_; }
  const std::string& matched() const { return matched_; }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
  std::string matched_;
};

}  // namespace stem
