#include "framework/h5.h"

#include "framework/data.h"
#include "tests/support.h"

#include <hdf5.h>

#include <fstream>

namespace zsq {
namespace {

using H5Test = test::SeedingFixture;

TEST_F(H5Test, RoundTripsEveryDtypeAndShape) {
  const std::vector<torch::Tensor> tensors = {
      torch::randn({3, 4, 5}),
      torch::randn({7}, torch::kFloat64),
      torch::randint(-1000, 1000, {2, 3}, torch::kInt64),
      torch::randint(-1000, 1000, {4}, torch::kInt32),
      torch::randint(0, 255, {2, 2}, torch::kUInt8),
      torch::randint(-100, 100, {5}, torch::kInt8),
      torch::tensor(42, torch::kInt64),  // scalar, like num_batches_tracked
      torch::zeros({0, 3}),              // empty
  };
  {
    h5::File file = h5::File::create(path("a.h5"));
    for (size_t i = 0; i < tensors.size(); ++i) file.write_tensor("t" + std::to_string(i), tensors[i]);
    file.write_tensor("nested/group/layer1.0.conv1.weight", torch::ones({2}));
  }
  const h5::File file = h5::File::open_read(path("a.h5"));
  for (size_t i = 0; i < tensors.size(); ++i) {
    const std::string name = "t" + std::to_string(i);
    const torch::Tensor back = file.read_tensor(name);
    EXPECT_EQ(back.scalar_type(), tensors[i].scalar_type()) << name;
    EXPECT_EQ(back.sizes(), tensors[i].sizes()) << name;
    EXPECT_TRUE(torch::equal(back, tensors[i])) << name;
  }
  EXPECT_TRUE(file.has("nested/group/layer1.0.conv1.weight"));
  EXPECT_FALSE(file.has("nested/missing/x"));
  const auto names = file.dataset_names();
  EXPECT_EQ(names.size(), tensors.size() + 1);
  EXPECT_EQ(names.front(), "nested/group/layer1.0.conv1.weight");
  EXPECT_TRUE(torch::equal(file.read_rows("t0", 1, 2), tensors[0].narrow(0, 1, 2)));
  EXPECT_THROW_WITH(file.read_rows("t0", 2, 5), "outside dataset");
}

TEST_F(H5Test, BoolIsStoredAsUint8) {
  {
    h5::File file = h5::File::create(path("b.h5"));
    file.write_tensor("mask", torch::tensor({true, false, true}));
  }
  const torch::Tensor back = h5::File::open_read(path("b.h5")).read_tensor("mask");
  EXPECT_EQ(back.scalar_type(), torch::kUInt8);
  EXPECT_TRUE(torch::equal(back, torch::tensor({1, 0, 1}, torch::kUInt8)));
}

TEST_F(H5Test, AttributesRoundTrip) {
  {
    h5::File file = h5::File::create(path("attrs.h5"));
    file.write_tensor("w", torch::zeros({2}));
    file.set_attr("arch", std::string("résnet20 ✓"));
    file.set_attr("num_classes", int64_t{10});
    file.set_attr("ratio", 0.25);
    file.set_attr("input_shape", std::vector<int64_t>{1, 28, 28});
    file.set_attr("input_mean", std::vector<double>{0.1, 0.2});
    file.set_attr("bits", int64_t{4}, "w");
    file.set_attr("num_classes", int64_t{11});  // overwrite
  }
  const h5::File file = h5::File::open_read(path("attrs.h5"));
  EXPECT_EQ(file.attr_string("arch").value(), "résnet20 ✓");
  EXPECT_EQ(file.attr_int("num_classes").value(), 11);
  EXPECT_DOUBLE_EQ(file.attr_doubles("ratio").value().at(0), 0.25);
  EXPECT_EQ(file.attr_ints("input_shape").value(), (std::vector<int64_t>{1, 28, 28}));
  EXPECT_EQ(file.attr_doubles("input_mean").value(), (std::vector<double>{0.1, 0.2}));
  EXPECT_EQ(file.attr_int("bits", "w").value(), 4);
  EXPECT_FALSE(file.attr_string("missing").has_value());
  EXPECT_EQ(file.attr_as_text("input_shape"), "[1, 28, 28]");
  EXPECT_THROW_WITH(file.attr_int("arch"), "should hold integers");
}

TEST_F(H5Test, ClearErrorsForMissingForeignAndTruncatedFiles) {
  EXPECT_THROW_WITH(h5::File::open_read(path("nope.h5")), "file not found");
  {
    std::ofstream out(path("text.h5"));
    out << "this is not HDF5\n";
  }
  EXPECT_THROW_WITH(h5::File::open_read(path("text.h5")), "not an HDF5 file");
  {
    h5::File file = h5::File::create(path("full.h5"));
    file.write_tensor("w", torch::randn({256, 256}));
  }
  const auto size = std::filesystem::file_size(path("full.h5"));
  std::filesystem::copy_file(path("full.h5"), path("cut.h5"));
  std::filesystem::resize_file(path("cut.h5"), size / 2);
  const std::string msg = test::error_of([&] { h5::File::open_read(path("cut.h5")).read_tensor("w"); });
  EXPECT_NE(msg.find("truncated or damaged"), std::string::npos) << msg;
  EXPECT_THROW_WITH(h5::File::open_read(path("full.h5")).read_tensor("v"), "has no dataset 'v'");
}

TEST_F(H5Test, AShapeTheStoredBytesCannotHoldIsRefusedBeforeAllocating) {
  // A chunked data set that declares 784 MB and stores nothing (a damaged or hostile file would say so
  // for terabytes): refused by its declared size, not read as 784 MB of fill values.
  const std::string file = path("claims.h5");
  const hid_t id = H5Fcreate(file.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(id, 0);
  const hsize_t dims[4] = {1000000, 1, 28, 28}, chunk[4] = {1, 1, 28, 28};
  const hid_t space = H5Screate_simple(4, dims, nullptr), dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_chunk(dcpl, 4, chunk);
  const hid_t dset = H5Dcreate2(id, "images", H5T_NATIVE_UINT8, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  ASSERT_GE(dset, 0);
  const hid_t label_space = H5Screate_simple(1, dims, nullptr), label_dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_chunk(label_dcpl, 1, chunk);
  const hid_t labels = H5Dcreate2(id, "labels", H5T_NATIVE_INT64, label_space, H5P_DEFAULT, label_dcpl, H5P_DEFAULT);
  ASSERT_GE(labels, 0);
  for (const hid_t h : {dset, labels}) H5Dclose(h);
  for (const hid_t h : {dcpl, label_dcpl}) H5Pclose(h);
  for (const hid_t h : {space, label_space}) H5Sclose(h);
  H5Fclose(id);
  h5::File f = h5::File::open_read(file);
  EXPECT_EQ(f.shape("images"), (std::vector<int64_t>{1000000, 1, 28, 28}));
  EXPECT_THROW_WITH(f.read_tensor("images"), "dataset 'images' declares 7.84e+08 bytes but stores 0");
  EXPECT_THROW_WITH(load_h5_dataset(file), "the file is truncated or damaged");
}

TEST_F(H5Test, AtomicWriteReplacesOrLeavesTheOldFileUntouched) {
  const std::string target = path("model.h5");
  h5::atomic_write(target, [](h5::File& f) { f.write_tensor("w", torch::full({3}, 1.0)); });
  h5::atomic_write(target, [](h5::File& f) { f.write_tensor("w", torch::full({3}, 2.0)); });
  EXPECT_TRUE(torch::equal(h5::File::open_read(target).read_tensor("w"), torch::full({3}, 2.0)));
  // A writer that fails half-way must not damage the existing file nor leave debris.
  EXPECT_THROW_WITH(h5::atomic_write(target,
                                     [](h5::File& f) {
                                       f.write_tensor("w", torch::full({3}, 3.0));
                                       throw std::runtime_error("disk on fire");
                                     }),
                    "disk on fire");
  EXPECT_TRUE(torch::equal(h5::File::open_read(target).read_tensor("w"), torch::full({3}, 2.0)));
  int entries = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir_)) entries += entry.is_regular_file();
  EXPECT_EQ(entries, 1);
  EXPECT_THROW_WITH(h5::atomic_write(path("no/such/dir/x.h5"), [](h5::File&) {}), "does not exist");
  EXPECT_THROW_WITH(h5::check_writable(dir_.string()), "is a folder");
}

// What a killed writer leaves (its temporary file, named after the target) is removed; the target and
// the temporary files of other targets stay.
TEST_F(H5Test, StaleTemporariesOfOneTargetAreRemoved) {
  const std::string target = path("model.h5");
  h5::atomic_write(target, [](h5::File& f) { f.write_tensor("w", torch::full({3}, 1.0)); });
  std::ofstream(path(".model.h5.tmp.12345")) << "half";
  std::ofstream(path(".model.h5.tmp.777")) << "half";
  std::ofstream(path(".other.h5.tmp.12345")) << "half";
  EXPECT_EQ(h5::remove_stale_temporaries(target), 2);
  EXPECT_TRUE(std::filesystem::exists(target));
  EXPECT_TRUE(std::filesystem::exists(path(".other.h5.tmp.12345")));
  EXPECT_FALSE(std::filesystem::exists(path(".model.h5.tmp.12345")));
  EXPECT_EQ(h5::remove_stale_temporaries(target), 0);
  EXPECT_EQ(h5::remove_stale_temporaries(path("no/such/dir/x.h5")), 0);
}

} // namespace
} // namespace zsq
