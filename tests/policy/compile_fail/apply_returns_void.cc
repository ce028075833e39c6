// Must not compile: apply(s) returns nothing instead of the new residual stream.
// tests/policy/CMakeLists.txt checks that the compiler rejects it with a message naming `apply(s)`.
#include <fathom/nn/decoder_lm.hpp>

struct ForgetsToReturn {
  template <class S>
  void apply(S&) const {}
};

int main() {
  fathom::nn::DecoderLM<fathom::nn::Llama, ForgetsToReturn> model(fathom::nn::ModelConfig{});
  return static_cast<int>(model.num_parameters());
}
