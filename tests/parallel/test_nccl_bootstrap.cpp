// The NCCL layers' bootstrap helpers and argument checks that need no GPU: the unique-id file
// round trip, its time-out and format errors, and communicator arguments refused before any
// CUDA or NCCL call.
#include <gtest/gtest.h>

#include <string>

#include "../test_files.hpp"
#include "mxfp4/parallel_nccl.hpp"

namespace mp = mxfp4::parallel;

namespace {

class NcclBootstrap : public ::testing::Test {
 protected:
  std::string path(const char* name) const { return dir_.file(name); }
  mxfp4::test::TempDir dir_;
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
  EXPECT_EQ(dir_.listing().size(), 1u);
}

TEST_F(NcclBootstrap, ReadTimesOutOrRefusesWhatIsNotAnId) {
  EXPECT_THROW(mp::read_nccl_unique_id(path("absent"), 0.05), mxfp4::IoError);
  const std::string file = path("bad");
  mxfp4::test::write_text(file, "not an id\n");
  EXPECT_THROW(mp::read_nccl_unique_id(file, 1.0), mxfp4::FormatError);
  mxfp4::test::write_text(file, sample_id().substr(0, 255) + '\n');
  EXPECT_THROW(mp::read_nccl_unique_id(file, 1.0), mxfp4::FormatError);
  EXPECT_THROW(mp::write_nccl_unique_id(path("no/such/folder/id"), sample_id()), mxfp4::IoError);
}

TEST(NcclCommunicatorArgs, RefusedBeforeAnyDeviceCall) {
  EXPECT_THROW(mp::NcclCommunicator(sample_id(), 2, 2, 0), mxfp4::InvalidArgument);
  EXPECT_THROW(mp::NcclCommunicator(sample_id(), 0, 0, 0), mxfp4::InvalidArgument);
  EXPECT_THROW(mp::NcclCommunicator("abc", 0, 1, 0), mxfp4::InvalidArgument);
  EXPECT_THROW(mp::NcclCommunicator(std::string(256, 'z'), 0, 1, 0), mxfp4::InvalidArgument);
}
