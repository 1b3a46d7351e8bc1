// A bad option value is a user error, like a bad command line: the library
// throws OptionError where a value of an options struct is out of range or
// conflicts with another, and the command line exits 2 on it (1 on data, file
// and runtime errors). Messages name the command-line flag.
#pragma once

#include <c10/util/StringUtil.h>

#include <stdexcept>

namespace zsq {

class OptionError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

} // namespace zsq

/// As TORCH_CHECK, for option values: throws zsq::OptionError with the message's parts joined.
#define ZSQ_CHECK_OPTION(cond, ...)                                  \
  do {                                                               \
    if (!(cond)) throw ::zsq::OptionError(::c10::str(__VA_ARGS__)); \
  } while (0)
