/* mxfp4.h: the C API of the mxfp4 library (C99; also usable from C++).
 *
 * CONVENTIONS
 *
 * Status codes. Every function that can fail returns an mxfp4_status: MXFP4_OK (0) on success,
 * otherwise one of the MXFP4_ERR_* codes below (the values of the C++ mxfp4::ErrorCode, plus
 * MXFP4_ERR_OUT_OF_MEMORY and MXFP4_ERR_INTERNAL, which C++ reports as std::bad_alloc and other
 * exceptions). On failure no out-parameter (handle, struct, count, string) is written, no handle
 * passed in is changed, and no partial output file exists; the contents of a caller's output
 * tensor (the buffer an operation writes its result into) are then unspecified. The only functions
 * that return something else are the ones that cannot fail: the version queries, the name
 * lookups (mxfp4_status_name, mxfp4_dtype_name, mxfp4_scale_rule_name),
 * mxfp4_last_error_message, mxfp4_cuda_built and the *_destroy / *_close functions.
 *
 * Messages. When a call fails, it stores a one-line message (naming the argument and what is
 * wrong, e.g. "linear: x must be [..., K] with K=64 (weight in_features), got x f32 [2, 32]")
 * as the calling thread's last error: mxfp4_last_error_message() returns it. The message is
 * thread-local: a failure on one thread never changes another thread's message. It stays valid
 * and unchanged until the next failing call on the same thread; successful calls do not touch
 * it. Before any failure it is the empty string. Never free it.
 *
 * Exceptions. No C++ exception ever leaves a function of this header; every one becomes a
 * status code and a message. The library never aborts or exits on bad input.
 *
 * Ownership and lifetimes.
 * - Handles (mxfp4_weight, mxfp4_hessian, mxfp4_file, mxfp4_writer) are opaque. A function that
 * creates one writes it to a `T** out` parameter; the caller owns it and releases it with the
 * matching mxfp4_*_destroy / mxfp4_file_close (which accept NULL). A handle is independent of every
 *   other handle: destroying a file does not invalidate weights loaded from it, and a writer
 *   keeps what was added to it alive by itself.
 * - Tensors (mxfp4_tensor) describe caller-owned memory: a pointer, a shape, a dtype and a
 *   device. The library never keeps such a pointer after the call returns, except where a
 *   function says it borrows it (mxfp4_weight_from_parts with MXFP4_BORROW): then the memory must
 *   outlive the handle. Work enqueued on a CUDA stream reads and writes the memory when the
 *   stream gets to it: keep it valid (and unchanged, for inputs) until then.
 * - Strings returned by the library (names, dtype strings, metadata values) belong to the
 *   object they came from and stay valid until that object is destroyed; static strings (the
 *   version, status and dtype names) are valid forever.
 *
 * Devices and streams. A tensor's `device` says where its `data` lives: MXFP4_DEVICE_CPU (host
 * memory) or MXFP4_DEVICE_CUDA with a device index (memory from cudaMalloc or equivalent). All
 * tensors of one call and the weight must be on the same device. `stream` arguments take a
 * cudaStream_t cast to void* (NULL: the legacy default stream); CPU calls ignore it. Calls on
 * CUDA tensors are enqueued on the stream and return without waiting (mxfp4_synchronize waits);
 * mxfp4_linear and mxfp4_gather_linear never synchronize with the host, so they can be captured
 * in a CUDA graph. Errors found on the GPU after a call returned (an expert id out of range in a
 * CUDA gather) are reported by the next mxfp4_synchronize. A build without the CUDA backend
 * answers CUDA tensors with MXFP4_ERR_UNSUPPORTED.
 *
 * Thread safety. Functions may be called from any thread. Handles are safe to share between
 * threads for reading (an mxfp4_weight used by several concurrent mxfp4_linear calls, an
 * mxfp4_file read concurrently); a handle must not be destroyed, or an mxfp4_writer or
 * mxfp4_hessian modified (mxfp4_writer_add_*, mxfp4_hessian_add), while another thread uses it.
 * The CPU backend runs each call on its own thread pool (mxfp4_set_num_threads); callers that
 * run the library from several threads of their own should set it to 1.
 *
 * Stability. Values of the enums are fixed (new ones are appended); the structs below are never
 * changed (a new layout would get a new name); functions are only added.
 */
#ifndef MXFP4_H
#define MXFP4_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Version --------------------------------------------------------------------------------- */

