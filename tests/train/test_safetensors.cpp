// Tests for fathom/train/safetensors.hpp: round trips, the exact byte layout, every rejected input,
// and atomic writes that leave the previous file intact.
#include "fathom/train/safetensors.hpp"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "support/catch.hpp"
#include "support/errors.hpp"
#include "support/temp_dir.hpp"

namespace fs = std::filesystem;
using namespace fathom::train;
using fathom::test::require_error;
using fathom::test::TempDir;

namespace {

std::vector<std::byte> read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> out(chars.size());
  for (std::size_t i = 0; i < chars.size(); ++i) out[i] = static_cast<std::byte>(chars[i]);
  return out;
}

void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string le64(std::uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

// A file made by hand: the header text as given (unpadded), then `data_bytes` bytes of data.
std::string raw_file(const std::string& header, std::size_t data_bytes) {
  return le64(header.size()) + header + std::string(data_bytes, '\x5a');
}

TensorRecord random_record(std::mt19937& rng, std::string name, std::string dtype,
                           std::vector<std::int64_t> shape) {
  TensorRecord r{std::move(name), std::move(dtype), std::move(shape), {}};
  std::size_t n = dtype_size(r.dtype);
  for (auto d : r.shape) n *= static_cast<std::size_t>(d);
  std::uniform_int_distribution<int> byte(0, 255);
  r.data.resize(n);
  for (auto& b : r.data) b = static_cast<std::byte>(byte(rng));
  return r;
}

}  // namespace

TEST_CASE("safetensors round trip keeps names, dtypes, shapes, bytes and metadata",
          "[train][safetensors]") {
  TempDir dir;
  std::mt19937 rng(1234);
  std::uniform_real_distribution<float> uniform(-3.f, 3.f);

  std::vector<float> floats(2 * 3 * 5);
  for (auto& v : floats) v = uniform(rng);
  std::vector<fathom::bf16> halves(7);
  for (auto& v : halves) v = fathom::bf16::from_bits(static_cast<std::uint16_t>(rng()));
  std::vector<std::int32_t> ints(11);
  for (auto& v : ints) v = static_cast<std::int32_t>(rng());
  std::vector<double> doubles = {uniform(rng) * 1e-3, uniform(rng) * 1e7, uniform(rng)};

  std::vector<TensorRecord> records = {
      make_tensor_record<float>("model.layers.0.mlp.up_proj.weight", {2, 3, 5}, floats),
      make_tensor_record<fathom::bf16>("model.norm.weight", {7}, halves),
      make_tensor_record<std::int32_t>("data.position", {11}, ints),
      make_tensor_record<double>("b.scalars", {3}, doubles),
      random_record(rng, "a.bytes", "U8", {13}),   // odd size: later tensors must still align
      random_record(rng, "step", "I64", {}),       // rank 0: one element
      random_record(rng, "empty", "F32", {4, 0}),  // no bytes, shape kept
      random_record(rng, "z.halfs", "F16", {3, 3}),
  };
  SafetensorsMetadata metadata = {{"format", "pt"}, {"policy", "lns"}};
  const fs::path path = dir / "model.safetensors";
  write_safetensors(path, records, metadata);
  CHECK_FALSE(fs::exists(dir / "model.safetensors.tmp"));

  SafetensorsFile file = read_safetensors(path);
  CHECK(file.metadata == metadata);
  REQUIRE(file.tensors.size() == records.size());
  for (const auto& r : records) {
    const TensorRecord& back = file.at(r.name);
    CHECK(back.dtype == r.dtype);
    CHECK(back.shape == r.shape);
    CHECK(back.data == r.data);
  }
  CHECK(tensor_values<float>(file.at("model.layers.0.mlp.up_proj.weight")) == floats);
  CHECK(tensor_values<std::int32_t>(file.at("data.position")) == ints);
  CHECK(tensor_values<double>(file.at("b.scalars")) == doubles);
  auto halves_back = tensor_values<fathom::bf16>(file.at("model.norm.weight"));
  REQUIRE(halves_back.size() == halves.size());
  for (std::size_t i = 0; i < halves.size(); ++i) CHECK(halves_back[i].bits == halves[i].bits);
  CHECK(file.at("empty").data.empty());
  CHECK(file.at("step").data.size() == 8);

  SECTION("the header alone gives the same layout, and single tensors read from it") {
    SafetensorsHeader header = read_safetensors_header(path);
    CHECK(header.metadata == metadata);
    REQUIRE(header.tensors.size() == records.size());
    const TensorInfo* info = header.find("z.halfs");
    REQUIRE(info != nullptr);
    CHECK(info->shape == std::vector<std::int64_t>{3, 3});
    CHECK(info->end - info->begin == 18);
    TensorRecord one = read_safetensors_tensor(path, header, "model.norm.weight");
    CHECK(one.data == records[1].data);
    require_error([&] { read_safetensors_tensor(path, header, "missing"); },
                  {"missing", path.string()});
  }

  SECTION("layout: padded 8-aligned header, tensors by decreasing element size then name") {
    const auto bytes = read_bytes(path);
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | std::to_integer<std::uint64_t>(bytes[i]);
    CHECK(n % 8 == 0);
    CHECK(static_cast<char>(bytes[8]) == '{');
    SafetensorsHeader header = read_safetensors_header(path);
    CHECK(header.data_start == 8 + n);
    std::uint64_t total = 0;
    std::vector<std::string> order;
    for (const auto& t : header.tensors) {
      CHECK(t.begin % dtype_size(t.dtype) == 0);  // aligned for a zero-copy view
      total += t.end - t.begin;
      order.push_back(t.name);
    }
    CHECK(bytes.size() == 8 + n + total);
    CHECK(order == std::vector<std::string>{"b.scalars", "step", "data.position", "empty",
                                            "model.layers.0.mlp.up_proj.weight",
                                            "model.norm.weight", "z.halfs", "a.bytes"});
  }
}

