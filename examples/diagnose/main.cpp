// fathom-diagnose: curse-of-depth diagnostics of a checkpoint on held-out batches, written as JSON
// (per-layer variance, branch variance, gradient norms, angular distances, layer removal). Flags
// and work live in examples/common (fathom_programs), where a user's program reuses them with its
// own policies (program_main.hpp).
#include "program_main.hpp"

int main(int argc, char** argv) {
  return fathom::programs::diagnose_main(argc, argv, fathom::programs::builtin_policies(),
                                         "fathom-diagnose");
}
