// A small RAII layer over the HDF5 C API: tensors as datasets named by module
// path, metadata as root (or dataset) attributes, strings as variable-length
// UTF-8 so that plain h5py reads them as str. Every error is a c10::Error whose
// message names the file and the object; HDF5's own error stack printing is
// switched off. Writes that replace a file go through atomic_write().
#pragma once

#include <torch/types.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace zsq::h5 {

/// An open HDF5 file. Move-only; closes (strongly) when destroyed.
class File {
 public:
  /// Opens an existing file read-only. Throws a clear message when the file is
  /// missing, unreadable, not HDF5, or truncated.
  static File open_read(const std::string& path);
  /// Creates (truncates) a file for writing.
  static File create(const std::string& path);

  File(File&& other) noexcept;
  File& operator=(File&& other) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  ~File();

  const std::string& path() const { return path_; }

  /// True when a dataset (or group) of that name exists under the root.
  bool has(const std::string& name) const;
  /// Names of all datasets, recursively, as paths without the leading '/'
  /// ("layer1.0.conv1.weight", "model/fc.bias"), sorted.
  std::vector<std::string> dataset_names() const;
  /// Shape of a dataset ({} for a scalar).
  std::vector<int64_t> shape(const std::string& name) const;
  /// Torch dtype that read_tensor() returns for that dataset.
  torch::ScalarType dtype(const std::string& name) const;

  /// Writes a CPU copy of `tensor` (any of uint8, int8, int16, int32, int64,
  /// float32, float64, bool stored as uint8). Intermediate groups are created
  /// when `name` contains '/'.
  void write_tensor(const std::string& name, const torch::Tensor& tensor);
  /// Reads a dataset into a contiguous CPU tensor of its stored type.
  torch::Tensor read_tensor(const std::string& name) const;
  /// Reads rows [start, start+count) of the first dimension.
  torch::Tensor read_rows(const std::string& name, int64_t start, int64_t count) const;

  /// Attributes of the root group (object = "") or of a dataset.
  void set_attr(const std::string& key, const std::string& value, const std::string& object = "");
  void set_attr(const std::string& key, int64_t value, const std::string& object = "");
  void set_attr(const std::string& key, double value, const std::string& object = "");
  void set_attr(const std::string& key, const std::vector<int64_t>& value, const std::string& object = "");
  void set_attr(const std::string& key, const std::vector<double>& value, const std::string& object = "");
  bool has_attr(const std::string& key, const std::string& object = "") const;
  std::vector<std::string> attr_names(const std::string& object = "") const;
  std::optional<std::string> attr_string(const std::string& key, const std::string& object = "") const;
  std::optional<int64_t> attr_int(const std::string& key, const std::string& object = "") const;
  std::optional<std::vector<int64_t>> attr_ints(const std::string& key, const std::string& object = "") const;
  std::optional<std::vector<double>> attr_doubles(const std::string& key, const std::string& object = "") const;
  /// Any attribute rendered as text (for `zsq inspect`).
  std::string attr_as_text(const std::string& key, const std::string& object = "") const;

  /// Flushes and closes; further use throws.
  void close();

 private:
  File(long long id, std::string path);
  long long id_ = -1;
  std::string path_;
};

/// Writes `path` atomically: `fill` writes into a temporary file in the same
/// folder, which is closed, fsync'ed and renamed over `path`; the folder is
/// fsync'ed too. If `fill` throws, the temporary file is removed and an
/// existing `path` is left untouched.
void atomic_write(const std::string& path, const std::function<void(File&)>& fill);
/// The same for any file: `write` writes the temporary file whose path it is given.
void atomic_replace(const std::string& path, const std::function<void(const std::string& tmp)>& write);

/// Removes the temporary files that atomic_write(path, ...) calls of killed
/// processes left beside `path` (any process's); returns how many. Call it
/// only while no other process writes `path`.
int remove_stale_temporaries(const std::string& path);

/// Makes sure `path` can be created: its folder exists and is writable.
/// Throws a clear message otherwise (checked before long jobs start).
void check_writable(const std::string& path);

} // namespace zsq::h5
