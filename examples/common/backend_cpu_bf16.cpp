// Backend<bf16, Cpu>: fathom's programs for this precision and device, compiled once.
#include "backend.hpp"

template struct fathom::programs::Backend<fathom::bf16, fathom::Cpu>;
