#include "launch/cli.h"

#include "framework/logging.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <thread>

namespace zsq::cli {

void add_common_options(po::options_description& desc) {
  desc.add_options()
      ("config", po::value<std::string>(), "INI recipe file; flags given on the command line override it")
      ("json", po::bool_switch(), "print the result as one JSON object on the last line of standard output")
      ("threads", po::value<int>()->default_value(0), "CPU threads for tensor math (0: all cores)")
      ("log-level", po::value<std::string>()->default_value("info"), "debug, info, warn or error")
      ("help,h", "show this help and exit");
}

namespace {

// Keeps sectionless lines and lines under [command]; drops other sections, so
// one recipe file can carry settings for several commands.
std::string select_section(const std::string& path, const std::string& command) {
  std::ifstream in(path);
  if (!in) throw UsageError("cannot read config file '" + path + "'");
  std::ostringstream out;
  std::string line;
  bool keep = true;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    const auto first = line.find_first_not_of(" \t\r");
    if (first != std::string::npos && line[first] == '[') {
      const auto close = line.find(']', first);
      if (close == std::string::npos) {
        throw UsageError("config file '" + path + "', line " + std::to_string(number) + ": unclosed section header");
      }
      keep = line.substr(first + 1, close - first - 1) == command;
      out << "\n";  // keep line numbers
      continue;
    }
    out << (keep ? line : std::string()) << "\n";
  }
  return out.str();
}

// Levenshtein distance (insertions, deletions, substitutions).
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
      diagonal = up;
    }
  }
  return row[b.size()];
}

// Boost.Program_options fills its messages' %placeholders% from the user's text and loops forever when
// that text holds a placeholder itself (tests/fuzz/fuzz_ini.cpp found it: an option named
// '%original_token%arch' in a config file hung zsq). The user's text loses its '%' signs first.
struct SafeOptionError : po::error_with_option_name {
  explicit SafeOptionError(const po::error_with_option_name& e) : po::error_with_option_name(e) {
    const auto clean = [](std::string& text) { std::replace(text.begin(), text.end(), '%', '?'); };
    for (auto& item : m_substitutions) clean(item.second);
    for (auto& item : m_substitution_defaults) clean(item.second.first), clean(item.second.second);
  }
};

std::string message_of(const po::error& e) {
  if (const auto* named = dynamic_cast<const po::error_with_option_name*>(&e)) return SafeOptionError(*named).what();
  return e.what();
}

// An unknown option's message, with the nearest option of the command when one is close (a typo).
// prefix: "--" on the command line, "" in a config file.
std::string unknown_option_message(const po::unknown_option& e, const po::options_description& desc,
                                   const std::string& prefix) {
  std::string name = e.get_option_name();
  while (!name.empty() && name.front() == '-') name.erase(0, 1);
  std::string best;
  size_t best_distance = std::max<size_t>(2, name.size() / 3) + 1;
  for (const auto& option : desc.options()) {
    const size_t d = edit_distance(name, option->long_name());
    if (d < best_distance) best_distance = d, best = option->long_name();
  }
  return message_of(e) + (best.empty() ? "" : "; did you mean '" + prefix + best + "'?");
}

} // namespace

std::optional<po::variables_map> parse(const std::string& command, const std::string& usage,
                                       po::options_description& desc, int argc, char** argv, Common* common,
                                       const po::positional_options_description* positional) {
  po::variables_map vm;
  try {
    po::command_line_parser parser(argc, argv);
    parser.options(desc);
    // No abbreviations: '--epoch' must be an error, not a silent '--epochs'.
    parser.style(po::command_line_style::default_style & ~po::command_line_style::allow_guessing);
    if (positional) parser.positional(*positional);
    po::store(parser.run(), vm);
    if (vm.count("help")) {
      std::cout << "usage: " << usage << "\n\n" << desc << std::endl;
      return std::nullopt;
    }
    if (vm.count("config")) {
      const std::string path = vm["config"].as<std::string>();
      std::istringstream text(select_section(path, command));
      try {
        po::store(po::parse_config_file(text, desc, /*allow_unregistered=*/false), vm);
      } catch (const po::unknown_option& e) {
        throw UsageError("config file '" + path + "': " + unknown_option_message(e, desc, ""));
      } catch (const po::error& e) {
        throw UsageError("config file '" + path + "': " + message_of(e));
      }
    }
    po::notify(vm);
  } catch (const po::unknown_option& e) {
    throw UsageError(unknown_option_message(e, desc, "--"));
  } catch (const po::error& e) {
    throw UsageError(message_of(e));
  }
  common->json = vm["json"].as<bool>();
  common->threads = vm["threads"].as<int>();
  if (vm.count("config")) common->config = vm["config"].as<std::string>();
  try {
    set_log_level(parse_log_level(vm["log-level"].as<std::string>()));
  } catch (const std::invalid_argument& e) {
    throw UsageError(std::string("--log-level: ") + e.what());
  }
  if (common->threads < 0) throw UsageError("--threads must be >= 0, got " + std::to_string(common->threads));
  const int threads = common->threads > 0 ? common->threads
                                          : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  at::set_num_threads(threads);
  return vm;
}

