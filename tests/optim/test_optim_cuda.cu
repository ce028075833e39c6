// [cuda] tests for the CUDA optimizer update (include/fathom/kernels/cuda/optimizer.cuh): Adam,
// AdamW and SGD over many tensors in one launch, against the CPU reference on random values, with
// tensors whose arrays sit on and off the 16-byte grid (the kernel updates aligned tensors four
// elements a thread and the others one at a time) and tensor counts past one launch's table.
#include <fathom/cuda.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cuda/support.cuh"
#include "support/catch.hpp"

using fathom::bf16;
using fathom::Cpu;
using fathom::Cuda;

namespace optim_cuda_test {

template <class T>
using A = fathom::accum_t<T>;

// One tensor's arrays on the host (the CPU reference updates these) and on the GPU, each device
// array `offset` elements into its buffer (offset 1 takes it off the 16-byte grid).
template <class T>
struct Tensor1 {
  std::vector<T> param, grad;
  std::vector<A<T>> master, m, v;
  fathom::test::DeviceArray<T> d_param, d_grad;
  fathom::test::DeviceArray<A<T>> d_master, d_m, d_v;
  bool has_master, has_state0, has_state1;
  double weight_decay;

  Tensor1(std::int64_t n, std::uint64_t seed, std::int64_t offset, bool master_copy, int states,
          double decay)
      : param(fathom::test::uniform_values<T>(static_cast<std::size_t>(n), seed)),
        grad(fathom::test::uniform_values<T>(static_cast<std::size_t>(n), seed + 1)),
        master(master_copy ? widened(param) : std::vector<A<T>>{}),
        m(states > 0 ? moments(n, seed + 2, false) : std::vector<A<T>>{}),
        v(states > 1 ? moments(n, seed + 3, true) : std::vector<A<T>>{}),
        d_param(param, offset),
        d_grad(grad, offset),
        d_master(master_copy ? master : param_stand_in(), offset),
        d_m(states > 0 ? m : param_stand_in(), offset),
        d_v(states > 1 ? v : param_stand_in(), offset),
        has_master(master_copy),
        has_state0(states > 0),
        has_state1(states > 1),
        weight_decay(decay) {}

  static std::vector<A<T>> widened(const std::vector<T>& w) {
    std::vector<A<T>> out(w.size());
    for (std::size_t i = 0; i < w.size(); ++i) out[i] = fathom::scalar_cast<A<T>>(w[i]);
    return out;
  }
  // Moments of a run under way: first moments of either sign, positive second moments.
  static std::vector<A<T>> moments(std::int64_t n, std::uint64_t seed, bool second) {
    auto u = fathom::test::uniform_values<A<T>>(static_cast<std::size_t>(n), seed);
    for (auto& x : u) x = second ? A<T>(0.01) * x * x : A<T>(0.1) * x;
    return u;
  }
  // A device array a tensor does not use (no master copy or no state) still holds one value.
  static std::vector<A<T>> param_stand_in() { return {A<T>(0)}; }

  fathom::kernels::OptimizerSlot<T> host_slot() {
    return {param.data(),
            grad.data(),
            has_master ? master.data() : nullptr,
            has_state0 ? m.data() : nullptr,
            has_state1 ? v.data() : nullptr,
            static_cast<std::int64_t>(param.size()),
            weight_decay};
  }
  fathom::kernels::OptimizerSlot<T> device_slot() const {
    return {d_param.data(),
            d_grad.data(),
            has_master ? d_master.data() : nullptr,
            has_state0 ? d_m.data() : nullptr,
            has_state1 ? d_v.data() : nullptr,
            static_cast<std::int64_t>(param.size()),
            weight_decay};
  }
};

// Sizes with every remainder mod 4 and one past a block's worth of packs.
constexpr std::int64_t kSizes[] = {1, 3, 4, 7, 8, 130, 1025, 4099, 65538};

template <class T>
std::vector<Tensor1<T>> make_tensors(int count, bool master_copy, int states, std::uint64_t seed) {
  std::vector<Tensor1<T>> tensors;
  tensors.reserve(static_cast<std::size_t>(count));
  const int sizes = static_cast<int>(std::size(kSizes));
  for (int k = 0; k < count; ++k) {
    // Every third tensor off the grid; decay on some tensors, not others (parameter groups).
    tensors.emplace_back(kSizes[k % sizes], seed + 10 * static_cast<std::uint64_t>(k), k % 3 == 2,
                         master_copy, states, k % 2 ? 0.1 : 0.0);
  }
  return tensors;
}

// Relative distance of a from b, with a floor for values near zero.
inline double rel(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-3); }

