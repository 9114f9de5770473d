// The avx2 kernel table. Compiled with this ISA's flags only (see CMakeLists.txt).
#include "cpu/kernels_generic.hpp"

namespace mxfp4::cpu {

const Kernels& avx2_kernels() {
  static const Kernels table{Isa::avx2, "avx2", &generic::quantize_rows, &generic::dequantize_rows,
                             &generic::matmul_rows};
  return table;
}

}  // namespace mxfp4::cpu
