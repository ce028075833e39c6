// fathom-train built with CUDA: the same program, with --device cuda available.
#include "fathom_train.hpp"

int main(int argc, char** argv) { return fathom::programs::main(argc, argv); }
