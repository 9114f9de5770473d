/* The installed C header from a C99 program: quantize, a linear layer checked against a dense
 * double product of the dequantized weight, and an error with its message. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <mxfp4/mxfp4.h>

int main(void) {
  enum { N = 8, K = 64 };
  float w[N * K], x[K], y[N], wq[N * K];
  mxfp4_tensor tw, tx, ty, twq;
  mxfp4_weight* weight = NULL;
  double worst = 0.0;
  int r, c;
  for (r = 0; r < N * K; ++r)
    w[r] = (float)sin(0.37 * r);
  for (c = 0; c < K; ++c)
    x[c] = (float)cos(0.11 * c);
  memset(&tw, 0, sizeof tw);
  tw.data = w;
  tw.rank = 2;
  tw.shape[0] = N;
  tw.shape[1] = K;
  tw.dtype = MXFP4_F32;
  twq = tw;
  twq.data = wq;
  tx = tw;
  tx.data = x;
  tx.rank = 1;
  tx.shape[0] = K;
  ty = tx;
  ty.data = y;
  ty.shape[0] = N;
  if (mxfp4_weight_quantize(&tw, NULL, MXFP4_SCALE_DEFAULT, MXFP4_NON_FINITE_ERROR, NULL,
                            &weight) != MXFP4_OK ||
      mxfp4_linear(&tx, weight, &ty, NULL) != MXFP4_OK ||
      mxfp4_dequantize(weight, &twq, NULL) != MXFP4_OK) {
    printf("consumer_c: %s\n", mxfp4_last_error_message());
    return 1;
  }
  for (r = 0; r < N; ++r) {
    double ref = 0.0;
    for (c = 0; c < K; ++c)
      ref += (double)wq[r * K + c] * x[c];
    worst = fmax(worst, fabs(ref - y[r]));
  }
  tx.shape[0] = K - 32;
  if (mxfp4_linear(&tx, weight, &ty, NULL) != MXFP4_ERR_SHAPE_MISMATCH ||
      strstr(mxfp4_last_error_message(), "K=64") == NULL) {
    printf("consumer_c: expected a shape error, got \"%s\"\n", mxfp4_last_error_message());
    return 1;
  }
  mxfp4_weight_destroy(weight);
  printf("consumer_c: mxfp4 %s, worst |error| %.3g\n", mxfp4_version_string(), worst);
  return worst < 1e-4 ? 0 : 1;
}