/* The version this header belongs to. */
#define MXFP4_VERSION_MAJOR 0
#define MXFP4_VERSION_MINOR 1
#define MXFP4_VERSION_PATCH 0

/* The version of the linked library: (major << 16) | (minor << 8) | patch. */
uint32_t mxfp4_version(void);
/* The same as "major.minor.patch", e.g. "0.1.0". */
const char* mxfp4_version_string(void);

/* ---- Status codes and errors ----------------------------------------------------------------- */

typedef enum mxfp4_status {
  MXFP4_OK = 0,
  MXFP4_ERR_INVALID_ARGUMENT = 1,   /* a value outside its domain, a NULL pointer, an absent name */
  MXFP4_ERR_SHAPE_MISMATCH = 2,     /* a tensor's rank or dims disagree with what the call needs */
  MXFP4_ERR_DTYPE_MISMATCH = 3,     /* a tensor's element type is not one the call accepts */
  MXFP4_ERR_INDEX_OUT_OF_RANGE = 4, /* an expert id outside [0, E) */
  MXFP4_ERR_NON_FINITE = 5,         /* NaN or Inf where a finite value is required */
  MXFP4_ERR_FORMAT = 6,             /* a file does not follow its format */
  MXFP4_ERR_IO = 7,                 /* the operating system refused a read, write or rename */
  MXFP4_ERR_UNSUPPORTED = 8,        /* valid, but this build or device cannot do it */
  MXFP4_ERR_DEVICE = 9,             /* the CUDA runtime reported a failure */
  MXFP4_ERR_OUT_OF_MEMORY = 64,     /* host memory could not be allocated */
  MXFP4_ERR_INTERNAL = 65           /* anything else (a bug: please report it) */
} mxfp4_status;

/* "ok", "invalid_argument", "shape_mismatch", ... ("unknown" for other values). */
const char* mxfp4_status_name(int32_t status);
/* The calling thread's last error message ("" if no call on this thread has failed yet). */
const char* mxfp4_last_error_message(void);

/* ---- Element types, devices, tensors --------------------------------------------------------- */

typedef enum mxfp4_dtype {
  MXFP4_F32 = 0,
  MXFP4_F16 = 1,
  MXFP4_BF16 = 2,
  MXFP4_U8 = 3,
  MXFP4_U32 = 4,
  MXFP4_I32 = 5,
  MXFP4_I64 = 6
} mxfp4_dtype;

/* "f32", "f16", "bf16", "u8", "u32", "i32", "i64" ("unknown" for other values). */
const char* mxfp4_dtype_name(int32_t dtype);

typedef enum mxfp4_device_type { MXFP4_DEVICE_CPU = 0, MXFP4_DEVICE_CUDA = 1 } mxfp4_device_type;

typedef struct mxfp4_device {
  int32_t type;  /* an mxfp4_device_type */
  int32_t index; /* CUDA device ordinal; 0 for the CPU */
} mxfp4_device;

/* Largest rank a tensor of this API can have. */
#define MXFP4_MAX_RANK 8

/* A view of caller-owned, contiguous, row-major memory. `data` may be NULL only when the tensor
 * has no elements. Unused entries of `shape` (at and after `rank`) are ignored. */
typedef struct mxfp4_tensor {
  void* data;
  int64_t shape[MXFP4_MAX_RANK];
  int32_t rank;  /* 0 .. MXFP4_MAX_RANK */
  int32_t dtype; /* an mxfp4_dtype */
  mxfp4_device device;
} mxfp4_tensor;

/* ---- Library settings --------------------------------------------------------------------------
 */

/* 1 when this build has the CUDA backend, else 0. */
int mxfp4_cuda_built(void);
/* Number of usable CUDA devices (0 without the CUDA backend, a driver or a GPU). */
mxfp4_status mxfp4_cuda_device_count(int* count);
/* Waits until all work enqueued on `stream` (a cudaStream_t, NULL for the default) has finished. */
mxfp4_status mxfp4_synchronize(void* stream);
/* Threads a CPU call uses, the caller included: n >= 1, or 0 for the CPUs this process may use. */
mxfp4_status mxfp4_set_num_threads(int n);
mxfp4_status mxfp4_num_threads(int* n);

/* ---- Quantization settings ------------------------------------------------------------------- */

