#include "framework/h5.h"
#include "framework/h5_detail.h"

#include <hdf5.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <set>
#include <sstream>

#include <c10/util/Exception.h>

namespace zsq::h5 {
namespace fs = std::filesystem;
using namespace detail;

namespace {

// Debian 12's libhdf5 1.10.8 can fault on a damaged or hostile file (launch/fuzz finds such files in
// seconds; the fuzz targets keep the faults, see tests/fuzz/). While a file opened for reading is open, a
// fault is reported as that file's damage, one line and exit 1, instead of a bare "Segmentation fault".
// Any other fault goes to the handler that was there before (the default: a core dump).
std::atomic<int> open_reads{0};
char reading_path[1024];  // the file last opened for reading or whose metadata is being read
struct sigaction previous_segv, previous_bus;
std::mutex reads_mutex;
std::set<long long> read_ids;

void write_all(const char* text) {
  for (size_t n = std::strlen(text); n > 0;) {
    const ssize_t written = ::write(STDERR_FILENO, text, n);
    if (written <= 0) return;
    text += written;
    n -= static_cast<size_t>(written);
  }
}

[[maybe_unused]] void on_fault(int sig) {
  if (open_reads.load() > 0) {
    write_all("zsq: error: reading '");
    write_all(reading_path);
    write_all("' crashed inside libhdf5: the file is damaged (or not what it claims to be)\n");
    ::_exit(1);
  }
  sigaction(sig, sig == SIGBUS ? &previous_bus : &previous_segv, nullptr);  // the fault recurs there
}

[[maybe_unused]] void install(int sig, void (*handler)(int), struct sigaction* previous) {
  struct sigaction action {};
  action.sa_handler = handler;
  sigemptyset(&action.sa_mask);
  sigaction(sig, &action, previous);
}

void begin_read(long long id, const std::string& path) {
#ifndef ZSQ_NO_FAULT_GUARD
  static const bool installed = (install(SIGSEGV, on_fault, &previous_segv), install(SIGBUS, on_fault, &previous_bus), true);
  (void)installed;
#endif
  std::lock_guard<std::mutex> lock(reads_mutex);
  std::strncpy(reading_path, path.c_str(), sizeof(reading_path) - 1);
  read_ids.insert(id);
  ++open_reads;
}

// Closes (id >= 0) and then ends the read: closing a damaged file can fault too.
herr_t close_file(long long id) {
  const herr_t status = id >= 0 ? H5Fclose(id) : 0;
  std::lock_guard<std::mutex> lock(reads_mutex);
  if (read_ids.erase(id) > 0) --open_reads;
  return status;
}

[[maybe_unused]] void on_deadline(int) {
  write_all("zsq: error: reading '");
  write_all(reading_path);
  write_all("' did not finish in 60 s inside libhdf5: the file is damaged (or not what it claims to be)\n");
  ::_exit(1);
}

} // namespace

MetadataDeadline::MetadataDeadline(const std::string& path) {
#ifndef ZSQ_NO_FAULT_GUARD
  static const bool installed = (install(SIGALRM, on_deadline, nullptr), true);
  (void)installed;
  {
    std::lock_guard<std::mutex> lock(reads_mutex);
    std::strncpy(reading_path, path.c_str(), sizeof(reading_path) - 1);
  }
  ::alarm(60);
#else
  (void)path;
#endif
}

MetadataDeadline::~MetadataDeadline() {
#ifndef ZSQ_NO_FAULT_GUARD
  ::alarm(0);
#endif
}

File::File(long long id, std::string path) : id_(id), path_(std::move(path)) {}

File File::open_read(const std::string& path) {
  silence_hdf5();
  std::error_code ec;
  TORCH_CHECK(fs::exists(path, ec), "file not found: '", path, "'");
  TORCH_CHECK(fs::is_regular_file(path, ec), "'", path, "' is not a regular file");
  TORCH_CHECK(::access(path.c_str(), R_OK) == 0, "cannot read '", path, "': ", errno_text());
#if H5_VERSION_GE(1, 12, 0)
  const htri_t is_hdf5 = H5Fis_accessible(path.c_str(), H5P_DEFAULT);
#else
  const htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
#endif
  TORCH_CHECK(is_hdf5 > 0, "'", path,
              "' is not an HDF5 file (wrong signature)");
  Id fapl(H5Pcreate(H5P_FILE_ACCESS));
  H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG);
  begin_read(-1, path);  // H5Fopen itself reads the superblock and the root group
  hid_t id = -1;
  {
    const MetadataDeadline deadline(path);
    id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get());
  }
  close_file(-1);
  TORCH_CHECK(id >= 0, "cannot open '", path,
              "' as HDF5: the file is truncated or damaged (was a write interrupted?)");
  begin_read(id, path);
  return File(id, path);
}

File File::create(const std::string& path) {
  silence_hdf5();
  Id fapl(H5Pcreate(H5P_FILE_ACCESS));
  H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG);
  const hid_t id = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get());
  TORCH_CHECK(id >= 0, "cannot create HDF5 file '", path, "' (is the folder writable?)");
  return File(id, path);
}

