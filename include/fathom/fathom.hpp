// fathom: the umbrella header for users (CPU backend). <fathom/cuda.hpp> adds the CUDA backend.
#pragma once

#include "fathom/core/error.hpp"
#include "fathom/core/scalar.hpp"
#include "fathom/core/device.hpp"
#include "fathom/core/memory.hpp"
#include "fathom/core/rng.hpp"
#include "fathom/tensor/tensor.hpp"
#include "fathom/autograd/var.hpp"
#include "fathom/autograd/gradcheck.hpp"