// The GPU's arrays against the CPU's: fp32 state and master weights within a few roundings (the
// two compilers may fuse multiply-adds differently), the model's weights within one rounding of T.
template <class T>
void check_against_cpu(const std::vector<Tensor1<T>>& tensors, const std::string& what) {
  const double weight_tol = std::is_same_v<T, bf16> ? 1.0 / 128 : 1e-5;
  for (std::size_t k = 0; k < tensors.size(); ++k) {
    const auto& t = tensors[k];
    const auto param = t.d_param.values();
    const auto master = t.has_master ? t.d_master.values() : std::vector<A<T>>{};
    const auto m = t.has_state0 ? t.d_m.values() : std::vector<A<T>>{};
    const auto v = t.has_state1 ? t.d_v.values() : std::vector<A<T>>{};
    double worst_w = 0, worst_state = 0;
    bool finite = true;
    for (std::size_t i = 0; i < param.size(); ++i) {
      const double gpu = fathom::scalar_cast<double>(param[i]);
      finite = finite && std::isfinite(gpu);
      worst_w = std::max(worst_w, rel(gpu, fathom::scalar_cast<double>(t.param[i])));
      if (t.has_master) worst_state = std::max(worst_state, rel(master[i], t.master[i]));
      if (t.has_state0) worst_state = std::max(worst_state, rel(m[i], t.m[i]));
      if (t.has_state1) worst_state = std::max(worst_state, rel(v[i], t.v[i]));
    }
    INFO(what << ": tensor " << k << " of " << tensors.size() << ", " << param.size()
              << " elements, offset " << t.d_param.offset);
    CHECK(finite);
    CHECK(worst_w <= weight_tol);
    CHECK(worst_state <= 1e-5);
  }
}

template <class T>
std::vector<fathom::kernels::OptimizerSlot<T>> host_slots(std::vector<Tensor1<T>>& tensors) {
  std::vector<fathom::kernels::OptimizerSlot<T>> slots;
  for (auto& t : tensors) slots.push_back(t.host_slot());
  return slots;
}
template <class T>
std::vector<fathom::kernels::OptimizerSlot<T>> device_slots(
    const std::vector<Tensor1<T>>& tensors) {
  std::vector<fathom::kernels::OptimizerSlot<T>> slots;
  for (const auto& t : tensors) slots.push_back(t.device_slot());
  return slots;
}

// Three steps of Adam (AdamW when decoupled) on both devices, then the comparison.
template <class T>
void adam_against_cpu(int count, bool decoupled, const std::string& what) {
  auto tensors = make_tensors<T>(count, std::is_same_v<T, bf16>, 2, 500);
  auto cpu = host_slots(tensors);
  auto gpu = device_slots(tensors);
  for (std::int64_t step = 1; step <= 3; ++step) {
    fathom::kernels::AdamHyper hyper;
    hyper.lr = 3e-3;
    hyper.decoupled = decoupled;
    hyper.step = step;
    hyper.grad_scale = 0.75;
    fathom::kernels::adam_step(Cpu{}, fathom::kernels::AdamParams<T>{cpu.data(), count, hyper});
    fathom::kernels::adam_step(Cuda{}, fathom::kernels::AdamParams<T>{gpu.data(), count, hyper});
  }
  check_against_cpu(tensors, what);
}

// Restores the packs setting when a test ends, however it ends.
struct PacksSetting {
  bool saved = fathom::kernels::detail::optimizer_packs_setting();
  ~PacksSetting() { fathom::kernels::detail::optimizer_packs_setting() = saved; }
};

}  // namespace optim_cuda_test

TEST_CASE("CUDA Adam and AdamW match the CPU on tensors on and off the 16-byte grid",
          "[cuda][optim]") {
  using namespace optim_cuda_test;
  SECTION("bf16 weights, fp32 master copy, AdamW") {
    adam_against_cpu<bf16>(11, true, "bf16 adamw");
  }
  SECTION("bf16 weights, fp32 master copy, Adam") {
    adam_against_cpu<bf16>(11, false, "bf16 adam");
  }
  SECTION("fp32 weights, AdamW") { adam_against_cpu<float>(11, true, "fp32 adamw"); }
  SECTION("more tensors than one launch takes (two launches)") {
    adam_against_cpu<bf16>(fathom::kernels::detail::kMaxOptimizerSlots + 7, true, "two launches");
  }
}