File::File(File&& other) noexcept : id_(other.id_), path_(std::move(other.path_)) { other.id_ = -1; }

File& File::operator=(File&& other) noexcept {
  if (this != &other) {
    if (id_ >= 0) close_file(id_);
    id_ = other.id_;
    path_ = std::move(other.path_);
    other.id_ = -1;
  }
  return *this;
}

File::~File() {
  if (id_ >= 0) close_file(id_);
}

void File::close() {
  if (id_ >= 0) {
    H5Fflush(id_, H5F_SCOPE_GLOBAL);
    const herr_t status = close_file(id_);
    id_ = -1;
    TORCH_CHECK(status >= 0, "closing '", path_, "' failed (disk full?)");
  }
}

bool File::has(const std::string& name) const {
  TORCH_CHECK(id_ >= 0, "HDF5 file '", path_, "' is closed");
  if (name.empty()) return false;
  // Check every prefix: H5Lexists fails on a path whose parent is missing.
  size_t pos = 0;
  while (true) {
    pos = name.find('/', pos + 1);
    const std::string prefix = name.substr(0, pos);
    if (H5Lexists(id_, prefix.c_str(), H5P_DEFAULT) <= 0) return false;
    if (pos == std::string::npos) return true;
  }
}

std::vector<std::string> File::dataset_names() const {
  TORCH_CHECK(id_ >= 0, "HDF5 file '", path_, "' is closed");
  std::vector<std::string> names;
  TORCH_CHECK(ZSQ_H5_VISIT(id_, H5_INDEX_NAME, H5_ITER_NATIVE, collect_datasets, &names, H5O_INFO_BASIC) >= 0,
              "cannot list the datasets of '", path_, "': the file is damaged");
  std::sort(names.begin(), names.end());
  return names;
}

namespace {
void check_declared_size(hid_t dset, hid_t space, const std::string& path_, const std::string& name,
                         torch::ScalarType type) {
  // A damaged or hostile file can declare any shape; its stored bytes bound what it can hold. Deflate, the
  // only filter ZSQ's and h5py's files use, packs at most about 1032:1, so a data set that claims more than
  // 1100 times its storage (plus 1 MiB of slack for fill values) is refused before memory is reserved.
  const int rank = H5Sget_simple_extent_ndims(space);
  std::vector<hsize_t> dims(std::max(rank, 0));
  if (rank > 0) H5Sget_simple_extent_dims(space, dims.data(), nullptr);
  long double declared = static_cast<long double>(c10::elementSize(type));
  for (const hsize_t d : dims) declared *= static_cast<long double>(d);
  const long double stored = static_cast<long double>(H5Dget_storage_size(dset));
  TORCH_CHECK(declared <= 1100.0L * stored + (1 << 20), "'", path_, "': dataset '", name, "' declares ",
              static_cast<double>(declared), " bytes but stores ", static_cast<double>(stored),
              ": the file is truncated or damaged");
}

} // namespace

std::vector<int64_t> File::shape(const std::string& name) const {
  TORCH_CHECK(has(name), "'", path_, "' has no dataset '", name, "'");
  Id dset(H5Dopen2(id_, name.c_str(), H5P_DEFAULT));
  TORCH_CHECK(dset.ok(), "'", path_, "': '", name, "' is not a readable dataset");
  Id space(H5Dget_space(dset.get()));
  const int rank = H5Sget_simple_extent_ndims(space.get());
  TORCH_CHECK(rank >= 0, "'", path_, "': dataset '", name, "' has no simple shape");
  std::vector<hsize_t> dims(rank);
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  return std::vector<int64_t>(dims.begin(), dims.end());
}

torch::ScalarType File::dtype(const std::string& name) const {
  TORCH_CHECK(has(name), "'", path_, "' has no dataset '", name, "'");
  Id dset(H5Dopen2(id_, name.c_str(), H5P_DEFAULT));
  TORCH_CHECK(dset.ok(), "'", path_, "': '", name, "' is not a readable dataset");
  Id type(H5Dget_type(dset.get()));
  return torch_type_of(type.get(), path_ + ":" + name);
}

void File::write_tensor(const std::string& name, const torch::Tensor& tensor) {
  TORCH_CHECK(id_ >= 0, "HDF5 file '", path_, "' is closed");
  torch::Tensor data = tensor.detach().to(torch::kCPU);
  if (data.scalar_type() == torch::kBool) data = data.to(torch::kUInt8);
  data = data.contiguous();
  const hid_t mem_type = native_type(data.scalar_type());
  std::string leaf;
  const std::string parent = split_parent(name, &leaf);
  Id lcpl(H5Pcreate(H5P_LINK_CREATE));
  H5Pset_create_intermediate_group(lcpl.get(), 1);
  std::vector<hsize_t> dims(data.sizes().begin(), data.sizes().end());
  Id space(data.dim() == 0 ? H5Screate(H5S_SCALAR)
                           : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr));
  Id dset(H5Dcreate2(id_, name.c_str(), mem_type, space.get(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT));
  TORCH_CHECK(dset.ok(), "cannot create dataset '", name, "' in '", path_, "' (does it already exist?)");
  if (data.numel() > 0) {
    TORCH_CHECK(H5Dwrite(dset.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data_ptr()) >= 0,
                "writing dataset '", name, "' to '", path_, "' failed (disk full?)");
  }
  (void)parent;
}

