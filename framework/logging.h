// Rank-aware logging. Library code logs through ZSQ_LOG / ZSQ_LOG_RANK0; the
// rank and world size are set once by launch/ (framework knows nothing of MPI).
// Progress and results go to stdout, diagnostics to stderr.
#pragma once

#include <sstream>
#include <string>

namespace zsq {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

/// Sets the rank prefix used by every later log line ("[rank r/w]").
void set_log_rank(int rank, int world_size);
int log_rank();
int log_world_size();

/// Lines below `level` are dropped. Default: kInfo.
void set_log_level(LogLevel level);
LogLevel log_level();

/// Parses "debug", "info", "warn" or "error"; throws on anything else.
LogLevel parse_log_level(const std::string& text);

namespace detail {
/// One log line; written (with prefix) when destroyed.
class LogLine {
 public:
  LogLine(LogLevel level, const char* file, int line);
  ~LogLine();
  std::ostream& stream() { return buffer_; }

 private:
  LogLevel level_;
  std::ostringstream buffer_;
};
} // namespace detail

} // namespace zsq

#define ZSQ_LOG(level)                                           \
  if (::zsq::LogLevel::level < ::zsq::log_level()) {              \
  } else                                                         \
    ::zsq::detail::LogLine(::zsq::LogLevel::level, __FILE__, __LINE__).stream()

/// Logs on rank 0 only.
#define ZSQ_LOG_RANK0(level)                                                \
  if (::zsq::LogLevel::level < ::zsq::log_level() || ::zsq::log_rank() != 0) { \
  } else                                                                    \
    ::zsq::detail::LogLine(::zsq::LogLevel::level, __FILE__, __LINE__).stream()
