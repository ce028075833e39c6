// A run folder's layout and bookkeeping: the names of its files (metrics.jsonl, ckpt-STEP),
// FolderLock, which lets one process at a time write into a folder (fathom-train's run folder,
// fathom-prepare's output), truncate_metrics, which cuts metrics.jsonl back to a checkpoint's step
// when a run resumes, and check_run_folder / remove_run_files, which keep one run in a folder: a
// run already there is continued (resume) or replaced (overwrite), never mixed with another.
#pragma once

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <nlohmann/json.hpp>

#include "fathom/core/error.hpp"
#include "fathom/train/errors.hpp"
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

inline std::string checkpoint_name(std::int64_t step) { return "ckpt-" + std::to_string(step); }

// The step of a folder named ckpt-STEP, or nullopt (also when STEP does not fit in 64 bits).
inline std::optional<std::int64_t> checkpoint_step(const std::filesystem::path& dir) {
  const std::string name = dir.filename().string();
  if (name.rfind("ckpt-", 0) != 0 || name.size() == 5) return std::nullopt;
  std::int64_t step = 0;
  for (char c : name.substr(5)) {
    if (c < '0' || c > '9') return std::nullopt;
    if (__builtin_mul_overflow(step, 10, &step) || __builtin_add_overflow(step, c - '0', &step))
      return std::nullopt;
  }
  return step;
}

// The files a checkpoint folder holds (write_checkpoint writes nothing else; tokenizer.model only
// for a run on SentencePiece data). Replacing a run removes a checkpoint only when it holds these.
inline constexpr std::array<std::string_view, 5> checkpoint_files = {
    "model.safetensors", "optimizer.safetensors", "config.json", "trainer_state.json",
    "tokenizer.model"};

inline bool is_checkpoint_file(std::string_view name) {
  return std::find(checkpoint_files.begin(), checkpoint_files.end(), name) !=
         checkpoint_files.end();
}

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
template <class = void>
std::size_t truncate_metrics(const std::filesystem::path& path, std::int64_t step) {
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

namespace detail {

// What an interrupted write_checkpoint leaves: .ckpt-STEP.tmp (a save being written) or
// .ckpt-STEP.old (the checkpoint it replaced); the step, or nullopt for any other name.
inline std::optional<std::int64_t> save_leftover_step(const std::string& name) {
  if (name.size() < 6 || name[0] != '.' || !(name.ends_with(".tmp") || name.ends_with(".old")))
    return std::nullopt;
  return checkpoint_step(name.substr(1, name.size() - 5));
}

// Why `entry` of a checkpoint folder (or of a save's leftover, `leftover`) is not a file fathom
// wrote there, or "" when it is one: a regular file named in checkpoint_files (a leftover may also
// hold their half-written NAME.tmp).
inline std::string foreign_checkpoint_entry(const std::filesystem::directory_entry& entry,
                                            bool leftover) {
  std::error_code ec;
  const std::string name = entry.path().filename().string();
  const bool regular = entry.symlink_status(ec).type() == std::filesystem::file_type::regular;
  const bool known =
      is_checkpoint_file(name) ||
      (leftover && name.ends_with(".tmp") && is_checkpoint_file(name.substr(0, name.size() - 4)));
  if (regular && known) return {};
  return "'" + entry.path().string() + "' is not a file fathom writes into a checkpoint";
}

// Throws OptionError "overwrite" when `file` (one of run_files(dir)) holds anything fathom did not
// write, so that replacing the run removes nothing else.
inline void check_removable(const std::filesystem::path& dir, const std::filesystem::path& file) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::symlink_status(file, ec).type() != fs::file_type::directory) return;  // metrics.jsonl
  const bool leftover = save_leftover_step(file.filename().string()).has_value();
  for (const auto& entry : fs::directory_iterator(file, ec)) {
    const std::string why = foreign_checkpoint_entry(entry, leftover);
    if (!why.empty())
      throw OptionError("overwrite", "cannot replace the run in '" + dir.string() + "': " + why +
                                         "; move it out of the folder, or train into another one");
  }
  if (ec) throw OptionError("overwrite", "cannot read '" + file.string() + "': " + ec.message());
}

}  // namespace detail

