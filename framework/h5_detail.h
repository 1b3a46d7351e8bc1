// Internal to framework/h5*.cpp: HDF5 identifiers that close themselves and
// the type mappings and visitors the dataset and attribute code share.
#pragma once

#include <hdf5.h>

#include <c10/util/Exception.h>
#include <torch/types.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

namespace zsq::h5::detail {

// HDF5 prints its whole error stack on every failure, expected ones included;
// we report errors ourselves.
inline void silence_hdf5() {
  static const bool once = [] {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    return true;
  }();
  (void)once;
}

// libhdf5 1.10.8 can loop for ever on a damaged file's metadata (launch/fuzz found a global heap that
// does). Reading metadata (opening a file, an attribute) takes milliseconds; while one of these lives,
// a read that has not finished after 60 s ends the process with one line naming the file, exit 1.
class MetadataDeadline {
 public:
  explicit MetadataDeadline(const std::string& path);
  ~MetadataDeadline();
  MetadataDeadline(const MetadataDeadline&) = delete;
  MetadataDeadline& operator=(const MetadataDeadline&) = delete;
};

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

inline hid_t native_type(torch::ScalarType type) {
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

inline torch::ScalarType torch_type_of(hid_t type, const std::string& where) {
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

inline std::string split_parent(const std::string& name, std::string* leaf) {
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

inline herr_t collect_datasets(hid_t, const char* name, const ObjectInfo* info, void* data) {
  if (info->type == H5O_TYPE_DATASET) {
    static_cast<std::vector<std::string>*>(data)->emplace_back(name);
  }
  return 0;
}

inline herr_t collect_attr_names(hid_t, const char* name, const H5A_info_t*, void* data) {
  static_cast<std::vector<std::string>*>(data)->emplace_back(name);
  return 0;
}

inline std::string errno_text() { return std::strerror(errno); }

} // namespace zsq::h5::detail
