/* The C API (include/mxfp4/mxfp4.h) from a plain C99 program: success paths with values checked
 * against the format's definition (E2M1 table times 2^(scale-127)) and a double-precision matmul
 * on the dequantized weight, files written and read back, and error paths (status codes and
 * messages). Usage: test_capi WORK_DIR (a folder for the files it writes). */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mxfp4/mxfp4.h"

static int g_passed = 0;
static int g_failed = 0;

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (cond) {                                                                \
      ++g_passed;                                                              \
    } else {                                                                   \
      ++g_failed;                                                              \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                          \
  } while (0)

/* A call that must succeed; prints the library's message when it does not. */
#define CHECK_OK(call)                                                         \
  do {                                                                         \
    mxfp4_status s_ = (call);                                                  \
    if (s_ == MXFP4_OK) {                                                      \
      ++g_passed;                                                              \
    } else {                                                                   \
      ++g_failed;                                                              \
      fprintf(stderr, "%s:%d: %s failed: %s: %s\n", __FILE__, __LINE__, #call, \
              mxfp4_status_name(s_), mxfp4_last_error_message());              \
    }                                                                          \
  } while (0)

/* A call that must fail with `status` and a message containing `part`. */
static void check_error(const char* file, int line, const char* what, mxfp4_status got,
                        mxfp4_status want, const char* part) {
  const char* msg = mxfp4_last_error_message();
  if (got == want && strstr(msg, part) != NULL) {
    ++g_passed;
    return;
  }
  ++g_failed;
  fprintf(stderr, "%s:%d: %s: expected %s with \"%s\", got %s: \"%s\"\n", file, line, what,
          mxfp4_status_name(want), part, mxfp4_status_name(got), msg);
}
#define CHECK_ERROR(call, want, part) check_error(__FILE__, __LINE__, #call, (call), (want), (part))