TEST_CASE("safetensors bytes match the format exactly", "[train][safetensors]") {
  TempDir dir;
  SECTION("one F32 tensor") {
    std::vector<float> values = {0.f, 1.f, 2.f, 3.f, 4.f, 5.f};
    std::vector<TensorRecord> records = {make_tensor_record<float>("attn.0", {1, 2, 3}, values)};
    write_safetensors(dir / "a.safetensors", records);
    std::string json = R"({"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}})";
    json.append((8 - json.size() % 8) % 8, ' ');
    std::string data(24, '\0');
    std::memcpy(data.data(), values.data(), 24);
    std::string expected = le64(json.size()) + json + data;
    auto bytes = read_bytes(dir / "a.safetensors");
    CHECK(std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()) == expected);
  }
  SECTION("no tensors, with and without metadata") {
    write_safetensors(dir / "e.safetensors", std::vector<TensorRecord>{});
    auto bytes = read_bytes(dir / "e.safetensors");
    CHECK(std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()) ==
          le64(8) + "{}      ");
    write_safetensors(dir / "m.safetensors", std::vector<TensorRecord>{}, {{"format", "pt"}});
    bytes = read_bytes(dir / "m.safetensors");
    std::string json = R"({"__metadata__":{"format":"pt"}})";
    json.append((8 - json.size() % 8) % 8, ' ');
    CHECK(std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()) ==
          le64(json.size()) + json);
    CHECK(read_safetensors(dir / "m.safetensors").metadata.at("format") == "pt");
  }
}

TEST_CASE("safetensors reader rejects malformed files with the file and the problem",
          "[train][safetensors]") {
  TempDir dir;
  const fs::path path = dir / "bad.safetensors";
  const std::string tensor24 = R"("w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]})";
  auto read_error = [&](const std::string& content, std::initializer_list<std::string> parts) {
    write_bytes(path, content);
    require_error([&] { read_safetensors(path); }, parts);
    require_error([&] { read_safetensors_header(path); }, parts);
  };

  // The well-formed reference for the cases below reads fine.
  write_bytes(path, raw_file("{" + tensor24 + "}", 24));
  CHECK(read_safetensors(path).at("w").shape == std::vector<std::int64_t>{2, 3});

  SECTION("missing file") {
    require_error([&] { read_safetensors(dir / "nope.safetensors"); },
                  {"nope.safetensors", "nothing there"});
  }
  SECTION("shorter than the length field") { read_error("abc", {path.string(), "3 bytes"}); }
  SECTION("header length larger than the file") {
    read_error(le64(4096) + "{}", {path.string(), "got 4096", "truncated"});
  }
  SECTION("absurd header length") {
    read_error(le64(std::uint64_t(1) << 40) + "{}", {path.string(), "at most 100000000"});
  }
  SECTION("invalid JSON") {
    read_error(raw_file(R"({"w":{"dtype":"F32",)", 0), {path.string(), "valid JSON header"});
  }
  SECTION("header not starting with a brace") {
    read_error(raw_file(R"(  {})", 0), {path.string(), "start with '{'"});
  }
  SECTION("header not an object of objects") {
    read_error(raw_file(R"({"w":[1,2]})", 0), {"tensor 'w'", "expected an object"});
  }
  SECTION("unknown dtype") {
    read_error(raw_file(R"({"w":{"dtype":"F33","shape":[2,3],"data_offsets":[0,24]}})", 24),
               {path.string(), "tensor 'w'", "'F33'", "BF16"});
  }
  SECTION("byte length that does not match shape and dtype") {
    read_error(raw_file(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", 20),
               {"tensor 'w'", "expected 24 bytes", "20 bytes"});
  }
  SECTION("negative dimension") {
    read_error(raw_file(R"({"w":{"dtype":"F32","shape":[-2,3],"data_offsets":[0,24]}})", 24),
               {"tensor 'w'", "non-negative integer dimensions"});
  }
  SECTION("offsets past the end of the data") {
    read_error(raw_file(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[8,32]}})", 24),
               {"tensor 'w'", "within the 24-byte data buffer"});
  }
  SECTION("offsets reversed") {
    read_error(raw_file(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8),
               {"tensor 'w'", "begin <= end"});
  }
  SECTION("overlapping tensors") {
    read_error(
        raw_file("{" + tensor24 + R"(,"v":{"dtype":"F32","shape":[2],"data_offsets":[16,24]}})",
                 24),
        {"overlaps the previous tensor"});
  }
  SECTION("a hole between tensors") {
    read_error(
        raw_file("{" + tensor24 + R"(,"v":{"dtype":"F32","shape":[2],"data_offsets":[28,36]}})",
                 36),
        {"tensor 'v'", "starting at 24", "hole"});
  }
  SECTION("bytes after the last tensor") {
    read_error(raw_file("{" + tensor24 + "}", 32), {"cover the 32-byte data buffer", "got 24"});
  }
  SECTION("duplicate tensor names") {
    read_error(raw_file("{" + tensor24 + "," + tensor24 + "}", 24), {"unique tensor names"});
  }
  SECTION("metadata that is not string to string") {
    read_error(raw_file(R"({"__metadata__":{"step":3}})", 0), {"__metadata__", "'step'"});
  }
  SECTION("a file cut short after writing") {
    std::mt19937 rng(7);
    write_safetensors(path, std::vector<TensorRecord>{random_record(rng, "a", "F32", {5, 4}),
                                                      random_record(rng, "b", "BF16", {9})});
    const auto size = fs::file_size(path);
    fs::resize_file(path, size - 5);
    require_error([&] { read_safetensors(path); }, {path.string(), "data buffer"});
    fs::resize_file(path, 12);  // now even the header is cut
    require_error([&] { read_safetensors(path); }, {path.string(), "truncated"});
  }
}

