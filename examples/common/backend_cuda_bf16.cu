// Backend<bf16, Cuda>: fathom's programs for this precision and device, compiled once.
#include "backend.hpp"

template struct fathom::programs::Backend<fathom::bf16, fathom::Cuda>;
