// The scalar kernel table: portable code compiled for baseline x86-64 (or any target).
#include "cpu/kernels_generic.hpp"

namespace mxfp4::cpu {

const Kernels& scalar_kernels() {
  static const Kernels table{Isa::scalar,
                             "scalar",
                             &generic::quantize_rows,
                             &generic::dequantize_rows,
                             &generic::matmul_rows,
                             &generic::matmul_rows_int8};
  return table;
}

}  // namespace mxfp4::cpu