TEST_CASE("CUDA SGD matches the CPU, with and without a momentum buffer", "[cuda][optim]") {
  using namespace optim_cuda_test;
  for (const bool nesterov : {false, true}) {
    for (const int states : {0, 1}) {
      auto tensors = make_tensors<bf16>(9, true, states, 900);
      auto cpu = host_slots(tensors);
      auto gpu = device_slots(tensors);
      for (int step = 0; step < 3; ++step) {
        fathom::kernels::SgdHyper hyper;
        hyper.momentum = states ? 0.9 : 0.0;
        hyper.nesterov = nesterov && states;
        hyper.first_step = step == 0;
        fathom::kernels::sgd_step(Cpu{}, fathom::kernels::SgdParams<bf16>{cpu.data(), 9, hyper});
        fathom::kernels::sgd_step(Cuda{}, fathom::kernels::SgdParams<bf16>{gpu.data(), 9, hyper});
      }
      check_against_cpu(tensors, std::string("sgd, ") + (states ? "momentum" : "no momentum") +
                                     (nesterov && states ? ", nesterov" : ""));
    }
  }
}

TEST_CASE("CUDA AdamW: four at a time and one at a time give the same bits; a NaN stays put",
          "[cuda][optim]") {
  using namespace optim_cuda_test;
  const PacksSetting restore;
  // The same values updated in packs (on the grid) and element by element: off the grid, or on
  // it with packs switched off.
  const bool off_grid = GENERATE(true, false);
  INFO((off_grid ? "element by element off the 16-byte grid" : "packs switched off"));
  std::vector<Tensor1<bf16>> on, off;
  for (const std::int64_t n : {4099, 65538}) {
    on.emplace_back(n, 77, 0, true, 2, 0.1);
    off.emplace_back(n, 77, off_grid ? 1 : 0, true, 2, 0.1);
  }
  // A NaN gradient in the middle of a pack, and an infinite one at a pack's end.
  for (auto* set : {&on, &off}) {
    auto g = (*set)[1].grad;
    g[4097] = fathom::scalar_cast<bf16>(std::numeric_limits<double>::quiet_NaN());
    g[4103] = fathom::scalar_cast<bf16>(std::numeric_limits<double>::infinity());
    (*set)[1].d_grad = fathom::test::DeviceArray<bf16>(g, (*set)[1].d_grad.offset);
  }
  auto on_slots = device_slots(on), off_slots = device_slots(off);
  for (std::int64_t step = 1; step <= 2; ++step) {
    fathom::kernels::AdamHyper hyper;
    hyper.step = step;
    auto& packed = fathom::kernels::detail::optimizer_packed_tensors();
    const auto before = packed;
    fathom::kernels::detail::optimizer_packs_setting() = true;
    fathom::kernels::adam_step(Cuda{},
                               fathom::kernels::AdamParams<bf16>{on_slots.data(), 2, hyper});
    CHECK(packed == before + 2);
    fathom::kernels::detail::optimizer_packs_setting() = off_grid;
    fathom::kernels::adam_step(Cuda{},
                               fathom::kernels::AdamParams<bf16>{off_slots.data(), 2, hyper});
    CHECK(packed == before + 2);
  }
  for (std::size_t k = 0; k < on.size(); ++k) {
    const auto p_on = on[k].d_param.values(), p_off = off[k].d_param.values();
    const auto w_on = on[k].d_master.values(), w_off = off[k].d_master.values();
    const auto m_on = on[k].d_m.values(), m_off = off[k].d_m.values();
    const auto v_on = on[k].d_v.values(), v_off = off[k].d_v.values();
    REQUIRE(p_on.size() == p_off.size());
    CHECK(std::memcmp(p_on.data(), p_off.data(), p_on.size() * sizeof(bf16)) == 0);
    CHECK(std::memcmp(w_on.data(), w_off.data(), w_on.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(m_on.data(), m_off.data(), m_on.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(v_on.data(), v_off.data(), v_on.size() * sizeof(float)) == 0);
    // Only the elements with a non-finite gradient lose their weight.
    std::int64_t non_finite = 0;
    for (std::size_t i = 0; i < w_on.size(); ++i) non_finite += !std::isfinite(w_on[i]);
    CHECK(non_finite == (k == 1 ? 2 : 0));
    if (k == 1) {
      CHECK(std::isnan(w_on[4097]));
      CHECK(!std::isfinite(w_on[4103]));
      CHECK(std::isfinite(w_on[4096]));
      CHECK(std::isfinite(w_on[4098]));
    }
  }
}
