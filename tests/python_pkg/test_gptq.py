"""GPTQ from Python: mxfp4.Hessian / mxfp4.hessian and Mxfp4Weight.quantize_gptq."""

from __future__ import annotations

import numpy as np
import pytest

import mxfp4

RULES = [mxfp4.ScaleRule.floor, mxfp4.ScaleRule.ceil, mxfp4.ScaleRule.even, mxfp4.ScaleRule.mse,
         mxfp4.ScaleRule.mistralrs]


def correlated(samples: int, k: int, seed: int) -> np.ndarray:
    """Activations whose columns share a few factors, as a real layer's inputs do."""
    rng = np.random.default_rng(seed)
    factors = max(4, k // 8)
    x = rng.standard_normal((samples, factors)) @ rng.standard_normal((factors, k))
    return (x + 0.2 * rng.standard_normal((samples, k))).astype(np.float32)


def weight(n: int, k: int, seed: int) -> np.ndarray:
    return (0.05 * np.random.default_rng(seed).standard_normal((n, k))).astype(np.float32)


def output_error(x: np.ndarray, w: np.ndarray, q: mxfp4.Mxfp4Weight) -> float:
    d = w.astype(np.float64) - q.dequantize().astype(np.float64)
    return float(np.linalg.norm(x.astype(np.float64) @ d.T))


def test_hessian_is_x_transpose_x_in_float64() -> None:
    x = correlated(300, 96, 1)
    h = mxfp4.hessian(x)
    assert isinstance(h, mxfp4.Hessian)
    assert (h.in_features, h.samples) == (96, 300)
    assert repr(h) == "Hessian(in_features=96, samples=300)"
    m = h.numpy()
    assert m.dtype == np.float64 and m.shape == (96, 96)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(m, x64.T @ x64, rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(m, m.T)
    # Streamed in batches of any shape [..., K], the sums are the same.
    streamed = mxfp4.Hessian(96)
    streamed.add(x[:100].reshape(4, 25, 96))
    streamed.add(x[100:])
    assert streamed.samples == 300
    np.testing.assert_array_equal(streamed.numpy(), m)
    np.testing.assert_array_equal(mxfp4.Hessian.from_array(m).numpy(), m)


def test_gptq_beats_round_to_nearest_on_the_layer_output() -> None:
    for n, k, seed in [(32, 128, 2), (48, 256, 3)]:
        x = correlated(400, k, seed)
        w = weight(n, k, seed + 100)
        h = mxfp4.hessian(x)
        for rule in (mxfp4.ScaleRule.mse, mxfp4.ScaleRule.even):
            g = mxfp4.Mxfp4Weight.quantize_gptq(w, h, rule=rule)
            r = mxfp4.Mxfp4Weight.quantize(w, rule=rule)
            assert output_error(x, w, g) < 0.6 * output_error(x, w, r), (n, k, rule)
            # An ordinary weight: same layout, runs through linear.
            assert g.blocks.shape == (n, k // 2) and g.scales.shape == (n, k // 32)
            assert (g.scales != 0xFF).all()
            assert mxfp4.linear(x[:5], g).shape == (5, n)


def test_stacked_experts_take_one_hessian_each() -> None:
    e, n, k = 3, 8, 64
    w = np.stack([weight(n, k, 200 + i) for i in range(e)])
    xs = [correlated(150, k, 300 + i) for i in range(e)]
    hs = [mxfp4.hessian(x) for x in xs]
    bias = np.random.default_rng(5).standard_normal((e, n)).astype(np.float32)
    # Hessian objects or arrays, in a list or a tuple: the same bytes as expert by expert.
    for hess in (hs, tuple(h.numpy() for h in hs)):
        g = mxfp4.Mxfp4Weight.quantize_gptq(w, hess, bias)
        assert g.stacked and g.num_experts == e
        assert g.blocks.shape == (e, n, k // 2) and g.scales.shape == (e, n, k // 32)
        np.testing.assert_array_equal(g.bias, bias)
        for i in range(e):
            one = mxfp4.Mxfp4Weight.quantize_gptq(w[i], hs[i])
            np.testing.assert_array_equal(g.blocks[i], one.blocks)
            np.testing.assert_array_equal(g.scales[i], one.scales)
    with pytest.raises(mxfp4.ShapeMismatch, match="has 3 experts but 2 Hessians"):
        mxfp4.Mxfp4Weight.quantize_gptq(w, hs[:2])
    with pytest.raises(mxfp4.ShapeMismatch, match="expert 1"):
        mxfp4.Mxfp4Weight.quantize_gptq(w, [hs[0], mxfp4.Hessian(32), hs[2]])


def test_hessian_forms_agree() -> None:
    x = correlated(200, 64, 4)
    w = weight(16, 64, 5)
    h = mxfp4.hessian(x)
    a = mxfp4.Mxfp4Weight.quantize_gptq(w, h)
    b = mxfp4.Mxfp4Weight.quantize_gptq(w, h.numpy())  # float64 array: the same values
    np.testing.assert_array_equal(a.blocks, b.blocks)
    np.testing.assert_array_equal(a.scales, b.scales)
    # float32 X^T X rounds H a little: nearly every code is the same.
    c = mxfp4.Mxfp4Weight.quantize_gptq(w, (x.T @ x).astype(np.float32))
    assert (c.dequantize() == a.dequantize()).mean() > 0.95


def test_diagonal_hessian_is_round_to_nearest() -> None:
    w = weight(20, 96, 6)
    diag = np.diag(np.linspace(0.5, 3.0, 96))
    for rule in RULES:
        r = mxfp4.Mxfp4Weight.quantize(w, rule=rule)
        for h in (np.eye(96), np.eye(96, dtype=np.float32), diag, mxfp4.Hessian(96)):
            g = mxfp4.Mxfp4Weight.quantize_gptq(w, h, rule=rule)
            np.testing.assert_array_equal(g.blocks, r.blocks)
            np.testing.assert_array_equal(g.scales, r.scales)


def test_bias_and_input_dtypes() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = correlated(100, 64, 7)
    w = weight(8, 64, 8)
    bias = np.arange(8, dtype=np.float32)
    h = mxfp4.hessian(x.astype(ml_dtypes.bfloat16))
    assert h.samples == 100
    g = mxfp4.Mxfp4Weight.quantize_gptq(w.astype(ml_dtypes.bfloat16), h, bias, damp=0.05)
    np.testing.assert_array_equal(g.bias, bias)
    f16 = mxfp4.Mxfp4Weight.quantize_gptq(w.astype(np.float16), h)
    assert f16.out_features == 8 and f16.in_features == 64


def test_errors() -> None:
    x = correlated(50, 64, 9)
    w = weight(4, 64, 10)
    h = mxfp4.hessian(x)
    with pytest.raises(mxfp4.ShapeMismatch, match="hessian is for K=32"):
        mxfp4.Mxfp4Weight.quantize_gptq(w, mxfp4.Hessian(32))
    with pytest.raises(mxfp4.ShapeMismatch, match="multiple of 32"):
        mxfp4.Mxfp4Weight.quantize_gptq(np.zeros((4, 40), np.float32), mxfp4.Hessian(40))
    with pytest.raises(mxfp4.ShapeMismatch, match="square"):
        mxfp4.Mxfp4Weight.quantize_gptq(w, np.zeros((64, 32)))
    with pytest.raises(mxfp4.DTypeMismatch):
        mxfp4.Mxfp4Weight.quantize_gptq(w, np.zeros((64, 64), np.int32))
    bad = w.copy()
    bad[1, 3] = np.nan
    with pytest.raises(mxfp4.NonFiniteValue, match="NaN at row 1, column 3"):
        mxfp4.Mxfp4Weight.quantize_gptq(bad, h)
    inf_h = np.eye(64)
    inf_h[2, 2] = np.inf
    with pytest.raises(mxfp4.NonFiniteValue, match="hessian holds"):
        mxfp4.Mxfp4Weight.quantize_gptq(w, inf_h)
    indefinite = np.eye(64)
    indefinite[10, 11] = indefinite[11, 10] = 3.0
    with pytest.raises(mxfp4.InvalidArgument, match="not positive definite after dampening"):
        mxfp4.Mxfp4Weight.quantize_gptq(w, indefinite, damp=0.0)
    with pytest.raises(mxfp4.InvalidArgument, match="damp"):
        mxfp4.Mxfp4Weight.quantize_gptq(w, h, damp=-1.0)
    with pytest.raises(mxfp4.InvalidArgument, match="hessian is None"):
        mxfp4.Mxfp4Weight.quantize_gptq(w, None)
    with pytest.raises(mxfp4.InvalidArgument, match="in_features"):
        mxfp4.Hessian(0)
    acc = mxfp4.Hessian(64)
    with pytest.raises(mxfp4.ShapeMismatch, match="K=64"):
        acc.add(np.zeros((3, 32), np.float32))
    with pytest.raises(mxfp4.NonFiniteValue):
        acc.add(np.full((2, 64), np.inf, np.float32))
    assert acc.samples == 0


def test_docstrings() -> None:
    for obj in (mxfp4.Hessian, mxfp4.Hessian.add, mxfp4.hessian, mxfp4.Mxfp4Weight.quantize_gptq):
        assert obj.__doc__ and len(obj.__doc__) > 20, obj


def test_refine_sweeps_lower_the_output_error_and_keep_the_scales() -> None:
    x, w = correlated(500, 128, 81), weight(32, 128, 82)
    h = mxfp4.hessian(x)
    plain = mxfp4.Mxfp4Weight.quantize_gptq(w, h)
    refined = mxfp4.Mxfp4Weight.quantize_gptq(w, h, refine_sweeps=20)
    np.testing.assert_array_equal(np.asarray(refined.scales), np.asarray(plain.scales))
    assert output_error(x, w, refined) < output_error(x, w, plain)
    assert mxfp4.Mxfp4Weight.quantize_gptq(w, h, refine_sweeps=0).blocks.tobytes() == \
        plain.blocks.tobytes()
    for bad in (-1, 1001):
        with pytest.raises(mxfp4.InvalidArgument, match="refine_sweeps"):
            mxfp4.Mxfp4Weight.quantize_gptq(w, h, refine_sweeps=bad)
