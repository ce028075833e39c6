// <fathom/nn.hpp>: models and normalization policies (core, tensors, autograd, nn, policy), without
// the data, optimizer and training headers; the cheapest umbrella to compile for a program that
// builds and runs models. <fathom/fathom.hpp> includes it.
#pragma once

// core and tensors
#include "fathom/core/device.hpp"
#include "fathom/core/error.hpp"
#include "fathom/core/memory.hpp"
#include "fathom/core/rng.hpp"
#include "fathom/core/scalar.hpp"
#include "fathom/tensor/tensor.hpp"

// autograd and its differentiable ops
#include "fathom/autograd/gradcheck.hpp"
#include "fathom/autograd/ops/activation.hpp"
#include "fathom/autograd/ops/attention.hpp"
#include "fathom/autograd/ops/dropout.hpp"
#include "fathom/autograd/ops/elementwise.hpp"
#include "fathom/autograd/ops/embedding.hpp"
#include "fathom/autograd/ops/gemm.hpp"
#include "fathom/autograd/ops/norm.hpp"
#include "fathom/autograd/ops/reduce.hpp"
#include "fathom/autograd/ops/rope.hpp"
#include "fathom/autograd/ops/softmax.hpp"
#include "fathom/autograd/var.hpp"

// models and normalization policies
#include "fathom/nn/decoder_lm.hpp"
#include "fathom/nn/generate.hpp"
#include "fathom/nn/presets.hpp"
#include "fathom/policy/deep_norm.hpp"
#include "fathom/policy/lns.hpp"
#include "fathom/policy/mix_ln.hpp"
#include "fathom/policy/norm_policy.hpp"
#include "fathom/policy/post_ln.hpp"
#include "fathom/policy/pre_ln.hpp"
#include "fathom/policy/sandwich_ln.hpp"
#include "fathom/policy/scaled_init.hpp"
