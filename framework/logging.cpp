#include "framework/logging.h"

#include <cstring>
#include <iostream>
#include <mutex>
#include <stdexcept>

namespace zsq {
namespace {
int g_rank = 0;
int g_world = 1;
LogLevel g_level = LogLevel::kInfo;
std::mutex g_mutex;

const char* level_name(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarn: return "warning";
    case LogLevel::kError: return "error";
  }
  return "?";
}
} // namespace

void set_log_rank(int rank, int world_size) {
  g_rank = rank;
  g_world = world_size;
}
int log_rank() { return g_rank; }
int log_world_size() { return g_world; }
void set_log_level(LogLevel level) { g_level = level; }
LogLevel log_level() { return g_level; }

LogLevel parse_log_level(const std::string& text) {
  if (text == "debug") return LogLevel::kDebug;
  if (text == "info") return LogLevel::kInfo;
  if (text == "warn" || text == "warning") return LogLevel::kWarn;
  if (text == "error") return LogLevel::kError;
  throw std::invalid_argument("log level must be one of debug, info, warn, error; got '" + text + "'");
}

namespace detail {
LogLine::LogLine(LogLevel level, const char* file, int line) : level_(level) {
  if (g_world > 1) buffer_ << "[rank " << g_rank << "/" << g_world << "] ";
  if (level != LogLevel::kInfo) buffer_ << level_name(level) << ": ";
  if (level == LogLevel::kDebug) {
    const char* base = std::strrchr(file, '/');
    buffer_ << (base ? base + 1 : file) << ":" << line << ": ";
  }
}

LogLine::~LogLine() {
  std::lock_guard<std::mutex> lock(g_mutex);
  std::cerr << buffer_.str() << std::endl;
}
} // namespace detail
} // namespace zsq
