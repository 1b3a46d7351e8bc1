#include "trainers/engine.h"

#include <c10/util/Exception.h>

#include <cmath>

namespace zsq::trainers {

LoaderOptions training_loader(int64_t local_batch, uint64_t seed, int rank, int world, int64_t crop_padding,
                              bool horizontal_flip) {
  LoaderOptions lo;
  lo.batch_size = local_batch;
  lo.shuffle = true;
  lo.seed = seed;
  lo.rank = rank;
  lo.world_size = world;
  lo.drop_last = true;
  lo.crop_padding = crop_padding;
  lo.horizontal_flip = horizontal_flip;
  return lo;
}

void check_not_diverged(double loss, const std::string& what, const std::string& where, const std::string& note) {
  TORCH_CHECK(std::isfinite(loss), "training diverged: ", what, " is ", loss, " at ", where, "; ", note, "lower --lr");
}

} // namespace zsq::trainers
