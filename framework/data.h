// Datasets and batching. Images are kept as stored (uint8 N×C×H×W, or float in
// [0,1]) and turned into normalized float batches on the fly, so a 60k-image
// Fashion-MNIST split costs 47 MB. Everything random is drawn from explicit
// seeds: the same (seed, epoch, rank, world size) gives the same batches.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace zsq {

/// Labelled images: `images` is N×C×H×W (uint8 pixels 0..255, or float32
/// pixels in [0,1]); `labels` is N int64.
struct Dataset {
  torch::Tensor images;
  torch::Tensor labels;
  std::string name;
  int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
  /// (C, H, W)
  std::vector<int64_t> image_shape() const;
  int64_t num_classes() const;  ///< max label + 1
};

enum class Split { kTrain, kTest };

/// Reads one IDX file (MNIST format), gzip-compressed or plain, into a uint8
/// tensor of the dimensions in its header. Throws on a missing or truncated
/// file, a wrong magic number or a non-uint8 element type.
torch::Tensor read_idx(const std::string& path);

/// Pairs an IDX image file (N×H×W) with an IDX label file (N).
Dataset load_idx_dataset(const std::string& images_path, const std::string& labels_path);

/// Default folder of Debian's dataset-fashion-mnist package.
inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

/// Fashion-MNIST from `dir` (the *-idx?-ubyte files, .gz or plain).
Dataset load_fashion_mnist(const std::string& dir, Split split);

/// A generic HDF5 dataset: `images` N×C×H×W (uint8, or float in [0,1]) and
/// `labels` N (any integer type).
Dataset load_h5_dataset(const std::string& path);

/// An image folder: one sub-folder per class (labels 0, 1, ... in the
/// sub-folders' sorted order), each holding PNG or JPEG files (hidden files are
/// passed over, any other file is an error). With `shape` (the model's C,H,W,
/// C = 1 or 3) every image is converted to C channels (grey <-> RGB, alpha
/// dropped) and must be H×W; without it, every image takes the first one's
/// channels and must have its size. Errors name the file.
Dataset load_image_folder(const std::string& dir, const std::vector<int64_t>& shape = {});

/// "fashion-mnist" (from `data_dir`, default the Debian path), a path to an
/// HDF5 dataset file or an image folder (read for a model of input `shape`
/// when given); `split` applies to fashion-mnist only.
Dataset load_dataset(const std::string& spec, const std::string& data_dir, Split split,
                     const std::vector<int64_t>& shape = {});

/// Per-channel normalization applied to pixels scaled to [0,1].
struct Normalization {
  std::vector<double> mean;
  std::vector<double> std;
  /// Throws unless both have `channels` entries (or one, broadcast) and std > 0.
  void check(int64_t channels) const;
};

/// Fashion-MNIST's pixel mean and standard deviation.
Normalization fashion_mnist_normalization();

/// Throws "<where>: tensor '<name>' has a non-finite value (nan) at index
/// [i, j, ...]" naming the first such element of a floating-point tensor.
void check_finite(const torch::Tensor& tensor, const std::string& where, const std::string& name);

/// Pixels as float in [0,1] (uint8 / 255), then (x - mean) / std per channel.
torch::Tensor normalize(const torch::Tensor& images, const Normalization& norm);

/// Clamps normalized images to the range of pixels in [0, 1] under a
/// normalization, per channel (default-constructed: off, images pass as given).
class PixelClamp {
 public:
  PixelClamp() = default;
  explicit PixelClamp(const Normalization& norm);
  torch::Tensor operator()(const torch::Tensor& images) const;

 private:
  torch::Tensor lo_, hi_;  // 1×C×1×1: the normalized values of pixels 0 and 1
};

/// SynQ's low-pass filter of synthetic images (its code: a Gaussian in the
/// frequency domain): each image channel's spectrum times exp(-D²/(2·d0²)), D
/// the distance of a frequency from zero in cycles per image (0 to H/2, W/2).
/// It damps the high-frequency patterns synthesis leaves; the mean passes
/// unchanged. Default-constructed or d0 = 0: off, images pass as given.
class LowPass {
 public:
  LowPass() = default;
  explicit LowPass(double d0);
  torch::Tensor operator()(const torch::Tensor& images) const;

 private:
  double d0_ = 0;
};

/// The indices rank `rank` of `world_size` visits in `epoch`: a permutation of
/// 0..n-1 seeded by (seed, epoch) when `shuffle`, cut into `world_size`
/// disjoint, equal slices of floor(n / world_size) (the remainder is dropped
/// when world_size > 1 so that every rank takes the same number of steps).
std::vector<int64_t> shard_indices(int64_t n, int rank, int world_size, int64_t epoch, uint64_t seed,
                                   bool shuffle);

struct LoaderOptions {
  int64_t batch_size = 128;
  bool shuffle = true;
  uint64_t seed = 0;
  int rank = 0;
  int world_size = 1;
  /// Drop the last, smaller batch (training); keep it for evaluation.
  bool drop_last = false;
  /// Random crop after zero padding by this many pixels (0: off).
  int64_t crop_padding = 0;
  /// Random horizontal flip with probability 1/2.
  bool horizontal_flip = false;
};

struct Batch {
  torch::Tensor images;  ///< B×C×H×W float32, normalized
  torch::Tensor labels;  ///< B int64
};

/// Serves normalized (optionally augmented) batches of one rank's shard.
class BatchLoader {
 public:
  BatchLoader(const Dataset& data, Normalization norm, LoaderOptions options);
  /// Reshuffles and reshards for `epoch`.
  void set_epoch(int64_t epoch);
  int64_t num_batches() const;
  int64_t num_samples() const { return static_cast<int64_t>(order_.size()); }
  /// Batch `index` (0 <= index < num_batches()) of the current epoch.
  Batch batch(int64_t index) const;

 private:
  Dataset data_;  // tensors are shared, not copied
  Normalization norm_;
  LoaderOptions options_;
  int64_t epoch_ = 0;
  std::vector<int64_t> order_;
};

/// Random crop with zero padding and random horizontal flip of a float batch
/// (pixels in [0,1], before normalization), drawn from `seed`.
torch::Tensor augment(const torch::Tensor& images, int64_t crop_padding, bool flip, uint64_t seed);

} // namespace zsq
