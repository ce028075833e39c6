// fathom-diagnose built without CUDA.
#include "fathom_diagnose.hpp"

int main(int argc, char** argv) { return fathom::programs::diagnose_main(argc, argv); }
