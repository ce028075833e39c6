// Must not compile: apply(s) is declared without const, and the model calls it on a const policy.
// tests/policy/CMakeLists.txt checks that the compiler says apply must be const (not "missing").
#include <fathom/nn/decoder_lm.hpp>

struct MutableApply {
  template <class S>
  auto apply(S& s) {
    return s.x + s.f(s.norm(0, s.x));
  }
};

int main() {
  fathom::nn::DecoderLM<fathom::nn::Llama, MutableApply> model(fathom::nn::ModelConfig{});
  return static_cast<int>(model.num_parameters());
}
