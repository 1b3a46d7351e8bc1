#include "framework/png.h"

#include "framework/h5.h"

#include <torch/torch.h>
#include <zlib.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <vector>

namespace zsq {
namespace {

void put32(std::vector<uint8_t>& out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<uint8_t>(v >> s));
}

void chunk(std::vector<uint8_t>& out, const char* type, const std::vector<uint8_t>& data) {
  put32(out, static_cast<uint32_t>(data.size()));
  const size_t start = out.size();
  out.insert(out.end(), type, type + 4);
  out.insert(out.end(), data.begin(), data.end());
  put32(out, static_cast<uint32_t>(crc32(0, out.data() + start, static_cast<uInt>(out.size() - start))));
}

} // namespace

void write_png(const std::string& path, const torch::Tensor& image_in) {
  torch::Tensor image = image_in.dim() == 2 ? image_in.unsqueeze(0) : image_in;
  TORCH_CHECK(image.dim() == 3 && (image.size(0) == 1 || image.size(0) == 3) && image.scalar_type() == torch::kUInt8,
              "write_png expects uint8 H×W or C×H×W with 1 or 3 channels, got ", image_in.sizes(), " ",
              image_in.scalar_type());
  const int64_t c = image.size(0), h = image.size(1), w = image.size(2);
  const torch::Tensor hwc = image.permute({1, 2, 0}).contiguous();
  std::vector<uint8_t> raw;
  raw.reserve(static_cast<size_t>(h * (w * c + 1)));
  const uint8_t* px = hwc.data_ptr<uint8_t>();
  for (int64_t y = 0; y < h; ++y) {
    raw.push_back(0);  // filter: none
    raw.insert(raw.end(), px + y * w * c, px + (y + 1) * w * c);
  }
  uLongf packed_size = compressBound(static_cast<uLong>(raw.size()));
  std::vector<uint8_t> packed(packed_size);
  TORCH_CHECK(compress2(packed.data(), &packed_size, raw.data(), static_cast<uLong>(raw.size()), 9) == Z_OK,
              "PNG compression failed");
  packed.resize(packed_size);
  std::vector<uint8_t> file = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  std::vector<uint8_t> header;
  put32(header, static_cast<uint32_t>(w));
  put32(header, static_cast<uint32_t>(h));
  header.insert(header.end(), {8, static_cast<uint8_t>(c == 3 ? 2 : 0), 0, 0, 0});
  chunk(file, "IHDR", header);
  chunk(file, "IDAT", packed);
  chunk(file, "IEND", {});
  h5::check_writable(path);
  const std::string tmp = path + ".tmp.png";
  {
    std::ofstream out(tmp, std::ios::binary);
    out.write(reinterpret_cast<const char*>(file.data()), static_cast<std::streamsize>(file.size()));
    TORCH_CHECK(out.good(), "cannot write '", tmp, "'");
  }
  std::filesystem::rename(tmp, path);
}

torch::Tensor image_grid(const torch::Tensor& images, int64_t cols) {
  TORCH_CHECK(images.dim() == 4 && images.size(0) > 0, "image_grid expects N×C×H×W, got ", images.sizes());
  TORCH_CHECK(cols >= 1, "image_grid needs at least one column");
  const int64_t n = std::min<int64_t>(images.size(0), cols * cols), c = images.size(1), h = images.size(2),
                w = images.size(3);
  const int64_t columns = std::min(cols, n), rows = (n + columns - 1) / columns;
  torch::Tensor grid = torch::zeros({c, rows * (h + 1) + 1, columns * (w + 1) + 1}, torch::kUInt8);
  for (int64_t i = 0; i < n; ++i) {
    torch::Tensor x = images[i].detach().to(torch::kFloat32);
    const float lo = x.min().item<float>(), hi = x.max().item<float>();
    x = ((x - lo) / std::max(hi - lo, 1e-8f) * 255.0f).round().clamp(0, 255).to(torch::kUInt8);
    const int64_t r = i / columns, q = i % columns;
    grid.narrow(1, 1 + r * (h + 1), h).narrow(2, 1 + q * (w + 1), w).copy_(x);
  }
  return grid;
}

} // namespace zsq
