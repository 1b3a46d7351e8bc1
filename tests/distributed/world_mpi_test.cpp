// Runs under `mpirun -np 2`: every rank finds its place in the job, and the
// data shards of all ranks are disjoint, equal-sized and epoch-dependent.
#include "distributed/world.h"
#include "framework/data.h"

#include <gtest/gtest.h>
#include <mpi.h>

#include <set>

namespace zsq {
namespace {

TEST(MpiWorld, RankAndSizeMatchMpi) {
  const distributed::World world = distributed::init_world();
  int rank = -1, size = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  EXPECT_EQ(world.rank, rank);
  EXPECT_EQ(world.world_size, size);
  EXPECT_GE(size, 2) << "run this test with mpirun -np 2 or more";
  EXPECT_EQ(world.local_rank, rank);  // one machine
}

TEST(MpiWorld, ShardsAcrossRanksAreDisjointAndEqual) {
  const distributed::World world = distributed::init_world();
  const int64_t n = 1001;
  for (int64_t epoch : {0, 1}) {
    const auto mine = shard_indices(n, world.rank, world.world_size, epoch, /*seed=*/11, /*shuffle=*/true);
    const int count = static_cast<int>(mine.size());
    std::vector<int> counts(world.world_size);
    MPI_Allgather(&count, 1, MPI_INT, counts.data(), 1, MPI_INT, MPI_COMM_WORLD);
    for (int c : counts) EXPECT_EQ(c, n / world.world_size);
    std::vector<int64_t> all(static_cast<size_t>(count) * world.world_size);
    MPI_Allgather(mine.data(), count, MPI_INT64_T, all.data(), count, MPI_INT64_T, MPI_COMM_WORLD);
    const std::set<int64_t> unique(all.begin(), all.end());
    EXPECT_EQ(unique.size(), all.size()) << "an index is in two ranks' shards at epoch " << epoch;
  }
  const auto e0 = shard_indices(n, world.rank, world.world_size, 0, 11, true);
  const auto e1 = shard_indices(n, world.rank, world.world_size, 1, 11, true);
  EXPECT_NE(e0, e1);
}

} // namespace
} // namespace zsq

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  zsq::distributed::init_world(/*force_mpi=*/true);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  // Only rank 0 prints the report; every rank's failure still fails the job.
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int failed = RUN_ALL_TESTS() != 0;
  int any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  zsq::distributed::finalize_world();
  return any_failed;
}
