// <fathom/train.hpp>: the training loop and checkpoints (safetensors in the Hugging Face layout),
// with the models, data and optimizers they use. The costliest umbrella to compile (JSON configs
// and checkpoint headers); <fathom/fathom.hpp> includes it.
#pragma once

#include "fathom/data.hpp"
#include "fathom/nn.hpp"
#include "fathom/optim.hpp"
#include "fathom/train/checkpoint.hpp"
#include "fathom/train/trainer.hpp"