/* How the shared E8M0 scale of a block is chosen (docs/scale-rules.md). */
typedef enum mxfp4_scale_rule {
  MXFP4_SCALE_FLOOR = 0,    /* OCP spec: floor(log2 amax) - 2; values above 6 saturate */
  MXFP4_SCALE_CEIL = 1,     /* NVIDIA / triton_kernels: ceil(log2(amax / 6)); never saturates */
  MXFP4_SCALE_EVEN = 2,     /* torchao EVEN */
  MXFP4_SCALE_MSE = 3,      /* ceil exponent or one below, whichever has the smaller error */
  MXFP4_SCALE_MISTRALRS = 4 /* mistral.rs 0.8.1's clipping rule, only to reproduce its bytes */
} mxfp4_scale_rule;

/* The rule with the lowest measured error, used by the other front ends by default. */
#define MXFP4_SCALE_DEFAULT MXFP4_SCALE_MSE

/* "floor", "ceil", "even", "mse", "mistralrs" ("unknown" for other values). */
const char* mxfp4_scale_rule_name(int32_t rule);
/* The rule named `name` (one of the names above). */
mxfp4_status mxfp4_parse_scale_rule(const char* name, int32_t* rule);

/* What quantize does with NaN or Inf in its input. */
typedef enum mxfp4_non_finite {
  MXFP4_NON_FINITE_ERROR = 0,    /* fail with MXFP4_ERR_NON_FINITE naming the element */
  MXFP4_NON_FINITE_NAN_BLOCK = 1 /* code the block with scale 0xFF, which decodes as NaN */
} mxfp4_non_finite;

/* ---- MXFP4 weights --------------------------------------------------------------------------- */

/* An MXFP4 weight: one dense matrix [N, K] or a stack of E experts [E, N, K], stored as blocks
 * u8 [.., N, K/2] (element 2j in the low nibble of byte j, unless re-laid out: see
 * mxfp4_block_layout), scales u8 [.., N, K/32] (E8M0) and an optional bias [N] or [E, N]. It lives
 * on one device. Immutable once created. */
typedef struct mxfp4_weight mxfp4_weight;

/* How a weight's blocks hold their codes (the C++ mxfp4::BlockLayout). Each 16-byte block keeps
 * its place and its 32 codes either way; only the bits inside a block move. */
typedef enum mxfp4_block_layout {
  /* Element 2j in the low nibble of byte j (FORMATS.md section 1): what every file format stores
   * and every backend reads; what quantize, from_parts and the loaders give. */
  MXFP4_LAYOUT_STANDARD = 0,
  /* The CUDA kernels' own layout (each block as four 32-bit words that decode faster): optional,
   * made offline with mxfp4_weight_with_layout. Only the CUDA backend reads it (its kernels read
   * both); CPU calls refuse it with MXFP4_ERR_UNSUPPORTED (mxfp4_dequantize converts it back
   * first). It needs every scale byte at most 128 (2^1). Files never hold it: writers write the
   * standard bytes. */
  MXFP4_LAYOUT_GPU = 1
} mxfp4_block_layout;

/* Quantizes `weight` (f32/f16/bf16 [N, K] or [E, N, K], K a positive multiple of 32) with
 * `rule` (an mxfp4_scale_rule) and `non_finite` (an mxfp4_non_finite). `bias` may be NULL, or
 * f32/f16/bf16 [N] / [E, N]; it is copied. The new weight owns its storage on weight's device. */
mxfp4_status mxfp4_weight_quantize(const mxfp4_tensor* weight, const mxfp4_tensor* bias,
                                   int32_t rule, int32_t non_finite, void* stream,
                                   mxfp4_weight** out);

/* Flags of mxfp4_weight_from_parts. */
#define MXFP4_COPY 0u   /* the weight copies the parts into storage it owns */
#define MXFP4_BORROW 1u /* the weight views the caller's memory, which must outlive it */

/* A weight from existing parts: blocks u8 [N, K/2] or [E, N, K/2], scales u8 [.., N, K/32],
 * bias f32/f16/bf16 [N] or [E, N] or NULL, all on one device. */
mxfp4_status mxfp4_weight_from_parts(const mxfp4_tensor* blocks, const mxfp4_tensor* scales,
                                     const mxfp4_tensor* bias, uint32_t flags, mxfp4_weight** out);

typedef struct mxfp4_weight_info {
  int32_t stacked;      /* 1 for a stack of experts [E, N, K], 0 for a dense [N, K] */
  int32_t has_bias;     /* 1 when the weight has a bias */
  int64_t num_experts;  /* E; 1 for a dense weight */
  int64_t out_features; /* N */
  int64_t in_features;  /* K */
  mxfp4_device device;
} mxfp4_weight_info;

