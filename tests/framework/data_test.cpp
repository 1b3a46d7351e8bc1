#include "framework/data.h"

#include "framework/h5.h"
#include "framework/png.h"
#include "tests/support.h"

#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <set>

#include <turbojpeg.h>

namespace zsq {
namespace {

// An IDX file: magic 0x00 0x00 type ndim, big-endian dims, then the bytes.
std::vector<uint8_t> idx_bytes(const std::vector<uint32_t>& dims, const std::vector<uint8_t>& data,
                               uint8_t type = 0x08) {
  std::vector<uint8_t> out = {0, 0, type, static_cast<uint8_t>(dims.size())};
  for (uint32_t d : dims) {
    for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<uint8_t>(d >> shift));
  }
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

void write_plain(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

void write_gzip(const std::string& path, const std::vector<uint8_t>& bytes) {
  gzFile file = gzopen(path.c_str(), "wb");
  ASSERT_NE(file, nullptr);
  ASSERT_EQ(gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
  gzclose(file);
}

std::vector<uint8_t> iota_bytes(size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(i * 7);
  return v;
}

using DataTest = test::SeedingFixture;

TEST_F(DataTest, ReadsPlainAndGzipIdx) {
  const auto pixels = iota_bytes(3 * 4 * 5);
  write_plain(path("img"), idx_bytes({3, 4, 5}, pixels));
  write_gzip(path("img.gz"), idx_bytes({3, 4, 5}, pixels));
  for (const auto& name : {"img", "img.gz"}) {
    const torch::Tensor t = read_idx(path(name));
    EXPECT_EQ(t.sizes(), torch::IntArrayRef({3, 4, 5})) << name;
    EXPECT_EQ(t.scalar_type(), torch::kUInt8);
    EXPECT_EQ(t[2][3][4].item<int>(), pixels.back()) << name;
    EXPECT_EQ(t[0][1][0].item<int>(), pixels[5]) << name;
  }
}

TEST_F(DataTest, RejectsBadIdxFiles) {
  EXPECT_THROW_WITH(read_idx(path("missing.gz")), "file not found");
  auto bad_magic = idx_bytes({2}, {1, 2});
  bad_magic[0] = 0x1f;
  write_plain(path("magic"), bad_magic);
  EXPECT_THROW_WITH(read_idx(path("magic")), "wrong magic number");
  write_plain(path("type"), idx_bytes({2}, {1, 2, 3, 4, 5, 6, 7, 8}, 0x0d));
  EXPECT_THROW_WITH(read_idx(path("type")), "only unsigned-byte");
  auto truncated = idx_bytes({10, 10}, iota_bytes(100));
  truncated.resize(60);
  write_plain(path("short"), truncated);
  EXPECT_THROW_WITH(read_idx(path("short")), "is truncated");
  write_plain(path("header"), {0, 0, 8, 3, 0, 0});
  EXPECT_THROW_WITH(read_idx(path("header")), "truncated inside its header");
  // A gzip stream cut in the middle.
  write_gzip(path("full.gz"), idx_bytes({50, 50}, iota_bytes(2500)));
  std::filesystem::copy_file(path("full.gz"), path("cut.gz"));
  std::filesystem::resize_file(path("cut.gz"), std::filesystem::file_size(path("full.gz")) / 2);
  EXPECT_THROW_WITH(read_idx(path("cut.gz")), "truncated");
  // Image and label counts must agree.
  write_plain(path("i"), idx_bytes({3, 2, 2}, iota_bytes(12)));
  write_plain(path("l"), idx_bytes({4}, {0, 1, 2, 3}));
  EXPECT_THROW_WITH(load_idx_dataset(path("i"), path("l")), "image/label count mismatch");
}

TEST_F(DataTest, FashionMnistFromTheDebianPackage) {
  const Dataset train = load_fashion_mnist(kFashionMnistDir, Split::kTrain);
  const Dataset test = load_fashion_mnist(kFashionMnistDir, Split::kTest);
  EXPECT_EQ(train.size(), 60000);
  EXPECT_EQ(test.size(), 10000);
  EXPECT_EQ(train.image_shape(), (std::vector<int64_t>{1, 28, 28}));
  EXPECT_EQ(train.num_classes(), 10);
  // Balanced classes: 6000 / 1000 images each.
  EXPECT_TRUE(torch::equal(torch::bincount(test.labels), torch::full({10}, 1000, torch::kInt64)));
  const double mean = train.images.to(torch::kFloat64).mean().item<double>() / 255.0;
  EXPECT_NEAR(mean, fashion_mnist_normalization().mean[0], 1e-3);
  EXPECT_THROW_WITH(load_fashion_mnist(path("nowhere"), Split::kTest), "--data-dir");
  EXPECT_THROW_WITH(load_dataset("mnist-ish", "", Split::kTest), "unknown data set");
}

TEST_F(DataTest, Hdf5DatasetsAndTheirErrors) {
  const torch::Tensor images = torch::randint(0, 255, {6, 3, 8, 8}, torch::kUInt8);
  const torch::Tensor labels = torch::tensor({0, 1, 2, 0, 1, 2}, torch::kInt32);
  h5::atomic_write(path("ok.h5"), [&](h5::File& f) {
    f.write_tensor("images", images);
    f.write_tensor("labels", labels);
  });
  const Dataset data = load_dataset(path("ok.h5"), "", Split::kTest);
  EXPECT_TRUE(torch::equal(data.images, images));
  EXPECT_EQ(data.labels.scalar_type(), torch::kInt64);
  EXPECT_EQ(data.num_classes(), 3);

  h5::atomic_write(path("float.h5"), [&](h5::File& f) {
    f.write_tensor("images", torch::rand({2, 1, 4, 4}, torch::kFloat64));
    f.write_tensor("labels", torch::tensor({1, 0}, torch::kInt64));
  });
  EXPECT_EQ(load_h5_dataset(path("float.h5")).images.scalar_type(), torch::kFloat32);

  h5::atomic_write(path("nolabels.h5"), [&](h5::File& f) { f.write_tensor("images", images); });
  EXPECT_THROW_WITH(load_h5_dataset(path("nolabels.h5")), "no 'labels' dataset");
  h5::atomic_write(path("mismatch.h5"), [&](h5::File& f) {
    f.write_tensor("images", images);
    f.write_tensor("labels", labels.narrow(0, 0, 5));
  });
  EXPECT_THROW_WITH(load_h5_dataset(path("mismatch.h5")), "image/label count mismatch");
  h5::atomic_write(path("3d.h5"), [&](h5::File& f) {
    f.write_tensor("images", images[0]);
    f.write_tensor("labels", labels.narrow(0, 0, 3));
  });
  EXPECT_THROW_WITH(load_h5_dataset(path("3d.h5")), "should be N×C×H×W");
  h5::atomic_write(path("floatlabels.h5"), [&](h5::File& f) {
    f.write_tensor("images", images);
    f.write_tensor("labels", labels.to(torch::kFloat32));
  });
  EXPECT_THROW_WITH(load_h5_dataset(path("floatlabels.h5")), "should be N integers");
}

// A JPEG of a uint8 1×H×W image (libjpeg-turbo, quality 95).
void write_jpeg(const std::string& path, const torch::Tensor& image) {
  const torch::Tensor grey = image[0].contiguous();
  tjhandle tj = tjInitCompress();
  unsigned char* jpeg = nullptr;
  unsigned long size = 0;
  ASSERT_EQ(tjCompress2(tj, grey.data_ptr<uint8_t>(), int(grey.size(1)), 0, int(grey.size(0)), TJPF_GRAY, &jpeg, &size,
                        TJSAMP_GRAY, 95, 0), 0);
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(jpeg), static_cast<std::streamsize>(size));
  tjFree(jpeg);
  tjDestroy(tj);
}

TEST_F(DataTest, ImageFoldersReadPngAndJpegPerClass) {
  namespace fs = std::filesystem;
  // Two classes, sorted by sub-folder name ("bag" before "coat"); PNGs are lossless, so pixels are exact.
  const torch::Tensor grey = torch::randint(0, 256, {5, 1, 6, 4}, torch::kUInt8);
  const std::string dir = path("folder");
  fs::create_directories(dir + "/coat");
  fs::create_directories(dir + "/bag");
  write_png(dir + "/bag/b.png", grey[1]);
  write_png(dir + "/bag/a.png", grey[0]);
  write_png(dir + "/coat/0.PNG", grey[2]);
  write_png(dir + "/coat/1.png", grey[3]);
  write_png(dir + "/coat/2.png", grey[4]);
  std::ofstream(dir + "/coat/.DS_Store") << "hidden files are passed over";
  const Dataset data = load_dataset(dir, "", Split::kTest);
  EXPECT_EQ(data.size(), 5);
  EXPECT_EQ(data.image_shape(), (std::vector<int64_t>{1, 6, 4}));
  EXPECT_TRUE(torch::equal(data.images, grey));
  EXPECT_TRUE(torch::equal(data.labels, torch::tensor({0, 0, 1, 1, 1}, torch::kInt64)));
  EXPECT_EQ(load_dataset(dir, "", Split::kTest, {1, 6, 4}).images.sizes(), data.images.sizes());

  // RGB files for a 1-channel model become grey; a 3-channel model takes grey files as three equal planes.
  const torch::Tensor rgb = torch::randint(0, 256, {3, 6, 4}, torch::kUInt8);
  write_png(dir + "/bag/c.png", rgb);
  const Dataset as_grey = load_image_folder(dir, {1, 6, 4});
  EXPECT_EQ(as_grey.size(), 6);
  // PIL's convert("L"): (19595 R + 38470 G + 7471 B + 2^15) >> 16.
  const torch::Tensor wide = rgb.to(torch::kInt64);
  const torch::Tensor luma = torch::div(wide[0] * 19595 + wide[1] * 38470 + wide[2] * 7471 + 32768, 65536, "floor");
  EXPECT_TRUE(torch::equal(as_grey.images[2][0].to(torch::kInt64), luma));
  const Dataset as_rgb = load_image_folder(dir, {3, 6, 4});
  EXPECT_EQ(as_rgb.images.sizes(), (std::vector<int64_t>{6, 3, 6, 4}));
  EXPECT_TRUE(torch::equal(as_rgb.images[2], rgb));
  EXPECT_TRUE(torch::equal(as_rgb.images[0][1], grey[0][0]));
  // Without the model's shape the first image's channels (grey) decide.
  EXPECT_EQ(load_image_folder(dir).images.size(1), 1);

  // A JPEG decodes close to what was written (lossy).
  const torch::Tensor smooth = torch::arange(0, 24, torch::kFloat).mul(10).view({1, 6, 4}).to(torch::kUInt8);
  write_jpeg(dir + "/coat/3.jpg", smooth);
  const Dataset with_jpeg = load_image_folder(dir, {1, 6, 4});
  EXPECT_LE((with_jpeg.images[6].to(torch::kFloat) - smooth.to(torch::kFloat)).abs().max().item<float>(), 12.0f);
  EXPECT_EQ(with_jpeg.labels[6].item<int64_t>(), 1);

  // Errors name the folder or file.
  EXPECT_THROW_WITH(load_image_folder(dir, {1, 28, 28}), "bag/a.png' is 4x6 pixels (width x height), the model takes 28x28");
  EXPECT_THROW_WITH(load_image_folder(dir, {2, 6, 4}), "1- or 3-channel models");
  EXPECT_THROW_WITH(load_image_folder(path("nowhere")), "not found");
  fs::create_directories(path("flat"));
  write_png(path("flat") + "/x.png", grey[0]);
  EXPECT_THROW_WITH(load_dataset(path("flat"), "", Split::kTest), "no class sub-folders");
  fs::create_directories(dir + "/dress");
  EXPECT_THROW_WITH(load_image_folder(dir), "dress' has no PNG or JPEG files");
  write_png(dir + "/dress/wide.png", torch::zeros({1, 6, 5}, torch::kUInt8));
  EXPECT_THROW_WITH(load_image_folder(dir), "wide.png' is 5x6 pixels (width x height), the folder's first image is 4x6");
  fs::remove(dir + "/dress/wide.png");
  std::ofstream(dir + "/dress/broken.png") << "not a png";
  EXPECT_THROW_WITH(load_image_folder(dir), "broken.png' is not a readable PNG or JPEG image (neither a PNG nor a JPEG");
  std::ofstream(dir + "/dress/broken.png") << "\x89PNG\r\n\x1a\n truncated";
  EXPECT_THROW_WITH(load_image_folder(dir), "broken.png' is not a readable PNG or JPEG image");
  std::ofstream(dir + "/dress/broken.png") << "\xff\xd8\xff truncated";
  EXPECT_THROW_WITH(load_image_folder(dir), "broken.png' is not a readable PNG or JPEG image");
  fs::remove(dir + "/dress/broken.png");
  std::ofstream(dir + "/dress/notes.txt") << "labels";
  EXPECT_THROW_WITH(load_image_folder(dir), "notes.txt': an image folder holds only .png, .jpg and .jpeg files");
}

TEST_F(DataTest, ShardsAreDisjointEqualAndEpochDependent) {
  const int64_t n = 103;
  const int world = 4;
  std::set<int64_t> seen;
  for (int r = 0; r < world; ++r) {
    const auto shard = shard_indices(n, r, world, /*epoch=*/5, /*seed=*/9, true);
    EXPECT_EQ(shard.size(), 25u);
    for (int64_t i : shard) {
      EXPECT_TRUE(i >= 0 && i < n);
      EXPECT_TRUE(seen.insert(i).second) << "index " << i << " in two shards";
    }
  }
  EXPECT_EQ(shard_indices(n, 1, world, 5, 9, true), shard_indices(n, 1, world, 5, 9, true));
  EXPECT_NE(shard_indices(n, 1, world, 5, 9, true), shard_indices(n, 1, world, 6, 9, true));
  EXPECT_NE(shard_indices(n, 1, world, 5, 9, true), shard_indices(n, 1, world, 5, 10, true));
  const auto all = shard_indices(n, 0, 1, 0, 0, false);
  EXPECT_EQ(all.size(), static_cast<size_t>(n));
  EXPECT_EQ(all[17], 17);
  EXPECT_THROW_WITH(shard_indices(n, 4, 4, 0, 0, true), "outside world size");
}

TEST_F(DataTest, NormalizationAndBatches) {
  // Image i is filled with the value 10·label so batches can be checked.
  const int64_t n = 50;
  Dataset data;
  data.labels = torch::arange(n, torch::kInt64) % 10;
  data.images = (data.labels * 10).to(torch::kUInt8).view({n, 1, 1, 1}).expand({n, 2, 3, 3}).contiguous();
  const Normalization norm{{0.5, 0.25}, {0.5, 2.0}};
  LoaderOptions options;
  options.batch_size = 16;
  options.seed = 3;
  BatchLoader loader(data, norm, options);
  EXPECT_EQ(loader.num_batches(), 4);  // 16+16+16+2
  int64_t total = 0;
  for (int64_t b = 0; b < loader.num_batches(); ++b) {
    const Batch batch = loader.batch(b);
    total += batch.labels.size(0);
    const torch::Tensor pixel = batch.labels.to(torch::kFloat32) * 10 / 255.0;
    EXPECT_TRUE(torch::allclose(batch.images.select(1, 0).select(1, 0).select(1, 0), (pixel - 0.5) / 0.5));
    EXPECT_TRUE(torch::allclose(batch.images.select(1, 1).select(1, 2).select(1, 2), (pixel - 0.25) / 2.0));
  }
  EXPECT_EQ(total, n);
  options.drop_last = true;
  EXPECT_EQ(BatchLoader(data, norm, options).num_batches(), 3);
  // Same seed and epoch: same batches; another epoch: another order.
  BatchLoader again(data, norm, options);
  EXPECT_TRUE(torch::equal(again.batch(1).labels, BatchLoader(data, norm, options).batch(1).labels));
  const torch::Tensor first = again.batch(0).labels.clone();
  again.set_epoch(1);
  EXPECT_FALSE(torch::equal(first, again.batch(0).labels));
  EXPECT_THROW_WITH(BatchLoader(data, Normalization{{0.1, 0.2, 0.3}, {1, 1, 1}}, options), "input mean has 3");
  options.batch_size = 64;
  EXPECT_THROW_WITH(BatchLoader(data, norm, options), "fewer than one batch");
}

TEST_F(DataTest, AugmentationCropsAndFlips) {
  const torch::Tensor x = torch::rand({32, 1, 6, 6});
  EXPECT_TRUE(torch::equal(augment(x, 0, false, 1), x));
  const torch::Tensor flipped = augment(x, 0, true, 1);
  int mirrored = 0;
  for (int64_t i = 0; i < 32; ++i) {
    const bool same = torch::equal(flipped[i], x[i]);
    const bool mirror = torch::equal(flipped[i], x[i].flip({2}));
    EXPECT_TRUE(same || mirror) << i;
    mirrored += mirror;
  }
  EXPECT_GT(mirrored, 4);
  EXPECT_LT(mirrored, 28);
  EXPECT_TRUE(torch::equal(augment(x, 2, true, 7), augment(x, 2, true, 7)));
  // A crop is a shifted window of the zero-padded image.
  const torch::Tensor cropped = augment(x, 1, false, 5);
  const torch::Tensor padded = torch::constant_pad_nd(x, {1, 1, 1, 1}, 0.0);
  for (int64_t i = 0; i < 32; ++i) {
    bool found = false;
    for (int dy = 0; dy <= 2 && !found; ++dy) {
      for (int dx = 0; dx <= 2 && !found; ++dx) {
        found = torch::equal(cropped[i], padded[i].narrow(1, dy, 6).narrow(2, dx, 6));
      }
    }
    EXPECT_TRUE(found) << i;
  }
}

// SynQ's low-pass filter: the mean passes, a frequency is damped by exp(-D²/(2·d0²)), off passes the images.
TEST_F(DataTest, LowPassDampsEachFrequencyByItsGaussianGain) {
  const int64_t n = 8;
  const torch::Tensor i = torch::arange(n, torch::kFloat32);
  // Channel 0: a constant; channel 1: a cosine of 2 cycles per image along x; channel 2: the checkerboard
  // (4, 4 cycles: the highest frequency of an 8×8 image).
  const torch::Tensor constant = torch::full({n, n}, 0.7);
  const torch::Tensor wave = torch::cos(2 * M_PI * 2 * i / n).unsqueeze(0).expand({n, n});
  const torch::Tensor checker = torch::cos(M_PI * (i.unsqueeze(1) + i.unsqueeze(0)));
  const torch::Tensor images = torch::stack({constant, wave, checker}).unsqueeze(0).repeat({2, 1, 1, 1});
  const double d0 = 3;
  const torch::Tensor out = LowPass(d0)(images);
  ASSERT_EQ(out.sizes(), images.sizes());
  EXPECT_EQ(out.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::allclose(out.select(1, 0), images.select(1, 0), 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(out.select(1, 1), images.select(1, 1) * std::exp(-4 / (2 * d0 * d0)), 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(out.select(1, 2), images.select(1, 2) * std::exp(-32 / (2 * d0 * d0)), 1e-5, 1e-5));
  EXPECT_TRUE(torch::equal(LowPass()(images), images));
  EXPECT_TRUE(torch::equal(LowPass(0)(images), images));
  EXPECT_THROW(LowPass(-1), c10::Error);
}

} // namespace
} // namespace zsq