// The files of a fathom run in `dir`, in this order: metrics.jsonl, the ckpt-STEP folders by step,
// and what an interrupted save left (.ckpt-STEP.tmp, .ckpt-STEP.old). Only a regular file and real
// folders count (a symbolic link is never a run's); everything else in the folder, such as the lock
// file or fathom-diagnose's JSON, is not a run's. Empty for a folder that does not exist.
inline std::vector<std::filesystem::path> run_files(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  std::vector<fs::path> metrics, checkpoints, leftovers;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return {};
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    std::error_code type_ec;  // an entry gone meanwhile is no file of the run
    const auto type = entry.symlink_status(type_ec).type();
    if (name == "metrics.jsonl" && type == fs::file_type::regular)
      metrics.push_back(entry.path());
    else if (type == fs::file_type::directory && checkpoint_step(entry.path()))
      checkpoints.push_back(entry.path());
    else if (type == fs::file_type::directory && detail::save_leftover_step(name))
      leftovers.push_back(entry.path());
  }
  FATHOM_CHECK(!ec, "cannot list the run folder '" << dir.string() << "': " << ec.message());
  std::sort(checkpoints.begin(), checkpoints.end(), [](const fs::path& a, const fs::path& b) {
    return *checkpoint_step(a) < *checkpoint_step(b);
  });
  std::sort(leftovers.begin(), leftovers.end());
  metrics.insert(metrics.end(), checkpoints.begin(), checkpoints.end());
  metrics.insert(metrics.end(), leftovers.begin(), leftovers.end());
  return metrics;
}

// The names of `files` for a message: all of them up to six, else the first four and a count.
inline std::string describe_run_files(const std::vector<std::filesystem::path>& files) {
  std::string s;
  const std::size_t shown = files.size() <= 6 ? files.size() : 4;
  for (std::size_t i = 0; i < shown; ++i) s += (i ? ", " : "") + files[i].filename().string();
  if (shown < files.size())
    s += " and " + std::to_string(files.size() - shown) + " more (" + std::to_string(files.size()) +
         " in all)";
  return s;
}

// What training into `out` may do with a run already there (run_files): with none there, nothing
// is in the way; `resume` naming `out` or one of its checkpoints continues that run; `overwrite`
// replaces it. Returns the files that replacing removes (remove_run_files), empty unless
// `overwrite` finds a run, each checked to hold only what fathom wrote. Nothing is changed.
// Throws ExistingRun when `out` holds a run that is neither resumed nor replaced (resuming another
// folder's checkpoint into it would mix two runs as well), OptionError "overwrite" when replacing
// would remove the checkpoint `resume` loads, or when a checkpoint holds a file fathom did not
// write.
inline std::vector<std::filesystem::path> check_run_folder(const std::filesystem::path& out,
                                                           const std::string& resume,
                                                           bool overwrite) {
  namespace fs = std::filesystem;
  std::error_code ec;
  // A resume that names nothing fails on its own (resume()) before anything is written.
  if (!resume.empty() && !fs::exists(resume, ec)) return {};
  bool resumes_out = false;
  if (!resume.empty() && fs::is_directory(out, ec)) {
    fs::path r = fs::absolute(resume, ec).lexically_normal();
    if (r.filename().empty()) r = r.parent_path();  // a trailing separator
    resumes_out = fs::equivalent(r, out, ec) || fs::equivalent(r.parent_path(), out, ec);
  }
  if (overwrite && resumes_out)
    throw OptionError(
        "overwrite",
        "cannot be combined with resuming from the run it would replace ('" + out.string() + "')");
  std::vector<fs::path> files = run_files(out);
  if (files.empty() || resumes_out) return {};
  if (!overwrite) throw ExistingRun(out, describe_run_files(files));
  for (const auto& f : files) detail::check_removable(out, f);
  return files;
}

// Removes `files` (from check_run_folder, with overwrite) from the run folder `dir`, checking each
// again first; returns one line saying what was removed and what was kept, for the log.
inline std::string remove_run_files(const std::filesystem::path& dir,
                                    const std::vector<std::filesystem::path>& files) {
  namespace fs = std::filesystem;
  for (const auto& f : files) detail::check_removable(dir, f);
  std::error_code ec;
  for (const auto& f : files) {
    fs::remove_all(f, ec);
    FATHOM_CHECK(!ec, "cannot remove '" << f.string() << "' (replacing the run in '" << dir.string()
                                        << "'): " << ec.message());
  }
  detail::sync_directory(dir);
  std::vector<fs::path> kept;
  for (const auto& entry : fs::directory_iterator(dir, ec))
    if (entry.path().filename() != ".lock") kept.push_back(entry.path());
  std::sort(kept.begin(), kept.end());
  std::string line =
      "replaced the run in " + dir.string() + ": removed " + describe_run_files(files);
  if (!kept.empty()) line += "; kept " + describe_run_files(kept) + " (not the run's files)";
  return line;
}

}  // namespace fathom::train
