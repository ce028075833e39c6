// Must not compile: apply(s) returns a double instead of the new residual stream.
// tests/policy/CMakeLists.txt checks that the compiler's message names the type returned.
#include <fathom/nn/decoder_lm.hpp>

struct ReturnsDouble {
  template <class S>
  double apply(S&) const {
    return 1.0;
  }
};

int main() {
  fathom::nn::DecoderLM<fathom::nn::Llama, ReturnsDouble> model(fathom::nn::ModelConfig{});
  return static_cast<int>(model.num_parameters());
}
