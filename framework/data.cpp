#include "framework/data.h"

#include "framework/h5.h"

#include <zlib.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <random>

#include <c10/util/Exception.h>
#include <torch/torch.h>

namespace zsq {
namespace fs = std::filesystem;
namespace {

// Reads a whole file through zlib, which passes plain files through unchanged.
std::vector<uint8_t> read_maybe_gzip(const std::string& path) {
  TORCH_CHECK(fs::exists(path), "file not found: '", path, "'");
  gzFile file = gzopen(path.c_str(), "rb");
  TORCH_CHECK(file != nullptr, "cannot open '", path, "'");
  std::vector<uint8_t> bytes;
  std::array<uint8_t, 1 << 16> chunk{};
  while (true) {
    const int n = gzread(file, chunk.data(), static_cast<unsigned>(chunk.size()));
    if (n < 0) {
      int code = 0;
      const std::string message = gzerror(file, &code);
      gzclose(file);
      TORCH_CHECK(false, "'", path, "' is damaged or truncated (", message, ")");
    }
    if (n == 0) break;
    bytes.insert(bytes.end(), chunk.begin(), chunk.begin() + n);
  }
  const int status = gzclose(file);
  TORCH_CHECK(status == Z_OK, "'", path, "' is a truncated gzip file");
  return bytes;
}

uint32_t big_endian_u32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

std::string find_file(const std::string& dir, const std::string& stem) {
  for (const std::string& candidate : {stem + ".gz", stem}) {
    const fs::path path = fs::path(dir) / candidate;
    if (fs::exists(path)) return path.string();
  }
  TORCH_CHECK(false, "Fashion-MNIST file '", stem, "(.gz)' not found in '", dir,
              "'; install Debian's dataset-fashion-mnist (./launch/setup does) or pass --data-dir");
}

uint64_t mix_seed(uint64_t a, uint64_t b) {
  // splitmix64 of a combined with b: distinct streams for (seed, epoch, ...).
  uint64_t z = a + 0x9e3779b97f4a7c15ULL * (b + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

} // namespace

std::vector<int64_t> Dataset::image_shape() const {
  TORCH_CHECK(images.defined() && images.dim() == 4, "dataset '", name, "' has no N×C×H×W images");
  return {images.size(1), images.size(2), images.size(3)};
}

int64_t Dataset::num_classes() const {
  return size() == 0 ? 0 : labels.max().item<int64_t>() + 1;
}

torch::Tensor read_idx(const std::string& path) {
  const std::vector<uint8_t> bytes = read_maybe_gzip(path);
  TORCH_CHECK(bytes.size() >= 4, "'", path, "' is too short to be an IDX file (", bytes.size(), " bytes)");
  TORCH_CHECK(bytes[0] == 0 && bytes[1] == 0, "'", path, "' is not an IDX file (wrong magic number 0x",
              std::hex, big_endian_u32(bytes.data()), ")");
  TORCH_CHECK(bytes[2] == 0x08, "'", path, "': only unsigned-byte IDX files are supported, element type is 0x",
              std::hex, int(bytes[2]));
  const int ndim = bytes[3];
  TORCH_CHECK(ndim >= 1 && ndim <= 4, "'", path, "': IDX file with ", ndim, " dimensions is not supported");
  const size_t header = 4 + 4 * static_cast<size_t>(ndim);
  TORCH_CHECK(bytes.size() >= header, "'", path, "' is truncated inside its header");
  std::vector<int64_t> dims(ndim);
  int64_t count = 1;
  for (int d = 0; d < ndim; ++d) {
    dims[d] = big_endian_u32(bytes.data() + 4 + 4 * d);
    count *= dims[d];
  }
  TORCH_CHECK(bytes.size() - header == static_cast<size_t>(count), "'", path, "' is truncated: header says ",
              count, " bytes of data, file has ", bytes.size() - header);
  torch::Tensor out = torch::empty(dims, torch::kUInt8);
  std::memcpy(out.data_ptr(), bytes.data() + header, count);
  return out;
}

Dataset load_idx_dataset(const std::string& images_path, const std::string& labels_path) {
  torch::Tensor images = read_idx(images_path);
  torch::Tensor labels = read_idx(labels_path);
  TORCH_CHECK(images.dim() == 3, "'", images_path, "' should hold N×H×W images, has ", images.dim(),
              " dimensions");
  TORCH_CHECK(labels.dim() == 1, "'", labels_path, "' should hold N labels, has ", labels.dim(), " dimensions");
  TORCH_CHECK(images.size(0) == labels.size(0), "image/label count mismatch: '", images_path, "' has ",
              images.size(0), " images, '", labels_path, "' has ", labels.size(0), " labels");
  Dataset data;
  data.images = images.unsqueeze(1);
  data.labels = labels.to(torch::kInt64);
  data.name = fs::path(images_path).filename().string();
  return data;
}

Dataset load_fashion_mnist(const std::string& dir, Split split) {
  TORCH_CHECK(fs::is_directory(dir), "Fashion-MNIST folder '", dir,
              "' does not exist; install Debian's dataset-fashion-mnist (./launch/setup does) or pass --data-dir");
  const std::string prefix = split == Split::kTrain ? "train" : "t10k";
  Dataset data = load_idx_dataset(find_file(dir, prefix + "-images-idx3-ubyte"),
                                  find_file(dir, prefix + "-labels-idx1-ubyte"));
  data.name = std::string("fashion-mnist/") + (split == Split::kTrain ? "train" : "test");
  return data;
}

void check_finite(const torch::Tensor& tensor, const std::string& where, const std::string& name) {
  if (!torch::isFloatingType(tensor.scalar_type()) || tensor.numel() == 0) return;
  const torch::Tensor bad = ~torch::isfinite(tensor);
  if (!bad.any().item<bool>()) return;
  const int64_t flat = bad.reshape(-1).nonzero()[0][0].item<int64_t>();
  std::vector<int64_t> index(static_cast<size_t>(tensor.dim()));
  int64_t rest = flat;
  for (int64_t d = tensor.dim() - 1; d >= 0; --d) {
    index[static_cast<size_t>(d)] = rest % tensor.size(d);
    rest /= tensor.size(d);
  }
  TORCH_CHECK(false, where, ": tensor '", name, "' has a non-finite value (",
              tensor.reshape(-1)[flat].item<double>(), ") at index ", c10::IntArrayRef(index), " (",
              bad.sum().item<int64_t>(), " such value(s) in all)");
}

Dataset load_h5_dataset(const std::string& path) {
  h5::File file = h5::File::open_read(path);
  TORCH_CHECK(file.has("images"), "'", path, "' has no 'images' dataset (expected N×C×H×W uint8 or float)");
  TORCH_CHECK(file.has("labels"), "'", path, "' has no 'labels' dataset (expected N integers)");
  Dataset data;
  data.images = file.read_tensor("images");
  data.labels = file.read_tensor("labels");
  TORCH_CHECK(data.images.dim() == 4, "'", path, "': 'images' should be N×C×H×W, has shape ",
              data.images.sizes());
  const auto type = data.images.scalar_type();
  TORCH_CHECK(type == torch::kUInt8 || type == torch::kFloat32 || type == torch::kFloat64, "'", path,
              "': 'images' should be uint8 or float, is ", type);
  if (type == torch::kFloat64) data.images = data.images.to(torch::kFloat32);
  check_finite(data.images, "'" + path + "'", "images");
  TORCH_CHECK(data.labels.dim() == 1 && !torch::isFloatingType(data.labels.scalar_type()), "'", path,
              "': 'labels' should be N integers, has shape ", data.labels.sizes(), " and type ",
              data.labels.scalar_type());
  TORCH_CHECK(data.images.size(0) == data.labels.size(0), "image/label count mismatch in '", path, "': ",
              data.images.size(0), " images, ", data.labels.size(0), " labels");
  data.labels = data.labels.to(torch::kInt64);
  if (data.size() > 0) {
    TORCH_CHECK(data.labels.min().item<int64_t>() >= 0, "'", path, "': labels must be >= 0");
  }
  data.name = path;
  return data;
}

Dataset load_dataset(const std::string& spec, const std::string& data_dir, Split split,
                     const std::vector<int64_t>& shape) {
  if (spec == "fashion-mnist") return load_fashion_mnist(data_dir.empty() ? kFashionMnistDir : data_dir, split);
  if (fs::is_directory(spec)) return load_image_folder(spec, shape);
  const std::string ext = fs::path(spec).extension().string();
  TORCH_CHECK(ext == ".h5" || ext == ".hdf5", "unknown data set '", spec,
              "': use 'fashion-mnist', a path to an HDF5 file (.h5) with 'images' and 'labels', or an image "
              "folder (one sub-folder of PNG or JPEG files per class)");
  return load_h5_dataset(spec);
}

void Normalization::check(int64_t channels) const {
  TORCH_CHECK(mean.size() == std::size_t(channels) || mean.size() == 1, "input mean has ", mean.size(),
              " values, the input has ", channels, " channels");
  TORCH_CHECK(std.size() == std::size_t(channels) || std.size() == 1, "input std has ", std.size(),
              " values, the input has ", channels, " channels");
  for (double s : std) TORCH_CHECK(s > 0, "input std must be > 0, got ", s);
}

Normalization fashion_mnist_normalization() { return {{0.2860}, {0.3530}}; }

namespace {
torch::Tensor to_unit_float(const torch::Tensor& images) {
  if (images.scalar_type() == torch::kUInt8) return images.to(torch::kFloat32).div_(255.0);
  return images.to(torch::kFloat32);
}

torch::Tensor apply_norm(torch::Tensor x, const Normalization& norm) {
  const int64_t c = x.size(1);
  norm.check(c);
  auto expand = [c](const std::vector<double>& v) {
    std::vector<float> out(c);
    for (int64_t i = 0; i < c; ++i) out[i] = static_cast<float>(v.size() == 1 ? v[0] : v[i]);
    return torch::tensor(out).view({1, c, 1, 1});
  };
  return x.sub_(expand(norm.mean)).div_(expand(norm.std));
}
} // namespace

torch::Tensor normalize(const torch::Tensor& images, const Normalization& norm) {
  TORCH_CHECK(images.dim() == 4, "normalize expects N×C×H×W images, got shape ", images.sizes());
  return apply_norm(to_unit_float(images), norm);
}

PixelClamp::PixelClamp(const Normalization& norm) {
  TORCH_CHECK(!norm.mean.empty() && norm.mean.size() == norm.std.size(), "clamping to the pixel range needs a normalization");
  const auto at = [&](double pixel) {
    std::vector<float> v(norm.mean.size());
    for (size_t c = 0; c < v.size(); ++c) v[c] = static_cast<float>((pixel - norm.mean[c]) / norm.std[c]);
    return torch::tensor(v).reshape({1, static_cast<int64_t>(v.size()), 1, 1});
  };
  lo_ = at(0.0);
  hi_ = at(1.0);
}

torch::Tensor PixelClamp::operator()(const torch::Tensor& images) const {
  return lo_.defined() ? torch::max(torch::min(images, hi_), lo_) : images;
}

LowPass::LowPass(double d0) : d0_(d0) {
  TORCH_CHECK(d0 >= 0 && std::isfinite(d0), "the low-pass cut-off must be >= 0, got ", d0);
}

torch::Tensor LowPass::operator()(const torch::Tensor& images) const {
  if (d0_ <= 0) return images;
  TORCH_CHECK(images.dim() == 4, "the low-pass filter expects N×C×H×W images, got shape ", images.sizes());
  const int64_t h = images.size(2), w = images.size(3);
  const auto options = torch::TensorOptions().dtype(torch::kFloat64).device(images.device());
  // Frequencies in cycles per image, in the unshifted order of fft2 (0, 1, ..., -1).
  const torch::Tensor fy = torch::fft::fftfreq(h, options) * static_cast<double>(h);
  const torch::Tensor fx = torch::fft::fftfreq(w, options) * static_cast<double>(w);
  const torch::Tensor d2 = fy.pow(2).unsqueeze(1) + fx.pow(2).unsqueeze(0);
  const torch::Tensor gain = torch::exp(-d2 / (2 * d0_ * d0_)).to(images.scalar_type());
  const torch::Tensor spectrum = torch::fft::fft2(images);
  return torch::real(torch::fft::ifft2(spectrum * gain)).contiguous();
}

std::vector<int64_t> shard_indices(int64_t n, int rank, int world_size, int64_t epoch, uint64_t seed,
                                   bool shuffle) {
  TORCH_CHECK(world_size >= 1 && rank >= 0 && rank < world_size, "rank ", rank, " is outside world size ",
              world_size);
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  if (shuffle) {
    std::mt19937_64 rng(mix_seed(seed, static_cast<uint64_t>(epoch)));
    std::shuffle(order.begin(), order.end(), rng);
  }
  if (world_size == 1) return order;
  const int64_t per_rank = n / world_size;
  return std::vector<int64_t>(order.begin() + rank * per_rank, order.begin() + (rank + 1) * per_rank);
}

torch::Tensor augment(const torch::Tensor& images, int64_t crop_padding, bool flip, uint64_t seed) {
  TORCH_CHECK(crop_padding >= 0, "crop padding must be >= 0, got ", crop_padding);
  std::mt19937_64 rng(seed);
  torch::Tensor out = images;
  const int64_t n = images.size(0), h = images.size(2), w = images.size(3);
  if (crop_padding > 0) {
    const int64_t p = crop_padding;
    torch::Tensor padded = torch::constant_pad_nd(images, {p, p, p, p}, 0.0);
    out = torch::empty_like(images);
    std::uniform_int_distribution<int64_t> offset(0, 2 * p);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t dy = offset(rng), dx = offset(rng);
      out[i].copy_(padded[i].narrow(1, dy, h).narrow(2, dx, w));
    }
  }
  if (flip) {
    std::bernoulli_distribution coin(0.5);
    std::vector<uint8_t> mask(n);
    for (int64_t i = 0; i < n; ++i) mask[i] = coin(rng);
    torch::Tensor m = torch::tensor(std::vector<int64_t>(mask.begin(), mask.end())).to(torch::kBool);
    out = torch::where(m.view({n, 1, 1, 1}), out.flip({3}), out);
  }
  return out;
}

BatchLoader::BatchLoader(const Dataset& data, Normalization norm, LoaderOptions options)
    : data_(data), norm_(std::move(norm)), options_(options) {
  TORCH_CHECK(options_.batch_size > 0, "batch size must be > 0, got ", options_.batch_size);
  TORCH_CHECK(data_.size() > 0, "data set '", data_.name, "' is empty");
  norm_.check(data_.images.size(1));
  set_epoch(0);
  TORCH_CHECK(num_batches() > 0, "data set '", data_.name, "' has ", num_samples(),
              " samples for this rank, fewer than one batch of ", options_.batch_size);
}

void BatchLoader::set_epoch(int64_t epoch) {
  epoch_ = epoch;
  order_ = shard_indices(data_.size(), options_.rank, options_.world_size, epoch, options_.seed,
                         options_.shuffle);
}

int64_t BatchLoader::num_batches() const {
  const int64_t n = num_samples(), b = options_.batch_size;
  return options_.drop_last ? n / b : (n + b - 1) / b;
}

Batch BatchLoader::batch(int64_t index) const {
  TORCH_CHECK(index >= 0 && index < num_batches(), "batch ", index, " out of range [0, ", num_batches(), ")");
  const int64_t start = index * options_.batch_size;
  const int64_t end = std::min<int64_t>(start + options_.batch_size, num_samples());
  torch::Tensor idx = torch::from_blob(const_cast<int64_t*>(order_.data()) + start, {end - start}, torch::kInt64);
  torch::Tensor x = to_unit_float(data_.images.index_select(0, idx));
  if (options_.crop_padding > 0 || options_.horizontal_flip) {
    const uint64_t seed = mix_seed(mix_seed(options_.seed ^ 0xa5a5a5a5ULL, epoch_),
                                   static_cast<uint64_t>(index) * 4096 + options_.rank);
    x = augment(x, options_.crop_padding, options_.horizontal_flip, seed);
  }
  return {apply_norm(x, norm_), data_.labels.index_select(0, idx)};
}

} // namespace zsq
