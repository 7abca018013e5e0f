#include "barrel_p2p/cbor.hpp"

namespace barrel_p2p {
namespace {

using json = nlohmann::json;

// Builds the json tree like nlohmann's DOM parser does, refusing to go past
// the limits. Returning false from any callback stops the parse at once.
class bounded_builder {
 public:
  using number_integer_t = json::number_integer_t;
  using number_unsigned_t = json::number_unsigned_t;
  using number_float_t = json::number_float_t;
  using string_t = json::string_t;
  using binary_t = json::binary_t;

  explicit bounded_builder(const cbor_limits& limits) : limits_(limits) {}

  bool null() { return put(json(nullptr)); }
  bool boolean(bool v) { return put(json(v)); }
  bool number_integer(number_integer_t v) { return put(json(v)); }
  bool number_unsigned(number_unsigned_t v) { return put(json(v)); }
  bool number_float(number_float_t v, const string_t&) { return put(json(v)); }
  bool string(string_t& v) { return put(json(std::move(v))); }
  bool binary(binary_t& v) { return put(json::binary(std::move(v))); }

  bool start_object(std::size_t) { return open(json::object()); }
  bool key(string_t& k) {
    if (!count()) return false;
    pending_key_ = std::move(k);
    return true;
  }
  bool end_object() { return close(); }
  bool start_array(std::size_t) { return open(json::array()); }
  bool end_array() { return close(); }

  template <class Exception>
  bool parse_error(std::size_t, const std::string&, const Exception& ex) {
    if (reason_.empty()) reason_ = ex.what();
    return false;
  }

  json take() { return std::move(root_); }
  const std::string& reason() const { return reason_; }

 private:
  bool count() {
    if (++items_ > limits_.max_items) {
      reason_ = "too many items";
      return false;
    }
    return true;
  }
  // Places a finished value into the current container (or as the root) and
  // returns where it landed.
  json* place(json&& v) {
    if (stack_.empty()) {
      root_ = std::move(v);
      return &root_;
    }
    json& parent = *stack_.back();
    if (parent.is_array()) {
      parent.push_back(std::move(v));
      return &parent.back();
    }
    auto& slot = parent[pending_key_];
    slot = std::move(v);
    return &slot;
  }
  bool put(json&& v) {
    if (!count()) return false;
    place(std::move(v));
    return true;
  }
  bool open(json&& container) {
    if (!count()) return false;
    if (stack_.size() >= limits_.max_depth) {
      reason_ = "nesting too deep";
      return false;
    }
    stack_.push_back(place(std::move(container)));
    return true;
  }
  bool close() {
    stack_.pop_back();
    return true;
  }

  const cbor_limits& limits_;
  json root_;
  std::vector<json*> stack_;
  string_t pending_key_;
  std::size_t items_ = 0;
  std::string reason_;
};

}  // namespace

std::optional<json> decode_cbor(std::span<const std::uint8_t> bytes,
                                const cbor_limits& limits,
                                cbor_error* error) noexcept {
  try {
    bounded_builder builder(limits);
    const bool ok = json::sax_parse(bytes.begin(), bytes.end(), &builder,
                                    json::input_format_t::cbor, true);
    if (ok) return builder.take();
    if (error) error->reason = builder.reason().empty() ? "malformed CBOR" : builder.reason();
  } catch (const std::exception& ex) {
    if (error) error->reason = ex.what();
  } catch (...) {
    if (error) error->reason = "unknown decode failure";
  }
  return std::nullopt;
}

std::vector<std::uint8_t> encode_cbor(const json& value) {
  return json::to_cbor(value);
}

}  // namespace barrel_p2p