mxfp4_status mxfp4_weight_get_info(const mxfp4_weight* weight, mxfp4_weight_info* info);

/* The layout of the weight's blocks (an mxfp4_block_layout) in `*layout`. */
mxfp4_status mxfp4_weight_get_layout(const mxfp4_weight* weight, int32_t* layout);

/* A new handle for `weight` with its blocks in `layout` (an mxfp4_block_layout): new blocks on the
 * weight's device, converted block by block (a GPU weight's through a host copy; the call waits
 * for the copies), sharing the weight's scales and bias; when the blocks already are in `layout`,
 * sharing everything. A weight made with MXFP4_BORROW passes its borrowing on: the new handle
 * views the same caller memory for what it shares. Errors: MXFP4_ERR_INVALID_ARGUMENT (NULL
 * pointers, an unknown layout, or for MXFP4_LAYOUT_GPU a scale above 128: the message names the
 * expert, row and block). */
mxfp4_status mxfp4_weight_with_layout(const mxfp4_weight* weight, int32_t layout,
                                      mxfp4_weight** out);

/* Which part of a weight mxfp4_weight_get_part describes. */
typedef enum mxfp4_weight_part {
  MXFP4_PART_BLOCKS = 0,
  MXFP4_PART_SCALES = 1,
  MXFP4_PART_BIAS = 2
} mxfp4_weight_part;

/* Describes a part of the weight in `view`: its data pointer (owned by the weight; valid while
 * the weight lives; do not write through it), shape, dtype and device. The blocks' bytes are in
 * the weight's layout (mxfp4_weight_get_layout). Asking for the bias of a weight without one is
 * MXFP4_ERR_INVALID_ARGUMENT. */
mxfp4_status mxfp4_weight_get_part(const mxfp4_weight* weight, int32_t part, mxfp4_tensor* view);

void mxfp4_weight_destroy(mxfp4_weight* weight);

/* ---- Data-aware quantization (GPTQ) ------------------------------------------------------------
 *
 * GPTQ (include/mxfp4/gptq.hpp) quantizes a weight [N, K] one input column at a time and moves
 * each column's error onto the columns not yet quantized, weighted by H = X^T X, the Gram matrix
 * of the layer's calibration inputs X [samples, K]. The result is an ordinary mxfp4_weight. */

/* H for K inputs, accumulated in double precision: an opaque handle (mxfp4_hessian_destroy). */
typedef struct mxfp4_hessian mxfp4_hessian;

/* An all-zero H for `in_features` inputs (1 <= K <= 65536; MXFP4_ERR_INVALID_ARGUMENT else). */
mxfp4_status mxfp4_hessian_create(int64_t in_features, mxfp4_hessian** out);
/* H from an existing matrix f32 [K, K] on the CPU (e.g. X^T X computed elsewhere); only its
 * symmetric part is used. MXFP4_ERR_SHAPE_MISMATCH when not square, MXFP4_ERR_DTYPE_MISMATCH
 * for another dtype, MXFP4_ERR_NON_FINITE naming the first NaN/Inf entry. */
mxfp4_status mxfp4_hessian_from_tensor(const mxfp4_tensor* matrix, mxfp4_hessian** out);
/* H from `count` = K * K doubles, row-major (copied); the same checks. */
mxfp4_status mxfp4_hessian_from_values(int64_t in_features, const double* values, size_t count,
                                       mxfp4_hessian** out);
/* Adds x^T x for `activations` f32/f16/bf16 [..., K] on the CPU: every row of the flattened
 * [rows, K] is one sample. MXFP4_ERR_SHAPE_MISMATCH when the last dim is not K,
 * MXFP4_ERR_NON_FINITE naming the first NaN/Inf element; on failure H is unchanged. */
mxfp4_status mxfp4_hessian_add(mxfp4_hessian* hessian, const mxfp4_tensor* activations);

typedef struct mxfp4_hessian_info {
  int64_t in_features; /* K */
  int64_t samples;     /* rows added by mxfp4_hessian_add so far (0 for a matrix given whole) */
} mxfp4_hessian_info;

mxfp4_status mxfp4_hessian_get_info(const mxfp4_hessian* hessian, mxfp4_hessian_info* info);
/* Copies the K * K values of H (row-major, symmetric) into the caller's `values`; `count` must be
 * K * K (MXFP4_ERR_SHAPE_MISMATCH else). */
