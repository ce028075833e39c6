// Token shards in the llm.c format: a 256-int32 header (magic, version, token count) followed by
// the tokens as uint16 or uint32. read_shard/write_shard load and save whole shards; ShardView maps
// one.
#pragma once

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <vector>

#if __has_include(<sys/mman.h>) && __has_include(<unistd.h>)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define FATHOM_DATA_HAS_MMAP 1
#else
#define FATHOM_DATA_HAS_MMAP 0
#endif

#include "fathom/core/error.hpp"

namespace fathom::data {

// How tokens are stored after the header. The values are the bytes per token.
enum class TokenWidth : int { u16 = 2, u32 = 4 };

// The header layout of llm.c (dev/data/data_common.py): header[0] magic, header[1] version,
// header[2] token count; the other 253 ints are zero.
inline constexpr int shard_header_ints = 256;
inline constexpr std::size_t shard_header_bytes = shard_header_ints * sizeof(std::int32_t);
inline constexpr std::int32_t shard_magic_u16 = 20240520;  // with version 1: uint16 tokens (GPT-2)
inline constexpr std::int32_t shard_version_u16 = 1;
inline constexpr std::int32_t shard_magic_u32 =
    20240801;  // with version 7: uint32 tokens (Llama 3)
inline constexpr std::int32_t shard_version_u32 = 7;

inline const char* width_name(TokenWidth w) { return w == TokenWidth::u16 ? "uint16" : "uint32"; }

// A whole shard in memory. Tokens are widened to uint32 whatever the file stores.
struct Shard {
  std::string path;
  TokenWidth width = TokenWidth::u16;
  std::vector<std::uint32_t> tokens;

