// zsq quantize's training options: their table for --help and config files, and reading them into
// trainers::QuantizeOptions.
#pragma once

#include "launch/options.h"
#include "models/quant_factory.h"
#include "trainers/quantize.h"

namespace zsq::cli {

/// The "Training" group of zsq quantize's options.
void add_training_options(po::options_description& desc);

/// An on/off option's value; UsageError naming it otherwise.
bool read_switch(const po::variables_map& vm, const char* name);

/// QuantizeOptions from the command line (the caller sets the checkpoint path and what a resume changes).
trainers::QuantizeOptions read_quantize_options(const po::variables_map& vm, const models::StudentConfig& config);

} // namespace zsq::cli
