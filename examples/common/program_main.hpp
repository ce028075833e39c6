// The entry points of fathom's programs, for any table of policies: fathom-train and
// fathom-diagnose call them with the built-in policies, and a user's program calls them (or the
// subcommand dispatcher program_main) with its own policies added:
//
//   int main(int argc, char** argv) {
//     auto policies = fathom::programs::builtin_policies();
//     policies.add<MyPolicy>("my-policy", "what it does");
//     return fathom::programs::program_main(argc, argv, policies);  // train, diagnose, generate
//   }
//
// Each returns the process's exit status and prints errors as one line "NAME: error: ...".
#pragma once

#include <string>

#include "policy_registry.hpp"

namespace fathom::programs {

// fathom-train's flags: train one model (or, with --generate CKPT, sample from a checkpoint).
int train_main(int argc, char** argv, const PolicyRegistry& policies,
               const std::string& name = "fathom-train");

// fathom-diagnose's flags: depth diagnostics of a checkpoint, as JSON.
int diagnose_main(int argc, char** argv, const PolicyRegistry& policies,
                  const std::string& name = "fathom-diagnose");

// Samples text from a checkpoint: CHECKPOINT [--prompt --tokens --temperature --seed --device].
int generate_main(int argc, char** argv, const PolicyRegistry& policies, const std::string& name);

// `PROGRAM train|diagnose|generate|policies [flags]`: one program with every subcommand, each
// taking the flags of the program it stands for (PROGRAM train --help).
int program_main(int argc, char** argv, const PolicyRegistry& policies);

}  // namespace fathom::programs