  // Throws unless every token id is < vocab, naming the file, the offset and the id.
  void validate(std::uint32_t vocab) const;
};

// What the header of a shard says, after checking it against the file.
struct ShardHeader {
  TokenWidth width = TokenWidth::u16;
  std::size_t num_tokens = 0;
};

// The narrowest width that holds every token: uint16 when all ids are < 65536.
inline TokenWidth narrowest_width(std::span<const std::uint32_t> tokens) {
  bool fits = std::all_of(tokens.begin(), tokens.end(), [](std::uint32_t t) { return t < 65536u; });
  return fits ? TokenWidth::u16 : TokenWidth::u32;
}

namespace detail {

inline std::string quoted(const std::filesystem::path& p) { return "'" + p.string() + "'"; }

// Checks magic, version, count and file size; `file_bytes` is the size of the whole file.
inline ShardHeader parse_shard_header(const std::int32_t* header, std::uintmax_t file_bytes,
                                      const std::filesystem::path& path) {
  const std::int32_t magic = header[0], version = header[1], count = header[2];
  TokenWidth width = TokenWidth::u16;
  if (magic == shard_magic_u16) {
    FATHOM_CHECK(version == shard_version_u16, "shard " << quoted(path) << ": magic " << magic
                                                        << " (uint16 tokens) expects version "
                                                        << shard_version_u16 << ", got version "
                                                        << version);
  } else if (magic == shard_magic_u32) {
    FATHOM_CHECK(version == shard_version_u32, "shard " << quoted(path) << ": magic " << magic
                                                        << " (uint32 tokens) expects version "
                                                        << shard_version_u32 << ", got version "
                                                        << version);
    width = TokenWidth::u32;
  } else {
    FATHOM_FAIL("shard " << quoted(path) << ": expected magic " << shard_magic_u16
                         << " (uint16 tokens) or " << shard_magic_u32 << " (uint32 tokens), got "
                         << magic << "; is this an llm.c token shard?");
  }
  FATHOM_CHECK(count >= 0, "shard " << quoted(path) << ": header says " << count
                                    << " tokens; expected a count >= 0");
  FATHOM_CHECK(count > 0,
               "shard " << quoted(path) << ": header says 0 tokens; expected a non-empty shard");
  const std::size_t bytes_per_token = static_cast<std::size_t>(width);
  const std::uintmax_t payload = file_bytes - shard_header_bytes;
  const std::uintmax_t held = payload / bytes_per_token;
  FATHOM_CHECK(payload == static_cast<std::uintmax_t>(count) * bytes_per_token,
               "shard " << quoted(path) << ": header says " << count << " " << width_name(width)
                        << " tokens, file holds " << held
                        << (payload % bytes_per_token ? " and a partial token" : "") << " ("
                        << file_bytes << " bytes; expected "
                        << shard_header_bytes + static_cast<std::uintmax_t>(count) * bytes_per_token
                        << ")"
                        << (held < static_cast<std::uintmax_t>(count) ? "; truncated?" : ""));
  return {width, static_cast<std::size_t>(count)};
}

inline std::uintmax_t checked_file_size(const std::filesystem::path& path) {
  std::error_code ec;
  FATHOM_CHECK(std::filesystem::exists(path, ec), "shard " << quoted(path) << ": no such file");
  FATHOM_CHECK(std::filesystem::is_regular_file(path, ec),
               "shard " << quoted(path) << ": expected a regular file");
  std::uintmax_t bytes = std::filesystem::file_size(path, ec);
  FATHOM_CHECK(!ec, "shard " << quoted(path) << ": cannot read its size: " << ec.message());
  FATHOM_CHECK(bytes >= shard_header_bytes, "shard " << quoted(path) << ": file holds " << bytes
                                                     << " bytes, expected at least the "
                                                     << shard_header_bytes
                                                     << "-byte header; truncated?");
  return bytes;
}

inline void read_exactly(std::ifstream& in, void* out, std::size_t bytes,
                         const std::filesystem::path& path) {
  in.read(static_cast<char*>(out), static_cast<std::streamsize>(bytes));
  FATHOM_CHECK(in.good() || (in.eof() && static_cast<std::size_t>(in.gcount()) == bytes),
               "shard " << quoted(path) << ": read failed after " << in.gcount() << " of " << bytes
                        << " bytes");
}

// The first offending token, or npos.
template <class T>
std::size_t first_out_of_vocab(const T* tokens, std::size_t n, std::uint32_t vocab) {
  for (std::size_t i = 0; i < n; ++i)
    if (static_cast<std::uint32_t>(tokens[i]) >= vocab) return i;
  return static_cast<std::size_t>(-1);
}

[[noreturn]] inline void fail_out_of_vocab(const std::string& where, std::size_t offset,
                                           std::uint32_t id, std::uint32_t vocab) {
  FATHOM_FAIL(where << ": token id " << id << " at offset " << offset
                    << " (token index after the header) is out of range; expected ids < vocab size "
                    << vocab);
}

}  // namespace detail

inline void Shard::validate(std::uint32_t vocab) const {
  std::size_t at = detail::first_out_of_vocab(tokens.data(), tokens.size(), vocab);
  if (at != static_cast<std::size_t>(-1))
    detail::fail_out_of_vocab("shard " + detail::quoted(path), at, tokens[at], vocab);
}

// Reads and checks only the header of `path`.
inline ShardHeader read_shard_header(const std::filesystem::path& path) {
  std::uintmax_t bytes = detail::checked_file_size(path);
  std::ifstream in(path, std::ios::binary);
  FATHOM_CHECK(in, "shard " << detail::quoted(path) << ": cannot open for reading");
  std::int32_t header[shard_header_ints];
  detail::read_exactly(in, header, sizeof header, path);
  return detail::parse_shard_header(header, bytes, path);
}

// Reads a whole shard, checking header and size. Tokens come back as uint32 for either width.
inline Shard read_shard(const std::filesystem::path& path) {
  std::uintmax_t bytes = detail::checked_file_size(path);
  std::ifstream in(path, std::ios::binary);
  FATHOM_CHECK(in, "shard " << detail::quoted(path) << ": cannot open for reading");
  std::int32_t header[shard_header_ints];
  detail::read_exactly(in, header, sizeof header, path);
  ShardHeader h = detail::parse_shard_header(header, bytes, path);
  Shard shard{path.string(), h.width, std::vector<std::uint32_t>(h.num_tokens)};
  if (h.width == TokenWidth::u32) {
    detail::read_exactly(in, shard.tokens.data(), h.num_tokens * 4, path);
  } else {
    std::vector<std::uint16_t> narrow(h.num_tokens);
    detail::read_exactly(in, narrow.data(), h.num_tokens * 2, path);
    std::copy(narrow.begin(), narrow.end(), shard.tokens.begin());
  }
  return shard;
}

// Writes `tokens` as a shard. Without `width`, uint16 when every id is < 65536, else uint32.
// The file is written under a temporary name and renamed, so a failure never leaves a torn shard
// where a good one was.
inline void write_shard(const std::filesystem::path& path, std::span<const std::uint32_t> tokens,
                        std::optional<TokenWidth> width = std::nullopt) {
  FATHOM_CHECK(!tokens.empty(), "shard " << detail::quoted(path)
                                         << ": expected at least one token to write, got none");
  FATHOM_CHECK(tokens.size() <= static_cast<std::size_t>(INT32_MAX),
               "shard " << detail::quoted(path) << ": expected at most " << INT32_MAX
                        << " tokens (the header count is int32), got " << tokens.size());
  const TokenWidth w = width.value_or(narrowest_width(tokens));
  if (w == TokenWidth::u16) {
    std::size_t at = detail::first_out_of_vocab(tokens.data(), tokens.size(), 65536u);
    FATHOM_CHECK(at == static_cast<std::size_t>(-1),
                 "shard " << detail::quoted(path) << ": token id " << tokens[at] << " at offset "
                          << at << " does not fit uint16; expected ids < 65536 or a uint32 shard");
  }
  std::int32_t header[shard_header_ints] = {};
  header[0] = w == TokenWidth::u16 ? shard_magic_u16 : shard_magic_u32;
  header[1] = w == TokenWidth::u16 ? shard_version_u16 : shard_version_u32;
  header[2] = static_cast<std::int32_t>(tokens.size());

  std::filesystem::path tmp = path;
  tmp += ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    FATHOM_CHECK(out, "shard " << detail::quoted(path) << ": cannot open " << detail::quoted(tmp)
                               << " for writing");
    out.write(reinterpret_cast<const char*>(header), sizeof header);
    if (w == TokenWidth::u32) {
      out.write(reinterpret_cast<const char*>(tokens.data()),
                static_cast<std::streamsize>(tokens.size() * 4));
    } else {
      // Narrow in blocks so a large shard does not need a second full copy.
      std::uint16_t block[4096];
      for (std::size_t i = 0; i < tokens.size(); i += 4096) {
        std::size_t n = std::min<std::size_t>(4096, tokens.size() - i);
        for (std::size_t j = 0; j < n; ++j) block[j] = static_cast<std::uint16_t>(tokens[i + j]);
        out.write(reinterpret_cast<const char*>(block), static_cast<std::streamsize>(n * 2));
      }
    }
    out.flush();
    FATHOM_CHECK(out, "shard " << detail::quoted(path) << ": writing " << detail::quoted(tmp)
                               << " failed (disk full?)");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  FATHOM_CHECK(!ec, "shard " << detail::quoted(path) << ": cannot rename " << detail::quoted(tmp)
                             << " into place: " << ec.message());
}

// A read-only view of one shard's tokens, shared by copies: a memory-mapped file (so a data set
// larger than memory is paged in as windows are read) or tokens held in memory.
class ShardView {
 public:
  ShardView() = default;

