// What a pool of synthetic images looks like to its teacher: how the labels
// spread over classes, how sure the teacher is, how alike the images are at
// the teacher's penultimate layer, and how well each BatchNorm's statistics
// are matched.
#pragma once

#include "models/zoo.h"

#include <vector>

namespace zsq::generators {

struct PoolReport {
  int64_t count = 0;
  std::vector<int64_t> label_histogram;  ///< per class
  double agreement = 0;          ///< fraction where the teacher predicts the pool's label
  double confidence = 0;         ///< mean teacher probability of the pool's label
  double feature_correlation = 0;  ///< mean pairwise cosine similarity of penultimate features (off-diagonal)
  std::vector<double> bns_per_layer;  ///< gdfq BN-statistics term per BatchNorm on the first batch
  double bns = 0;                     ///< their mean (gdfq's loss)
};

/// images: normalized N×C×H×W; labels: N. Uses at most `max_pairs_images`
/// images for the pairwise correlation and the first `bns_batch` for the BN terms.
PoolReport report_pool(models::ClassifierImpl& teacher, const torch::Tensor& images, const torch::Tensor& labels,
                       int64_t num_classes, int64_t max_pairs_images = 1024, int64_t bns_batch = 256);

} // namespace zsq::generators
