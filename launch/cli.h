// Command-line plumbing shared by the zsq commands: Boost.Program_options
// with an INI recipe (--config) that flags override, the common options, list
// parsing, a tiny JSON writer for --json, and the usage error type.
#pragma once

#include <boost/program_options.hpp>

#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace zsq::cli {

namespace po = boost::program_options;

/// A mistake in how the command was called (exit code 2).
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Options every command takes.
struct Common {
  bool json = false;
  int threads = 0;
  std::string config;
};

/// Adds --config, --help, --json, --threads, --log-level to `desc`.
void add_common_options(po::options_description& desc);

/// Parses argv (after the command name) and then the --config file, whose
/// sectionless keys and keys under [command] use the long option names; flags
/// win over the file. Returns nullopt when --help was printed. Applies
/// --threads and --log-level. Throws UsageError on any bad input.
std::optional<po::variables_map> parse(const std::string& command, const std::string& usage,
                                       po::options_description& desc, int argc, char** argv, Common* common,
                                       const po::positional_options_description* positional = nullptr);

/// Every option that has a value, as INI text (stored in output files).
std::string resolved_config(const po::options_description& desc, const po::variables_map& vm);

/// "1,28,28" -> {1, 28, 28}; throws UsageError naming `flag`.
std::vector<int64_t> parse_int_list(const std::string& text, const std::string& flag);
std::vector<double> parse_double_list(const std::string& text, const std::string& flag);

/// "1h02m", "3m05s", "12s".
std::string format_duration(double seconds);

/// Builds one JSON object, in insertion order.
class Json {
 public:
  Json& add(const std::string& key, const std::string& value);
  Json& add(const std::string& key, const char* value) { return add(key, std::string(value)); }
  Json& add(const std::string& key, double value);
  Json& add(const std::string& key, int64_t value);
  Json& add(const std::string& key, int value) { return add(key, static_cast<int64_t>(value)); }
  Json& add(const std::string& key, bool value);
  Json& add(const std::string& key, const std::vector<int64_t>& value);
  Json& add(const std::string& key, const std::vector<double>& value);
  Json& add_raw(const std::string& key, const std::string& json);
  std::string str() const;

 private:
  std::vector<std::pair<std::string, std::string>> fields_;
};

std::string json_quote(const std::string& text);

} // namespace zsq::cli
