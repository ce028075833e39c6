// Reading and writing the safetensors format (Hugging Face's tensor file) on plain bytes: records
// of name, dtype, shape and little-endian data, so checkpoints load in transformers unchanged.
#pragma once

// Layout: 8 bytes N (unsigned little-endian), N bytes of UTF-8 JSON starting with '{' and padded
// with spaces to a multiple of 8, then the data buffer. The JSON maps each tensor name to
// {"dtype", "shape", "data_offsets": [begin, end)} relative to the buffer, plus an optional
// "__metadata__" object of string to string. The buffer must be covered exactly: offsets start at
// 0, follow each other without holes or overlaps, and the last one ends at the end of the file.

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "fathom/core/error.hpp"
#include "fathom/core/scalar.hpp"

#if __has_include(<unistd.h>)
#include <fcntl.h>
#include <unistd.h>
#define FATHOM_SAFETENSORS_POSIX 1
#else
#define FATHOM_SAFETENSORS_POSIX 0
#endif

namespace fathom::train {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian and is copied as raw bytes: a big-endian host "
              "would need byte swapping, which fathom does not implement");

// The `__metadata__` object: free-form string to string (transformers wants {"format": "pt"}).
using SafetensorsMetadata = std::map<std::string, std::string>;

// One tensor that owns its bytes. `dtype` is a safetensors name ("F32", "BF16", "I32", ...), data
// holds numel(shape) * dtype_size(dtype) bytes in row-major order.
struct TensorRecord {
  std::string name;
  std::string dtype;
  std::vector<std::int64_t> shape;
  std::vector<std::byte> data;
};

// The same without ownership, for writing from memory that lives elsewhere (a tensor's storage)
// without a copy. Everything it points to must outlive the write.
struct TensorView {
  std::string_view name;
  std::string_view dtype;
  std::span<const std::int64_t> shape;
  std::span<const std::byte> data;
};

inline TensorView view_of(const TensorRecord& r) { return {r.name, r.dtype, r.shape, r.data}; }

// What the header says about one tensor; begin and end are offsets into the data buffer.
struct TensorInfo {
  std::string name;
  std::string dtype;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0;
  std::uint64_t end = 0;
};

// A parsed and checked header: tensors in file (offset) order, and where the data buffer starts.
struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;
  SafetensorsMetadata metadata;
  std::uint64_t data_start = 0;  // 8 + N: file offset of the buffer

  const TensorInfo* find(std::string_view name) const {
    for (const auto& t : tensors)
      if (t.name == name) return &t;
    return nullptr;
  }
};

// A whole file: records in file order and the metadata.
struct SafetensorsFile {
  std::vector<TensorRecord> tensors;
  SafetensorsMetadata metadata;

  const TensorRecord* find(std::string_view name) const {
    for (const auto& t : tensors)
      if (t.name == name) return &t;
    return nullptr;
  }
  const TensorRecord& at(std::string_view name) const {
    const TensorRecord* r = find(name);
    FATHOM_CHECK(r != nullptr, "expected a tensor named '" << name << "' in the safetensors file, "
                                                           << "got none among " << tensors.size()
                                                           << " tensors");
    return *r;
  }
};

// The header of the reference implementation is capped at 100 MB to refuse absurd files cheaply.
inline constexpr std::uint64_t safetensors_max_header_bytes = 100'000'000;

// Bytes per element of a safetensors dtype; 0 when the name is unknown.
constexpr std::size_t dtype_size_or_zero(std::string_view dtype) {
  constexpr std::pair<std::string_view, std::size_t> table[] = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4}, {"F64", 8}, {"I64", 8},     {"U64", 8}};
  for (const auto& [name, size] : table)
    if (name == dtype) return size;
  return 0;
}

inline constexpr std::string_view safetensors_dtype_names =
    "BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64";

