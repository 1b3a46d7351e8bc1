// Shared test helpers: a seeded fixture and a temporary folder per test.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <string>

namespace zsq::test {

/// Seeds torch and gives each test a fresh temporary folder, removed after.
class SeedingFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::manual_seed(0);
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::filesystem::temp_directory_path() /
           ("zsq-test-" + std::string(info->test_suite_name()) + "-" + info->name() + "-" +
            std::to_string(::getpid()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  std::filesystem::path dir_;
};

/// The message of a c10::Error thrown by `fn` ("" when nothing is thrown).
template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

} // namespace zsq::test

#define EXPECT_THROW_WITH(statement, substring)                                  \
  do {                                                                           \
    const std::string zsq_msg_ = ::zsq::test::error_of([&] { statement; });     \
    EXPECT_NE(zsq_msg_.find(substring), std::string::npos)                       \
        << "expected an error containing \"" << (substring) << "\", got \"" << zsq_msg_ << "\""; \
  } while (0)