mxfp4_status mxfp4_hessian_read_values(const mxfp4_hessian* hessian, double* values, size_t count);
void mxfp4_hessian_destroy(mxfp4_hessian* hessian);

/* GPTQ's usual dampening: 1% of the mean of H's diagonal is added to the diagonal. */
#define MXFP4_GPTQ_DEFAULT_DAMP 0.01

/* Quantizes `weight` f32/f16/bf16 [N, K] (CPU, K a positive multiple of 32, finite) with GPTQ
 * error correction under `hessian` (for the same K), block scales chosen by `rule` (an
 * mxfp4_scale_rule), `damp` * mean(diag H) added to H's diagonal (finite, >= 0; more damping
 * corrects less). `bias` may be NULL, or f32/f16/bf16 [N]; it is copied. The new weight owns its
 * storage on the CPU; the hessian is not changed and may be reused. Columns no sample reached
 * (H_ii == 0) are rounded to nearest; a diagonal H gives exactly mxfp4_weight_quantize's bytes.
 * Errors: MXFP4_ERR_SHAPE_MISMATCH (weight not [N, K] - a stack of experts [E, N, K] needs one
 * H per expert: mxfp4_quantize_gptq_experts -, K not a multiple of 32, H for another K),
 * MXFP4_ERR_DTYPE_MISMATCH,
 * MXFP4_ERR_UNSUPPORTED (CUDA memory), MXFP4_ERR_NON_FINITE (NaN/Inf in weight),
 * MXFP4_ERR_INVALID_ARGUMENT (NULL pointers, unknown rule, bad damp, H not positive definite
 * after dampening or with a negative diagonal entry). Cost O(K^3 + N K^2) time, O(K^2) memory. */
mxfp4_status mxfp4_quantize_gptq(const mxfp4_tensor* weight, const mxfp4_hessian* hessian,
                                 const mxfp4_tensor* bias, int32_t rule, double damp,
                                 mxfp4_weight** out);

/* GPTQ for a stack of experts: `weight` f32/f16/bf16 [E, N, K] (CPU), expert e quantized as
 * mxfp4_quantize_gptq would quantize the matrix weight[e] under hessians[e], the Hessian of the
 * inputs routed to expert e. `hessians` points to `count` handles, which must be E (E >= 1), none
 * NULL, each for the weight's K; the same handle may appear more than once; the array and the
 * handles are only read during the call (none is kept or changed; in C, declare the array as
 * `const mxfp4_hessian* hs[E]`, since an `mxfp4_hessian**` needs a cast). `bias` may be NULL, or
 * f32/f16/bf16 [E, N]; it is copied. The result is one stacked mxfp4_weight, byte for byte the E
 * per-expert results stacked (the C++ quantize_gptq(weight, std::vector<Hessian>)). Errors:
 * MXFP4_ERR_SHAPE_MISMATCH (weight not [E, N, K] - one matrix [N, K] goes to
 * mxfp4_quantize_gptq -, count not E, hessians[e] for another K, bias not [E, N], K not a
 * multiple of 32), MXFP4_ERR_INVALID_ARGUMENT (weight, out, hessians or hessians[e] NULL, unknown
 * rule, bad damp, an H not positive definite), MXFP4_ERR_DTYPE_MISMATCH, MXFP4_ERR_UNSUPPORTED
 * (CUDA memory), MXFP4_ERR_NON_FINITE; a failure inside one expert's quantization names it
 * ("expert 3: ..."). Cost E times mxfp4_quantize_gptq's; memory O(K^2) beyond the result. */
mxfp4_status mxfp4_quantize_gptq_experts(const mxfp4_tensor* weight,
                                         const mxfp4_hessian* const* hessians, size_t count,
                                         const mxfp4_tensor* bias, int32_t rule, double damp,
                                         mxfp4_weight** out);

/* ---- Operations on caller-owned buffers ------------------------------------------------------ */

/* weight f32/f16/bf16 [N, K] or [E, N, K] -> blocks u8 [.., N, K/2] and scales u8 [.., N, K/32],
 * written into the caller's buffers (same device as weight, not overlapping it). */
mxfp4_status mxfp4_quantize(const mxfp4_tensor* weight, const mxfp4_tensor* blocks,
                            const mxfp4_tensor* scales, int32_t rule, int32_t non_finite,
                            void* stream);

