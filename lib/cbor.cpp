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
