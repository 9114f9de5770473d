// The whole C++ API of the mxfp4 library.
#pragma once

#include "mxfp4/cpu.hpp"
#include "mxfp4/dtype.hpp"
#include "mxfp4/error.hpp"
#include "mxfp4/format.hpp"
#include "mxfp4/gptq.hpp"
#include "mxfp4/ops.hpp"
#include "mxfp4/rotate.hpp"
#include "mxfp4/tensor.hpp"
#include "mxfp4/version.hpp"
#include "mxfp4/weight.hpp"