  // Maps (or, without mmap, reads) the shard at `path`, checking its header and size.
  explicit ShardView(const std::filesystem::path& path) : name_("shard " + detail::quoted(path)) {
#if FATHOM_DATA_HAS_MMAP
    std::uintmax_t bytes = detail::checked_file_size(path);
    int fd = ::open(path.c_str(), O_RDONLY);
    FATHOM_CHECK(fd >= 0, name_ << ": cannot open for reading: " << std::strerror(errno));
    void* map = ::mmap(nullptr, static_cast<std::size_t>(bytes), PROT_READ, MAP_PRIVATE, fd, 0);
    int saved = errno;
    ::close(fd);
    FATHOM_CHECK(map != MAP_FAILED,
                 name_ << ": cannot map " << bytes << " bytes: " << std::strerror(saved));
    const std::size_t mapped = static_cast<std::size_t>(bytes);
    owner_ = std::shared_ptr<const void>(
        map, [mapped](const void* p) { ::munmap(const_cast<void*>(p), mapped); });
    ShardHeader h = detail::parse_shard_header(static_cast<const std::int32_t*>(map), bytes, path);
    width_ = h.width;
    size_ = h.num_tokens;
    data_ = static_cast<const unsigned char*>(map) + shard_header_bytes;
#else
    Shard s = read_shard(path);
    std::string name = name_;
    *this = ShardView(std::move(s.tokens), std::move(name));
#endif
  }

  // Tokens held in memory; `name` says what they are in error messages.
  explicit ShardView(std::vector<std::uint32_t> tokens, std::string name = "tokens in memory")
      : name_(std::move(name)) {
    auto held = std::make_shared<std::vector<std::uint32_t>>(std::move(tokens));
    data_ = reinterpret_cast<const unsigned char*>(held->data());
    size_ = held->size();
    width_ = TokenWidth::u32;
    owner_ = std::move(held);
  }

  std::size_t size() const { return size_; }
  TokenWidth width() const { return width_; }
  // "shard 'path'" for a file, else the name given with the tokens.
  const std::string& name() const { return name_; }

  std::uint32_t operator[](std::size_t i) const {
    if (width_ == TokenWidth::u16) {
      std::uint16_t v;
      std::memcpy(&v, data_ + 2 * i, 2);
      return v;
    }
    std::uint32_t v;
    std::memcpy(&v, data_ + 4 * i, 4);
    return v;
  }

  // out[k] = token[begin + k] for k < count, as int32.
  void copy_to(std::size_t begin, std::size_t count, std::int32_t* out) const {
    for (std::size_t k = 0; k < count; ++k) out[k] = static_cast<std::int32_t>((*this)[begin + k]);
  }

  // Throws unless every token id is < vocab, naming the shard, the offset and the id.
  void validate(std::uint32_t vocab) const {
    std::size_t at = width_ == TokenWidth::u16
                         ? detail::first_out_of_vocab(reinterpret_cast<const std::uint16_t*>(data_),
                                                      size_, vocab)
                         : detail::first_out_of_vocab(reinterpret_cast<const std::uint32_t*>(data_),
                                                      size_, vocab);
    if (at != static_cast<std::size_t>(-1))
      detail::fail_out_of_vocab(name_, at, (*this)[at], vocab);
  }

 private:
  std::shared_ptr<const void> owner_;
  const unsigned char* data_ = nullptr;
  std::size_t size_ = 0;
  TokenWidth width_ = TokenWidth::u32;
  std::string name_;
};

}  // namespace fathom::data
