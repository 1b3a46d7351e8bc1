// Attributes of HDF5 files and their objects (framework/h5.h).
#include "framework/h5.h"
#include "framework/h5_detail.h"

#include <sstream>

namespace zsq::h5 {
using namespace detail;

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
  const MetadataDeadline deadline(path_);
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
  const MetadataDeadline deadline(path_);
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
  const MetadataDeadline deadline(path_);
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

} // namespace zsq::h5
