// The recipes of zsq generate and online quantization: each a table of parts, then the user's overrides.
#include "generators/synthesizer.h"

#include "framework/errors.h"

#include <functional>
#include <map>
#include <sstream>

namespace zsq::generators {

const std::vector<std::string>& known_recipes() {
  static const std::vector<std::string> names = {"noise", "zeroq", "dsg", "gdfq", "qimera", "genie", "intraq", "adversarial"};
  return names;
}

std::string Recipe::describe() const {
  std::ostringstream out;
  out << name << ": variables=" << variables;
  if (variables != "noise") {
    out << ", bns=" << bns_variant_name(bns) << "×" << bns_weight << ", ce×" << ce_weight << ", prior×"
        << prior_weight << ", margin " << margin << ", lr " << lr << ", " << iterations << " steps";
    if (lor) out << ", local object reinforcement";
    if (superpose_prob > 0) out << ", superposed embeddings p " << superpose_prob << " K " << superpose_k;
    if (mapping) out << ", mapping layer";
    if (layerwise) out << ", layerwise sample enhancement";
    if (adversarial > 0) {
      out << ", adversarial×" << adversarial << " (proxy student, " << student_steps << " steps per step, a batch every "
          << stride << " steps)";
    }
    if (soft_target > 0) out << ", soft inception U(" << soft_target << ", 1)";
    if (margin_low >= 0) out << ", marginal distance [" << margin_low << ", " << margin_up << "]";
  }
  return out.str();
}

namespace {

// Each recipe's parts by name (what is optimized, the BN-statistics loss and the weights of the terms, the
// optimizer's learning rate and steps, the method's own parts); what a row leaves out is off (Recipe's defaults).
const std::map<std::string, std::function<void(Recipe&)>>& recipe_table() {
  static const std::map<std::string, std::function<void(Recipe&)>> table = {
      {"noise", [](Recipe& r) { r.variables = "noise"; }},
      {"zeroq",  // ZeroQ: pixels against per-sample BN statistics, with the image prior
       [](Recipe& r) {
         r.variables = "pixels", r.bns = BnsVariant::kZeroQ, r.bns_weight = 1.0, r.prior_weight = 1.0;
         r.lr = 0.5, r.iterations = 500;
       }},
      {"dsg",  // DSG: ZeroQ's with slack on the statistics and layerwise sample enhancement
       [](Recipe& r) {
         r.variables = "pixels", r.bns = BnsVariant::kZeroQ, r.bns_weight = 1.0, r.prior_weight = 1.0;
         r.margin = 0.1, r.lr = 0.5, r.iterations = 500, r.layerwise = true;
       }},
      {"gdfq",  // GDFQ: a class-conditional generator, BN statistics ×0.1 and cross-entropy to its labels
       [](Recipe& r) {
         r.variables = "generator", r.bns = BnsVariant::kGdfq, r.bns_weight = 0.1, r.ce_weight = 1.0;
         r.lr = 1e-3, r.iterations = 400;
       }},
      {"qimera",  // GDFQ's generator with superposed embeddings (Qimera's CIFAR-10 script: p 0.4, K 2, no mapping)
       [](Recipe& r) {
         r.variables = "generator", r.bns = BnsVariant::kGdfq, r.bns_weight = 0.1, r.ce_weight = 1.0;
         r.lr = 1e-3, r.iterations = 400, r.superpose_prob = 0.4, r.superpose_k = 2;
       }},
      {"adversarial",  // DFAD / Fast-DFKD; Fast-DFKD's CIFAR scripts weigh the adversarial term 0.5-1.1
       [](Recipe& r) {
         r.variables = "generator", r.bns = BnsVariant::kGdfq, r.bns_weight = 0.1, r.ce_weight = 1.0;
         r.lr = 1e-3, r.iterations = 400, r.adversarial = 1.0, r.student_steps = 2;
       }},
      {"intraq",  // IntraQ: pixels with local object reinforcement, soft inception and the marginal distance
       [](Recipe& r) {
         r.variables = "pixels", r.bns = BnsVariant::kGdfq, r.bns_weight = 1.0, r.lr = 0.5, r.iterations = 1000;
         r.lor = true, r.soft_target = 0.95, r.margin_low = 0.05, r.margin_up = 0.8, r.patience = 50;
       }},
      {"genie",  // Genie-D: a fresh generator and its latents per batch, Genie's BN statistics and the prior
       [](Recipe& r) {
         r.variables = "generator+latents", r.bns = BnsVariant::kGenie, r.bns_weight = 1.0, r.prior_weight = 1.0;
         r.lr = 0.1, r.iterations = 4000;
       }},
  };
  return table;
}

// The user's values where given (negative / empty: the recipe's).
void apply_overrides(const SynthesizerOptions& o, Recipe& r) {
  if (!o.bns.empty()) r.bns = parse_bns_variant(o.bns);
  if (o.bns_weight >= 0) r.bns_weight = o.bns_weight;
  if (o.ce_weight >= 0) r.ce_weight = o.ce_weight;
  if (o.prior_weight >= 0) r.prior_weight = o.prior_weight;
  if (o.lr >= 0) r.lr = o.lr;
  if (o.iterations >= 0) r.iterations = o.iterations;
  if (o.margin >= 0) r.margin = o.margin;
  if (o.lor >= 0) r.lor = o.lor > 0;
  if (o.superpose_prob >= 0) r.superpose_prob = o.superpose_prob;
  if (o.superpose_k > 0) r.superpose_k = o.superpose_k;
  if (o.mapping >= 0) r.mapping = o.mapping > 0;
  if (o.layerwise >= 0) r.layerwise = o.layerwise > 0;
  if (o.adversarial >= 0) r.adversarial = o.adversarial;
  if (o.student_steps > 0) r.student_steps = o.student_steps;
  if (o.stride > 0) r.stride = o.stride;
  if (o.soft_target >= 0) r.soft_target = o.soft_target;
  if (o.margin_low > -2) r.margin_low = o.margin_low;
  if (o.margin_up > -2) r.margin_up = o.margin_up;
}

// Parts that do not go together, values out of range.
void check_recipe(const SynthesizerOptions& o, const Recipe& r) {
  ZSQ_CHECK_OPTION(o.stride >= 0, "--stride must be >= 1, got ", o.stride);
  ZSQ_CHECK_OPTION(o.adversarial >= 0 || o.adversarial == -1, "--adversarial must be >= 0, got ", o.adversarial);
  ZSQ_CHECK_OPTION(o.student_steps >= 0, "--student-steps must be >= 1, got ", o.student_steps);
  ZSQ_CHECK_OPTION(r.adversarial == 0 || r.variables == "generator",
                   "the adversarial term needs a trained generator (gdfq, qimera, adversarial)");
  ZSQ_CHECK_OPTION((o.stride == 0 && o.student_steps == 0) || r.adversarial > 0,
                   "--stride and --student-steps need the adversarial part (--adversarial > 0)");
  ZSQ_CHECK_OPTION(!o.external_adversary || (o.stride == 0 && o.student_steps == 0),
                   "--stride and --student-steps are for the proxy student of a pool; online, the adversary is the "
                   "student being quantized");
  ZSQ_CHECK_OPTION(r.adversarial == 0 || !r.lor,
                   "local object reinforcement cannot be combined with the adversarial part (the bank keeps uncropped images)");
  ZSQ_CHECK_OPTION(!r.layerwise || r.bns == BnsVariant::kZeroQ,
                   "layerwise sample enhancement needs per-sample statistics: use --bns zeroq");
  ZSQ_CHECK_OPTION(r.superpose_prob <= 1, "--superpose-prob must be in [0, 1], got ", r.superpose_prob);
  ZSQ_CHECK_OPTION(r.superpose_k >= 2, "--superpose-k must be >= 2, got ", r.superpose_k);
  ZSQ_CHECK_OPTION(r.variables == "generator" || (r.superpose_prob == 0 && !r.mapping),
                   "superposed embeddings and the mapping layer need the class-conditional generator (gdfq, qimera)");
  ZSQ_CHECK_OPTION(r.soft_target < 1, "--soft-target must be in [0, 1), got ", r.soft_target);
  ZSQ_CHECK_OPTION(r.margin_low < 0 || r.margin_up >= r.margin_low, "--margin-up must be >= --margin-low");
  ZSQ_CHECK_OPTION(o.batch_size >= 2, "--batch-size must be >= 2 for synthesis, got ", o.batch_size);
  ZSQ_CHECK_OPTION(o.margin >= 0 || o.margin == -1, "--margin must be >= 0, got ", o.margin);
  ZSQ_CHECK_OPTION(o.latent_dim >= 1, "--latent-dim must be >= 1, got ", o.latent_dim);
  ZSQ_CHECK_OPTION(r.variables == "noise" || r.lr > 0, "--lr must be > 0, got ", r.lr);
  ZSQ_CHECK_OPTION(r.variables != "generator+latents" || (r.ce_weight == 0 && r.soft_target == 0 && r.margin_low < 0),
                   "the ", r.name, " recipe has no target labels: --ce-weight, --soft-target and --margin-low are off");
}

} // namespace

Recipe resolve_recipe(const SynthesizerOptions& o) {
  const auto it = recipe_table().find(o.recipe);
  if (it == recipe_table().end()) {
    std::string known;
    for (const auto& n : known_recipes()) known += (known.empty() ? "" : ", ") + n;
    ZSQ_CHECK_OPTION(false, "unknown recipe '", o.recipe, "'; known: ", known);
  }
  Recipe r;
  r.name = o.recipe;
  it->second(r);
  apply_overrides(o, r);
  check_recipe(o, r);
  return r;
}

} // namespace zsq::generators
