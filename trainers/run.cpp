#include "trainers/run.h"

#include "framework/errors.h"
#include "framework/h5.h"


namespace zsq::trainers {
namespace fs = std::filesystem;

RunFolder::RunFolder(fs::path folder, bool resume) : folder_(std::move(folder)), resume_(resume) {
  ZSQ_CHECK_OPTION(!folder_.empty(), "--out must name a folder");
  const fs::path parent = folder_.has_parent_path() ? folder_.parent_path() : fs::path(".");
  ZSQ_CHECK_OPTION(fs::is_directory(parent), "output folder '", parent.string(), "' does not exist");
  ZSQ_CHECK_OPTION(!fs::exists(folder_) || fs::is_directory(folder_), "--out: '", folder_.string(),
                   "' exists and is not a folder");
  if (resume_) {
    ZSQ_CHECK_OPTION(fs::exists(checkpoint()), "--resume: there is no '", checkpoint(),
                     "' to continue; start the run without --resume");
  } else {
    ZSQ_CHECK_OPTION(!fs::exists(checkpoint()), "'", checkpoint(),
                     "' exists; add --resume to continue that run, or choose another --out");
  }
}

void RunFolder::open(int64_t resume_step) {
  fs::create_directories(folder_);
  h5::remove_stale_temporaries(checkpoint());  // of a write that a killed run left behind
  if (resume_) truncate_metrics(metrics(), resume_step);
  metrics_.open(metrics(), resume_ ? std::ios::app : std::ios::trunc);
  TORCH_CHECK(metrics_.is_open(), "cannot write '", metrics(), "'");  // a file error (exit 1), not an option one
}

void RunFolder::log(const std::string& line, bool flush) {
  if (!metrics_.is_open()) return;
  metrics_ << line << "\n";
  if (flush) metrics_.flush();
}

void RunFolder::flush() {
  if (metrics_.is_open()) metrics_.flush();
}

void RunFolder::close() {
  if (metrics_.is_open()) metrics_.close();
}

void RunFolder::write_result(const std::string& json) const {
  h5::atomic_replace(result(), [&](const std::string& tmp) {
    std::ofstream out(tmp);
    out << json << "\n";
    out.close();
    TORCH_CHECK(out.good(), "cannot write '", tmp, "'");
  });
}

void truncate_metrics(const std::string& path, int64_t step) {
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::string line, kept;
  while (std::getline(in, line)) {
    const size_t at = line.find("\"step\":");
    if (at == std::string::npos) continue;
    if (std::stoll(line.substr(at + 7)) <= step) kept += line + "\n";
  }
  in.close();
  std::ofstream(path, std::ios::trunc) << kept;
}

} // namespace zsq::trainers