// Bytes per element of a safetensors dtype; throws for an unknown name.
inline std::size_t dtype_size(std::string_view dtype) {
  std::size_t size = dtype_size_or_zero(dtype);
  FATHOM_CHECK(size != 0, "expected a safetensors dtype (one of " << safetensors_dtype_names
                                                                  << "), got '" << dtype << "'");
  return size;
}

// The safetensors dtype name of a C++ element type.
template <class T>
constexpr std::string_view dtype_name_of() {
  if constexpr (std::is_same_v<T, float>)
    return "F32";
  else if constexpr (std::is_same_v<T, double>)
    return "F64";
  else if constexpr (std::is_same_v<T, ::fathom::bf16>)
    return "BF16";
  else if constexpr (std::is_same_v<T, bool>)
    return "BOOL";
  else if constexpr (std::is_same_v<T, std::int8_t>)
    return "I8";
  else if constexpr (std::is_same_v<T, std::uint8_t>)
    return "U8";
  else if constexpr (std::is_same_v<T, std::int16_t>)
    return "I16";
  else if constexpr (std::is_same_v<T, std::uint16_t>)
    return "U16";
  else if constexpr (std::is_same_v<T, std::int32_t>)
    return "I32";
  else if constexpr (std::is_same_v<T, std::uint32_t>)
    return "U32";
  else if constexpr (std::is_same_v<T, std::int64_t>)
    return "I64";
  else if constexpr (std::is_same_v<T, std::uint64_t>)
    return "U64";
  else
    static_assert(sizeof(T) == 0,
                  "no safetensors dtype for this element type: use one of "
                  "float, double, fathom::bf16, bool or a fixed-width integer");
}

// A test seam for fathom's file writers (safetensors, JSON, checkpoints): IoFaults::fail_at(n)
// makes the n-th file operation from then on fail as a full or failing disk would, where the
// operations counted are each file's write, flush, fsync, close and rename, and each folder's
// creation and fsync. Tests arm every n in turn to check that no failure leaves a damaged
// checkpoint that is picked, or loses the previous one. Off (0) by default.
class IoFaults {
 public:
  static void fail_at(std::int64_t n) { countdown() = n; }
  static void reset() { countdown() = 0; }
  // File operations counted so far (tests: how many a save makes).
  static std::int64_t operations() { return counter().load(); }
  // Counts one operation; false when it is the one armed to fail.
  static bool pass() {
    ++counter();
    std::int64_t c = countdown().load();
    while (c > 0 && !countdown().compare_exchange_weak(c, c - 1)) {
    }
    return c != 1;
  }

 private:
  static std::atomic<std::int64_t>& countdown() {
    static std::atomic<std::int64_t> c{0};
    return c;
  }
  static std::atomic<std::int64_t>& counter() {
    static std::atomic<std::int64_t> c{0};
    return c;
  }
};

