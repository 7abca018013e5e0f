// Asio is compiled once, here (BOOST_ASIO_SEPARATE_COMPILATION is set for the
// library and everything that depends on it), instead of in every unit that
// includes it: the single biggest build-time saving on a two-core machine.
#include <boost/asio/impl/src.hpp>
// Asio's TLS stream (ssl::stream over OpenSSL), compiled once likewise.
#include <boost/asio/ssl/impl/src.hpp>
