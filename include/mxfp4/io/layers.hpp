// Loading one MXFP4 layer from a safetensors checkpoint, with the names of the reference
// (mistralrs-quant's MXFP4Layer, FORMATS.md section 2). `prefix` is the layer's name without a
// trailing dot; every tensor's dtype and shape is checked, and a mismatch names the tensor, the
// shape expected and the shape found. The weights view the checkpoint's memory-mapped bytes
// (no copy) and keep the files alive.
#pragma once

#include <cstdint>
#include <string_view>

#include "mxfp4/io/safetensors.hpp"
#include "mxfp4/weight.hpp"

namespace mxfp4::io {

// `{prefix}.blocks` u8 [out, in/2], `{prefix}.scales` u8 [out, in/32], `{prefix}.bias` [out].
Mxfp4Weight linear_b(const SafetensorsCheckpoint& checkpoint, std::string_view prefix,
                     std::int64_t in_dim, std::int64_t out_dim, bool bias);

// `{prefix}.blocks` u8 [E, out, in/2], `{prefix}.scales` u8 [E, out, in/32], `{prefix}.bias`
// [E, out].
Mxfp4Weight packed_linear_b(const SafetensorsCheckpoint& checkpoint, std::string_view prefix,
                            std::int64_t num_local_experts, std::int64_t in_dim,
                            std::int64_t out_dim, bool bias);

// GPT-OSS: `{prefix}.{name}_blocks` u8 [E, out, in/32, 16] (read as [E, out, in/2]),
// `{prefix}.{name}_scales` u8 [E, out, in/32], `{prefix}.{name}_bias` [E, out]. An empty prefix
// means the names start at `{name}`.
Mxfp4Weight packed_gptoss_linear(const SafetensorsCheckpoint& checkpoint, std::string_view prefix,
                                 std::string_view name, std::int64_t num_local_experts,
                                 std::int64_t in_dim, std::int64_t out_dim, bool bias);

}  // namespace mxfp4::io