namespace detail {

// numel * element size, or false when the product does not fit in 64 bits.
inline bool safetensors_byte_size(std::span<const std::int64_t> shape, std::size_t element_size,
                                  std::uint64_t& bytes) {
  std::uint64_t n = element_size;
  for (std::int64_t d : shape) {
    if (d < 0) return false;
    auto ud = static_cast<std::uint64_t>(d);
    if (ud != 0 && n > std::numeric_limits<std::uint64_t>::max() / ud) return false;
    n *= ud;
  }
  bytes = n;
  return true;
}

inline std::string shape_string(std::span<const std::int64_t> shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Parses and checks the header text against the size of the data buffer that follows it.
// A template over the JSON type so that nlohmann::json's parser is instantiated only where a
// header is parsed (docs/performance.md, Compile time).
template <class Json = nlohmann::json>
SafetensorsHeader parse_safetensors_header(std::string_view text, std::uint64_t data_bytes,
                                           const std::string& source) {
  using json = Json;
  FATHOM_CHECK(!text.empty() && text.front() == '{',
               "safetensors file '"
                   << source << "': expected the JSON header to start with '{', got "
                   << (text.empty() ? std::string("an empty header")
                                    : "byte " + std::to_string(static_cast<int>(
                                                    static_cast<unsigned char>(text.front())))));
  // Duplicate tensor names are forbidden but a JSON object silently keeps the last one: count
  // the top-level keys as they are parsed and compare with what the object holds.
  std::size_t top_level_keys = 0;
  typename json::parser_callback_t count_keys = [&](int depth, typename json::parse_event_t event,
                                                    json&) {
    if (event == json::parse_event_t::key && depth == 1) ++top_level_keys;
    return true;
  };
  json header;
  try {
    header = json::parse(text.begin(), text.end(), count_keys);
  } catch (const typename json::exception& e) {
    FATHOM_FAIL("safetensors file '"
                << source << "': expected a valid JSON header, got a parse error: " << e.what());
  }
  FATHOM_CHECK(header.is_object(), "safetensors file '" << source
                                                        << "': expected the header to be a JSON "
                                                           "object, got "
                                                        << header.type_name());
  FATHOM_CHECK(top_level_keys == header.size(),
               "safetensors file '" << source << "': expected unique tensor names, got "
                                    << top_level_keys - header.size() << " duplicate key(s)");

  SafetensorsHeader out;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& entry = it.value();
    if (name == "__metadata__") {
      FATHOM_CHECK(entry.is_object(), "safetensors file '" << source
                                                           << "': expected __metadata__ to be an "
                                                              "object of strings, got "
                                                           << entry.type_name());
      for (auto m = entry.begin(); m != entry.end(); ++m) {
        FATHOM_CHECK(m.value().is_string(),
                     "safetensors file '" << source << "': expected __metadata__ value '" << m.key()
                                          << "' to be a string, got " << m.value().type_name());
        out.metadata[m.key()] = m.value().template get<std::string>();
      }
      continue;
    }
    const std::string where = "safetensors file '" + source + "', tensor '" + name + "'";
    FATHOM_CHECK(
        entry.is_object(),
        where << ": expected an object with dtype, shape, data_offsets, got " << entry.type_name());
    TensorInfo info;
    info.name = name;

    auto dtype = entry.find("dtype");
    FATHOM_CHECK(dtype != entry.end() && dtype->is_string(),
                 where << ": expected a string field 'dtype', got "
                       << (dtype == entry.end() ? "none" : dtype->type_name()));
    info.dtype = dtype->template get<std::string>();
    FATHOM_CHECK(dtype_size_or_zero(info.dtype) != 0, where << ": expected a dtype among "
                                                            << safetensors_dtype_names << ", got '"
                                                            << info.dtype << "'");

    auto shape = entry.find("shape");
    FATHOM_CHECK(shape != entry.end() && shape->is_array(),
                 where << ": expected an array field 'shape', got "
                       << (shape == entry.end() ? "none" : shape->type_name()));
    for (const json& d : *shape) {
      FATHOM_CHECK(d.is_number_unsigned() &&
                       d.template get<std::uint64_t>() <=
                           static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()),
                   where << ": expected non-negative integer dimensions, got " << shape->dump());
      info.shape.push_back(d.template get<std::int64_t>());
    }

    auto offsets = entry.find("data_offsets");
    FATHOM_CHECK(offsets != entry.end() && offsets->is_array() && offsets->size() == 2 &&
                     (*offsets)[0].is_number_unsigned() && (*offsets)[1].is_number_unsigned(),
                 where << ": expected 'data_offsets' as [begin, end] of non-negative integers, got "
                       << (offsets == entry.end() ? std::string("none") : offsets->dump()));
    info.begin = (*offsets)[0].template get<std::uint64_t>();
    info.end = (*offsets)[1].template get<std::uint64_t>();
    FATHOM_CHECK(info.begin <= info.end, where << ": expected data_offsets begin <= end, got ["
                                               << info.begin << ", " << info.end << "]");
    FATHOM_CHECK(info.end <= data_bytes, where << ": expected data_offsets within the "
                                               << data_bytes << "-byte data buffer, got ["
                                               << info.begin << ", " << info.end << "]");
    std::uint64_t bytes = 0;
    FATHOM_CHECK(safetensors_byte_size(info.shape, dtype_size_or_zero(info.dtype), bytes),
                 where << ": expected a shape whose byte size fits in 64 bits, got "
                       << shape_string(info.shape));
    FATHOM_CHECK(bytes == info.end - info.begin,
                 where << ": expected " << bytes << " bytes for " << info.dtype << " "
                       << shape_string(info.shape) << ", got data_offsets [" << info.begin << ", "
                       << info.end << "] (" << info.end - info.begin << " bytes)");
    out.tensors.push_back(std::move(info));
  }

