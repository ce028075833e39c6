// Backend<float, Cuda>: fathom's programs for this precision and device, compiled once.
#include "backend.hpp"

template struct fathom::programs::Backend<float, fathom::Cuda>;
