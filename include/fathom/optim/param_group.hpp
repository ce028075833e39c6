// Named parameters and parameter groups: which tensors get weight decay.
#pragma once

#include <string>
#include <vector>

#include "fathom/autograd/var.hpp"

namespace fathom::optim {

template <class T, class D>
struct NamedParameter {
  std::string name;
  Var<T, D> var;
};

// The default grouping (as in GPT-2/Llama training code): decay on matrices of linear layers, none
// on norms, biases and embedding tables (anything 1-D, or named like an embedding).
inline bool decays_by_default(const std::string& name, int rank) {
  if (rank < 2) return false;
  for (const char* key : {"embed", "wte", "wpe", "norm", "ln_"})
    if (name.find(key) != std::string::npos) return false;
  return true;
}

}  // namespace fathom::optim
