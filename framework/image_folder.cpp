// An image folder as a data set: one sub-folder per class, PNG or JPEG files decoded with stb_image
// (Debian's libstb-dev), kept as uint8 N×C×H×W like the IDX and HDF5 sets.
#include "framework/data.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <filesystem>
#include <string>
#include <vector>

#include <c10/util/Exception.h>
#include <torch/torch.h>

#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_STATIC
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#include <stb/stb_image.h>

namespace zsq {
namespace fs = std::filesystem;
namespace {

bool is_image_file(const fs::path& path) {
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg";
}

std::vector<fs::path> sorted_entries(const fs::path& dir, bool folders) {
  std::vector<fs::path> out;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name[0] == '.') continue;  // hidden files and folders (.DS_Store, .git)
    if (folders ? entry.is_directory() : entry.is_regular_file()) out.push_back(entry.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string unreadable(const fs::path& file) {
  const char* why = stbi_failure_reason();
  return "'" + file.string() + "' is not a readable PNG or JPEG image (" + (why ? why : "unknown error") + ")";
}

// Width, height and channels (alpha dropped) of a file as stored, from its header.
std::array<int64_t, 3> header(const fs::path& file) {
  int w = 0, h = 0, n = 0;
  TORCH_CHECK(stbi_info(file.c_str(), &w, &h, &n) == 1, unreadable(file));
  return {w, h, n >= 3 ? 3 : 1};
}

// One decoded image as uint8 C×H×W with `channels` channels (stb converts grey, grey+alpha, RGB and RGBA).
torch::Tensor decode(const fs::path& file, int channels) {
  int w = 0, h = 0, stored = 0;
  stbi_uc* pixels = stbi_load(file.c_str(), &w, &h, &stored, channels);
  TORCH_CHECK(pixels != nullptr, unreadable(file));
  torch::Tensor image = torch::from_blob(pixels, {h, w, channels}, torch::kUInt8).permute({2, 0, 1}).clone();
  stbi_image_free(pixels);
  return image;
}

} // namespace

Dataset load_image_folder(const std::string& dir, const std::vector<int64_t>& shape) {
  TORCH_CHECK(fs::is_directory(dir), "image folder '", dir, "' not found");
  TORCH_CHECK(shape.empty() || shape.size() == 3, "an image folder needs the model's input shape as C,H,W");
  TORCH_CHECK(shape.empty() || shape[0] == 1 || shape[0] == 3, "image folder '", dir,
              "': PNG and JPEG images feed 1- or 3-channel models, this model takes ", shape[0], " channels");
  const std::vector<fs::path> classes = sorted_entries(dir, true);
  TORCH_CHECK(!classes.empty(), "image folder '", dir,
              "' has no class sub-folders: put each class's PNG or JPEG files in a sub-folder of its own "
              "(labels follow the sub-folders' sorted names)");
  std::vector<std::pair<fs::path, int64_t>> files;
  for (size_t label = 0; label < classes.size(); ++label) {
    size_t found = 0;
    for (const fs::path& file : sorted_entries(classes[label], false)) {
      TORCH_CHECK(is_image_file(file), "'", file.string(), "': an image folder holds only .png, .jpg and .jpeg files");
      files.emplace_back(file, static_cast<int64_t>(label));
      ++found;
    }
    TORCH_CHECK(found > 0, "class folder '", classes[label].string(), "' has no PNG or JPEG files");
  }
  // The model's size and channels when it is known, else the first image's (alpha dropped). The size is
  // checked from the header, before a file is decoded.
  const std::array<int64_t, 3> first = header(files.front().first);
  const int64_t w = shape.empty() ? first[0] : shape[2], h = shape.empty() ? first[1] : shape[1];
  const int channels = static_cast<int>(shape.empty() ? first[2] : shape[0]);
  std::vector<torch::Tensor> images;
  images.reserve(files.size());
  for (const auto& item : files) {
    const std::array<int64_t, 3> size = header(item.first);
    TORCH_CHECK(size[0] == w && size[1] == h, "'", item.first.string(), "' is ", size[0], "x", size[1],
                " pixels (width x height), ", shape.empty() ? "the folder's first image is " : "the model takes ", w,
                "x", h, ": resize the images first (zsq does not resize)");
    images.push_back(decode(item.first, channels));
    TORCH_CHECK(images.back().size(1) == h && images.back().size(2) == w, "'", item.first.string(),
                "' decodes to another size than its header says");
  }
  torch::Tensor labels = torch::empty({static_cast<int64_t>(files.size())}, torch::kInt64);
  for (size_t i = 0; i < files.size(); ++i) labels[static_cast<int64_t>(i)] = files[i].second;
  return {torch::stack(images), labels, dir};
}

} // namespace zsq
