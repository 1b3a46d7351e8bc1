// A minimal PNG writer (8-bit grayscale or RGB, zlib from the system), for
// sample grids a person can look at.
#pragma once

#include <torch/types.h>

#include <string>

namespace zsq {

/// Writes `image` (uint8, H×W or C×H×W with C = 1 or 3) as a PNG file, atomically.
void write_png(const std::string& path, const torch::Tensor& image);

/// Tiles up to rows·cols images (N×C×H×W, any float range) into one uint8
/// C×H'×W' picture, each image scaled from its own min..max to 0..255, with a
/// one-pixel border.
torch::Tensor image_grid(const torch::Tensor& images, int64_t cols = 8);

} // namespace zsq
