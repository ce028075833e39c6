// fathom-train built without CUDA (CPU only).
#include "fathom_train.hpp"

int main(int argc, char** argv) { return fathom::programs::main(argc, argv); }