/* weight -> out [N, K] or [E, N, K] of dtype f32, f16 or bf16 (exact in f32 and bf16). */
mxfp4_status mxfp4_dequantize(const mxfp4_weight* weight, const mxfp4_tensor* out, void* stream);

/* Dense linear layer: out[..., N] = x[..., K] W^T + bias, for a dense weight. x is f32, f16 or
 * bf16; out has x's dtype and leading dims. Accumulates in f32 or better. */
mxfp4_status mxfp4_linear(const mxfp4_tensor* x, const mxfp4_weight* weight,
                          const mxfp4_tensor* out, void* stream);

/* Mixture of experts, for a stacked weight [E, N, K]: out[t, s] = x_row W[e]^T + bias[e] with
 * e = indices[t, s] (u32, i32 or i64 [T, topk], each in [0, E)). x is [T, K] (every slot of token
 * t uses row t) or [T, topk, K] (slot (t, s) uses row (t, s)); out is [T, topk, N] in x's dtype. */
mxfp4_status mxfp4_gather_linear(const mxfp4_tensor* x, const mxfp4_tensor* indices,
                                 const mxfp4_weight* weight, const mxfp4_tensor* out, void* stream);

/* Block-wise Hadamard rotation (include/mxfp4/rotate.hpp): out = x R for x f32/f16/bf16
 * [..., K] on the CPU (K a positive multiple of 32), each 32-element block of every row times the
 * normalized 32 x 32 Sylvester Hadamard matrix H (H = H^T = H^-1). Computed in double precision,
 * rounded once to f32 (f16/bf16: that f32 rounded to nearest even). out has x's shape and dtype
 * and may be x itself (in place); any other overlap is MXFP4_ERR_INVALID_ARGUMENT. With W
 * quantized as x R's partner (mxfp4_weight_quantize of W R), mxfp4_linear(x R) computes x W^T.
 * Errors: MXFP4_ERR_SHAPE_MISMATCH (K not a positive multiple of 32, out's shape),
 * MXFP4_ERR_DTYPE_MISMATCH, MXFP4_ERR_UNSUPPORTED (CUDA memory). */
mxfp4_status mxfp4_rotate_blocks(const mxfp4_tensor* x, const mxfp4_tensor* out);

/* ---- Run options (linear and gather_linear) -------------------------------------------------- */

/* The arithmetic of linear and gather_linear (the C++ mxfp4::Precision).
 * EXACT (default): f32 arithmetic on exactly decoded weights.
 * INT8_ACTIVATIONS: each 32-element block of an x row is rounded to int8 with its own f32 scale
 *   (max |x| / 127) and multiplied by the weight's E2M1 codes in exact integer arithmetic; the
 *   error against EXACT is at most sum over blocks of (max|x_block| / 254) * sum |w| over the
 *   block, plus f32 rounding. CPU only: CUDA calls ignore it and compute exactly. */
typedef enum mxfp4_precision {
  MXFP4_PRECISION_EXACT = 0,
  MXFP4_PRECISION_INT8_ACTIVATIONS = 1
} mxfp4_precision;

/* How mxfp4_linear_ex / mxfp4_gather_linear_ex run. Zero-initialise it (or call
 * mxfp4_run_options_init) and set what you need; a NULL options pointer means all defaults. */
typedef struct mxfp4_run_options {
  void* stream;      /* a cudaStream_t (NULL: the legacy default stream); CPU calls ignore it */
  int32_t precision; /* an mxfp4_precision */
  /* CUDA gather_linear: device scratch on the weight's device of at least
   * mxfp4_gather_linear_workspace_bytes(...) bytes, borrowed for the call (keep it valid until
   * the stream has run the call). CUDA linear on Hopper: mxfp4_linear_workspace_bytes(...) bytes,
   * for the partial sums of stream-K (some bf16 batches of more than 128 tokens); less is not
   * used. NULL (or too
   * little for linear): calls that need scratch take stream-ordered memory (cudaMallocAsync).
   * CPU calls ignore it. */
  void* workspace;
  size_t workspace_bytes;
} mxfp4_run_options;

/* Sets `options` to the defaults (NULL stream, EXACT, no workspace). */
mxfp4_status mxfp4_run_options_init(mxfp4_run_options* options);

