// <fathom/optim.hpp>: optimizers (SGD, Adam, AdamW), learning-rate schedules and gradient
// clipping. <fathom/fathom.hpp> includes it.
#pragma once

#include "fathom/optim/clip.hpp"
#include "fathom/optim/optimizer.hpp"
#include "fathom/optim/schedule.hpp"
