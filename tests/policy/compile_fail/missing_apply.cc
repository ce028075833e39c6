// Must not compile: NotAPolicy has no apply(s), so it does not model fathom::policy::NormPolicy.
// tests/policy/CMakeLists.txt checks that the compiler rejects it with a message naming `apply`.
#include <fathom/nn/decoder_lm.hpp>

struct NotAPolicy {
  static constexpr int norms_per_sublayer = 1;
};

int main() {
  fathom::nn::DecoderLM<fathom::nn::Llama, NotAPolicy> model(fathom::nn::ModelConfig{});
  return static_cast<int>(model.num_parameters());
}
