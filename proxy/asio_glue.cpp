// The one translation unit that compiles Asio, Asio.SSL and Beast (separate compilation:
// BOOST_ASIO_SEPARATE_COMPILATION / BOOST_BEAST_SEPARATE_COMPILATION are set for every
// target that links bb_asio). Everything else includes only the headers, which keeps a
// clean build on 2 cores in the tens of seconds rather than minutes.
#include <boost/asio/impl/src.hpp>
#include <boost/asio/ssl/impl/src.hpp>
#include <boost/beast/src.hpp>
