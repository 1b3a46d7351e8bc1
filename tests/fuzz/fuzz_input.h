// The fuzz targets' shared plumbing: every ZSQ reader takes a path, so each input is written to a
// file in memory (/dev/shm) first. A reader may throw: a clear error is the right answer to a
// hostile file. A crash, a sanitizer report, a hang or a huge allocation is a finding.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>

#include <unistd.h>

namespace zsq::fuzz {

/// A folder of this process's own under /dev/shm (or the temporary folder).
inline std::string scratch() {
  const std::filesystem::path base = std::filesystem::exists("/dev/shm") ? "/dev/shm" : std::filesystem::temp_directory_path();
  const std::filesystem::path dir = base / ("zsq-fuzz-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  return dir.string();
}

/// Writes the input to `name` inside the scratch folder and returns the path.
inline std::string write_input(const uint8_t* data, size_t size, const std::string& name) {
  const std::string path = scratch() + "/" + name;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  return path;
}

/// Runs a reader; its exceptions are its clear errors.
template <typename Reader>
void survive(Reader&& reader) {
  try {
    reader();
  } catch (const std::exception&) {
  }
}

} // namespace zsq::fuzz