torch::Tensor File::read_tensor(const std::string& name) const {
  const std::vector<int64_t> dims = shape(name);
  const int64_t rows = dims.empty() ? 1 : dims[0];
  torch::Tensor out = read_rows(name, 0, rows);
  return dims.empty() ? out.reshape({}) : out;
}

torch::Tensor File::read_rows(const std::string& name, int64_t start, int64_t count) const {
  const std::vector<int64_t> dims = shape(name);
  const torch::ScalarType type = dtype(name);
  Id dset(H5Dopen2(id_, name.c_str(), H5P_DEFAULT));
  Id file_space(H5Dget_space(dset.get()));
  std::vector<int64_t> out_dims = dims;
  if (dims.empty()) {
    TORCH_CHECK(start == 0 && count == 1, "'", name, "' is a scalar");
    out_dims = {1};
  } else {
    TORCH_CHECK(start >= 0 && count >= 0 && start + count <= dims[0], "'", path_, "': rows [", start, ", ",
                start + count, ") are outside dataset '", name, "' of ", dims[0], " rows");
    out_dims[0] = count;
  }
  check_declared_size(dset.get(), file_space.get(), path_, name, type);
  torch::Tensor out = torch::empty(out_dims, torch::TensorOptions().dtype(type));
  if (out.numel() == 0) return out;
  Id mem_space;
  if (!dims.empty()) {
    std::vector<hsize_t> offset(dims.size(), 0), extent(dims.begin(), dims.end());
    offset[0] = static_cast<hsize_t>(start);
    extent[0] = static_cast<hsize_t>(count);
    H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, offset.data(), nullptr, extent.data(), nullptr);
    mem_space = Id(H5Screate_simple(static_cast<int>(extent.size()), extent.data(), nullptr));
  } else {
    mem_space = Id(H5Screate(H5S_SCALAR));
  }
  const herr_t status =
      H5Dread(dset.get(), native_type(type), mem_space.get(), file_space.get(), H5P_DEFAULT, out.data_ptr());
  TORCH_CHECK(status >= 0, "reading dataset '", name, "' from '", path_,
              "' failed: the file is truncated or damaged");
  return out;
}

void check_writable(const std::string& path) {
  TORCH_CHECK(!path.empty(), "output path is empty");
  const fs::path target(path);
  TORCH_CHECK(!fs::is_directory(target), "output '", path, "' is a folder; give a file name");
  fs::path folder = target.parent_path();
  if (folder.empty()) folder = ".";
  TORCH_CHECK(fs::is_directory(folder), "output folder '", folder.string(), "' does not exist");
  TORCH_CHECK(::access(folder.c_str(), W_OK) == 0, "output folder '", folder.string(),
              "' is not writable");
}

namespace {

// ".NAME.tmp." + pid beside the target: where atomic_write writes before the rename.
std::string temporary_prefix(const fs::path& target) { return "." + target.filename().string() + ".tmp."; }

fs::path folder_of(const fs::path& target) {
  const fs::path folder = target.parent_path();
  return folder.empty() ? fs::path(".") : folder;
}

} // namespace

int remove_stale_temporaries(const std::string& path) {
  const fs::path target(path), folder = folder_of(target);
  if (!fs::is_directory(folder)) return 0;
  const std::string prefix = temporary_prefix(target);
  int removed = 0;
  for (const auto& entry : fs::directory_iterator(folder)) {
    if (entry.path().filename().string().rfind(prefix, 0) != 0) continue;
    std::error_code ec;
    removed += fs::remove(entry.path(), ec) ? 1 : 0;
  }
  return removed;
}

void atomic_write(const std::string& path, const std::function<void(File&)>& fill) {
  atomic_replace(path, [&](const std::string& tmp) {
    File file = File::create(tmp);
    fill(file);
    file.close();
  });
}

void atomic_replace(const std::string& path, const std::function<void(const std::string& tmp)>& write) {
  check_writable(path);
  const fs::path target(path);
  const fs::path folder = folder_of(target);
  const std::string tmp = (folder / (temporary_prefix(target) + std::to_string(::getpid()))).string();
  try {
    write(tmp);
    const int fd = ::open(tmp.c_str(), O_RDONLY);
    TORCH_CHECK(fd >= 0, "cannot reopen '", tmp, "' to sync it: ", errno_text());
    const int synced = ::fsync(fd);
    ::close(fd);
    TORCH_CHECK(synced == 0, "fsync of '", tmp, "' failed: ", errno_text());
    TORCH_CHECK(::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename '", tmp, "' to '", path,
                "': ", errno_text());
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
  const int dir_fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
}

} // namespace zsq::h5
