// fathom-train: trains one model with a chosen normalization policy, on the built-in corpus or
// token shards, on CPU or GPU; or, with --generate, samples text from a checkpoint. Flags and work
// live in examples/common (fathom_programs), where a user's program reuses them with its own
// policies (program_main.hpp).
#include "program_main.hpp"

int main(int argc, char** argv) {
  return fathom::programs::train_main(argc, argv, fathom::programs::builtin_policies(),
                                      "fathom-train");
}
