#include "framework/h5.h"

#include <hdf5.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <sstream>

#include <c10/util/Exception.h>

namespace zsq::h5 {
namespace fs = std::filesystem;
namespace {

// HDF5 prints its whole error stack on every failure, expected ones included;
// we report errors ourselves.
void silence_hdf5() {
  static const bool once = [] {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    return true;
  }();
  (void)once;
}

// Closes any HDF5 identifier on scope exit.
class Id {
 public:
  Id() = default;
  explicit Id(hid_t id) : id_(id) {}
  Id(const Id&) = delete;
  Id& operator=(const Id&) = delete;
  Id(Id&& other) noexcept : id_(other.id_) { other.id_ = -1; }
  Id& operator=(Id&& other) noexcept {
    std::swap(id_, other.id_);
    return *this;
  }
  ~Id() { release(); }
  hid_t get() const { return id_; }
  bool ok() const { return id_ >= 0; }

 private:
  void release() {
    if (id_ >= 0) {
      switch (H5Iget_type(id_)) {
        case H5I_DATASET: H5Dclose(id_); break;
        case H5I_GROUP: H5Gclose(id_); break;
        case H5I_DATATYPE: H5Tclose(id_); break;
        case H5I_DATASPACE: H5Sclose(id_); break;
        case H5I_ATTR: H5Aclose(id_); break;
        case H5I_GENPROP_LST: H5Pclose(id_); break;
        default: break;
      }
    }
  }
  hid_t id_ = -1;
};

hid_t native_type(torch::ScalarType type) {
  switch (type) {
    case torch::kUInt8: return H5T_NATIVE_UINT8;
    case torch::kInt8: return H5T_NATIVE_INT8;
    case torch::kInt16: return H5T_NATIVE_INT16;
    case torch::kInt32: return H5T_NATIVE_INT32;
    case torch::kInt64: return H5T_NATIVE_INT64;
    case torch::kFloat32: return H5T_NATIVE_FLOAT;
    case torch::kFloat64: return H5T_NATIVE_DOUBLE;
    default:
      TORCH_CHECK(false, "HDF5: cannot store tensors of type ", type,
                  "; supported: uint8, int8, int16, int32, int64, float32, float64, bool");
  }
}

torch::ScalarType torch_type_of(hid_t type, const std::string& where) {
  const H5T_class_t cls = H5Tget_class(type);
  const size_t size = H5Tget_size(type);
  if (cls == H5T_FLOAT) {
    if (size == 4) return torch::kFloat32;
    if (size == 8) return torch::kFloat64;
  } else if (cls == H5T_INTEGER) {
    const bool is_signed = H5Tget_sign(type) == H5T_SGN_2;
    if (size == 1) return is_signed ? torch::kInt8 : torch::kUInt8;
    if (size == 2 && is_signed) return torch::kInt16;
    if (size == 4 && is_signed) return torch::kInt32;
    if (size == 8 && is_signed) return torch::kInt64;
    if (size == 4 && !is_signed) return torch::kInt64;  // uint32 widened
  } else if (cls == H5T_ENUM && size == 1) {
    return torch::kUInt8;  // h5py's bool
  }
  TORCH_CHECK(false, where, ": unsupported HDF5 element type (class ", static_cast<int>(cls), ", ",
              size, " bytes); use float32/float64 or a signed integer type");
}

std::string split_parent(const std::string& name, std::string* leaf) {
  const auto pos = name.rfind('/');
  if (pos == std::string::npos) {
    *leaf = name;
    return "";
  }
  *leaf = name.substr(pos + 1);
  return name.substr(0, pos);
}

#if H5_VERSION_GE(1, 12, 0)
using ObjectInfo = H5O_info2_t;
#define ZSQ_H5_VISIT H5Ovisit3
#else
using ObjectInfo = H5O_info_t;
#define ZSQ_H5_VISIT H5Ovisit2
#endif

herr_t collect_datasets(hid_t, const char* name, const ObjectInfo* info, void* data) {
  if (info->type == H5O_TYPE_DATASET) {
    static_cast<std::vector<std::string>*>(data)->emplace_back(name);
  }
  return 0;
}

herr_t collect_attr_names(hid_t, const char* name, const H5A_info_t*, void* data) {
  static_cast<std::vector<std::string>*>(data)->emplace_back(name);
  return 0;
}

std::string errno_text() { return std::strerror(errno); }

} // namespace

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
  const hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get());
  TORCH_CHECK(id >= 0, "cannot open '", path,
              "' as HDF5: the file is truncated or damaged (was a write interrupted?)");
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
    if (id_ >= 0) H5Fclose(id_);
    id_ = other.id_;
    path_ = std::move(other.path_);
    other.id_ = -1;
  }
  return *this;
}