/* mxfp4_linear with options (NULL: defaults, the same as mxfp4_linear(x, weight, out, NULL)). */
mxfp4_status mxfp4_linear_ex(const mxfp4_tensor* x, const mxfp4_weight* weight,
                             const mxfp4_tensor* out, const mxfp4_run_options* options);
/* mxfp4_gather_linear with options (NULL: defaults). */
mxfp4_status mxfp4_gather_linear_ex(const mxfp4_tensor* x, const mxfp4_tensor* indices,
                                    const mxfp4_weight* weight, const mxfp4_tensor* out,
                                    const mxfp4_run_options* options);
/* mxfp4_gather_linear with its output in expert order (the C++ gather_linear_expert_order), for
 * fused pipelines that would otherwise undo the scatter; options as for mxfp4_gather_linear_ex
 * (NULL: defaults). The pair of token t and slot s is t * topk + s. The caller's buffers, all on
 * the weight's device:
 * - out [T * topk, N] in x's dtype: row p holds the result of pair perm[p];
 * - perm i32 [T * topk]: a permutation of the pairs, grouped by expert in ascending id;
 * - offsets i32 [E + 1]: expert e's rows are [offsets[e], offsets[e + 1]); offsets[0] = 0 and
 *   offsets[E] is the number of pairs with a valid id (T * topk unless some are out of range).
 * Within an expert the CPU keeps the pairs in ascending order; CUDA may order them differently
 * from call to call (perm says how; every row's value is the same). T * topk must be below 2^31
 * (MXFP4_ERR_UNSUPPORTED otherwise). Out-of-range ids: as mxfp4_gather_linear (the CPU fails with
 * MXFP4_ERR_INDEX_OUT_OF_RANGE before writing; on CUDA their pairs take rows
 * [offsets[E], T * topk), filled with NaN, and the next mxfp4_synchronize fails). Other errors as
 * mxfp4_gather_linear_ex's, naming the buffer at fault (MXFP4_ERR_SHAPE_MISMATCH,
 * MXFP4_ERR_DTYPE_MISMATCH for perm or offsets not i32, MXFP4_ERR_INVALID_ARGUMENT for NULL or
 * overlapping buffers). */
mxfp4_status mxfp4_gather_linear_expert_order(const mxfp4_tensor* x, const mxfp4_tensor* indices,
                                              const mxfp4_weight* weight, const mxfp4_tensor* out,
                                              const mxfp4_tensor* perm, const mxfp4_tensor* offsets,
                                              const mxfp4_run_options* options);
/* Bytes of workspace a CUDA gather_linear of `tokens` x `topk` pairs over `experts` experts uses
 * (0 for small batches); MXFP4_ERR_INVALID_ARGUMENT for negative or huge counts. */
mxfp4_status mxfp4_gather_linear_workspace_bytes(int64_t tokens, int64_t topk, int64_t experts,
                                                 size_t* bytes);
/* The same with the weight's k (a multiple of 32; 0 as above): also room to stage 16-bit x rows in
 * expert order (2 * k bytes per pair), which makes the Hopper GEMM for prefill faster. */
mxfp4_status mxfp4_gather_linear_workspace_bytes_k(int64_t tokens, int64_t topk, int64_t experts,
                                                   int64_t k, size_t* bytes);
/* Bytes of workspace with which a CUDA linear on the current device never allocates (131076 per
 * SM where the Hopper GEMM runs, for stream-K; 0 elsewhere and in builds without CUDA). */
mxfp4_status mxfp4_linear_workspace_bytes(size_t* bytes);

/* ---- Files ----------------------------------------------------------------------------------- */

/* File formats. MXFP4_FORMAT_AUTO picks the format from the file's contents when reading (GGUF by
 * its magic, safetensors with uqff.version.* scalars as UQFF 1.x, anything else as safetensors:
 * GPT-OSS and legacy UQFF files are read as plain safetensors unless named) and from its
 * extension when writing (.safetensors, .gguf, .uqff = UQFF 1.x). Whatever a format calls the
 * parts of an MXFP4 weight, the non-safetensors formats list, read and write them as `P.blocks`,
 * `P.scales` and `P.bias`. */
typedef enum mxfp4_format {
  MXFP4_FORMAT_AUTO = 0,
  MXFP4_FORMAT_SAFETENSORS = 1,
  MXFP4_FORMAT_GGUF = 2,       /* llama.cpp GGUF v3 (P.weight as GGML_TYPE_MXFP4) */
  MXFP4_FORMAT_UQFF1 = 3,      /* mistral.rs UQFF 1.x */
  MXFP4_FORMAT_GPTOSS = 4,     /* GPT-OSS safetensors (P_blocks [.., N, K/32, 16]) */
  MXFP4_FORMAT_UQFF_LEGACY = 5 /* mistral.rs UQFF 0.2.0 blobs (MXFP4 weights only) */
} mxfp4_format;

