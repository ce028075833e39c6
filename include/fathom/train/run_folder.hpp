// A run folder's bookkeeping: FolderLock, which lets one process at a time write into a folder
// (fathom-train's run folder, fathom-prepare's output), and truncate_metrics, which cuts
// metrics.jsonl back to a checkpoint's step when a run resumes, so every reader sees one curve.
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fathom/core/error.hpp"
#include "fathom/train/safetensors.hpp"

#if __has_include(<sys/file.h>)
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>
#define FATHOM_RUN_FOLDER_FLOCK 1
#else
#define FATHOM_RUN_FOLDER_FLOCK 0
#endif

namespace fathom::train {

// Holds an exclusive lock on DIR/.lock (flock) for its lifetime; the file holds the holder's
// process id and `what` it is, so a second process is refused at once with a message naming the
// holder. The lock goes with the process (a crash releases it), so a stale .lock file is harmless.
class FolderLock {
 public:
  FolderLock() = default;
  FolderLock(const std::filesystem::path& dir, const std::string& what) {
#if FATHOM_RUN_FOLDER_FLOCK
    path_ = dir / ".lock";
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    FATHOM_CHECK(fd_ >= 0,
                 "cannot open the lock file '" << path_.string() << "': " << std::strerror(errno));
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int error = errno;
      char holder[256] = {};
      const auto n = ::pread(fd_, holder, sizeof holder - 1, 0);
      ::close(fd_);
      fd_ = -1;
      std::string who = n > 0 ? std::string(holder, static_cast<std::size_t>(n)) : std::string();
      while (!who.empty() && (who.back() == '\n' || who.back() == ' ')) who.pop_back();
      FATHOM_CHECK(error != EWOULDBLOCK, "'" << dir.string() << "' is in use by "
                                             << (who.empty() ? "another process" : who)
                                             << "; wait for it to finish, or use another folder");
      FATHOM_FAIL("cannot lock '" << path_.string() << "': " << std::strerror(error));
    }
    const std::string me = "process " + std::to_string(::getpid()) + " (" + what + ")\n";
    if (::ftruncate(fd_, 0) == 0) (void)!::pwrite(fd_, me.data(), me.size(), 0);
#else
    (void)dir;
    (void)what;
#endif
  }
  ~FolderLock() { release(); }
  FolderLock(FolderLock&& o) noexcept : path_(std::move(o.path_)), fd_(o.fd_) { o.fd_ = -1; }
  FolderLock& operator=(FolderLock&& o) noexcept {
    if (this != &o) {
      release();
      path_ = std::move(o.path_);
      fd_ = o.fd_;
      o.fd_ = -1;
    }
    return *this;
  }
  FolderLock(const FolderLock&) = delete;
  FolderLock& operator=(const FolderLock&) = delete;

  bool held() const { return fd_ >= 0; }

 private:
  void release() {
#if FATHOM_RUN_FOLDER_FLOCK
    if (fd_ >= 0) {
      // Empties the holder's pid; a failure only leaves a stale pid in an unlocked file.
      [[maybe_unused]] const int truncated = ::ftruncate(fd_, 0);
      ::close(fd_);  // releases the flock
    }
#endif
    fd_ = -1;
  }

  std::filesystem::path path_;
  int fd_ = -1;
};

// Keeps the records of metrics.jsonl up to `step` (records without a step are kept, a torn last
// line is dropped) and rewrites the file atomically; returns how many records were dropped. A
// resumed run continues from its checkpoint, so the records of steps after it, written before an
// interruption, would otherwise appear twice.
inline std::size_t truncate_metrics(const std::filesystem::path& path, std::int64_t step) {
  if (!std::filesystem::exists(path)) return 0;
  std::ifstream in(path);
  FATHOM_CHECK(in.good(), "cannot read metrics file '" << path.string() << "'");
  std::string kept, line;
  std::size_t dropped = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    nlohmann::json record;
    try {
      record = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception&) {
      ++dropped;  // a line torn by a crash
      continue;
    }
    auto s = record.is_object() ? record.find("step") : record.end();
    if (record.is_object() && s != record.end() && s->is_number_integer() &&
        s->get<std::int64_t>() > step) {
      ++dropped;
      continue;
    }
    kept += line;
    kept += '\n';
  }
  in.close();
  if (dropped == 0) return 0;
  write_file_atomically(path, [&](std::FILE* f) {
    return kept.empty() || std::fwrite(kept.data(), 1, kept.size(), f) == kept.size();
  });
  return dropped;
}

}  // namespace fathom::train
