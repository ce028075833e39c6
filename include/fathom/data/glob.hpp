// Shard globs: "dir/*_train_*.bin" expands to the sorted list of files it matches. Wildcards
// (* and ?) are allowed in the file name only; the folder part is taken literally.
#pragma once

#include <algorithm>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "fathom/core/error.hpp"

namespace fathom::data {

// True when `name` matches `pattern`, where * matches any run of characters (also none) and ?
// matches exactly one. Iterative with one backtrack point, so it is linear in practice.
inline bool wildcard_match(std::string_view pattern, std::string_view name) {
  std::size_t p = 0, n = 0;
  std::size_t star = std::string_view::npos, resume = 0;
  while (n < name.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == name[n])) {
      ++p;
      ++n;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      resume = n;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      n = ++resume;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

inline bool has_wildcard(std::string_view s) {
  return s.find_first_of("*?") != std::string_view::npos;
}

// The regular files matching `pattern`, sorted by path. A pattern without wildcards names one
// file, which must exist. Throws, naming the pattern, when nothing matches.
inline std::vector<std::filesystem::path> expand_glob(const std::string& pattern) {
  namespace fs = std::filesystem;
  FATHOM_CHECK(!pattern.empty(),
               "expected a shard file or pattern such as 'dir/*_train_*.bin', "
               "got an empty string");
  const fs::path full(pattern);
  const fs::path folder = full.has_parent_path() ? full.parent_path() : fs::path(".");
  const std::string file_pattern = full.filename().string();
  FATHOM_CHECK(!has_wildcard(folder.string()),
               "shard pattern '" << pattern << "': expected wildcards in the file name only, got '"
                                 << folder.string() << "' as the folder");
  std::error_code ec;
  std::vector<fs::path> files;
  if (!has_wildcard(file_pattern)) {
    FATHOM_CHECK(fs::is_regular_file(full, ec), "shard pattern '" << pattern << "': no such file");
    files.push_back(full);
    return files;
  }
  FATHOM_CHECK(fs::is_directory(folder, ec), "shard pattern '"
                                                 << pattern << "' matches no file: folder '"
                                                 << folder.string() << "' does not exist");
  for (const fs::directory_entry& entry : fs::directory_iterator(folder, ec)) {
    if (entry.is_regular_file(ec) && wildcard_match(file_pattern, entry.path().filename().string()))
      files.push_back(full.has_parent_path() ? entry.path() : entry.path().filename());
  }
  FATHOM_CHECK(!ec, "shard pattern '" << pattern << "': cannot list folder '" << folder.string()
                                      << "': " << ec.message());
  FATHOM_CHECK(!files.empty(),
               "shard pattern '" << pattern << "' matches no file in '" << folder.string() << "'");
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace fathom::data