File::~File() {
  if (id_ >= 0) H5Fclose(id_);
}

void File::close() {
  if (id_ >= 0) {
    H5Fflush(id_, H5F_SCOPE_GLOBAL);
    const herr_t status = H5Fclose(id_);
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

namespace {
// Opens the object that carries attributes: the root group or a dataset.
Id open_object(hid_t file, const std::string& object, const std::string& path) {
  Id obj(H5Oopen(file, object.empty() ? "/" : object.c_str(), H5P_DEFAULT));
  TORCH_CHECK(obj.ok(), "'", path, "' has no object '", object, "'");
  return obj;
}

void write_attr(hid_t file, const std::string& path, const std::string& object, const std::string& key,
                hid_t type, hid_t space, const void* data) {
  Id obj(H5Oopen(file, object.empty() ? "/" : object.c_str(), H5P_DEFAULT));
  TORCH_CHECK(obj.ok(), "'", path, "' has no object '", object, "'");
  if (H5Aexists(obj.get(), key.c_str()) > 0) H5Adelete(obj.get(), key.c_str());
  Id attr(H5Acreate2(obj.get(), key.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT));
  TORCH_CHECK(attr.ok() && H5Awrite(attr.get(), type, data) >= 0, "cannot write attribute '", key, "' to '",
              path, "'");
}

Id open_attr(hid_t file, const std::string& path, const std::string& object, const std::string& key) {
  Id obj = open_object(file, object, path);
  if (H5Aexists(obj.get(), key.c_str()) <= 0) return Id();
  return Id(H5Aopen(obj.get(), key.c_str(), H5P_DEFAULT));
}

int64_t attr_numel(hid_t attr) {
  Id space(H5Aget_space(attr));
  const hssize_t n = H5Sget_simple_extent_npoints(space.get());
  return static_cast<int64_t>(n);
}
} // namespace

void File::set_attr(const std::string& key, const std::string& value, const std::string& object) {
  Id type(H5Tcopy(H5T_C_S1));
  H5Tset_size(type.get(), H5T_VARIABLE);
  H5Tset_cset(type.get(), H5T_CSET_UTF8);
  Id space(H5Screate(H5S_SCALAR));
  const char* text = value.c_str();
  write_attr(id_, path_, object, key, type.get(), space.get(), &text);
}

void File::set_attr(const std::string& key, int64_t value, const std::string& object) {
  Id space(H5Screate(H5S_SCALAR));
  write_attr(id_, path_, object, key, H5T_NATIVE_INT64, space.get(), &value);
}

void File::set_attr(const std::string& key, double value, const std::string& object) {
  Id space(H5Screate(H5S_SCALAR));
  write_attr(id_, path_, object, key, H5T_NATIVE_DOUBLE, space.get(), &value);
}

void File::set_attr(const std::string& key, const std::vector<int64_t>& value, const std::string& object) {
  hsize_t n = value.size();
  Id space(H5Screate_simple(1, &n, nullptr));
  write_attr(id_, path_, object, key, H5T_NATIVE_INT64, space.get(), value.data());
}

void File::set_attr(const std::string& key, const std::vector<double>& value, const std::string& object) {
  hsize_t n = value.size();
  Id space(H5Screate_simple(1, &n, nullptr));
  write_attr(id_, path_, object, key, H5T_NATIVE_DOUBLE, space.get(), value.data());
}

bool File::has_attr(const std::string& key, const std::string& object) const {
  Id obj = open_object(id_, object, path_);
  return H5Aexists(obj.get(), key.c_str()) > 0;
}

std::vector<std::string> File::attr_names(const std::string& object) const {
  Id obj = open_object(id_, object, path_);
  std::vector<std::string> names;
  hsize_t index = 0;
  H5Aiterate2(obj.get(), H5_INDEX_NAME, H5_ITER_INC, &index, collect_attr_names, &names);
  return names;
}

std::optional<std::string> File::attr_string(const std::string& key, const std::string& object) const {
  Id attr = open_attr(id_, path_, object, key);
  if (!attr.ok()) return std::nullopt;
  Id type(H5Aget_type(attr.get()));
  TORCH_CHECK(H5Tget_class(type.get()) == H5T_STRING, "'", path_, "': attribute '", key,
              "' should be a string");
  if (H5Tis_variable_str(type.get()) > 0) {
    Id mem(H5Tcopy(H5T_C_S1));
    H5Tset_size(mem.get(), H5T_VARIABLE);
    H5Tset_cset(mem.get(), H5Tget_cset(type.get()));
    char* text = nullptr;
    TORCH_CHECK(H5Aread(attr.get(), mem.get(), &text) >= 0, "cannot read attribute '", key, "' of '",
                path_, "'");
    std::string value = text ? text : "";
    H5free_memory(text);
    return value;
  }
  const size_t size = H5Tget_size(type.get());
  std::string value(size, '\0');
  TORCH_CHECK(H5Aread(attr.get(), type.get(), value.data()) >= 0, "cannot read attribute '", key, "' of '",
              path_, "'");
  value.resize(std::strlen(value.c_str()));
  return value;
}

std::optional<std::vector<int64_t>> File::attr_ints(const std::string& key, const std::string& object) const {
  Id attr = open_attr(id_, path_, object, key);
  if (!attr.ok()) return std::nullopt;
  Id type(H5Aget_type(attr.get()));
  TORCH_CHECK(H5Tget_class(type.get()) == H5T_INTEGER, "'", path_, "': attribute '", key,
              "' should hold integers");
  std::vector<int64_t> values(attr_numel(attr.get()));
  TORCH_CHECK(H5Aread(attr.get(), H5T_NATIVE_INT64, values.data()) >= 0, "cannot read attribute '", key,
              "' of '", path_, "'");
  return values;
}

std::optional<int64_t> File::attr_int(const std::string& key, const std::string& object) const {
  auto values = attr_ints(key, object);
  if (!values) return std::nullopt;
  TORCH_CHECK(values->size() == 1, "'", path_, "': attribute '", key, "' should be one integer, has ",
              values->size());
  return (*values)[0];
}

std::optional<std::vector<double>> File::attr_doubles(const std::string& key, const std::string& object) const {
  Id attr = open_attr(id_, path_, object, key);
  if (!attr.ok()) return std::nullopt;
  Id type(H5Aget_type(attr.get()));
  const H5T_class_t cls = H5Tget_class(type.get());
  TORCH_CHECK(cls == H5T_FLOAT || cls == H5T_INTEGER, "'", path_, "': attribute '", key,
              "' should hold numbers");
  std::vector<double> values(attr_numel(attr.get()));
  TORCH_CHECK(H5Aread(attr.get(), H5T_NATIVE_DOUBLE, values.data()) >= 0, "cannot read attribute '", key,
              "' of '", path_, "'");
  return values;
}

std::string File::attr_as_text(const std::string& key, const std::string& object) const {
  Id attr = open_attr(id_, path_, object, key);
  if (!attr.ok()) return "";
  Id type(H5Aget_type(attr.get()));
  const H5T_class_t cls = H5Tget_class(type.get());
  std::ostringstream out;
  if (cls == H5T_STRING) return attr_string(key, object).value();
  std::vector<double> values;
  if (cls == H5T_INTEGER) {
    const std::vector<int64_t> ints = attr_ints(key, object).value();
    for (int64_t v : ints) values.push_back(static_cast<double>(v));
  } else if (cls == H5T_FLOAT) {
    values = attr_doubles(key, object).value();
  } else {
    return "<unsupported attribute type>";
  }
  Id space(H5Aget_space(attr.get()));
  const bool scalar = H5Sget_simple_extent_type(space.get()) == H5S_SCALAR;
  if (!scalar) out << "[";
  for (size_t i = 0; i < values.size(); ++i) out << (i ? ", " : "") << values[i];
  if (!scalar) out << "]";
  return out.str();
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
  check_writable(path);
  const fs::path target(path);
  const fs::path folder = folder_of(target);
  const std::string tmp = (folder / (temporary_prefix(target) + std::to_string(::getpid()))).string();
  try {
    File file = File::create(tmp);
    fill(file);
    file.close();
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
