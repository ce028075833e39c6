// <fathom/data.hpp>: token data: the built-in corpus, byte tokenizer, llm.c token shards and the
// batch sampler. <fathom/fathom.hpp> includes it.
#pragma once

#include "fathom/data/corpus.hpp"
#include "fathom/data/sampler.hpp"
#include "fathom/data/shards.hpp"
#include "fathom/data/tokenizer.hpp"