  // The buffer must be indexed exactly: sorted by offset, each tensor starts where the previous
  // ended, and the last ends at the end of the file (no hidden bytes, no shared bytes).
  std::sort(out.tensors.begin(), out.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::uint64_t position = 0;
  for (const auto& t : out.tensors) {
    FATHOM_CHECK(t.begin >= position, "safetensors file '"
                                          << source << "', tensor '" << t.name
                                          << "': expected data_offsets starting at " << position
                                          << ", got [" << t.begin << ", " << t.end
                                          << "], which overlaps the previous tensor");
    FATHOM_CHECK(t.begin == position, "safetensors file '"
                                          << source << "', tensor '" << t.name
                                          << "': expected data_offsets starting at " << position
                                          << ", got [" << t.begin << ", " << t.end
                                          << "], which leaves a hole in the data buffer");
    position = t.end;
  }
  FATHOM_CHECK(position == data_bytes, "safetensors file '"
                                           << source << "': expected the tensors to cover the "
                                           << data_bytes << "-byte data buffer, got " << position
                                           << " bytes covered");
  return out;
}

struct SafetensorsPrefix {
  SafetensorsHeader header;
  std::uint64_t file_size = 0;
};

// Reads and checks the 8-byte length and the JSON header of an open file.
template <class = void>
SafetensorsPrefix read_safetensors_prefix(std::ifstream& in, const std::filesystem::path& path) {
  const std::string source = path.string();
  std::error_code ec;
  const std::uint64_t file_size = std::filesystem::file_size(path, ec);
  FATHOM_CHECK(
      !ec, "safetensors file '" << source << "': expected a readable file, got " << ec.message());
  FATHOM_CHECK(file_size >= 8, "safetensors file '" << source
                                                    << "': expected at least the 8-byte header "
                                                       "length, got a file of "
                                                    << file_size << " bytes");
  unsigned char length_bytes[8];
  in.read(reinterpret_cast<char*>(length_bytes), 8);
  FATHOM_CHECK(in.gcount() == 8, "safetensors file '" << source
                                                      << "': expected to read 8 bytes of header "
                                                         "length, got "
                                                      << in.gcount());
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | length_bytes[i];
  FATHOM_CHECK(n <= safetensors_max_header_bytes,
               "safetensors file '" << source << "': expected a header of at most "
                                    << safetensors_max_header_bytes << " bytes, got a length of "
                                    << n);
  FATHOM_CHECK(n <= file_size - 8, "safetensors file '"
                                       << source << "': expected a header length that fits the "
                                       << file_size << "-byte file, got " << n
                                       << " (truncated or corrupt file)");
  std::string text(static_cast<std::size_t>(n), '\0');
  in.read(text.data(), static_cast<std::streamsize>(n));
  FATHOM_CHECK(static_cast<std::uint64_t>(in.gcount()) == n,
               "safetensors file '" << source << "': expected to read a " << n
                                    << "-byte header, got " << in.gcount() << " bytes");
  SafetensorsPrefix prefix{parse_safetensors_header(text, file_size - 8 - n, source), file_size};
  prefix.header.data_start = 8 + n;
  return prefix;
}

inline std::ifstream open_safetensors(const std::filesystem::path& path) {
  std::error_code ec;
  FATHOM_CHECK(std::filesystem::is_regular_file(path, ec),
               "safetensors file '"
                   << path.string() << "': expected an existing file, got "
                   << (std::filesystem::exists(path, ec) ? "something else" : "nothing there"));
  std::ifstream in(path, std::ios::binary);
  FATHOM_CHECK(in.is_open(), "safetensors file '" << path.string()
                                                  << "': expected to open it for reading, got "
                                                  << std::strerror(errno));
  return in;
}

inline void read_tensor_bytes(std::ifstream& in, const SafetensorsHeader& header,
                              const TensorInfo& info, std::vector<std::byte>& data,
                              const std::string& source) {
  data.resize(static_cast<std::size_t>(info.end - info.begin));
  in.seekg(static_cast<std::streamoff>(header.data_start + info.begin));
  in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(data.size()));
  FATHOM_CHECK(in && static_cast<std::size_t>(in.gcount()) == data.size(),
               "safetensors file '" << source << "', tensor '" << info.name
                                    << "': expected to read " << data.size() << " bytes, got "
                                    << in.gcount());
}