/* An opened file: its list of tensors, read-only. */
typedef struct mxfp4_file mxfp4_file;

/* Opens and validates `path` (UTF-8) in `format`. */
mxfp4_status mxfp4_file_open(const char* path, int32_t format, mxfp4_file** out);
void mxfp4_file_close(mxfp4_file* file);

mxfp4_status mxfp4_file_tensor_count(const mxfp4_file* file, size_t* count);

typedef struct mxfp4_tensor_info {
  const char* name;       /* owned by the file */
  const char* file_dtype; /* the file's own dtype name ("F32", "BF16", "F8_E4M3", ...) */
  int32_t dtype;          /* the mxfp4_dtype, or -1 when the library has none for file_dtype */
  int32_t rank;           /* ranks above MXFP4_MAX_RANK report only their first dims */
  int64_t shape[MXFP4_MAX_RANK];
  uint64_t nbytes; /* bytes of the tensor's data */
} mxfp4_tensor_info;

/* Tensor `index` (0 .. count-1, in file order). */
mxfp4_status mxfp4_file_tensor_info(const mxfp4_file* file, size_t index, mxfp4_tensor_info* info);
/* The position of tensor `name`; MXFP4_ERR_INVALID_ARGUMENT naming it when absent. */
mxfp4_status mxfp4_file_find_tensor(const mxfp4_file* file, const char* name, size_t* index);

/* Copies tensor `name` into `out`, which must have its exact dtype and shape (on any device). */
mxfp4_status mxfp4_file_read_tensor(const mxfp4_file* file, const char* name,
                                    const mxfp4_tensor* out, void* stream);

/* The value of metadata `key`; MXFP4_ERR_INVALID_ARGUMENT when the file has no such key. */
mxfp4_status mxfp4_file_metadata(const mxfp4_file* file, const char* key, const char** value);

/* MXFP4 weights in the file: `P.blocks` + `P.scales` (+ `P.bias`) groups, by prefix P. */
mxfp4_status mxfp4_file_weight_count(const mxfp4_file* file, size_t* count);
/* Prefix of weight `index` without its trailing dot ("layers.0.mlp.up"; "" for bare "blocks"). */
mxfp4_status mxfp4_file_weight_name(const mxfp4_file* file, size_t index, const char** prefix);
/* Loads the weight `prefix` (P.blocks, P.scales and P.bias if present) onto `device`. */
mxfp4_status mxfp4_file_load_weight(const mxfp4_file* file, const char* prefix, mxfp4_device device,
                                    mxfp4_weight** out);

/* Collects tensors, weights and metadata, then writes them to a file in one step. */
typedef struct mxfp4_writer mxfp4_writer;

mxfp4_status mxfp4_writer_create(mxfp4_writer** out);
void mxfp4_writer_destroy(mxfp4_writer* writer);
/* Adds a copy of `tensor` (from any device) named `name`. */
mxfp4_status mxfp4_writer_add_tensor(mxfp4_writer* writer, const char* name,
                                     const mxfp4_tensor* tensor);
/* Adds `weight` as `prefix.blocks`, `prefix.scales` and, if it has one, `prefix.bias` (just
 * `blocks`, ... for an empty prefix). The writer shares the weight's storage (no copy); the
 * weight handle may be destroyed afterwards. */
mxfp4_status mxfp4_writer_add_weight(mxfp4_writer* writer, const char* prefix,
                                     const mxfp4_weight* weight);
/* Sets metadata `key` to `value` (UTF-8), replacing an earlier value. */
mxfp4_status mxfp4_writer_set_metadata(mxfp4_writer* writer, const char* key, const char* value);
/* Writes everything added so far, in the order added, to `path` atomically: a temporary file in
 * the same folder renamed over `path` once complete; an existing `path` survives any failure.
 * Duplicate names are MXFP4_ERR_INVALID_ARGUMENT. The writer can be saved again or extended. */
mxfp4_status mxfp4_writer_save(const mxfp4_writer* writer, const char* path, int32_t format);

#ifdef __cplusplus
}
#endif

#endif /* MXFP4_H */
