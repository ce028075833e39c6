// fathom-diagnose built with CUDA.
#include "fathom_diagnose.hpp"

int main(int argc, char** argv) { return fathom::programs::diagnose_main(argc, argv); }
