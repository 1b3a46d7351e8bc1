// Under mpirun -np 2: data-parallel generation shares one generator and
// gives each rank different images.
#include "distributed/communicator.h"
#include "generators/synthesizer.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace zsq::generators {
namespace {

// A small teacher with non-trivial BatchNorm statistics, identical on every rank (same seed).
models::Classifier same_teacher_on_every_rank() {
  torch::manual_seed(1);
  auto teacher = models::build({"resnet8", 1, 10, 8}, models::Fp32Factory());
  torch::NoGradGuard no_grad;
  for (int i = 0; i < 5; ++i) teacher->forward(torch::randn({16, 1, 28, 28}));
  return teacher;
}

TEST(DataParallelSynthesis, OneGeneratorDifferentImages) {
  auto comm = distributed::Communicator::create(distributed::CommunicatorOptions{120});
  auto teacher = same_teacher_on_every_rank();
  SynthesizerOptions o;
  o.recipe = "gdfq";
  o.batch_size = 8;
  o.iterations = 3;
  o.lr = 1e-2;
  auto synth = make_synthesizer(teacher, {1, 28, 28}, 10, o, comm);
  synth->fit(nullptr);
  std::vector<torch::Tensor> flat;
  for (const auto& p : synth->parameters()) flat.push_back(p.detach().reshape({-1}));
  const torch::Tensor params = comm->all_gather(torch::cat(flat));
  EXPECT_TRUE(torch::equal(params[0], params[1])) << "the ranks' generators differ after training";
  const auto [x, y] = synth->next_batch(nullptr);
  const torch::Tensor images = comm->all_gather(x.contiguous());
  EXPECT_FALSE(torch::equal(images[0], images[1])) << "both ranks drew the same noise";
}

TEST(DataParallelSynthesis, AdversarialKeepsGeneratorAndProxyStudentInStep) {
  auto comm = distributed::Communicator::create(distributed::CommunicatorOptions{120});
  auto teacher = same_teacher_on_every_rank();
  SynthesizerOptions o;
  o.recipe = "adversarial";
  o.batch_size = 8;
  o.iterations = 3;
  o.latent_dim = 16;
  o.teacher_spec = {"resnet8", 1, 10, 8};
  auto synth = make_synthesizer(teacher, {1, 28, 28}, 10, o, comm);
  synth->fit(nullptr);
  const auto [x, y] = synth->next_batch(nullptr);  // one more step
  const auto gathered = [&](const std::vector<torch::Tensor>& tensors) {
    std::vector<torch::Tensor> flat;
    for (const auto& p : tensors) flat.push_back(p.detach().reshape({-1}));
    return comm->all_gather(torch::cat(flat));
  };
  const torch::Tensor generators = gathered(synth->parameters());
  EXPECT_TRUE(torch::equal(generators[0], generators[1])) << "the ranks' generators differ";
  ASSERT_TRUE(synth->proxy_student());
  const torch::Tensor students = gathered(synth->proxy_student()->parameters());
  EXPECT_TRUE(torch::equal(students[0], students[1])) << "the ranks' proxy students differ";
  std::vector<torch::Tensor> buffers;
  for (const auto& b : synth->proxy_student()->buffers()) buffers.push_back(b.to(torch::kFloat32));
  const torch::Tensor statistics = gathered(buffers);
  EXPECT_TRUE(torch::equal(statistics[0], statistics[1])) << "the ranks' proxy students' BatchNorm statistics differ";
  EXPECT_FALSE(torch::equal(comm->all_gather(x.contiguous())[0], comm->all_gather(x.contiguous())[1]));
}

} // namespace
} // namespace zsq::generators
