"""mxfp4.rotate_blocks: the block-wise Hadamard rotation from Python, against a dense numpy
product, with quantized rotated weights (linear and GPTQ), in place, and its errors."""

from __future__ import annotations

import numpy as np
import pytest

import mxfp4


def hadamard(n: int = 32) -> np.ndarray:
    """Sylvester's Hadamard matrix from its definition, normalized: (-1)^popcount(i & j)."""
    i = np.arange(n)
    bits = np.vectorize(lambda v: bin(v).count("1"))(i[:, None] & i[None, :])
    return np.where(bits % 2 == 0, 1.0, -1.0) / np.sqrt(n)


def dense_rotate(x: np.ndarray) -> np.ndarray:
    s = x.shape
    return (x.astype(np.float64).reshape(*s[:-1], s[-1] // 32, 32) @ hadamard()).reshape(s)


def randn(*shape: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def test_matches_the_dense_product_and_keeps_shape() -> None:
    x = randn(2, 5, 96, seed=1)
    y = mxfp4.rotate_blocks(x)
    assert y.shape == x.shape and y.dtype == np.float32
    want = dense_rotate(x)
    np.testing.assert_allclose(y, want, rtol=0, atol=2e-7 * np.abs(want).max())


def test_is_its_own_inverse_and_orthogonal() -> None:
    x = randn(7, 64, seed=2)
    np.testing.assert_allclose(mxfp4.rotate_blocks(mxfp4.rotate_blocks(x)), x, atol=1e-6)
    r = mxfp4.rotate_blocks(np.eye(32, dtype=np.float32))
    np.testing.assert_allclose(r, r.T)
    np.testing.assert_allclose(r @ r.T, np.eye(32), atol=1e-6)


def test_half_types() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = randn(3, 64, seed=3)
    for dtype in (np.float16, ml_dtypes.bfloat16):
        xh = x.astype(dtype)
        y = mxfp4.rotate_blocks(xh)
        assert y.dtype == np.dtype(dtype)
        want = mxfp4.rotate_blocks(xh.astype(np.float32)).astype(dtype)
        np.testing.assert_array_equal(y.view(np.uint16), want.view(np.uint16))


def test_out_and_in_place() -> None:
    x = randn(4, 128, seed=4)
    want = mxfp4.rotate_blocks(x)
    out = np.empty_like(x)
    assert mxfp4.rotate_blocks(x, out=out) is out
    np.testing.assert_array_equal(out, want)
    mxfp4.rotate_blocks(x, out=x)
    np.testing.assert_array_equal(x, want)


def test_rotated_weight_with_rotated_inputs_computes_the_layer() -> None:
    # y = x W^T = (x R)(W R)^T: round-to-nearest and GPTQ on the rotated weight, the Hessian
    # taken from the rotated inputs, both give x W^T up to their quantization error.
    rng = np.random.default_rng(5)
    k, n = 128, 48
    x = (rng.standard_normal((400, 16)) @ rng.standard_normal((16, k))).astype(np.float32)
    x += 0.2 * rng.standard_normal(x.shape).astype(np.float32)
    w = randn(n, k, seed=6, scale=0.05)
    b = randn(n, seed=7)
    ref = x.astype(np.float64) @ w.astype(np.float64).T + b
    xr = mxfp4.rotate_blocks(x)
    wr = mxfp4.rotate_blocks(w)
    np.testing.assert_allclose(xr.astype(np.float64) @ wr.astype(np.float64).T + b, ref,
                               atol=1e-4)

    def rel(y: np.ndarray) -> float:
        return float(np.linalg.norm(y - ref) / np.linalg.norm(ref - b))

    rtn = mxfp4.Mxfp4Weight.quantize(wr, b)
    gptq = mxfp4.Mxfp4Weight.quantize_gptq(wr, mxfp4.hessian(xr), b)
    e_rtn, e_gptq = rel(mxfp4.linear(xr, rtn)), rel(mxfp4.linear(xr, gptq))
    assert 0.0 < e_rtn < 0.2
    assert 0.0 < e_gptq < e_rtn  # GPTQ on the rotated problem still beats round-to-nearest
    # linear with the rotated weight is exactly the f32 product with its dequantized values.
    y = mxfp4.linear(xr, gptq)
    np.testing.assert_allclose(y, xr @ gptq.dequantize().T + b, rtol=1e-5, atol=1e-4)


def test_errors() -> None:
    with pytest.raises(mxfp4.ShapeMismatch, match="multiple of 32"):
        mxfp4.rotate_blocks(np.zeros((2, 48), np.float32))
    with pytest.raises(mxfp4.ShapeMismatch, match="multiple of 32"):
        mxfp4.rotate_blocks(np.zeros((2, 0), np.float32))
    with pytest.raises(mxfp4.ShapeMismatch):
        mxfp4.rotate_blocks(np.float32(1.0))
    with pytest.raises(mxfp4.Error, match="float64|f64"):
        mxfp4.rotate_blocks(np.zeros((2, 32), np.float64))
    with pytest.raises(mxfp4.DTypeMismatch, match="f32, f16 or bf16"):
        mxfp4.rotate_blocks(np.zeros((2, 32), np.int32))
    with pytest.raises(mxfp4.ShapeMismatch, match="out must have x's shape"):
        mxfp4.rotate_blocks(np.zeros((2, 64), np.float32), out=np.zeros((2, 32), np.float32))
    x = np.ones((2, 64), np.float32)
    with pytest.raises(mxfp4.InvalidArgument, match="read-only"):
        mxfp4.rotate_blocks(x, out=_read_only(x))
    with pytest.raises(mxfp4.InvalidArgument, match="None"):
        mxfp4.rotate_blocks(None)


def _read_only(a: np.ndarray) -> np.ndarray:
    r = a.copy()
    r.flags.writeable = False
    return r


def test_torch_cpu_tensors() -> None:
    torch = pytest.importorskip("torch")
    x = torch.randn(3, 64)
    y = mxfp4.rotate_blocks(x)
    assert isinstance(y, torch.Tensor)
    np.testing.assert_allclose(y.numpy(), dense_rotate(x.numpy()), atol=1e-6)