namespace {
std::string any_to_text(const boost::any& value) {
  if (auto v = boost::any_cast<std::string>(&value)) return *v;
  if (auto v = boost::any_cast<int>(&value)) return std::to_string(*v);
  if (auto v = boost::any_cast<int64_t>(&value)) return std::to_string(*v);
  if (auto v = boost::any_cast<uint64_t>(&value)) return std::to_string(*v);
  if (auto v = boost::any_cast<bool>(&value)) return *v ? "true" : "false";
  if (auto v = boost::any_cast<double>(&value)) {
    std::ostringstream out;
    out << std::setprecision(10) << *v;
    return out.str();
  }
  return "?";
}
} // namespace

std::string resolved_config(const po::options_description& desc, const po::variables_map& vm) {
  std::ostringstream out;
  for (const auto& option : desc.options()) {
    const std::string& name = option->long_name();
    if (name == "config" || name == "help" || name == "json" || !vm.count(name)) continue;
    out << name << " = " << any_to_text(vm[name].value()) << "\n";
  }
  return out.str();
}

namespace {
std::vector<std::string> split_commas(const std::string& text) {
  std::vector<std::string> parts;
  std::string part;
  std::istringstream in(text);
  while (std::getline(in, part, ',')) parts.push_back(part);
  return parts;
}
} // namespace

std::vector<int64_t> parse_int_list(const std::string& text, const std::string& flag) {
  std::vector<int64_t> out;
  for (const auto& part : split_commas(text)) {
    size_t used = 0;
    try {
      out.push_back(std::stoll(part, &used));
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != part.size()) {
      throw UsageError(flag + " expects comma-separated integers, got '" + text + "'");
    }
  }
  if (out.empty()) throw UsageError(flag + " expects comma-separated integers, got '" + text + "'");
  return out;
}

std::vector<double> parse_double_list(const std::string& text, const std::string& flag) {
  std::vector<double> out;
  for (const auto& part : split_commas(text)) {
    size_t used = 0;
    try {
      out.push_back(std::stod(part, &used));
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != part.size() || !std::isfinite(out.back())) {
      throw UsageError(flag + " expects comma-separated numbers, got '" + text + "'");
    }
  }
  if (out.empty()) throw UsageError(flag + " expects comma-separated numbers, got '" + text + "'");
  return out;
}

std::string format_duration(double seconds) {
  const int64_t s = static_cast<int64_t>(std::llround(std::max(0.0, seconds)));
  std::ostringstream out;
  if (s >= 3600) {
    out << s / 3600 << "h" << std::setw(2) << std::setfill('0') << (s % 3600) / 60 << "m";
  } else if (s >= 60) {
    out << s / 60 << "m" << std::setw(2) << std::setfill('0') << s % 60 << "s";
  } else {
    out << s << "s";
  }
  return out.str();
}

std::string json_quote(const std::string& text) {
  std::ostringstream out;
  out << '"';
  for (unsigned char c : text) {
    switch (c) {
      case '"': out << "\\\""; break;
      case '\\': out << "\\\\"; break;
      case '\n': out << "\\n"; break;
      case '\r': out << "\\r"; break;
      case '\t': out << "\\t"; break;
      default:
        if (c < 0x20) {
          out << "\\u" << std::hex << std::setw(4) << std::setfill('0') << int(c) << std::dec;
        } else {
          out << c;
        }
    }
  }
  out << '"';
  return out.str();
}

namespace {
std::string number(double v) {
  if (!std::isfinite(v)) return "null";
  std::ostringstream out;
  out << std::setprecision(10) << v;
  return out.str();
}
} // namespace

Json& Json::add(const std::string& key, const std::string& value) { return add_raw(key, json_quote(value)); }
Json& Json::add(const std::string& key, double value) { return add_raw(key, number(value)); }
Json& Json::add(const std::string& key, int64_t value) { return add_raw(key, std::to_string(value)); }
Json& Json::add(const std::string& key, bool value) { return add_raw(key, value ? "true" : "false"); }
Json& Json::add(const std::string& key, const std::vector<int64_t>& value) {
  std::string s = "[";
  for (size_t i = 0; i < value.size(); ++i) s += (i ? "," : "") + std::to_string(value[i]);
  return add_raw(key, s + "]");
}
Json& Json::add(const std::string& key, const std::vector<double>& value) {
  std::string s = "[";
  for (size_t i = 0; i < value.size(); ++i) s += (i ? "," : "") + number(value[i]);
  return add_raw(key, s + "]");
}
Json& Json::add_raw(const std::string& key, const std::string& json) {
  fields_.emplace_back(key, json);
  return *this;
}
std::string Json::str() const {
  std::string s = "{";
  for (size_t i = 0; i < fields_.size(); ++i) {
    s += (i ? ", " : "") + json_quote(fields_[i].first) + ": " + fields_[i].second;
  }
  return s + "}";
}

} // namespace zsq::cli
