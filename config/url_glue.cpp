// Boost.URL is a compiled library in 1.81; compile it once, here.
#include <boost/url/src.hpp>
