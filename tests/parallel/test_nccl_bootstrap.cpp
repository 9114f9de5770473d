// The NCCL layers' bootstrap helpers and argument checks that need no GPU: the unique-id file
// round trip, its time-out and format errors, and communicator arguments refused before any
// CUDA or NCCL call.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "mxfp4/parallel_nccl.hpp"

namespace mp = mxfp4::parallel;

namespace {

class NcclBootstrap : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("mxfp4_nccl_bootstrap_" + std::to_string(::getpid()) + "_" +
            std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string path(const char* name) const { return (dir_ / name).string(); }
  std::filesystem::path dir_;
};

std::string sample_id() {
  std::string hex;
  for (int i = 0; i < 256; ++i)
    hex += "0123456789abcdef"[(i * 7) % 16];
  return hex;
}

}  // namespace

TEST_F(NcclBootstrap, IdFileRoundTripsAndLeavesNoTemporary) {
  const std::string file = path("id");
  mp::write_nccl_unique_id(file, sample_id());
  EXPECT_EQ(mp::read_nccl_unique_id(file, 1.0), sample_id());
  int entries = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir_))
    ++entries;
  EXPECT_EQ(entries, 1);
}

TEST_F(NcclBootstrap, ReadTimesOutOrRefusesWhatIsNotAnId) {
  EXPECT_THROW(mp::read_nccl_unique_id(path("absent"), 0.05), mxfp4::IoError);
  const std::string file = path("bad");
  std::ofstream(file) << "not an id\n";
  EXPECT_THROW(mp::read_nccl_unique_id(file, 1.0), mxfp4::FormatError);
  std::ofstream(file, std::ios::trunc) << sample_id().substr(0, 255) << '\n';
  EXPECT_THROW(mp::read_nccl_unique_id(file, 1.0), mxfp4::FormatError);
  EXPECT_THROW(mp::write_nccl_unique_id(path("no/such/folder/id"), sample_id()), mxfp4::IoError);
}

TEST(NcclCommunicatorArgs, RefusedBeforeAnyDeviceCall) {
  EXPECT_THROW(mp::NcclCommunicator(sample_id(), 2, 2, 0), mxfp4::InvalidArgument);
  EXPECT_THROW(mp::NcclCommunicator(sample_id(), 0, 0, 0), mxfp4::InvalidArgument);
  EXPECT_THROW(mp::NcclCommunicator("abc", 0, 1, 0), mxfp4::InvalidArgument);
  EXPECT_THROW(mp::NcclCommunicator(std::string(256, 'z'), 0, 1, 0), mxfp4::InvalidArgument);
}
