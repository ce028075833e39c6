// user_program: a program of your own that gets every fathom command (train, diagnose, generate)
// for a normalization policy fathom does not have built in. The policy is written here, registered
// by name in one line, and the rest comes from fathom's programs (examples/common, the CMake target
// fathom::programs). docs/programs.md walks through it.
//
//   user_program train --policy scaled-branch --steps 100 --out runs/mine
//   user_program diagnose runs/mine --out runs/mine/diagnose.json
//   user_program generate runs/mine --prompt "(3+"
//   user_program policies
#include <cmath>

#include "program_main.hpp"
#include "register_policy.hpp"

// Pre-LN whose branch output is scaled by 1/sqrt(2L), the GPT-2 residual scaling applied in the
// forward pass instead of at initialization: x + F(N(x)) / sqrt(2L).
struct ScaledBranch {
  template <class S>
  auto apply(S& s) const {
    return s.x + s.f(s.norm(0, s.x)) * (1.0 / std::sqrt(2.0 * s.depth));
  }
};

int main(int argc, char** argv) {
  auto policies = fathom::programs::builtin_policies();
  policies.add<ScaledBranch>("scaled-branch", "Pre-LN with each branch scaled by 1/sqrt(2L)");
  return fathom::programs::program_main(argc, argv, policies);
}
