// The run folder of zsq quantize: checkpoint.h5, metrics.jsonl and result.json, checked,
// created, resumed and cleaned up in one place.
//
//   RunFolder run("runs/w4", /*resume=*/false);    // throws OptionError when it holds a run already
//   if (rank == 0) run.open(0);                     // creates it, opens metrics.jsonl
//   options.checkpoint = run.checkpoint();
//   ... run.log(json_line, checkpointed) per step ...
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

namespace zsq::trainers {

class RunFolder {
 public:
  /// A new run needs `folder`'s parent to exist and no checkpoint in it; with
  /// `resume` the checkpoint must exist. Throws zsq::OptionError naming --out /
  /// --resume otherwise.
  RunFolder(std::filesystem::path folder, bool resume);

  const std::filesystem::path& folder() const { return folder_; }
  std::string checkpoint() const { return (folder_ / "checkpoint.h5").string(); }
  std::string metrics() const { return (folder_ / "metrics.jsonl").string(); }
  std::string result() const { return (folder_ / "result.json").string(); }

  /// On the writing rank: creates the folder, removes what a killed checkpoint
  /// write left behind, and opens metrics.jsonl (truncated to new, or, resuming
  /// from `resume_step`, cut to the lines of steps <= resume_step and appended to).
  void open(int64_t resume_step);
  /// Appends one line to metrics.jsonl (no-op unless open); `flush` after a
  /// checkpoint, so the log never lags the checkpoint on disk.
  void log(const std::string& line, bool flush);
  void flush();
  void close();
  /// Writes result.json (the run's final JSON object: accuracies, timings), atomically.
  void write_result(const std::string& json) const;

 private:
  std::filesystem::path folder_;
  bool resume_;
  std::ofstream metrics_;
};

/// Keeps the lines of a metrics file whose "step" is <= `step` (a killed run
/// may have logged past its last checkpoint). A missing file is left missing.
void truncate_metrics(const std::string& path, int64_t step);

} // namespace zsq::trainers