// Writes everything to an open FILE*, then flushes it to the disk; false on any failure.
inline bool write_all(std::FILE* f, const void* data, std::size_t size) {
  return size == 0 || std::fwrite(data, 1, size, f) == size;
}

// Makes the renames into `dir` durable (fsync of the folder); false on failure. A folder that
// cannot be opened for it (no permission) is not an error: there is nothing more to be done.
inline bool sync_directory([[maybe_unused]] const std::filesystem::path& dir) {
  if (!IoFaults::pass()) return false;
#if FATHOM_SAFETENSORS_POSIX
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return true;
  const bool ok = ::fsync(fd) == 0 || errno == EINVAL;  // EINVAL: the file system has no fsync
  ::close(fd);
  return ok;
#else
  return true;
#endif
}

// Renames `from` to `to` (replacing a file, or an empty folder), counted by IoFaults.
inline void rename_or_fail(const std::filesystem::path& from, const std::filesystem::path& to) {
  std::error_code ec;
  if (!IoFaults::pass())
    ec = std::make_error_code(std::errc::io_error);
  else
    std::filesystem::rename(from, to, ec);
  FATHOM_CHECK(!ec, "expected to rename '" << from.string() << "' to '" << to.string() << "', got "
                                           << ec.message());
}

inline void sync_directory_or_fail(const std::filesystem::path& dir) {
  FATHOM_CHECK(sync_directory(dir), "expected to sync folder '" << dir.string()
                                                                << "' to the disk, got "
                                                                << std::strerror(errno));
}

}  // namespace detail

// Writes `bytes` to path through path + ".tmp" and a rename, so that readers (and a crash) see
// either the previous file or the new one complete, never a torn one. Used for every file of a
// checkpoint.
template <class Producer>
requires std::is_invocable_r_v<bool, Producer, std::FILE*>
void write_file_atomically(const std::filesystem::path& path, Producer&& produce) {
  const std::filesystem::path tmp = path.string() + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  FATHOM_CHECK(f != nullptr, "expected to create '" << tmp.string() << "' for writing, got "
                                                    << std::strerror(errno));
  // The data must be on the disk before the rename publishes it, or a power loss could leave
  // the new name pointing at a partly written file.
  // Each step is counted by IoFaults; an injected failure reads as EIO.
  auto step = [](bool done) {
    if (!done) return false;
    if (IoFaults::pass()) return true;
    errno = EIO;
    return false;
  };
  int error = 0;
  bool ok = step(produce(f)) && step(std::fflush(f) == 0);
#if FATHOM_SAFETENSORS_POSIX
  ok = ok && step(::fsync(::fileno(f)) == 0);
#endif
  if (!ok) error = errno;
  const bool closed = std::fclose(f) == 0;
  if (ok && !step(closed)) {
    ok = false;
    error = errno;
  }
  if (!ok) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    FATHOM_FAIL("expected to write '" << tmp.string() << "' completely, got "
                                      << (error ? std::strerror(error) : "a write failure") << "; '"
                                      << path.string() << "' is left as it was");
  }
  try {
    detail::rename_or_fail(tmp, path);
  } catch (...) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    throw;
  }
  detail::sync_directory_or_fail(path.parent_path());
}