TEST_CASE("safetensors writer checks records before touching the file", "[train][safetensors]") {
  TempDir dir;
  std::mt19937 rng(99);
  const fs::path path = dir / "model.safetensors";
  const std::vector<TensorRecord> previous = {random_record(rng, "w", "F32", {3, 4})};
  write_safetensors(path, previous, {{"format", "pt"}});
  const auto before = read_bytes(path);

  auto check_untouched = [&] {
    CHECK(read_bytes(path) == before);
    CHECK_FALSE(fs::exists(dir / "model.safetensors.tmp"));
  };

  SECTION("size that does not match shape and dtype") {
    auto bad = random_record(rng, "w", "F32", {3, 4});
    bad.data.pop_back();
    require_error([&] { write_safetensors(path, {bad}); },
                  {"tensor 'w'", "expected 48 bytes", "got 47 bytes"});
    check_untouched();
  }
  SECTION("unknown dtype") {
    auto bad = random_record(rng, "w", "F32", {2});
    bad.dtype = "float";
    require_error([&] { write_safetensors(path, {bad}); }, {"'float'", "F32"});
    check_untouched();
  }
  SECTION("duplicate names") {
    require_error(
        [&] {
          write_safetensors(
              path, {random_record(rng, "x", "F32", {2}), random_record(rng, "x", "F32", {3})});
        },
        {"unique tensor names", "'x'"});
    check_untouched();
  }
  SECTION("the reserved metadata name") {
    require_error([&] { write_safetensors(path, {random_record(rng, "__metadata__", "U8", {1})}); },
                  {"reserved"});
    check_untouched();
  }
  SECTION("the temporary file cannot be created") {
    fs::create_directory(dir / "model.safetensors.tmp");  // opening it for writing fails
    require_error([&] { write_safetensors(path, {random_record(rng, "v", "F32", {8})}); },
                  {"model.safetensors.tmp"});
    CHECK(read_bytes(path) == before);
  }
  SECTION("the disk fills up in the middle of the data") {
    if (!fs::exists("/dev/full")) {
      WARN("no /dev/full here: the mid-write failure is not exercised");
      return;
    }
    // The temporary name leads to a device that refuses every write with ENOSPC.
    fs::create_symlink("/dev/full", dir / "model.safetensors.tmp");
    require_error([&] { write_safetensors(path, {random_record(rng, "v", "F32", {4096})}); },
                  {"model.safetensors.tmp", "left as it was"});
    check_untouched();
  }
}

TEST_CASE("typed records check their dtype and size", "[train][safetensors]") {
  std::vector<float> values = {1.5f, -2.25f, 3.f};
  auto record = make_tensor_record<float>("w", {3}, values);
  CHECK(record.dtype == "F32");
  require_error([&] { tensor_values<double>(record); },
                {"tensor 'w'", "expected dtype F64", "F32"});
  require_error([&] { make_tensor_record<float>("w", {2, 2}, values); }, {"[2, 2]", "3 values"});
  require_error([] { dtype_size("Q8"); }, {"'Q8'"});
  CHECK(dtype_size("BF16") == 2);
  CHECK(dtype_size("F64") == 8);
}
