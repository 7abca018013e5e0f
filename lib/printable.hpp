// Text that came from a peer, made safe to log: printable ASCII stays,
// anything else (newlines, escapes, bytes >= 0x7f) and the backslash become
// \xNN, so a peer cannot forge log lines or terminal sequences.
// Internal to the library (not installed).
#pragma once

#include <string>
#include <string_view>

namespace barrel_p2p::detail {

inline std::string printable(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const char ch : text) {
    const auto b = static_cast<unsigned char>(ch);
    if (b >= 0x20 && b < 0x7f && ch != '\\') {
      out += ch;
    } else {
      static constexpr char digits[] = "0123456789abcdef";
      out += "\\x";
      out += digits[b >> 4];
      out += digits[b & 15];
    }
  }
  return out;
}

}  // namespace barrel_p2p::detail
