// Named parameters and parameter groups: which tensors get weight decay.
#pragma once

#include <string>
#include <vector>

#include "fathom/nn/parameter.hpp"

namespace fathom::optim {

// The parameters an optimizer updates are the models' own (nn/parameter.hpp): a name and a Var
// sharing the module's value and gradient.
using nn::NamedParameter;

// The default grouping (as in GPT-2/Llama training code): decay on matrices of linear layers, none
// on norms, biases and embedding tables (anything 1-D, or named like an embedding).
inline bool decays_by_default(const std::string& name, int rank) {
  if (rank < 2) return false;
  for (const char* key : {"embed", "wte", "wpe", "norm", "ln_"})
    if (name.find(key) != std::string::npos) return false;
  return true;
}

}  // namespace fathom::optim