static const float kE2M1[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

/* Deterministic pseudo-random values in [-scale, scale). */
static uint32_t g_seed = 12345u;
static float next_random(float scale) {
  g_seed = g_seed * 1664525u + 1013904223u;
  return ((float)(g_seed >> 8) / 16777216.0f * 2.0f - 1.0f) * scale;
}

static mxfp4_tensor cpu_tensor(void* data, int32_t dtype, int32_t rank, const int64_t* shape) {
  mxfp4_tensor t;
  int i;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.dtype = dtype;
  t.rank = rank;
  for (i = 0; i < rank; ++i)
    t.shape[i] = shape[i];
  t.device.type = MXFP4_DEVICE_CPU;
  t.device.index = 0;
  return t;
}

/* Element (row, col) of a weight decoded from its parts, by the format's definition. */
static double decode(const uint8_t* blocks, const uint8_t* scales, int64_t k, int64_t row,
                     int64_t col) {
  const uint8_t byte = blocks[row * (k / 2) + col / 2];
  const int code = (col % 2 == 0) ? (byte & 0x0F) : (byte >> 4);
  const int scale = scales[row * (k / 32) + col / 32];
  return (double)kE2M1[code] * ldexp(1.0, scale - 127);
}

static int close_enough(double got, double want, double k) {
  return fabs(got - want) <= 1e-5 * sqrt(k) * (1.0 + fabs(want));
}

static void test_version_and_names(void) {
  char expected[32];
  int32_t rule = -1;
  CHECK(mxfp4_version() == ((uint32_t)MXFP4_VERSION_MAJOR << 16 |
                            (uint32_t)MXFP4_VERSION_MINOR << 8 | (uint32_t)MXFP4_VERSION_PATCH));
  snprintf(expected, sizeof expected, "%d.%d.%d", MXFP4_VERSION_MAJOR, MXFP4_VERSION_MINOR,
           MXFP4_VERSION_PATCH);
  CHECK(strcmp(mxfp4_version_string(), expected) == 0);
  CHECK(strcmp(mxfp4_status_name(MXFP4_OK), "ok") == 0);
  CHECK(strcmp(mxfp4_status_name(MXFP4_ERR_SHAPE_MISMATCH), "shape_mismatch") == 0);
  CHECK(strcmp(mxfp4_status_name(MXFP4_ERR_INTERNAL), "internal") == 0);
  CHECK(strcmp(mxfp4_status_name((mxfp4_status)200), "unknown") == 0);
  CHECK(strcmp(mxfp4_dtype_name(MXFP4_BF16), "bf16") == 0);
  CHECK(strcmp(mxfp4_dtype_name(99), "unknown") == 0);
  CHECK(strcmp(mxfp4_scale_rule_name(MXFP4_SCALE_MSE), "mse") == 0);
  CHECK(strcmp(mxfp4_scale_rule_name(-1), "unknown") == 0);
  CHECK_OK(mxfp4_parse_scale_rule("mistralrs", &rule));
  CHECK(rule == MXFP4_SCALE_MISTRALRS);
  CHECK_ERROR(mxfp4_parse_scale_rule("nearest", &rule), MXFP4_ERR_INVALID_ARGUMENT, "nearest");
  CHECK(rule == MXFP4_SCALE_MISTRALRS); /* untouched on failure */
  CHECK(MXFP4_SCALE_DEFAULT == MXFP4_SCALE_MSE);
}

/* Values that are exact E2M1 codes times 2^-1 quantize to exactly those codes under every rule
 * (amax 3 gives the shared exponent -1 everywhere); an all-zero row gets scale 127. A block
 * with amax 7 separates the rules: floor keeps exponent 0 (7 saturates), ceil takes 1. */
static void test_quantize_known_bytes(void) {
  float w[3 * 32];
  uint8_t blocks[3 * 16];
  uint8_t scales[3];
  const int64_t wshape[2] = {3, 32};
  const int64_t bshape[2] = {3, 16};
  const int64_t sshape[2] = {3, 1};
  mxfp4_tensor tw = cpu_tensor(w, MXFP4_F32, 2, wshape);
  mxfp4_tensor tb = cpu_tensor(blocks, MXFP4_U8, 2, bshape);
  mxfp4_tensor ts = cpu_tensor(scales, MXFP4_U8, 2, sshape);
  int rule;
  int i;
  for (i = 0; i < 32; ++i) {
    const int code = (i % 16 == 8) ? 0 : i % 16; /* no -0: its code is a matter of sign rules */
    w[i] = kE2M1[code] * 0.5f;
    w[32 + i] = 0.0f;
    w[64 + i] = (i == 5) ? 7.0f : 1.0f;
  }
  for (rule = MXFP4_SCALE_FLOOR; rule <= MXFP4_SCALE_MISTRALRS; ++rule) {
    int exact = 1;
    memset(blocks, 0xAA, sizeof blocks);
    memset(scales, 0xAA, sizeof scales);
    CHECK_OK(mxfp4_quantize(&tw, &tb, &ts, rule, MXFP4_NON_FINITE_ERROR, NULL));
    CHECK(scales[0] == 126);
    CHECK(scales[1] == 127);
    for (i = 0; i < 16; ++i) {
      const int lo = ((2 * i) % 16 == 8) ? 0 : (2 * i) % 16;
      const int hi = ((2 * i + 1) % 16 == 8) ? 0 : (2 * i + 1) % 16;
      if (blocks[i] != (uint8_t)(lo | hi << 4) || blocks[16 + i] != 0) exact = 0;
    }
    CHECK(exact);
    if (rule == MXFP4_SCALE_FLOOR) CHECK(scales[2] == 127);
    if (rule == MXFP4_SCALE_CEIL) CHECK(scales[2] == 128);
  }
}

/* A random weight quantized through the weight handle: its parts decode (by the definition) to
 * what mxfp4_dequantize writes, in f32 and bf16, and lie within half a step of the input. */
static void test_weight_dequantize(void) {
  enum { N = 16, K = 64 };
  static float w[N * K];
  static float bias[N];
  static float out[N * K];
  static uint16_t out_bf16[N * K];
  const int64_t wshape[2] = {N, K};
  const int64_t bshape[1] = {N};
  mxfp4_tensor tw = cpu_tensor(w, MXFP4_F32, 2, wshape);
  mxfp4_tensor tbias = cpu_tensor(bias, MXFP4_F32, 1, bshape);
  mxfp4_tensor tout = cpu_tensor(out, MXFP4_F32, 2, wshape);
  mxfp4_tensor tout16 = cpu_tensor(out_bf16, MXFP4_BF16, 2, wshape);
  mxfp4_weight* weight = NULL;
  mxfp4_weight_info info;
  mxfp4_tensor blocks, scales, bpart;
  int i, exact = 1, bf16_exact = 1, near = 1;
  for (i = 0; i < N * K; ++i)
    w[i] = next_random(3.0f);
  for (i = 0; i < N; ++i)
    bias[i] = next_random(1.0f);
  CHECK_OK(
      mxfp4_weight_quantize(&tw, &tbias, MXFP4_SCALE_CEIL, MXFP4_NON_FINITE_ERROR, NULL, &weight));
  if (weight == NULL) return;
  CHECK_OK(mxfp4_weight_get_info(weight, &info));
  CHECK(info.stacked == 0 && info.has_bias == 1 && info.num_experts == 1);
  CHECK(info.out_features == N && info.in_features == K);
  CHECK(info.device.type == MXFP4_DEVICE_CPU);
  CHECK_OK(mxfp4_weight_get_part(weight, MXFP4_PART_BLOCKS, &blocks));
  CHECK_OK(mxfp4_weight_get_part(weight, MXFP4_PART_SCALES, &scales));
  CHECK_OK(mxfp4_weight_get_part(weight, MXFP4_PART_BIAS, &bpart));
  CHECK(blocks.dtype == MXFP4_U8 && blocks.rank == 2 && blocks.shape[0] == N &&
        blocks.shape[1] == K / 2);
  CHECK(scales.dtype == MXFP4_U8 && scales.rank == 2 && scales.shape[1] == K / 32);
  CHECK(bpart.dtype == MXFP4_F32 && bpart.rank == 1 && bpart.shape[0] == N);
  CHECK(bpart.data != (void*)bias); /* the bias was copied */
  CHECK(memcmp(bpart.data, bias, sizeof bias) == 0);
  CHECK_OK(mxfp4_dequantize(weight, &tout, NULL));
  CHECK_OK(mxfp4_dequantize(weight, &tout16, NULL));
  for (i = 0; i < N * K; ++i) {
    const int64_t row = i / K, col = i % K;
    const double d = decode((const uint8_t*)blocks.data, (const uint8_t*)scales.data, K, row, col);
    const int scale = ((const uint8_t*)scales.data)[row * (K / 32) + col / 32];
    uint32_t bits;
    memcpy(&bits, &out[i], sizeof bits);
    if ((double)out[i] != d) exact = 0;
    if (out_bf16[i] != (uint16_t)(bits >> 16)) bf16_exact = 0;
    /* The ceil rule never saturates: the error is at most half the widest gap (2, between 4
     * and 6) times the scale. */
    if (fabs((double)w[i] - d) > ldexp(1.0, scale - 127)) near = 0;
  }
  CHECK(exact);
  CHECK(bf16_exact);
  CHECK(near);
  mxfp4_weight_destroy(weight);
}

/* linear against a double matmul on the dequantized weight plus bias; x of rank 2 and 3. */
static void test_linear(void) {
  enum { M = 5, N = 24, K = 96 };
  static float w[N * K], bias[N], x[M * K], y[M * N], y3[M * N], dq[N * K];
  const int64_t wshape[2] = {N, K}, bshape[1] = {N}, xshape[2] = {M, K}, yshape[2] = {M, N};
  const int64_t x3shape[3] = {1, M, K}, y3shape[3] = {1, M, N};
  mxfp4_tensor tw = cpu_tensor(w, MXFP4_F32, 2, wshape);
  mxfp4_tensor tbias = cpu_tensor(bias, MXFP4_F32, 1, bshape);
  mxfp4_tensor tx = cpu_tensor(x, MXFP4_F32, 2, xshape);
  mxfp4_tensor ty = cpu_tensor(y, MXFP4_F32, 2, yshape);
  mxfp4_tensor tx3 = cpu_tensor(x, MXFP4_F32, 3, x3shape);
  mxfp4_tensor ty3 = cpu_tensor(y3, MXFP4_F32, 3, y3shape);
  mxfp4_tensor tdq = cpu_tensor(dq, MXFP4_F32, 2, wshape);
  mxfp4_weight* weight = NULL;
  int i, j, k, ok = 1;
  for (i = 0; i < N * K; ++i)
    w[i] = next_random(1.0f);
  for (i = 0; i < N; ++i)
    bias[i] = next_random(0.5f);
  for (i = 0; i < M * K; ++i)
    x[i] = next_random(2.0f);
  CHECK_OK(mxfp4_weight_quantize(&tw, &tbias, MXFP4_SCALE_DEFAULT, MXFP4_NON_FINITE_ERROR, NULL,
                                 &weight));
  if (weight == NULL) return;
  CHECK_OK(mxfp4_dequantize(weight, &tdq, NULL));
  CHECK_OK(mxfp4_linear(&tx, weight, &ty, NULL));
  CHECK_OK(mxfp4_linear(&tx3, weight, &ty3, NULL));
  for (i = 0; i < M; ++i) {
    for (j = 0; j < N; ++j) {
      double acc = bias[j];
      for (k = 0; k < K; ++k)
        acc += (double)x[i * K + k] * (double)dq[j * K + k];
      if (!close_enough(y[i * N + j], acc, K)) ok = 0;
    }
  }
  CHECK(ok);
  CHECK(memcmp(y, y3, sizeof y) == 0);
  mxfp4_weight_destroy(weight);
}

/* rotate_blocks: each 32-block times the normalized Sylvester Hadamard matrix, against a dense
 * product; twice gives x back; in place; the weight rotated like x gives x W^T; errors. */
static void test_rotate_blocks(void) {
  enum { M = 3, N = 8, K = 64 };
  static float x[M * K], y[M * K], back[M * K], w[N * K], wr[N * K], out[M * N], odd[M * 48];
  const int64_t xshape[2] = {M, K}, wshape[2] = {N, K}, oshape[2] = {M, N}, oddshape[2] = {M, 48};
  mxfp4_tensor tx = cpu_tensor(x, MXFP4_F32, 2, xshape);
  mxfp4_tensor ty = cpu_tensor(y, MXFP4_F32, 2, xshape);
  mxfp4_tensor tback = cpu_tensor(back, MXFP4_F32, 2, xshape);
  mxfp4_tensor tw = cpu_tensor(w, MXFP4_F32, 2, wshape);
  mxfp4_tensor twr = cpu_tensor(wr, MXFP4_F32, 2, wshape);
  mxfp4_tensor tout = cpu_tensor(out, MXFP4_F32, 2, oshape);
  mxfp4_tensor todd = cpu_tensor(odd, MXFP4_F32, 2, oddshape);
  mxfp4_weight* weight = NULL;
  int i, j, c, ok = 1;
  for (i = 0; i < M * K; ++i)
    x[i] = next_random(2.0f);
  for (i = 0; i < N * K; ++i)
    w[i] = next_random(1.0f);
  CHECK_OK(mxfp4_rotate_blocks(&tx, &ty));
  for (i = 0; i < M * K; ++i) {
    const int block = i / 32 * 32, col = i % 32;
    double acc = 0.0;
    for (c = 0; c < 32; ++c) {
      int bits = c & col, parity = 0;
      while (bits) {
        parity ^= bits & 1;
        bits >>= 1;
      }
      acc += (parity ? -1.0 : 1.0) * x[block + c];
    }
    acc /= sqrt(32.0);
    if (fabs(y[i] - acc) > 1e-6 * (1.0 + fabs(acc))) ok = 0;
  }
  CHECK(ok);
  CHECK_OK(mxfp4_rotate_blocks(&ty, &tback));
  for (i = 0; i < M * K; ++i)
    if (fabs(back[i] - x[i]) > 1e-5) ok = 0;
  CHECK(ok);
  memcpy(back, x, sizeof x);
  CHECK_OK(mxfp4_rotate_blocks(&tback, &tback)); /* in place */
  CHECK(memcmp(back, y, sizeof y) == 0);
  /* linear(x R, quantize(W R)) against x W^T: within the weight's quantization error. */
  CHECK_OK(mxfp4_rotate_blocks(&tw, &twr));
  CHECK_OK(mxfp4_weight_quantize(&twr, NULL, MXFP4_SCALE_DEFAULT, MXFP4_NON_FINITE_ERROR, NULL,
                                 &weight));
  if (weight != NULL) {
    double err = 0.0, sig = 0.0;
    CHECK_OK(mxfp4_linear(&ty, weight, &tout, NULL));
    for (i = 0; i < M; ++i) {
      for (j = 0; j < N; ++j) {
        double acc = 0.0;
        for (c = 0; c < K; ++c)
          acc += (double)x[i * K + c] * (double)w[j * K + c];
        err += (out[i * N + j] - acc) * (out[i * N + j] - acc);
        sig += acc * acc;
      }
    }
    CHECK(err < 0.1 * sig);
    mxfp4_weight_destroy(weight);
  }
  CHECK_ERROR(mxfp4_rotate_blocks(&todd, &todd), MXFP4_ERR_SHAPE_MISMATCH, "multiple of 32");
  CHECK_ERROR(mxfp4_rotate_blocks(&tx, &tout), MXFP4_ERR_SHAPE_MISMATCH, "out must have x's shape");
  CHECK_ERROR(mxfp4_rotate_blocks(NULL, &ty), MXFP4_ERR_INVALID_ARGUMENT, "x");
}

/* gather_linear with x [T, K] (broadcast to the slots) and x [T, topk, K], i32 and u32 ids. */
static void test_gather_linear(void) {
  enum { E = 4, N = 8, K = 64, T = 3, TOPK = 2 };
  static float w[E * N * K], bias[E * N], dq[E * N * K], x[T * K], xs[T * TOPK * K];
  static float y[T * TOPK * N], ys[T * TOPK * N];
  const int32_t ids[T * TOPK] = {3, 0, 1, 1, 2, 3};
  const uint32_t uids[T * TOPK] = {0, 2, 3, 1, 2, 0};
  const int64_t wshape[3] = {E, N, K}, bshape[2] = {E, N}, xshape[2] = {T, K};
  const int64_t xsshape[3] = {T, TOPK, K}, idshape[2] = {T, TOPK}, yshape[3] = {T, TOPK, N};
  mxfp4_tensor tw = cpu_tensor(w, MXFP4_F32, 3, wshape);
  mxfp4_tensor tbias = cpu_tensor(bias, MXFP4_F32, 2, bshape);
  mxfp4_tensor tdq = cpu_tensor(dq, MXFP4_F32, 3, wshape);
  mxfp4_tensor tx = cpu_tensor(x, MXFP4_F32, 2, xshape);
  mxfp4_tensor txs = cpu_tensor(xs, MXFP4_F32, 3, xsshape);
  mxfp4_tensor tids = cpu_tensor((void*)ids, MXFP4_I32, 2, idshape);
  mxfp4_tensor tuids = cpu_tensor((void*)uids, MXFP4_U32, 2, idshape);
  mxfp4_tensor ty = cpu_tensor(y, MXFP4_F32, 3, yshape);
  mxfp4_tensor tys = cpu_tensor(ys, MXFP4_F32, 3, yshape);
  mxfp4_weight* weight = NULL;
  mxfp4_weight_info info;
  int t, s, n, k, ok = 1;
  int32_t bad_ids[T * TOPK] = {0, 1, 2, 3, 4, 0};
  mxfp4_tensor tbad = cpu_tensor(bad_ids, MXFP4_I32, 2, idshape);
  for (k = 0; k < E * N * K; ++k)
    w[k] = next_random(1.0f);
  for (k = 0; k < E * N; ++k)
    bias[k] = next_random(0.5f);
  for (k = 0; k < T * K; ++k)
    x[k] = next_random(1.0f);
  for (k = 0; k < T * TOPK * K; ++k)
    xs[k] = next_random(1.0f);
  CHECK_OK(
      mxfp4_weight_quantize(&tw, &tbias, MXFP4_SCALE_FLOOR, MXFP4_NON_FINITE_ERROR, NULL, &weight));
  if (weight == NULL) return;
  CHECK_OK(mxfp4_weight_get_info(weight, &info));
  CHECK(info.stacked == 1 && info.num_experts == E && info.out_features == N);
  CHECK_OK(mxfp4_dequantize(weight, &tdq, NULL));
  CHECK_OK(mxfp4_gather_linear(&tx, &tids, weight, &ty, NULL));
  CHECK_OK(mxfp4_gather_linear(&txs, &tuids, weight, &tys, NULL));
  for (t = 0; t < T; ++t) {
    for (s = 0; s < TOPK; ++s) {
      for (n = 0; n < N; ++n) {
        const int e = ids[t * TOPK + s], eu = (int)uids[t * TOPK + s];
        double acc = bias[e * N + n], accs = bias[eu * N + n];
        for (k = 0; k < K; ++k) {
          acc += (double)x[t * K + k] * dq[(e * N + n) * K + k];
          accs += (double)xs[(t * TOPK + s) * K + k] * dq[(eu * N + n) * K + k];
        }
        if (!close_enough(y[(t * TOPK + s) * N + n], acc, K)) ok = 0;
        if (!close_enough(ys[(t * TOPK + s) * N + n], accs, K)) ok = 0;
      }
    }
  }
  CHECK(ok);
  CHECK_ERROR(mxfp4_gather_linear(&tx, &tbad, weight, &ty, NULL), MXFP4_ERR_INDEX_OUT_OF_RANGE,
              "indices[2, 0] = 4 is outside [0, 4)");
  CHECK_ERROR(mxfp4_linear(&tx, weight, &ty, NULL), MXFP4_ERR_SHAPE_MISMATCH, "gather_linear");
  mxfp4_weight_destroy(weight);
}

/* gather_linear_expert_order: perm is the pairs sorted by expert (ascending pair order within an
 * expert on the CPU), offsets the running counts (expert 2 gets none), and row p of out is
 * mxfp4_gather_linear's row perm[p] bit for bit, with and without options; bad buffers are
 * refused with the argument's name. */
static void test_gather_linear_expert_order(void) {
  enum { E = 5, N = 8, K = 64, T = 4, TOPK = 3, PAIRS = T * TOPK };
  static float w[E * N * K], x[T * K], xs[PAIRS * K], y[PAIRS * N], ys[PAIRS * N];
  static float out[PAIRS * N], outs[PAIRS * N];
  const int32_t ids[PAIRS] = {3, 0, 4, 1, 3, 0, 4, 4, 1, 0, 3, 1};
  int32_t perm[PAIRS], offsets[E + 1], expected_perm[PAIRS], expected_offsets[E + 1];
  uint32_t uperm[PAIRS];
  int32_t bad_ids[PAIRS];
  const int64_t wshape[3] = {E, N, K}, xshape[2] = {T, K}, xsshape[3] = {T, TOPK, K};
  const int64_t idshape[2] = {T, TOPK}, yshape[3] = {T, TOPK, N}, oshape[2] = {PAIRS, N};
  const int64_t pshape[1] = {PAIRS}, offshape[1] = {E + 1}, badoffshape[1] = {E};
  mxfp4_tensor tw = cpu_tensor(w, MXFP4_F32, 3, wshape);
  mxfp4_tensor tx = cpu_tensor(x, MXFP4_F32, 2, xshape);
  mxfp4_tensor txs = cpu_tensor(xs, MXFP4_F32, 3, xsshape);
  mxfp4_tensor tids = cpu_tensor((void*)ids, MXFP4_I32, 2, idshape);
  mxfp4_tensor tbad = cpu_tensor(bad_ids, MXFP4_I32, 2, idshape);
  mxfp4_tensor ty = cpu_tensor(y, MXFP4_F32, 3, yshape);
  mxfp4_tensor tys = cpu_tensor(ys, MXFP4_F32, 3, yshape);
  mxfp4_tensor tout = cpu_tensor(out, MXFP4_F32, 2, oshape);
  mxfp4_tensor touts = cpu_tensor(outs, MXFP4_F32, 2, oshape);
  mxfp4_tensor tperm = cpu_tensor(perm, MXFP4_I32, 1, pshape);
  mxfp4_tensor tuperm = cpu_tensor(uperm, MXFP4_U32, 1, pshape);
  mxfp4_tensor toffsets = cpu_tensor(offsets, MXFP4_I32, 1, offshape);
  mxfp4_tensor tshort = cpu_tensor(offsets, MXFP4_I32, 1, badoffshape);
  mxfp4_tensor tinside = cpu_tensor(out, MXFP4_I32, 1, pshape); /* perm inside out */
  mxfp4_weight* weight = NULL;
  mxfp4_run_options options;
  int e, p, i, rows_ok = 1;
  for (i = 0; i < E * N * K; ++i)
    w[i] = next_random(1.0f);
  for (i = 0; i < T * K; ++i)
    x[i] = next_random(1.0f);
  for (i = 0; i < PAIRS * K; ++i)
    xs[i] = next_random(1.0f);
  /* The expected order: pairs by expert, ascending within one; offsets[e + 1] - offsets[e] is
   * expert e's count. */
  expected_offsets[0] = 0;
  p = 0;
  for (e = 0; e < E; ++e) {
    for (i = 0; i < PAIRS; ++i) {
      if (ids[i] == e) expected_perm[p++] = i;
    }
    expected_offsets[e + 1] = p;
  }
  CHECK(p == PAIRS && expected_offsets[3] == expected_offsets[2]);
  CHECK_OK(
      mxfp4_weight_quantize(&tw, NULL, MXFP4_SCALE_MSE, MXFP4_NON_FINITE_ERROR, NULL, &weight));
  if (weight == NULL) return;

  CHECK_OK(mxfp4_gather_linear(&tx, &tids, weight, &ty, NULL));
  CHECK_OK(mxfp4_gather_linear(&txs, &tids, weight, &tys, NULL));
  memset(perm, 0xFF, sizeof perm);
  memset(offsets, 0xFF, sizeof offsets);
  CHECK_OK(mxfp4_gather_linear_expert_order(&tx, &tids, weight, &tout, &tperm, &toffsets, NULL));
  CHECK(memcmp(perm, expected_perm, sizeof perm) == 0);
  CHECK(memcmp(offsets, expected_offsets, sizeof offsets) == 0);
  CHECK_OK(mxfp4_gather_linear_expert_order(&txs, &tids, weight, &touts, &tperm, &toffsets, NULL));
  CHECK(memcmp(perm, expected_perm, sizeof perm) == 0);
  for (p = 0; p < PAIRS; ++p) {
    if (memcmp(&out[p * N], &y[expected_perm[p] * N], N * sizeof(float)) != 0) rows_ok = 0;
    if (memcmp(&outs[p * N], &ys[expected_perm[p] * N], N * sizeof(float)) != 0) rows_ok = 0;
  }
  CHECK(rows_ok);

  /* With options: int8 activations give mxfp4_gather_linear_ex's rows, reordered. */
  CHECK_OK(mxfp4_run_options_init(&options));
  options.precision = MXFP4_PRECISION_INT8_ACTIVATIONS;
  CHECK_OK(mxfp4_gather_linear_ex(&tx, &tids, weight, &ty, &options));
  CHECK_OK(
      mxfp4_gather_linear_expert_order(&tx, &tids, weight, &tout, &tperm, &toffsets, &options));
  CHECK(memcmp(perm, expected_perm, sizeof perm) == 0);
  rows_ok = 1;
  for (p = 0; p < PAIRS; ++p) {
    if (memcmp(&out[p * N], &y[expected_perm[p] * N], N * sizeof(float)) != 0) rows_ok = 0;
  }
  CHECK(rows_ok);

  CHECK_ERROR(mxfp4_gather_linear_expert_order(&tx, &tids, weight, &tout, &tuperm, &toffsets, NULL),
              MXFP4_ERR_DTYPE_MISMATCH, "gather_linear_expert_order: perm must be i32 [12]");
  CHECK_ERROR(mxfp4_gather_linear_expert_order(&tx, &tids, weight, &tout, &tperm, &tshort, NULL),
              MXFP4_ERR_SHAPE_MISMATCH, "offsets must be i32 [6]");
  CHECK_ERROR(mxfp4_gather_linear_expert_order(&tx, &tids, weight, &ty, &tperm, &toffsets, NULL),
              MXFP4_ERR_SHAPE_MISMATCH, "out must be f32 [12, 8]");
  CHECK_ERROR(mxfp4_gather_linear_expert_order(&tx, &tids, weight, &tout, NULL, &toffsets, NULL),
              MXFP4_ERR_INVALID_ARGUMENT, "gather_linear_expert_order: perm is NULL");
  options.precision = 9;
  CHECK_ERROR(
      mxfp4_gather_linear_expert_order(&tx, &tids, weight, &tout, &tperm, &toffsets, &options),
      MXFP4_ERR_INVALID_ARGUMENT, "precision 9");
  memcpy(bad_ids, ids, sizeof bad_ids);
  bad_ids[7] = E;
  CHECK_ERROR(mxfp4_gather_linear_expert_order(&tx, &tbad, weight, &tout, &tperm, &toffsets, NULL),
              MXFP4_ERR_INDEX_OUT_OF_RANGE, "indices[2, 1] = 5 is outside [0, 5)");
  CHECK_ERROR(
      mxfp4_gather_linear_expert_order(&tx, &tids, weight, &tout, &tinside, &toffsets, NULL),
      MXFP4_ERR_INVALID_ARGUMENT, "perm overlaps out's memory");
  mxfp4_weight_destroy(weight);
}

/* Run options: the defaults are mxfp4_linear exactly; int8 activations differ from exact by at
 * most the documented bound; gather_linear_ex takes them too; bad options are refused. */
static void test_run_options(void) {
  enum { M = 3, N = 16, K = 128, E = 2, TOPK = 2 };
  static float w[N * K], dq[N * K], x[M * K], exact[M * N], y[M * N], gy[M * TOPK * N];
  static float gexact[M * TOPK * N];
  const int64_t wshape[2] = {N, K}, xshape[2] = {M, K}, yshape[2] = {M, N};
  const int64_t ewshape[3] = {E, N / E, K}, idshape[2] = {M, TOPK}, gyshape[3] = {M, TOPK, N / E};
  const int32_t ids[M * TOPK] = {0, 1, 1, 0, 1, 1};
  mxfp4_tensor tw = cpu_tensor(w, MXFP4_F32, 2, wshape);
  mxfp4_tensor tew = cpu_tensor(w, MXFP4_F32, 3, ewshape);
  mxfp4_tensor tdq = cpu_tensor(dq, MXFP4_F32, 2, wshape);
  mxfp4_tensor tx = cpu_tensor(x, MXFP4_F32, 2, xshape);
  mxfp4_tensor texact = cpu_tensor(exact, MXFP4_F32, 2, yshape);
  mxfp4_tensor ty = cpu_tensor(y, MXFP4_F32, 2, yshape);
  mxfp4_tensor tids = cpu_tensor((void*)ids, MXFP4_I32, 2, idshape);
  mxfp4_tensor tgy = cpu_tensor(gy, MXFP4_F32, 3, gyshape);
  mxfp4_tensor tgexact = cpu_tensor(gexact, MXFP4_F32, 3, gyshape);
  mxfp4_weight *weight = NULL, *experts = NULL;
  mxfp4_run_options options;
  size_t bytes = 1;
  int i, j, b, k, within = 1, differs = 0;
  for (i = 0; i < N * K; ++i)
    w[i] = next_random(1.0f);
  for (i = 0; i < M * K; ++i)
    x[i] = next_random(1.0f);
  CHECK_OK(mxfp4_weight_quantize(&tw, NULL, MXFP4_SCALE_DEFAULT, 0, NULL, &weight));
  CHECK_OK(mxfp4_weight_quantize(&tew, NULL, MXFP4_SCALE_DEFAULT, 0, NULL, &experts));
  if (weight == NULL || experts == NULL) return;
  CHECK_OK(mxfp4_dequantize(weight, &tdq, NULL));
  CHECK_OK(mxfp4_linear(&tx, weight, &texact, NULL));
  CHECK_OK(mxfp4_linear_ex(&tx, weight, &ty, NULL));
  CHECK(memcmp(exact, y, sizeof y) == 0);
  memset(&options, 0xAB, sizeof options);
  CHECK_OK(mxfp4_run_options_init(&options));
  CHECK(options.stream == NULL && options.precision == MXFP4_PRECISION_EXACT &&
        options.workspace == NULL && options.workspace_bytes == 0);
  memset(y, 0, sizeof y);
  CHECK_OK(mxfp4_linear_ex(&tx, weight, &ty, &options));
  CHECK(memcmp(exact, y, sizeof y) == 0);

  options.precision = MXFP4_PRECISION_INT8_ACTIVATIONS;
  CHECK_OK(mxfp4_linear_ex(&tx, weight, &ty, &options));
  for (i = 0; i < M; ++i) {
    for (j = 0; j < N; ++j) {
      double bound = 1e-5 * (1.0 + fabs(exact[i * N + j]));
      for (b = 0; b < K / 32; ++b) {
        double xmax = 0.0, wsum = 0.0;
        for (k = b * 32; k < b * 32 + 32; ++k) {
          if (fabs(x[i * K + k]) > xmax) xmax = fabs(x[i * K + k]);
          wsum += fabs(dq[j * K + k]);
        }
        bound += xmax / 254.0 * wsum;
      }
      if (fabs((double)y[i * N + j] - exact[i * N + j]) > bound) within = 0;
      if (y[i * N + j] != exact[i * N + j]) differs = 1;
    }
  }
  CHECK(within);
  CHECK(differs); /* x is not on the int8 grid, so some output must move */

  CHECK_OK(mxfp4_gather_linear(&tx, &tids, experts, &tgexact, NULL));
  CHECK_OK(mxfp4_gather_linear_ex(&tx, &tids, experts, &tgy, NULL));
  CHECK(memcmp(gexact, gy, sizeof gy) == 0);
  CHECK_OK(mxfp4_gather_linear_ex(&tx, &tids, experts, &tgy, &options));
  differs = 0;
  for (i = 0; i < M * TOPK * N / E; ++i) {
    if (gy[i] != gexact[i]) differs = 1;
    if (fabs((double)gy[i] - gexact[i]) > 0.05 * (1.0 + fabs(gexact[i]))) differs = 2;
  }
  CHECK(differs == 1);

  options.precision = 7;
  CHECK_ERROR(mxfp4_linear_ex(&tx, weight, &ty, &options), MXFP4_ERR_INVALID_ARGUMENT,
              "precision 7");
  options.precision = MXFP4_PRECISION_EXACT;
  options.workspace_bytes = 64;
  CHECK_ERROR(mxfp4_gather_linear_ex(&tx, &tids, experts, &tgy, &options),
              MXFP4_ERR_INVALID_ARGUMENT, "workspace");
  CHECK_ERROR(mxfp4_run_options_init(NULL), MXFP4_ERR_INVALID_ARGUMENT, "options");
  CHECK_OK(mxfp4_gather_linear_workspace_bytes(4, 2, 8, &bytes));
  /* Only CUDA linear on Hopper takes scratch: 131076 bytes per SM, 0 without a CUDA device. */
  CHECK_OK(mxfp4_linear_workspace_bytes(&bytes));
  CHECK(bytes % 131076 == 0);
  CHECK_ERROR(mxfp4_linear_workspace_bytes(NULL), MXFP4_ERR_INVALID_ARGUMENT, "bytes");
  CHECK_ERROR(mxfp4_gather_linear_workspace_bytes(-1, 2, 8, &bytes), MXFP4_ERR_INVALID_ARGUMENT,
              "tokens");
  {
    /* With k: the plan plus 2 k bytes per pair for staged x rows. */
    size_t plan = 0, staged = 0;
    CHECK_OK(mxfp4_gather_linear_workspace_bytes(1000, 4, 8, &plan));
    CHECK_OK(mxfp4_gather_linear_workspace_bytes_k(1000, 4, 8, 64, &staged));
    CHECK(staged >= plan + 4000 * 64 * 2);
    CHECK_OK(mxfp4_gather_linear_workspace_bytes_k(1000, 4, 8, 0, &staged));
    CHECK(staged == plan);
    CHECK_ERROR(mxfp4_gather_linear_workspace_bytes_k(1000, 4, 8, 48, &staged),
                MXFP4_ERR_INVALID_ARGUMENT, "k a multiple of 32");
  }
  mxfp4_weight_destroy(weight);
  mxfp4_weight_destroy(experts);
}

/* A weight from caller parts: copied or borrowed, with the same results either way. */
static void test_from_parts(void) {
  enum { N = 4, K = 32 };
  uint8_t blocks[N * K / 2], scales[N];
  float x[K], y1[N], y2[N];
  const int64_t bshape[2] = {N, K / 2}, sshape[2] = {N, 1}, xshape[1] = {K}, yshape[1] = {N};
  const int64_t bad_sshape[2] = {N, 2};
  mxfp4_tensor tb = cpu_tensor(blocks, MXFP4_U8, 2, bshape);
  mxfp4_tensor ts = cpu_tensor(scales, MXFP4_U8, 2, sshape);
  mxfp4_tensor tbad = cpu_tensor(scales, MXFP4_U8, 2, bad_sshape);
  mxfp4_tensor tx = cpu_tensor(x, MXFP4_F32, 1, xshape);
  mxfp4_tensor ty1 = cpu_tensor(y1, MXFP4_F32, 1, yshape);
  mxfp4_tensor ty2 = cpu_tensor(y2, MXFP4_F32, 1, yshape);
  mxfp4_weight* copied = NULL;
  mxfp4_weight* borrowed = NULL;
  mxfp4_weight* sentinel = (mxfp4_weight*)&tb;
  mxfp4_tensor part;
  int i;
  for (i = 0; i < N * K / 2; ++i)
    blocks[i] = (uint8_t)(i * 37 + 11);
  for (i = 0; i < N; ++i)
    scales[i] = (uint8_t)(125 + i);
  for (i = 0; i < K; ++i)
    x[i] = (float)(i % 5) - 2.0f;
  CHECK_OK(mxfp4_weight_from_parts(&tb, &ts, NULL, MXFP4_COPY, &copied));
  CHECK_OK(mxfp4_weight_from_parts(&tb, &ts, NULL, MXFP4_BORROW, &borrowed));
  if (copied == NULL || borrowed == NULL) return;
  CHECK_OK(mxfp4_weight_get_part(copied, MXFP4_PART_BLOCKS, &part));
  CHECK(part.data != (void*)blocks);
  CHECK_OK(mxfp4_weight_get_part(borrowed, MXFP4_PART_BLOCKS, &part));
  CHECK(part.data == (void*)blocks);
  CHECK_ERROR(mxfp4_weight_get_part(borrowed, MXFP4_PART_BIAS, &part), MXFP4_ERR_INVALID_ARGUMENT,
              "no bias");
  CHECK_OK(mxfp4_linear(&tx, copied, &ty1, NULL));
  CHECK_OK(mxfp4_linear(&tx, borrowed, &ty2, NULL));
  CHECK(memcmp(y1, y2, sizeof y1) == 0);
  for (i = 0; i < N; ++i) {
    double acc = 0.0;
    int k;
    for (k = 0; k < K; ++k)
      acc += (double)x[k] * decode(blocks, scales, K, i, k);
    CHECK(close_enough(y1[i], acc, K));
  }
  /* The borrowed weight sees later changes to the caller's memory; the copy does not. */
  memset(scales, 127, sizeof scales);
  CHECK_OK(mxfp4_linear(&tx, copied, &ty1, NULL));
  CHECK_OK(mxfp4_linear(&tx, borrowed, &ty2, NULL));
  CHECK(memcmp(y1, y2, sizeof y1) != 0);
  CHECK_ERROR(mxfp4_weight_from_parts(&tb, &tbad, NULL, MXFP4_COPY, &sentinel),
              MXFP4_ERR_SHAPE_MISMATCH, "scales");
  CHECK(sentinel == (mxfp4_weight*)&tb); /* the out-parameter is untouched on failure */
  CHECK_ERROR(mxfp4_weight_from_parts(&tb, &ts, NULL, 7u, &sentinel), MXFP4_ERR_INVALID_ARGUMENT,
              "flags");
  mxfp4_weight_destroy(copied);
  mxfp4_weight_destroy(borrowed);
}

/* The bytes of the file at `path` (at most `size`) in `buf`; returns how many, or -1. */
static long read_file(const char* path, unsigned char* buf, size_t size) {
  FILE* f = fopen(path, "rb");
  size_t n;
  if (f == NULL) return -1;
  n = fread(buf, 1, size, f);
  fclose(f);
  return (long)n;
}

/* Block b of standard bytes in the GPU layout, by its definition (mxfp4.h, MXFP4_LAYOUT_GPU;
 * src/core/gpu_block_layout.hpp): word t, slot s holds byte t + 4s (magnitudes at bits 3s and
 * 16 + 3s, signs at 12 + s and 28 + s); words are little-endian. */
static void gpu_block(const uint8_t* in, uint8_t* out) {
  int t, s, j;
  for (t = 0; t < 4; ++t) {
    uint32_t w = 0;
    for (s = 0; s < 4; ++s) {
      const uint32_t lo = in[t + 4 * s] & 15u, hi = (uint32_t)in[t + 4 * s] >> 4;
      w |= (lo & 7u) << (3 * s) | (hi & 7u) << (16 + 3 * s) | (lo >> 3) << (12 + s) |
           (hi >> 3) << (28 + s);
    }
    for (j = 0; j < 4; ++j)
      out[4 * t + j] = (uint8_t)(w >> (8 * j));
  }
}

/* mxfp4_weight_with_layout: the GPU layout's bytes, shared scales, the same dequantized values,
 * CPU linear refused, the standard bytes back and in files; errors. */
static void test_block_layouts(const char* dir) {
  enum { N = 8, K = 64 };
  static float w[N * K], bias[N], d1[N * K], d2[N * K], x[K], y[N];
  static uint8_t expected[N * K / 2], big_blocks[2 * 16], big_scales[2];
  static unsigned char file1[1 << 14], file2[1 << 14];
  const int64_t wshape[2] = {N, K}, bshape[1] = {N}, xshape[1] = {K}, yshape[1] = {N};
  const int64_t big_bshape[2] = {2, 16}, big_sshape[2] = {2, 1};
  mxfp4_tensor tw = cpu_tensor(w, MXFP4_F32, 2, wshape);
  mxfp4_tensor tbias = cpu_tensor(bias, MXFP4_F32, 1, bshape);
  mxfp4_tensor td1 = cpu_tensor(d1, MXFP4_F32, 2, wshape);
  mxfp4_tensor td2 = cpu_tensor(d2, MXFP4_F32, 2, wshape);
  mxfp4_tensor tx = cpu_tensor(x, MXFP4_F32, 1, xshape);
  mxfp4_tensor ty = cpu_tensor(y, MXFP4_F32, 1, yshape);
  mxfp4_tensor tbb = cpu_tensor(big_blocks, MXFP4_U8, 2, big_bshape);
  mxfp4_tensor tbs = cpu_tensor(big_scales, MXFP4_U8, 2, big_sshape);
  mxfp4_weight *weight = NULL, *gpu = NULL, *back = NULL, *same = NULL, *big = NULL;
  mxfp4_weight* sentinel = (mxfp4_weight*)&tw;
  mxfp4_writer *w1 = NULL, *w2 = NULL;
  mxfp4_tensor blocks, gblocks, bblocks, scales, gscales;
  int32_t layout = -1;
  char p1[1024], p2[1024];
  long n1, n2;
  int i;
  for (i = 0; i < N * K; ++i)
    w[i] = next_random(3.0f);
  for (i = 0; i < N; ++i)
    bias[i] = next_random(1.0f);
  for (i = 0; i < K; ++i)
    x[i] = next_random(1.0f);
  CHECK_OK(mxfp4_weight_quantize(&tw, &tbias, MXFP4_SCALE_DEFAULT, 0, NULL, &weight));
  if (weight == NULL) return;
  CHECK_OK(mxfp4_weight_get_layout(weight, &layout));
  CHECK(layout == MXFP4_LAYOUT_STANDARD);
  CHECK_OK(mxfp4_weight_with_layout(weight, MXFP4_LAYOUT_GPU, &gpu));
  if (gpu == NULL) return;
  CHECK_OK(mxfp4_weight_get_layout(gpu, &layout));
  CHECK(layout == MXFP4_LAYOUT_GPU);
  CHECK_OK(mxfp4_weight_get_part(weight, MXFP4_PART_BLOCKS, &blocks));
  CHECK_OK(mxfp4_weight_get_part(gpu, MXFP4_PART_BLOCKS, &gblocks));
  CHECK_OK(mxfp4_weight_get_part(weight, MXFP4_PART_SCALES, &scales));
  CHECK_OK(mxfp4_weight_get_part(gpu, MXFP4_PART_SCALES, &gscales));
  CHECK(gblocks.data != blocks.data && gblocks.rank == 2 && gblocks.shape[1] == K / 2);
  CHECK(gscales.data == scales.data); /* shared */
  for (i = 0; i < N * K / 32; ++i)
    gpu_block((const uint8_t*)blocks.data + 16 * i, expected + 16 * i);
  CHECK(memcmp(gblocks.data, expected, sizeof expected) == 0);
  CHECK(memcmp(gblocks.data, blocks.data, sizeof expected) != 0);
  CHECK_OK(mxfp4_dequantize(weight, &td1, NULL));
  CHECK_OK(mxfp4_dequantize(gpu, &td2, NULL));
  CHECK(memcmp(d1, d2, sizeof d1) == 0);
  CHECK_ERROR(mxfp4_linear(&tx, gpu, &ty, NULL), MXFP4_ERR_UNSUPPORTED, "BlockLayout::gpu");
  CHECK_OK(mxfp4_weight_with_layout(gpu, MXFP4_LAYOUT_STANDARD, &back));
  CHECK_OK(mxfp4_weight_with_layout(weight, MXFP4_LAYOUT_STANDARD, &same));
  if (back == NULL || same == NULL) return;
  CHECK_OK(mxfp4_weight_get_part(back, MXFP4_PART_BLOCKS, &bblocks));
  CHECK(memcmp(bblocks.data, blocks.data, sizeof expected) == 0);
  CHECK_OK(mxfp4_weight_get_part(same, MXFP4_PART_BLOCKS, &bblocks));
  CHECK(bblocks.data == blocks.data); /* already standard: shared */
  CHECK_OK(mxfp4_linear(&tx, back, &ty, NULL));

  /* Files hold the standard bytes. */
  snprintf(p1, sizeof p1, "%s/layout_std.safetensors", dir);
  snprintf(p2, sizeof p2, "%s/layout_gpu.safetensors", dir);
  CHECK_OK(mxfp4_writer_create(&w1));
  CHECK_OK(mxfp4_writer_create(&w2));
  if (w1 != NULL && w2 != NULL) {
    CHECK_OK(mxfp4_writer_add_weight(w1, "w", weight));
    CHECK_OK(mxfp4_writer_add_weight(w2, "w", gpu));
    CHECK_OK(mxfp4_writer_save(w1, p1, MXFP4_FORMAT_AUTO));
    CHECK_OK(mxfp4_writer_save(w2, p2, MXFP4_FORMAT_AUTO));
    n1 = read_file(p1, file1, sizeof file1);
    n2 = read_file(p2, file2, sizeof file2);
    CHECK(n1 > 0 && n1 == n2 && memcmp(file1, file2, (size_t)n1) == 0);
  }
  mxfp4_writer_destroy(w1);
  mxfp4_writer_destroy(w2);

  /* Errors: an unknown layout, NULLs, a scale above 128 (named), and the out-parameter kept. */
  CHECK_ERROR(mxfp4_weight_with_layout(weight, 5, &sentinel), MXFP4_ERR_INVALID_ARGUMENT,
              "unknown layout 5");
  CHECK_ERROR(mxfp4_weight_with_layout(NULL, MXFP4_LAYOUT_GPU, &sentinel),
              MXFP4_ERR_INVALID_ARGUMENT, "weight is NULL");
  CHECK_ERROR(mxfp4_weight_with_layout(weight, MXFP4_LAYOUT_GPU, NULL), MXFP4_ERR_INVALID_ARGUMENT,
              "out is NULL");
  CHECK_ERROR(mxfp4_weight_get_layout(weight, NULL), MXFP4_ERR_INVALID_ARGUMENT, "layout is NULL");
  memset(big_blocks, 0x21, sizeof big_blocks);
  big_scales[0] = 127;
  big_scales[1] = 200;
  CHECK_OK(mxfp4_weight_from_parts(&tbb, &tbs, NULL, MXFP4_BORROW, &big));
  if (big != NULL) {
    CHECK_ERROR(mxfp4_weight_with_layout(big, MXFP4_LAYOUT_GPU, &sentinel),
                MXFP4_ERR_INVALID_ARGUMENT, "row 1, block 0 has scale 200");
  }
  CHECK(sentinel == (mxfp4_weight*)&tw);
  mxfp4_weight_destroy(big);
  mxfp4_weight_destroy(same);
  mxfp4_weight_destroy(back);
  mxfp4_weight_destroy(gpu);
  mxfp4_weight_destroy(weight);
}

/* Weights and tensors saved through a writer come back from mxfp4_file_* unchanged. */
static void test_files(const char* dir) {
  enum { N = 16, K = 64, E = 3 };
  static float w[N * K], bias[N], ew[E * N * K], norm[K], norm_back[K], x[2 * K];
  static float y1[2 * N], y2[2 * N];
  const int64_t wshape[2] = {N, K}, bshape[1] = {N}, ewshape[3] = {E, N, K}, nshape[1] = {K};
  const int64_t xshape[2] = {2, K}, yshape[2] = {2, N}, wrong[1] = {K + 1};
  mxfp4_tensor tw = cpu_tensor(w, MXFP4_F32, 2, wshape);
  mxfp4_tensor tbias = cpu_tensor(bias, MXFP4_F32, 1, bshape);
  mxfp4_tensor tew = cpu_tensor(ew, MXFP4_F32, 3, ewshape);
  mxfp4_tensor tnorm = cpu_tensor(norm, MXFP4_F32, 1, nshape);
  mxfp4_tensor tback = cpu_tensor(norm_back, MXFP4_F32, 1, nshape);
  mxfp4_tensor twrong = cpu_tensor(norm_back, MXFP4_F32, 1, wrong);
  mxfp4_tensor tx = cpu_tensor(x, MXFP4_F32, 2, xshape);
  mxfp4_tensor ty1 = cpu_tensor(y1, MXFP4_F32, 2, yshape);
  mxfp4_tensor ty2 = cpu_tensor(y2, MXFP4_F32, 2, yshape);
  mxfp4_weight *dense = NULL, *experts = NULL, *loaded = NULL;
  mxfp4_writer* writer = NULL;
  mxfp4_file* file = NULL;
  mxfp4_tensor_info info;
  mxfp4_weight_info winfo;
  mxfp4_tensor p1, p2;
  const char* value = NULL;
  const char* prefix = NULL;
  size_t count = 0, index = 0;
  char path[1024], bad_path[1024], garbage[1024], missing[1024], gguf[1024], uqff[1024];
  FILE* f;
  int i;
  snprintf(path, sizeof path, "%s/capi.safetensors", dir);
  snprintf(gguf, sizeof gguf, "%s/capi.gguf", dir);
  snprintf(uqff, sizeof uqff, "%s/capi.uqff1", dir);
  snprintf(bad_path, sizeof bad_path, "%s/capi_dup.safetensors", dir);
  snprintf(garbage, sizeof garbage, "%s/garbage.safetensors", dir);
  snprintf(missing, sizeof missing, "%s/absent.safetensors", dir);
  remove(path);
  remove(bad_path);
  for (i = 0; i < N * K; ++i)
    w[i] = next_random(1.0f);
  for (i = 0; i < N; ++i)
    bias[i] = next_random(1.0f);
  for (i = 0; i < E * N * K; ++i)
    ew[i] = next_random(1.0f);
  for (i = 0; i < K; ++i)
    norm[i] = 1.0f + (float)i / 64.0f;
  for (i = 0; i < 2 * K; ++i)
    x[i] = next_random(1.0f);
  CHECK_OK(mxfp4_weight_quantize(&tw, &tbias, MXFP4_SCALE_MSE, 0, NULL, &dense));
  CHECK_OK(mxfp4_weight_quantize(&tew, NULL, MXFP4_SCALE_MSE, 0, NULL, &experts));
  CHECK_OK(mxfp4_writer_create(&writer));
  if (dense == NULL || experts == NULL || writer == NULL) return;
  CHECK_OK(mxfp4_writer_add_weight(writer, "layers.0.up", dense));
  CHECK_OK(mxfp4_writer_add_weight(writer, "experts", experts));
  CHECK_OK(mxfp4_writer_add_tensor(writer, "norm.weight", &tnorm));
  CHECK_OK(mxfp4_writer_set_metadata(writer, "origin", "test_capi"));
  CHECK_OK(mxfp4_writer_save(writer, path, MXFP4_FORMAT_AUTO));
  CHECK_OK(mxfp4_writer_save(writer, gguf, MXFP4_FORMAT_AUTO)); /* GGUF by its extension */
  CHECK_OK(mxfp4_writer_save(writer, uqff, MXFP4_FORMAT_UQFF1));
  CHECK_ERROR(mxfp4_writer_save(writer, "out.bin", MXFP4_FORMAT_AUTO), MXFP4_ERR_INVALID_ARGUMENT,
              "extension");
  CHECK_ERROR(mxfp4_writer_save(writer, path, 42), MXFP4_ERR_INVALID_ARGUMENT, "format 42");
  /* A duplicate name fails the save and leaves no file. */
  CHECK_OK(mxfp4_writer_add_tensor(writer, "norm.weight", &tnorm));
  CHECK_ERROR(mxfp4_writer_save(writer, bad_path, MXFP4_FORMAT_SAFETENSORS),
              MXFP4_ERR_INVALID_ARGUMENT, "norm.weight");
  f = fopen(bad_path, "rb");
  CHECK(f == NULL);
  if (f != NULL) fclose(f);
  mxfp4_writer_destroy(writer);

  CHECK_OK(mxfp4_file_open(path, MXFP4_FORMAT_AUTO, &file));
  if (file == NULL) return;
  CHECK_OK(mxfp4_file_tensor_count(file, &count));
  CHECK(count == 6); /* up: blocks, scales, bias; experts: blocks, scales; norm.weight */
  CHECK_OK(mxfp4_file_tensor_info(file, 0, &info));
  CHECK(strcmp(info.name, "layers.0.up.blocks") == 0);
  CHECK(strcmp(info.file_dtype, "U8") == 0 && info.dtype == MXFP4_U8);
  CHECK(info.rank == 2 && info.shape[0] == N && info.shape[1] == K / 2);
  CHECK(info.nbytes == (uint64_t)(N * K / 2));
  CHECK_OK(mxfp4_file_tensor_info(file, 5, &info));
  CHECK(strcmp(info.name, "norm.weight") == 0 && info.dtype == MXFP4_F32);
  CHECK_ERROR(mxfp4_file_tensor_info(file, 6, &info), MXFP4_ERR_INVALID_ARGUMENT, "6 tensors");
  CHECK_OK(mxfp4_file_find_tensor(file, "experts.scales", &index));
  CHECK(index == 4);
  CHECK_ERROR(mxfp4_file_find_tensor(file, "nope", &index), MXFP4_ERR_INVALID_ARGUMENT, "nope");
  CHECK_OK(mxfp4_file_read_tensor(file, "norm.weight", &tback, NULL));
  CHECK(memcmp(norm, norm_back, sizeof norm) == 0);
  CHECK_ERROR(mxfp4_file_read_tensor(file, "norm.weight", &twrong, NULL), MXFP4_ERR_SHAPE_MISMATCH,
              "[64]");
  CHECK_ERROR(mxfp4_file_read_tensor(file, "layers.0.up.blocks", &tback, NULL),
              MXFP4_ERR_DTYPE_MISMATCH, "u8");
  CHECK_OK(mxfp4_file_metadata(file, "origin", &value));
  CHECK(value != NULL && strcmp(value, "test_capi") == 0);
  CHECK_ERROR(mxfp4_file_metadata(file, "absent", &value), MXFP4_ERR_INVALID_ARGUMENT, "absent");
  CHECK_OK(mxfp4_file_weight_count(file, &count));
  CHECK(count == 2);
  CHECK_OK(mxfp4_file_weight_name(file, 0, &prefix));
  CHECK(prefix != NULL && strcmp(prefix, "layers.0.up") == 0);
  CHECK_OK(mxfp4_file_weight_name(file, 1, &prefix));
  CHECK(prefix != NULL && strcmp(prefix, "experts") == 0);
  {
    mxfp4_device cpu = {MXFP4_DEVICE_CPU, 0};
    CHECK_OK(mxfp4_file_load_weight(file, "layers.0.up", cpu, &loaded));
    CHECK_ERROR(mxfp4_file_load_weight(file, "layers.1.up", cpu, &loaded),
                MXFP4_ERR_INVALID_ARGUMENT, "layers.1.up.blocks");
  }
  mxfp4_file_close(file); /* the loaded weight outlives the file */
  if (loaded == NULL) return;
  CHECK_OK(mxfp4_weight_get_info(loaded, &winfo));
  CHECK(winfo.has_bias == 1 && winfo.out_features == N && winfo.in_features == K);
  CHECK_OK(mxfp4_weight_get_part(dense, MXFP4_PART_BLOCKS, &p1));
  CHECK_OK(mxfp4_weight_get_part(loaded, MXFP4_PART_BLOCKS, &p2));
  CHECK(memcmp(p1.data, p2.data, N * K / 2) == 0);
  CHECK_OK(mxfp4_linear(&tx, dense, &ty1, NULL));
  CHECK_OK(mxfp4_linear(&tx, loaded, &ty2, NULL));
  CHECK(memcmp(y1, y2, sizeof y1) == 0);
  mxfp4_weight_destroy(loaded);
  loaded = NULL;
  /* The same weights and tensors through GGUF and UQFF 1.x, found by content. */
  {
    const char* others[2];
    const int32_t formats[2] = {MXFP4_FORMAT_GGUF, MXFP4_FORMAT_UQFF1};
    mxfp4_device cpu = {MXFP4_DEVICE_CPU, 0};
    int j;
    others[0] = gguf;
    others[1] = uqff;
    for (j = 0; j < 2; ++j) {
      CHECK_OK(mxfp4_file_open(others[j], MXFP4_FORMAT_AUTO, &file));
      if (file == NULL) return;
      CHECK_OK(mxfp4_file_weight_count(file, &count));
      CHECK(count == 2);
      CHECK_OK(mxfp4_file_weight_name(file, 1, &prefix));
      CHECK(prefix != NULL && strcmp(prefix, "experts") == 0);
      memset(norm_back, 0, sizeof norm_back);
      CHECK_OK(mxfp4_file_read_tensor(file, "norm.weight", &tback, NULL));
      CHECK(memcmp(norm, norm_back, sizeof norm) == 0);
      CHECK_OK(mxfp4_file_metadata(file, "origin", &value));
      CHECK(value != NULL && strcmp(value, "test_capi") == 0);
      CHECK_OK(mxfp4_file_load_weight(file, "layers.0.up", cpu, &loaded));
      mxfp4_file_close(file);
      if (loaded == NULL) return;
      CHECK_OK(mxfp4_weight_get_part(loaded, MXFP4_PART_BLOCKS, &p2));
      CHECK(memcmp(p1.data, p2.data, N * K / 2) == 0);
      memset(y2, 0, sizeof y2);
      CHECK_OK(mxfp4_linear(&tx, loaded, &ty2, NULL));
      CHECK(memcmp(y1, y2, sizeof y1) == 0);
      mxfp4_weight_destroy(loaded);
      loaded = NULL;
      /* Opened as the wrong format, it is a format error. */
      CHECK_ERROR(mxfp4_file_open(others[j], formats[1 - j], &file), MXFP4_ERR_FORMAT, "capi.");
    }
  }
  mxfp4_weight_destroy(dense);
  mxfp4_weight_destroy(experts);

  CHECK_ERROR(mxfp4_file_open(missing, MXFP4_FORMAT_AUTO, &file), MXFP4_ERR_IO,
              "absent.safetensors");
  f = fopen(garbage, "wb");
  CHECK(f != NULL);
  if (f != NULL) {
    fputs("this is not a safetensors file at all", f);
    fclose(f);
  }
  CHECK_ERROR(mxfp4_file_open(garbage, MXFP4_FORMAT_SAFETENSORS, &file), MXFP4_ERR_FORMAT,
              "garbage.safetensors");
  CHECK_ERROR(mxfp4_file_open(path, 9, &file), MXFP4_ERR_INVALID_ARGUMENT, "format 9");
}

static void test_errors(void) {
  float w[2 * 40], x[2 * 32], y[2 * 4];
  uint8_t u8x[64];
  uint8_t blocks[2 * 16], scales[2];
  const int64_t shape40[2] = {2, 40}, shape32[2] = {2, 32}, yshape[2] = {2, 4};
  const int64_t bshape[2] = {2, 16}, sshape[2] = {2, 1}, wshape4[2] = {4, 32};
  const int64_t x_wrong[2] = {2, 64};
  float w4[4 * 32];
  mxfp4_tensor t40 = cpu_tensor(w, MXFP4_F32, 2, shape40);
  mxfp4_tensor tw32 = cpu_tensor(w, MXFP4_F32, 2, shape32);
  mxfp4_tensor tb = cpu_tensor(blocks, MXFP4_U8, 2, bshape);
  mxfp4_tensor ts = cpu_tensor(scales, MXFP4_U8, 2, sshape);
  mxfp4_tensor tx = cpu_tensor(x, MXFP4_F32, 2, shape32);
  mxfp4_tensor txw = cpu_tensor(x, MXFP4_F32, 2, x_wrong);
  mxfp4_tensor tu8 = cpu_tensor(u8x, MXFP4_U8, 2, shape32);
  mxfp4_tensor ty = cpu_tensor(y, MXFP4_F32, 2, yshape);
  mxfp4_tensor tw4 = cpu_tensor(w4, MXFP4_F32, 2, wshape4);
  mxfp4_tensor bad;
  mxfp4_weight* weight = NULL;
  mxfp4_weight* sentinel = (mxfp4_weight*)&bad;
  int threads = 0;
  const char* before;
  int i;
  memset(w, 0, sizeof w);
  memset(x, 0, sizeof x);
  memset(u8x, 0, sizeof u8x);
  for (i = 0; i < 4 * 32; ++i)
    w4[i] = next_random(1.0f);
  CHECK_OK(mxfp4_weight_quantize(&tw4, NULL, MXFP4_SCALE_MSE, 0, NULL, &weight));
  if (weight == NULL) return;

  CHECK_ERROR(mxfp4_quantize(&t40, &tb, &ts, MXFP4_SCALE_MSE, 0, NULL), MXFP4_ERR_SHAPE_MISMATCH,
              "multiple of 32");
  CHECK_ERROR(mxfp4_quantize(&tw32, &tb, &ts, 17, 0, NULL), MXFP4_ERR_INVALID_ARGUMENT,
              "unknown scale rule 17");
  CHECK_ERROR(mxfp4_quantize(&tw32, &tb, &ts, MXFP4_SCALE_MSE, 5, NULL), MXFP4_ERR_INVALID_ARGUMENT,
              "non-finite policy 5");
  CHECK_ERROR(mxfp4_quantize(NULL, &tb, &ts, MXFP4_SCALE_MSE, 0, NULL), MXFP4_ERR_INVALID_ARGUMENT,
              "weight is NULL");
  /* NaN: an error by default, a NaN block (scale 0xFF) on request. */
  w[3] = NAN;
  CHECK_ERROR(mxfp4_quantize(&tw32, &tb, &ts, MXFP4_SCALE_MSE, MXFP4_NON_FINITE_ERROR, NULL),
              MXFP4_ERR_NON_FINITE, "NaN at row 0, column 3");
  CHECK_OK(mxfp4_quantize(&tw32, &tb, &ts, MXFP4_SCALE_MSE, MXFP4_NON_FINITE_NAN_BLOCK, NULL));
  CHECK(scales[0] == 0xFF && scales[1] == 127);
  w[3] = 0.0f;

  CHECK_ERROR(mxfp4_linear(&txw, weight, &ty, NULL), MXFP4_ERR_SHAPE_MISMATCH, "K=32");
  CHECK_ERROR(mxfp4_linear(&tu8, weight, &ty, NULL), MXFP4_ERR_DTYPE_MISMATCH, "f32, f16 or bf16");
  CHECK_ERROR(mxfp4_linear(&tx, NULL, &ty, NULL), MXFP4_ERR_INVALID_ARGUMENT, "weight is NULL");
  CHECK_ERROR(mxfp4_linear(&tx, weight, &tx, NULL), MXFP4_ERR_SHAPE_MISMATCH, "out");
  bad = tx;
  bad.rank = MXFP4_MAX_RANK + 1;
  CHECK_ERROR(mxfp4_linear(&bad, weight, &ty, NULL), MXFP4_ERR_INVALID_ARGUMENT, "rank");
  bad = tx;
  bad.dtype = 12;
  CHECK_ERROR(mxfp4_linear(&bad, weight, &ty, NULL), MXFP4_ERR_INVALID_ARGUMENT,
              "unknown dtype 12");
  bad = tx;
  bad.shape[0] = -2;
  CHECK_ERROR(mxfp4_linear(&bad, weight, &ty, NULL), MXFP4_ERR_INVALID_ARGUMENT, "negative");
  bad = tx;
  bad.data = NULL;
  CHECK_ERROR(mxfp4_linear(&bad, weight, &ty, NULL), MXFP4_ERR_INVALID_ARGUMENT, "data is NULL");
  bad = tx;
  bad.device.type = 7;
  CHECK_ERROR(mxfp4_linear(&bad, weight, &ty, NULL), MXFP4_ERR_INVALID_ARGUMENT,
              "unknown device type 7");
  bad = tx;
  bad.shape[0] = INT64_MAX / 2;
  CHECK_ERROR(mxfp4_linear(&bad, weight, &ty, NULL), MXFP4_ERR_INVALID_ARGUMENT, "x");
  /* A CUDA tensor: refused by a build without CUDA; never dereferenced here. */
  if (!mxfp4_cuda_built()) {
    mxfp4_tensor cb = tb, cs = ts;
    bad = tw32;
    bad.device.type = MXFP4_DEVICE_CUDA;
    cb.device.type = MXFP4_DEVICE_CUDA;
    cs.device.type = MXFP4_DEVICE_CUDA;
    CHECK_ERROR(mxfp4_linear(&bad, weight, &ty, NULL), MXFP4_ERR_INVALID_ARGUMENT, "cuda:0");
    CHECK_ERROR(mxfp4_quantize(&bad, &cb, &cs, 0, 0, NULL), MXFP4_ERR_UNSUPPORTED, "cuda:0");
  }
  CHECK_ERROR(mxfp4_weight_quantize(&t40, NULL, 0, 0, NULL, &sentinel), MXFP4_ERR_SHAPE_MISMATCH,
              "K=40");
  CHECK(sentinel == (mxfp4_weight*)&bad);
  CHECK_ERROR(mxfp4_weight_quantize(&tw32, &tx, 0, 0, NULL, &sentinel), MXFP4_ERR_SHAPE_MISMATCH,
              "bias");
  CHECK(sentinel == (mxfp4_weight*)&bad);
  CHECK_ERROR(mxfp4_weight_get_info(weight, NULL), MXFP4_ERR_INVALID_ARGUMENT, "info is NULL");
  CHECK_ERROR(mxfp4_weight_get_part(weight, 3, &bad), MXFP4_ERR_INVALID_ARGUMENT, "part 3");
  CHECK_ERROR(mxfp4_set_num_threads(-1), MXFP4_ERR_INVALID_ARGUMENT, "-1");
  CHECK_OK(mxfp4_num_threads(&threads));
  CHECK(threads >= 1);
  CHECK_ERROR(mxfp4_file_tensor_count(NULL, NULL), MXFP4_ERR_INVALID_ARGUMENT, "file is NULL");
  /* A successful call leaves the last message alone. */
  before = mxfp4_last_error_message();
  CHECK(strstr(before, "file is NULL") != NULL);
  CHECK_OK(mxfp4_linear(&tx, weight, &ty, NULL));
  CHECK(strstr(mxfp4_last_error_message(), "file is NULL") != NULL);
  mxfp4_weight_destroy(weight);
  mxfp4_weight_destroy(NULL);
  mxfp4_file_close(NULL);
  mxfp4_writer_destroy(NULL);
}

/* The last error is per thread: a failure on another thread leaves this thread's message. */
/* GPTQ: a Hessian accumulated from activations holds X^T X; with a diagonal H GPTQ gives round to
 * nearest's bytes; with correlated inputs it gives a smaller output error than round to nearest;
 * the bias is copied; every bad input is a typed error that leaves the handles unchanged. */
#define GK 64
#define GN 8
#define GROWS 200

/* sum over samples of (x (W - Q)^T)^2, Q decoded from the weight's parts. */
static double output_error(const float* x, int64_t rows, const float* w, const mxfp4_weight* q) {
  mxfp4_tensor blocks, scales;
  double err = 0.0;
  int64_t r, n, c;
  CHECK_OK(mxfp4_weight_get_part(q, MXFP4_PART_BLOCKS, &blocks));
  CHECK_OK(mxfp4_weight_get_part(q, MXFP4_PART_SCALES, &scales));
  for (r = 0; r < rows; ++r) {
    for (n = 0; n < GN; ++n) {
      double d = 0.0;
      for (c = 0; c < GK; ++c) {
        d += (double)x[r * GK + c] *
             ((double)w[n * GK + c] -
              decode((const uint8_t*)blocks.data, (const uint8_t*)scales.data, GK, n, c));
      }
      err += d * d;
    }
  }
  return err;
}

static void test_gptq(void) {
  static float x[GROWS * GK];
  static uint16_t xb[GROWS * GK];
  static double want[GK * GK], got[GK * GK], diag[GK * GK];
  float w[GN * GK], bias[GN], nan_x[2 * GK];
  const int64_t xshape[2] = {GROWS, GK}, wshape[2] = {GN, GK}, bshape[1] = {GN};
  const int64_t hshape[2] = {GK, GK}, stacked_shape[3] = {2, GN / 2, GK}, nan_shape[2] = {2, GK};
  mxfp4_tensor tx = cpu_tensor(x, MXFP4_F32, 2, xshape);
  mxfp4_tensor txb = cpu_tensor(xb, MXFP4_BF16, 2, xshape);
  mxfp4_tensor tw = cpu_tensor(w, MXFP4_F32, 2, wshape);
  mxfp4_tensor tbias = cpu_tensor(bias, MXFP4_F32, 1, bshape);
  mxfp4_tensor tnan = cpu_tensor(nan_x, MXFP4_F32, 2, nan_shape);
  mxfp4_hessian* h = NULL;
  mxfp4_hessian* hb = NULL;
  mxfp4_hessian* hd = NULL;
  mxfp4_hessian* never = (mxfp4_hessian*)&g_seed; /* must stay untouched */
  mxfp4_weight* gptq = NULL;
  mxfp4_weight* rtn = NULL;
  mxfp4_weight* never_w = (mxfp4_weight*)&g_seed;
  mxfp4_hessian_info info;
  mxfp4_tensor part;
  int64_t r, i, j;
  int same = 1;
  int exact = 1;

  /* Inputs with a shared component (correlated columns), exact in bf16. */
  for (r = 0; r < GROWS; ++r) {
    const float common = next_random(2.0f);
    for (i = 0; i < GK; ++i) {
      float v = common + next_random(0.5f);
      uint32_t bits;
      memcpy(&bits, &v, sizeof bits);
      bits &= 0xFFFF0000u;
      memcpy(&v, &bits, sizeof v);
      x[r * GK + i] = v;
      xb[r * GK + i] = (uint16_t)(bits >> 16);
    }
  }
  for (i = 0; i < GN * GK; ++i)
    w[i] = next_random(1.0f);
  for (i = 0; i < GN; ++i)
    bias[i] = next_random(1.0f);

  /* H = X^T X, accumulated in two batches, f32 and bf16 alike. */
  CHECK_OK(mxfp4_hessian_create(GK, &h));
  CHECK_OK(mxfp4_hessian_add(h, &tx));
  CHECK_OK(mxfp4_hessian_get_info(h, &info));
  CHECK(info.in_features == GK && info.samples == GROWS);
  CHECK_OK(mxfp4_hessian_create(GK, &hb));
  txb.shape[0] = GROWS / 2;
  CHECK_OK(mxfp4_hessian_add(hb, &txb));
  txb.data = xb + (GROWS / 2) * GK;
  CHECK_OK(mxfp4_hessian_add(hb, &txb));
  for (i = 0; i < GK; ++i) {
    for (j = 0; j < GK; ++j) {
      double s = 0.0;
      for (r = 0; r < GROWS; ++r)
        s += (double)x[r * GK + i] * (double)x[r * GK + j];
      want[i * GK + j] = s;
    }
  }
  CHECK_OK(mxfp4_hessian_read_values(h, got, GK * GK));
  for (i = 0; i < GK * GK; ++i)
    same &= fabs(got[i] - want[i]) <= 1e-12 * (1.0 + fabs(want[i]));
  CHECK(same);
  CHECK_OK(mxfp4_hessian_read_values(hb, diag, GK * GK));
  CHECK(memcmp(diag, got, sizeof got) == 0);

  /* GPTQ beats round to nearest on the layer's output over the calibration inputs. */
  CHECK_OK(mxfp4_quantize_gptq(&tw, h, &tbias, MXFP4_SCALE_MSE, MXFP4_GPTQ_DEFAULT_DAMP, &gptq));
  CHECK_OK(mxfp4_weight_quantize(&tw, &tbias, MXFP4_SCALE_MSE, MXFP4_NON_FINITE_ERROR, NULL, &rtn));
  if (gptq != NULL && rtn != NULL) {
    const double e_gptq = output_error(x, GROWS, w, gptq);
    const double e_rtn = output_error(x, GROWS, w, rtn);
    CHECK(e_gptq < 0.8 * e_rtn);
    CHECK_OK(mxfp4_weight_get_part(gptq, MXFP4_PART_BIAS, &part));
    CHECK(part.data != (void*)bias && part.rank == 1 && part.shape[0] == GN);
    CHECK(memcmp(part.data, bias, sizeof bias) == 0);
  }
  mxfp4_weight_destroy(gptq);
  mxfp4_weight_destroy(rtn);
  gptq = NULL;
  rtn = NULL;

  /* A diagonal H (from a matrix given whole, f32 or f64) moves no error: round to nearest. */
  memset(diag, 0, sizeof diag);
  for (i = 0; i < GK; ++i)
    diag[i * GK + i] = 1.0 + (double)i;
  CHECK_OK(mxfp4_hessian_from_values(GK, diag, GK * GK, &hd));
  CHECK_OK(mxfp4_hessian_get_info(hd, &info));
  CHECK(info.in_features == GK && info.samples == 0);
  CHECK_OK(mxfp4_quantize_gptq(&tw, hd, NULL, MXFP4_SCALE_FLOOR, 0.0, &gptq));
  CHECK_OK(mxfp4_weight_quantize(&tw, NULL, MXFP4_SCALE_FLOOR, MXFP4_NON_FINITE_ERROR, NULL, &rtn));
  if (gptq != NULL && rtn != NULL) {
    mxfp4_tensor a, b;
    CHECK_OK(mxfp4_weight_get_part(gptq, MXFP4_PART_BLOCKS, &a));
    CHECK_OK(mxfp4_weight_get_part(rtn, MXFP4_PART_BLOCKS, &b));
    exact &= memcmp(a.data, b.data, GN * GK / 2) == 0;
    CHECK_OK(mxfp4_weight_get_part(gptq, MXFP4_PART_SCALES, &a));
    CHECK_OK(mxfp4_weight_get_part(rtn, MXFP4_PART_SCALES, &b));
    exact &= memcmp(a.data, b.data, GN * GK / 32) == 0;
    CHECK(exact);
    CHECK_ERROR(mxfp4_weight_get_part(gptq, MXFP4_PART_BIAS, &part), MXFP4_ERR_INVALID_ARGUMENT,
                "no bias");
  }
  mxfp4_weight_destroy(gptq);
  mxfp4_weight_destroy(rtn);
  gptq = NULL;
  mxfp4_hessian_destroy(hd);
  hd = NULL;
  {
    float f[GK * GK];
    mxfp4_tensor tf = cpu_tensor(f, MXFP4_F32, 2, hshape);
    for (i = 0; i < GK * GK; ++i)
      f[i] = (float)diag[i];
    CHECK_OK(mxfp4_hessian_from_tensor(&tf, &hd));
    CHECK_OK(mxfp4_hessian_read_values(hd, got, GK * GK));
    CHECK(memcmp(got, diag, sizeof got) == 0);
    /* Errors of whole matrices. */
    f[3 * GK + 5] = NAN;
    CHECK_ERROR(mxfp4_hessian_from_tensor(&tf, &never), MXFP4_ERR_NON_FINITE,
                "NaN at row 3, column 5");
    tf.shape[1] = GK - 1;
    CHECK_ERROR(mxfp4_hessian_from_tensor(&tf, &never), MXFP4_ERR_SHAPE_MISMATCH, "square");
    tf.shape[1] = GK;
    tf.dtype = MXFP4_BF16;
    CHECK_ERROR(mxfp4_hessian_from_tensor(&tf, &never), MXFP4_ERR_DTYPE_MISMATCH, "f32");
    CHECK_ERROR(mxfp4_hessian_from_tensor(NULL, &never), MXFP4_ERR_INVALID_ARGUMENT,
                "matrix is NULL");
    tf.dtype = MXFP4_F32;
    CHECK_ERROR(mxfp4_hessian_from_tensor(&tf, NULL), MXFP4_ERR_INVALID_ARGUMENT, "out is NULL");
  }
  diag[7] = INFINITY;
  CHECK_ERROR(mxfp4_hessian_from_values(GK, diag, GK * GK, &never), MXFP4_ERR_NON_FINITE,
              "+Inf at row 0, column 7");
  diag[7] = 0.0;
  CHECK_ERROR(mxfp4_hessian_from_values(GK, diag, GK * GK - 1, &never), MXFP4_ERR_SHAPE_MISMATCH,
              "needs 4096 values");
  CHECK_ERROR(mxfp4_hessian_from_values(GK, NULL, GK * GK, &never), MXFP4_ERR_INVALID_ARGUMENT,
              "values is NULL");
  CHECK_ERROR(mxfp4_hessian_from_values(0, diag, 0, &never), MXFP4_ERR_INVALID_ARGUMENT,
              "in_features");
  CHECK_ERROR(mxfp4_hessian_create(0, &never), MXFP4_ERR_INVALID_ARGUMENT, "in_features");
  CHECK_ERROR(mxfp4_hessian_create(65537, &never), MXFP4_ERR_INVALID_ARGUMENT, "65537");
  CHECK_ERROR(mxfp4_hessian_create(GK, NULL), MXFP4_ERR_INVALID_ARGUMENT, "out is NULL");
  CHECK(never == (mxfp4_hessian*)&g_seed);

  /* Bad activations leave H unchanged. */
  for (i = 0; i < 2 * GK; ++i)
    nan_x[i] = 1.0f;
  nan_x[GK + 9] = NAN;
  CHECK_ERROR(mxfp4_hessian_add(h, &tnan), MXFP4_ERR_NON_FINITE, "NaN at row 1, column 9");
  tnan.shape[1] = 32;
  CHECK_ERROR(mxfp4_hessian_add(h, &tnan), MXFP4_ERR_SHAPE_MISMATCH, "K=64");
  tnan.shape[1] = GK;
  tnan.dtype = MXFP4_I32;
  CHECK_ERROR(mxfp4_hessian_add(h, &tnan), MXFP4_ERR_DTYPE_MISMATCH, "f32, f16 or bf16");
  CHECK_ERROR(mxfp4_hessian_add(NULL, &tx), MXFP4_ERR_INVALID_ARGUMENT, "hessian is NULL");
  CHECK_ERROR(mxfp4_hessian_add(h, NULL), MXFP4_ERR_INVALID_ARGUMENT, "activations is NULL");
  CHECK_OK(mxfp4_hessian_get_info(h, &info));
  CHECK(info.samples == GROWS);
  CHECK_OK(mxfp4_hessian_read_values(h, got, GK * GK));
  same = 1;
  for (i = 0; i < GK * GK; ++i)
    same &= fabs(got[i] - want[i]) <= 1e-12 * (1.0 + fabs(want[i]));
  CHECK(same);
  CHECK_ERROR(mxfp4_hessian_read_values(h, got, GK), MXFP4_ERR_SHAPE_MISMATCH, "4096 values");
  CHECK_ERROR(mxfp4_hessian_read_values(h, NULL, GK * GK), MXFP4_ERR_INVALID_ARGUMENT,
              "values is NULL");
  CHECK_ERROR(mxfp4_hessian_get_info(NULL, &info), MXFP4_ERR_INVALID_ARGUMENT, "hessian is NULL");
  CHECK_ERROR(mxfp4_hessian_get_info(h, NULL), MXFP4_ERR_INVALID_ARGUMENT, "info is NULL");

  /* quantize_gptq's errors; `out` stays untouched. */
  {
    float w96[GN * 96];
    float stacked[GN * GK];
    const int64_t w96_shape[2] = {GN, 96};
    mxfp4_tensor t96 = cpu_tensor(w96, MXFP4_F32, 2, w96_shape);
    mxfp4_tensor tstacked = cpu_tensor(stacked, MXFP4_F32, 3, stacked_shape);
    mxfp4_tensor tbad_bias = tbias;
    mxfp4_hessian* indefinite = NULL;
    for (i = 0; i < GN * 96; ++i)
      w96[i] = 1.0f;
    memcpy(stacked, w, sizeof stacked);
    CHECK_ERROR(mxfp4_quantize_gptq(&t96, h, NULL, MXFP4_SCALE_MSE, 0.01, &never_w),
                MXFP4_ERR_SHAPE_MISMATCH, "hessian is for K=64");
    CHECK_ERROR(mxfp4_quantize_gptq(&tstacked, h, NULL, MXFP4_SCALE_MSE, 0.01, &never_w),
                MXFP4_ERR_SHAPE_MISMATCH, "one matrix [N, K]");
    tw.shape[1] = 40;
    CHECK_ERROR(mxfp4_quantize_gptq(&tw, h, NULL, MXFP4_SCALE_MSE, 0.01, &never_w),
                MXFP4_ERR_SHAPE_MISMATCH, "multiple of 32");
    tw.shape[1] = GK;
    w[GK + 3] = NAN;
    CHECK_ERROR(mxfp4_quantize_gptq(&tw, h, NULL, MXFP4_SCALE_MSE, 0.01, &never_w),
                MXFP4_ERR_NON_FINITE, "NaN at row 1, column 3");
    w[GK + 3] = 0.25f;
    CHECK_ERROR(mxfp4_quantize_gptq(&tw, h, NULL, MXFP4_SCALE_MSE, -0.01, &never_w),
                MXFP4_ERR_INVALID_ARGUMENT, "damp");
    CHECK_ERROR(mxfp4_quantize_gptq(&tw, h, NULL, MXFP4_SCALE_MSE, NAN, &never_w),
                MXFP4_ERR_INVALID_ARGUMENT, "damp");
    CHECK_ERROR(mxfp4_quantize_gptq(&tw, h, NULL, 9, 0.01, &never_w), MXFP4_ERR_INVALID_ARGUMENT,
                "scale rule 9");
    tbad_bias.shape[0] = GN - 1;
    CHECK_ERROR(mxfp4_quantize_gptq(&tw, h, &tbad_bias, MXFP4_SCALE_MSE, 0.01, &never_w),
                MXFP4_ERR_SHAPE_MISMATCH, "bias");
    tw.dtype = MXFP4_U8;
    CHECK_ERROR(mxfp4_quantize_gptq(&tw, h, NULL, MXFP4_SCALE_MSE, 0.01, &never_w),
                MXFP4_ERR_DTYPE_MISMATCH, "f32, f16 or bf16");
    tw.dtype = MXFP4_F32;
    CHECK_ERROR(mxfp4_quantize_gptq(NULL, h, NULL, MXFP4_SCALE_MSE, 0.01, &never_w),
                MXFP4_ERR_INVALID_ARGUMENT, "weight is NULL");
    CHECK_ERROR(mxfp4_quantize_gptq(&tw, NULL, NULL, MXFP4_SCALE_MSE, 0.01, &never_w),
                MXFP4_ERR_INVALID_ARGUMENT, "hessian is NULL");
    CHECK_ERROR(mxfp4_quantize_gptq(&tw, h, NULL, MXFP4_SCALE_MSE, 0.01, NULL),
                MXFP4_ERR_INVALID_ARGUMENT, "out is NULL");
    /* 1 on the diagonal and 2 beside it: an eigenvalue -1, not positive definite. */
    memset(diag, 0, sizeof diag);
    for (i = 0; i < GK; ++i)
      diag[i * GK + i] = 1.0;
    diag[1] = diag[GK] = 2.0;
    CHECK_OK(mxfp4_hessian_from_values(GK, diag, GK * GK, &indefinite));
    CHECK_ERROR(mxfp4_quantize_gptq(&tw, indefinite, NULL, MXFP4_SCALE_MSE, 0.0, &never_w),
                MXFP4_ERR_INVALID_ARGUMENT, "not positive definite");
    diag[GK + 1] = -1.0;
    mxfp4_hessian_destroy(indefinite);
    indefinite = NULL;
    CHECK_OK(mxfp4_hessian_from_values(GK, diag, GK * GK, &indefinite));
    CHECK_ERROR(mxfp4_quantize_gptq(&tw, indefinite, NULL, MXFP4_SCALE_MSE, 0.01, &never_w),
                MXFP4_ERR_INVALID_ARGUMENT, "diagonal entry 1 is negative");
    mxfp4_hessian_destroy(indefinite);
    CHECK(never_w == (mxfp4_weight*)&g_seed);
  }

  mxfp4_hessian_destroy(h);
  mxfp4_hessian_destroy(hb);
  mxfp4_hessian_destroy(hd);
  mxfp4_hessian_destroy(NULL);
}

/* GPTQ for a stack of experts: expert e of the result is byte for byte mxfp4_quantize_gptq of the
 * matrix weight[e] under hessians[e] (which is the C++ quantize_gptq(weight, hessians)); the bias
 * is copied; every bad argument is a typed error naming it, leaving `out` untouched. */
#define SE 3
#define SN 4

/* Do the blocks and scales of expert `e` of `stack` equal those of the dense weight `one`? */
static int same_expert_bytes(const mxfp4_weight* stack, int64_t e, const mxfp4_weight* one) {
  mxfp4_tensor sb, ss, ob, os;
  if (mxfp4_weight_get_part(stack, MXFP4_PART_BLOCKS, &sb) != MXFP4_OK ||
      mxfp4_weight_get_part(stack, MXFP4_PART_SCALES, &ss) != MXFP4_OK ||
      mxfp4_weight_get_part(one, MXFP4_PART_BLOCKS, &ob) != MXFP4_OK ||
      mxfp4_weight_get_part(one, MXFP4_PART_SCALES, &os) != MXFP4_OK) {
    return 0;
  }
  return memcmp((const uint8_t*)sb.data + e * SN * (GK / 2), ob.data, SN * GK / 2) == 0 &&
         memcmp((const uint8_t*)ss.data + e * SN * (GK / 32), os.data, SN * GK / 32) == 0;
}

static void test_gptq_experts(void) {
  static float x[GROWS * GK];
  float w[SE * SN * GK], bias[SE * SN];
  static double indefinite[GK * GK];
  const int64_t xshape[2] = {GROWS / 2, GK}, wshape[3] = {SE, SN, GK}, bshape[2] = {SE, SN};
  const int64_t one_shape[2] = {SN, GK};
  mxfp4_tensor tx = cpu_tensor(x, MXFP4_F32, 2, xshape);
  mxfp4_tensor tw = cpu_tensor(w, MXFP4_F32, 3, wshape);
  mxfp4_tensor tbias = cpu_tensor(bias, MXFP4_F32, 2, bshape);
  mxfp4_hessian* ha = NULL;
  mxfp4_hessian* hb = NULL;
  mxfp4_hessian* h32 = NULL;
  mxfp4_hessian* hbad = NULL;
  const mxfp4_hessian* hs[SE];
  mxfp4_weight* stack = NULL;
  mxfp4_weight* never_w = (mxfp4_weight*)&g_seed;
  mxfp4_weight_info info;
  mxfp4_tensor part;
  int64_t r, i, e;

  /* Two sets of correlated inputs: expert 0 and 2 see the first, expert 1 the second. */
  for (r = 0; r < GROWS; ++r) {
    const float common = next_random(2.0f);
    for (i = 0; i < GK; ++i)
      x[r * GK + i] = common * (r < GROWS / 2 ? 1.0f : -0.5f) + next_random(0.5f);
  }
  for (i = 0; i < SE * SN * GK; ++i)
    w[i] = next_random(1.0f);
  for (i = 0; i < SE * SN; ++i)
    bias[i] = next_random(1.0f);
  CHECK_OK(mxfp4_hessian_create(GK, &ha));
  CHECK_OK(mxfp4_hessian_add(ha, &tx));
  tx.data = x + (GROWS / 2) * GK;
  CHECK_OK(mxfp4_hessian_create(GK, &hb));
  CHECK_OK(mxfp4_hessian_add(hb, &tx));
  hs[0] = ha;
  hs[1] = hb;
  hs[2] = ha; /* the same handle twice is fine */

  CHECK_OK(mxfp4_quantize_gptq_experts(&tw, hs, SE, &tbias, MXFP4_SCALE_MSE, 0.01, &stack));
  if (stack != NULL) {
    CHECK_OK(mxfp4_weight_get_info(stack, &info));
    CHECK(info.stacked == 1 && info.has_bias == 1 && info.num_experts == SE &&
          info.out_features == SN && info.in_features == GK);
    CHECK_OK(mxfp4_weight_get_part(stack, MXFP4_PART_BIAS, &part));
    CHECK(part.data != (void*)bias && part.rank == 2 && part.shape[0] == SE && part.shape[1] == SN);
    CHECK(memcmp(part.data, bias, sizeof bias) == 0);
    for (e = 0; e < SE; ++e) {
      mxfp4_tensor slice = cpu_tensor(w + e * SN * GK, MXFP4_F32, 2, one_shape);
      mxfp4_weight* one = NULL;
      CHECK_OK(mxfp4_quantize_gptq(&slice, hs[e], NULL, MXFP4_SCALE_MSE, 0.01, &one));
      if (one != NULL) CHECK(same_expert_bytes(stack, e, one));
      mxfp4_weight_destroy(one);
    }
    /* Each expert really used its own H: under hb, expert 0 gets other bytes. */
    {
      mxfp4_tensor slice = cpu_tensor(w, MXFP4_F32, 2, one_shape);
      mxfp4_weight* other = NULL;
      CHECK_OK(mxfp4_quantize_gptq(&slice, hb, NULL, MXFP4_SCALE_MSE, 0.01, &other));
      if (other != NULL) CHECK(!same_expert_bytes(stack, 0, other));
      mxfp4_weight_destroy(other);
    }
  }
  mxfp4_weight_destroy(stack);
  stack = NULL;
  /* No bias: none in the result. */
  CHECK_OK(mxfp4_quantize_gptq_experts(&tw, hs, SE, NULL, MXFP4_SCALE_CEIL, 0.0, &stack));
  if (stack != NULL) {
    CHECK_ERROR(mxfp4_weight_get_part(stack, MXFP4_PART_BIAS, &part), MXFP4_ERR_INVALID_ARGUMENT,
                "no bias");
  }
  mxfp4_weight_destroy(stack);

  /* Errors, each before any work where the arguments show it; `out` stays untouched. */
  CHECK_OK(mxfp4_hessian_create(32, &h32));
  CHECK_ERROR(mxfp4_quantize_gptq_experts(&tw, hs, SE, NULL, MXFP4_SCALE_MSE, 0.01, NULL),
              MXFP4_ERR_INVALID_ARGUMENT, "quantize_gptq_experts: out is NULL");
  CHECK_ERROR(mxfp4_quantize_gptq_experts(NULL, hs, SE, NULL, MXFP4_SCALE_MSE, 0.01, &never_w),
              MXFP4_ERR_INVALID_ARGUMENT, "weight is NULL");
  CHECK_ERROR(mxfp4_quantize_gptq_experts(&tw, NULL, SE, NULL, MXFP4_SCALE_MSE, 0.01, &never_w),
              MXFP4_ERR_INVALID_ARGUMENT, "hessians is NULL");
  CHECK_ERROR(mxfp4_quantize_gptq_experts(&tw, hs, SE - 1, NULL, MXFP4_SCALE_MSE, 0.01, &never_w),
              MXFP4_ERR_SHAPE_MISMATCH, "weight f32 [3, 4, 64] has 3 experts but count is 2");
  CHECK_ERROR(mxfp4_quantize_gptq_experts(&tw, hs, SE + 1, NULL, MXFP4_SCALE_MSE, 0.01, &never_w),
              MXFP4_ERR_SHAPE_MISMATCH, "count is 4");
  hs[1] = NULL;
  CHECK_ERROR(mxfp4_quantize_gptq_experts(&tw, hs, SE, NULL, MXFP4_SCALE_MSE, 0.01, &never_w),
              MXFP4_ERR_INVALID_ARGUMENT, "hessians[1] is NULL");
  hs[1] = hb;
  hs[2] = h32;
  CHECK_ERROR(mxfp4_quantize_gptq_experts(&tw, hs, SE, NULL, MXFP4_SCALE_MSE, 0.01, &never_w),
              MXFP4_ERR_SHAPE_MISMATCH, "hessians[2] is for K=32 inputs but weight f32 [3, 4, 64]");
  hs[2] = ha;
  tw.rank = 2;
  CHECK_ERROR(mxfp4_quantize_gptq_experts(&tw, hs, SE, NULL, MXFP4_SCALE_MSE, 0.01, &never_w),
              MXFP4_ERR_SHAPE_MISMATCH, "must be a stack of experts [E, N, K]");
  tw.rank = 3;
  tbias.shape[1] = SN + 1;
  CHECK_ERROR(mxfp4_quantize_gptq_experts(&tw, hs, SE, &tbias, MXFP4_SCALE_MSE, 0.01, &never_w),
              MXFP4_ERR_SHAPE_MISMATCH, "bias must be [3, 4]");
  tbias.shape[1] = SN;
  CHECK_ERROR(mxfp4_quantize_gptq_experts(&tw, hs, SE, NULL, 9, 0.01, &never_w),
              MXFP4_ERR_INVALID_ARGUMENT, "scale rule 9");
  CHECK_ERROR(mxfp4_quantize_gptq_experts(&tw, hs, SE, NULL, MXFP4_SCALE_MSE, -1.0, &never_w),
              MXFP4_ERR_INVALID_ARGUMENT, "damp");
  tw.dtype = MXFP4_I32;
  CHECK_ERROR(mxfp4_quantize_gptq_experts(&tw, hs, SE, NULL, MXFP4_SCALE_MSE, 0.01, &never_w),
              MXFP4_ERR_DTYPE_MISMATCH, "f32, f16 or bf16");
  tw.dtype = MXFP4_F32;
  tw.shape[2] = 40;
  CHECK_ERROR(mxfp4_quantize_gptq_experts(&tw, hs, SE, NULL, MXFP4_SCALE_MSE, 0.01, &never_w),
              MXFP4_ERR_SHAPE_MISMATCH, "K=40");
  tw.shape[2] = GK;
  /* Found while quantizing: the failing expert is named. */
  w[SN * GK + 5] = NAN;
  CHECK_ERROR(mxfp4_quantize_gptq_experts(&tw, hs, SE, NULL, MXFP4_SCALE_MSE, 0.01, &never_w),
              MXFP4_ERR_NON_FINITE, "expert 1: quantize_gptq: weight [4, 64] holds NaN at row 0");
  w[SN * GK + 5] = 0.5f;
  for (i = 0; i < GK; ++i)
    indefinite[i * GK + i] = 1.0;
  indefinite[1] = indefinite[GK] = 2.0;
  CHECK_OK(mxfp4_hessian_from_values(GK, indefinite, GK * GK, &hbad));
  hs[2] = hbad;
  CHECK_ERROR(mxfp4_quantize_gptq_experts(&tw, hs, SE, NULL, MXFP4_SCALE_MSE, 0.0, &never_w),
              MXFP4_ERR_INVALID_ARGUMENT, "expert 2: quantize_gptq: hessian is not positive");
  CHECK(never_w == (mxfp4_weight*)&g_seed);

  mxfp4_hessian_destroy(ha);
  mxfp4_hessian_destroy(hb);
  mxfp4_hessian_destroy(h32);
  mxfp4_hessian_destroy(hbad);
}

static void* fail_on_other_thread(void* result) {
  const mxfp4_status s = mxfp4_parse_scale_rule("other-thread", (int32_t*)result);
  *(int*)result = (s == MXFP4_ERR_INVALID_ARGUMENT &&
                   strstr(mxfp4_last_error_message(), "other-thread") != NULL);
  return NULL;
}

static void test_thread_local_messages(void) {
  pthread_t thread;
  int other_ok = 0;
  CHECK_ERROR(mxfp4_parse_scale_rule("main-thread", NULL), MXFP4_ERR_INVALID_ARGUMENT,
              "rule is NULL");
  CHECK(pthread_create(&thread, NULL, fail_on_other_thread, &other_ok) == 0);
  CHECK(pthread_join(thread, NULL) == 0);
  CHECK(other_ok == 1);
  CHECK(strstr(mxfp4_last_error_message(), "rule is NULL") != NULL);
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: test_capi WORK_DIR\n");
    return 2;
  }
  CHECK(strcmp(mxfp4_last_error_message(), "") == 0);
  test_version_and_names();
  test_quantize_known_bytes();
  test_weight_dequantize();
  test_linear();
  test_gather_linear();
  test_gather_linear_expert_order();
  test_run_options();
  test_from_parts();
  test_files(argv[1]);
  test_block_layouts(argv[1]);
  test_errors();
  test_gptq();
  test_gptq_experts();
  test_rotate_blocks();
  test_thread_local_messages();
  printf("capi: %d checks passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
