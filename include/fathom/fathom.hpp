// fathom: the umbrella header for users (CPU backend): every layer. <fathom/cuda.hpp> adds the CUDA
// backend. Per-layer umbrellas compile faster where a program needs less: <fathom/nn.hpp> (models
// and policies), <fathom/data.hpp>, <fathom/optim.hpp>, <fathom/train.hpp> (docs/performance.md
// has the numbers).
#pragma once

#include "fathom/data.hpp"
#include "fathom/nn.hpp"
#include "fathom/optim.hpp"
#include "fathom/train.hpp"