namespace barrel_p2p {

cbor_writer& cbor_writer::head(std::uint8_t major, std::uint64_t value) {
  const auto m = static_cast<std::uint8_t>(major << 5);
  if (value < 24) {
    out_.push_back(static_cast<std::uint8_t>(m | value));
    return *this;
  }
  int bytes = 8;
  std::uint8_t info = 27;
  if (value <= 0xff) bytes = 1, info = 24;
  else if (value <= 0xffff) bytes = 2, info = 25;
  else if (value <= 0xffffffffULL) bytes = 4, info = 26;
  out_.push_back(static_cast<std::uint8_t>(m | info));
  for (int i = bytes - 1; i >= 0; --i) out_.push_back(static_cast<std::uint8_t>(value >> (8 * i)));
  return *this;
}

cbor_writer& cbor_writer::value(const nlohmann::json& v) {
  nlohmann::json::to_cbor(v, out_);
  return *this;
}

cbor_writer& cbor_writer::text(std::string_view s) {
  head(3, s.size());
  out_.insert(out_.end(), s.begin(), s.end());
  return *this;
}

cbor_writer& cbor_writer::bytes(std::span<const std::uint8_t> b) {
  head(2, b.size());
  out_.insert(out_.end(), b.begin(), b.end());
  return *this;
}

std::optional<std::uint64_t> cbor_reader::head(std::uint8_t major) noexcept {
  if (pos_ >= in_.size()) return std::nullopt;
  const auto first = in_[pos_];
  if ((first >> 5) != major) {
    pos_ = in_.size() + 1;  // spent: every later read fails too
    return std::nullopt;
  }
  const auto info = first & 0x1f;
  std::size_t extra = 0;
  if (info < 24) {
    ++pos_;
    return info;
  }
  if (info == 24) extra = 1;
  else if (info == 25) extra = 2;
  else if (info == 26) extra = 4;
  else if (info == 27) extra = 8;
  else {
    pos_ = in_.size() + 1;  // indefinite length or reserved
    return std::nullopt;
  }
  if (in_.size() - pos_ - 1 < extra) {
    pos_ = in_.size() + 1;
    return std::nullopt;
  }
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < extra; ++i) v = (v << 8) | in_[pos_ + 1 + i];
  pos_ += 1 + extra;
  return v;
}

std::optional<std::string_view> cbor_reader::text(std::size_t max_bytes) noexcept {
  auto n = head(3);
  if (!n || *n > max_bytes || *n > in_.size() - pos_) {
    pos_ = in_.size() + 1;
    return std::nullopt;
  }
  std::string_view s(reinterpret_cast<const char*>(in_.data() + pos_), static_cast<std::size_t>(*n));
  pos_ += static_cast<std::size_t>(*n);
  return s;
}

std::optional<std::span<const std::uint8_t>> cbor_reader::item(std::size_t max_depth,
                                                               std::size_t& items_left) noexcept {
  const auto start = pos_;
  if (!skip(max_depth, items_left)) {
    pos_ = in_.size() + 1;
    return std::nullopt;
  }
  return in_.subspan(start, pos_ - start);
}

// One item from pos_; false on anything item() does not take.
bool cbor_reader::skip(std::size_t depth_left, std::size_t& items_left) noexcept {
  if (pos_ >= in_.size() || items_left == 0) return false;
  --items_left;
  const auto first = in_[pos_];
  const auto major = static_cast<std::uint8_t>(first >> 5);
  const auto info = first & 0x1f;
  if (major == 7) {  // false, true, null, and floats of 2, 4 or 8 bytes
    std::size_t extra = 0;
    if (info == 25) extra = 2;
    else if (info == 26) extra = 4;
    else if (info == 27) extra = 8;
    else if (info < 20 || info > 22) return false;
    if (in_.size() - pos_ - 1 < extra) return false;
    pos_ += 1 + extra;
    return true;
  }
  if (major == 6) return false;  // tags
  const auto n = head(major);
  if (!n) return false;
  switch (major) {
    case 0:
    case 1:
      return true;
    case 2:
    case 3:
      if (*n > in_.size() - pos_) return false;
      pos_ += static_cast<std::size_t>(*n);
      return true;
    case 4:
      if (depth_left <= 1) return false;
      for (std::uint64_t i = 0; i < *n; ++i)
        if (!skip(depth_left - 1, items_left)) return false;
      return true;
    default:  // 5, a map: its keys must be text, as nlohmann's reader requires
      if (depth_left <= 1) return false;
      for (std::uint64_t i = 0; i < *n; ++i) {
        if (items_left == 0 || !text(in_.size())) return false;
        --items_left;
        if (!skip(depth_left - 1, items_left)) return false;
      }
      return true;
  }
}

std::optional<std::span<const std::uint8_t>> cbor_reader::bytes() noexcept {
  auto n = head(2);
  if (!n || *n > in_.size() - pos_) {
    pos_ = in_.size() + 1;
    return std::nullopt;
  }
  auto b = in_.subspan(pos_, static_cast<std::size_t>(*n));
  pos_ += static_cast<std::size_t>(*n);
  return b;
}

}  // namespace barrel_p2p