// Writes the tensors and metadata as a safetensors file, atomically (see write_file_atomically).
// Every record is checked before anything is written: a known dtype, non-negative dimensions,
// numel * dtype size == data size, unique names, none called "__metadata__". Like the reference
// writer, tensors are laid out by decreasing element size, then by name, so each starts at a
// multiple of its element size from an 8-aligned buffer; the header lists them in that order.
inline void write_safetensors(const std::filesystem::path& path,
                              std::span<const TensorView> tensors,
                              const SafetensorsMetadata& metadata = {}) {
  const std::string source = path.string();
  std::vector<const TensorView*> order;
  order.reserve(tensors.size());
  for (const TensorView& t : tensors) {
    const std::string where =
        "writing safetensors file '" + source + "', tensor '" + std::string(t.name) + "'";
    FATHOM_CHECK(t.name != "__metadata__",
                 where << ": expected a tensor name other than the reserved '__metadata__'");
    const std::size_t size = dtype_size_or_zero(t.dtype);
    FATHOM_CHECK(size != 0, where << ": expected a dtype among " << safetensors_dtype_names
                                  << ", got '" << t.dtype << "'");
    std::uint64_t bytes = 0;
    FATHOM_CHECK(detail::safetensors_byte_size(t.shape, size, bytes),
                 where << ": expected non-negative dimensions whose byte size fits in 64 bits, got "
                       << detail::shape_string(t.shape));
    FATHOM_CHECK(bytes == t.data.size(), where << ": expected " << bytes << " bytes for " << t.dtype
                                               << " " << detail::shape_string(t.shape) << ", got "
                                               << t.data.size() << " bytes");
    order.push_back(&t);
  }
  std::sort(order.begin(), order.end(), [](const TensorView* a, const TensorView* b) {
    std::size_t sa = dtype_size_or_zero(a->dtype), sb = dtype_size_or_zero(b->dtype);
    return sa != sb ? sa > sb : a->name < b->name;
  });
  for (std::size_t i = 1; i < order.size(); ++i)
    FATHOM_CHECK(order[i - 1]->name != order[i]->name,
                 "writing safetensors file '" << source << "': expected unique tensor names, got '"
                                              << order[i]->name << "' twice");

  // ordered_json keeps __metadata__ first and the tensors in buffer order, as the reference does.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  for (const TensorView* t : order) {
    nlohmann::ordered_json entry;
    entry["dtype"] = t->dtype;
    entry["shape"] = std::vector<std::int64_t>(t->shape.begin(), t->shape.end());
    entry["data_offsets"] = {offset, offset + t->data.size()};
    header[std::string(t->name)] = std::move(entry);
    offset += t->data.size();
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    FATHOM_FAIL("writing safetensors file '" << source << "': expected UTF-8 tensor names and "
                                             << "metadata, got: " << e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  unsigned char length_bytes[8];
  for (int i = 0; i < 8; ++i)
    length_bytes[i] =
        static_cast<unsigned char>(static_cast<std::uint64_t>(text.size()) >> (8 * i));

  write_file_atomically(path, [&](std::FILE* f) {
    if (!detail::write_all(f, length_bytes, 8) || !detail::write_all(f, text.data(), text.size()))
      return false;
    for (const TensorView* t : order)
      if (!detail::write_all(f, t->data.data(), t->data.size())) return false;
    return true;
  });
}

inline void write_safetensors(const std::filesystem::path& path,
                              const std::vector<TensorRecord>& tensors,
                              const SafetensorsMetadata& metadata = {}) {
  std::vector<TensorView> views;
  views.reserve(tensors.size());
  for (const auto& t : tensors) views.push_back(view_of(t));
  write_safetensors(path, std::span<const TensorView>(views), metadata);
}

// Reads and checks only the header: names, dtypes, shapes, offsets and metadata, without the data.
template <class = void>
SafetensorsHeader read_safetensors_header(const std::filesystem::path& path) {
  std::ifstream in = detail::open_safetensors(path);
  return detail::read_safetensors_prefix(in, path).header;
}

// Reads one tensor's bytes, given the header read before from the same file.
inline TensorRecord read_safetensors_tensor(const std::filesystem::path& path,
                                            const SafetensorsHeader& header,
                                            std::string_view name) {
  const TensorInfo* info = header.find(name);
  FATHOM_CHECK(info != nullptr, "safetensors file '"
                                    << path.string() << "': expected a tensor named '" << name
                                    << "', got none among " << header.tensors.size() << " tensors");
  std::ifstream in = detail::open_safetensors(path);
  TensorRecord record{info->name, info->dtype, info->shape, {}};
  detail::read_tensor_bytes(in, header, *info, record.data, path.string());
  return record;
}

// Reads and checks a whole file; tensors come in file order.
template <class = void>
SafetensorsFile read_safetensors(const std::filesystem::path& path) {
  std::ifstream in = detail::open_safetensors(path);
  detail::SafetensorsPrefix prefix = detail::read_safetensors_prefix(in, path);
  SafetensorsFile file;
  file.metadata = std::move(prefix.header.metadata);
  file.tensors.reserve(prefix.header.tensors.size());
  for (const TensorInfo& info : prefix.header.tensors) {
    TensorRecord record{info.name, info.dtype, info.shape, {}};
    detail::read_tensor_bytes(in, prefix.header, info, record.data, path.string());
    file.tensors.push_back(std::move(record));
  }
  return file;
}

// A record holding a copy of typed values; the dtype follows from T.
template <class T>
TensorRecord make_tensor_record(std::string name, std::vector<std::int64_t> shape,
                                std::span<const T> values) {
  TensorRecord r{std::move(name), std::string(dtype_name_of<T>()), std::move(shape), {}};
  std::uint64_t bytes = 0;
  FATHOM_CHECK(
      detail::safetensors_byte_size(r.shape, sizeof(T), bytes) && bytes == values.size_bytes(),
      "tensor '" << r.name << "': expected " << detail::shape_string(r.shape) << " to hold "
                 << values.size() << " values");
  auto b = std::as_bytes(values);
  r.data.assign(b.begin(), b.end());
  return r;
}

// The values of a record as T; the record's dtype must be T's.
template <class T>
std::vector<T> tensor_values(const TensorRecord& r) {
  static_assert(!std::is_same_v<T, bool>,
                "std::vector<bool> packs bits: read BOOL tensors as std::uint8_t instead");
  FATHOM_CHECK(r.dtype == dtype_name_of<T>(), "tensor '" << r.name << "': expected dtype "
                                                         << dtype_name_of<T>() << ", got "
                                                         << r.dtype);
  FATHOM_CHECK(r.data.size() % sizeof(T) == 0, "tensor '" << r.name << "': expected a multiple of "
                                                          << sizeof(T) << " bytes, got "
                                                          << r.data.size());
  std::vector<T> values(r.data.size() / sizeof(T));
  if (!r.data.empty()) std::memcpy(values.data(), r.data.data(), r.data.size());
  return values;
}

}  // namespace fathom::train
