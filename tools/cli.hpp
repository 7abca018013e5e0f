// Command-line reading shared by the tools: `--flag value` pairs and
// comma-separated lists. Errors are std::invalid_argument naming the flag.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace barrel_p2p::cli {

class flag_reader {
 public:
  flag_reader(int argc, char** argv) : argc_(argc), argv_(argv) {}

  /// Moves to the next argument; false when there is none left.
  bool next() {
    if (++i_ >= argc_) return false;
    flag_ = argv_[i_];
    return true;
  }
  [[nodiscard]] const std::string& flag() const { return flag_; }
  /// The argument after the current flag.
  std::string value() {
    if (i_ + 1 >= argc_) throw std::invalid_argument(flag_ + " needs a value");
    return argv_[++i_];
  }

 private:
  int argc_;
  char** argv_;
  int i_ = 0;
  std::string flag_;
};

/// "3,5,10" -> {3, 5, 10}; throws std::invalid_argument on a bad item.
template <class T>
std::vector<T> parse_list(const std::string& text) {
  std::vector<T> out;
  std::stringstream items(text);
  std::string item;
  while (std::getline(items, item, ',')) {
    std::istringstream in(item);
    T v{};
    if (!(in >> v) || !in.eof()) throw std::invalid_argument("bad list item '" + item + "' in '" + text + "'");
    out.push_back(v);
  }
  return out;
}

}  // namespace barrel_p2p::cli
