"""The Python package mxfp4 on numpy arrays: values against independent numpy definitions
(np_reference.py) and float64 matmuls, files, errors, and the type stubs."""

from __future__ import annotations

import ast
import os
import pathlib

import numpy as np
import pytest

import mxfp4
from np_reference import E2M1, decode, quantize_ceil

ml_dtypes = pytest.importorskip("ml_dtypes")  # a test dependency: installed by scripts/test-python

RULES = [mxfp4.ScaleRule.floor, mxfp4.ScaleRule.ceil, mxfp4.ScaleRule.even, mxfp4.ScaleRule.mse,
         mxfp4.ScaleRule.mistralrs]
REPO = pathlib.Path(__file__).resolve().parents[2]


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def randn(*shape: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (rng(seed).standard_normal(shape) * scale).astype(np.float32)


def tolerance(k: int) -> float:
    return 1e-5 * np.sqrt(k)


def test_version_matches_pyproject() -> None:
    text = (REPO / "pyproject.toml").read_text()
    assert f'version = "{mxfp4.__version__}"' in text
    assert mxfp4.__version__.count(".") == 2


def test_default_rule_is_mse() -> None:
    assert mxfp4.DEFAULT_SCALE_RULE == mxfp4.ScaleRule.mse


@pytest.mark.parametrize("rule", RULES)
def test_exact_codes_quantize_to_themselves(rule: mxfp4.ScaleRule) -> None:
    codes = np.array([c if c != 8 else 0 for c in list(range(16)) * 2], dtype=np.int64)
    w = np.stack([E2M1[codes] * 0.5, np.zeros(32)]).astype(np.float32)
    blocks, scales = mxfp4.quantize(w, rule=rule)
    assert blocks.dtype == np.uint8 and blocks.shape == (2, 16)
    assert scales.tolist() == [[126], [127]]
    expected = (codes[0::2] | (codes[1::2] << 4)).astype(np.uint8)
    np.testing.assert_array_equal(blocks[0], expected)
    np.testing.assert_array_equal(blocks[1], 0)


def test_ceil_rule_matches_numpy_definition() -> None:
    w = randn(24, 256, seed=1, scale=3.0)
    w[3, :32] = 0.0  # an all-zero block
    w[5, 40] = 1e-30  # a tiny block maximum
    blocks, scales = mxfp4.quantize(w, rule=mxfp4.ScaleRule.ceil)
    ref_blocks, ref_scales = quantize_ceil(w)
    np.testing.assert_array_equal(scales, ref_scales)
    np.testing.assert_array_equal(blocks, ref_blocks)


def test_rules_differ_where_the_spec_says() -> None:
    w = np.ones((1, 32), np.float32)
    w[0, 5] = 7.0  # floor keeps exponent 0 (7 saturates to 6); ceil takes exponent 1
    assert mxfp4.quantize(w, rule=mxfp4.ScaleRule.floor)[1][0, 0] == 127
    assert mxfp4.quantize(w, rule=mxfp4.ScaleRule.ceil)[1][0, 0] == 128


def test_mse_error_is_never_above_ceil() -> None:
    w = randn(64, 512, seed=2)
    err = {}
    for rule in (mxfp4.ScaleRule.ceil, mxfp4.ScaleRule.mse):
        deq = mxfp4.Mxfp4Weight.quantize(w, rule=rule).dequantize().astype(np.float64)
        err[rule] = ((deq - w).reshape(64, 16, 32) ** 2).sum(axis=-1)
    assert np.all(err[mxfp4.ScaleRule.mse] <= err[mxfp4.ScaleRule.ceil])
    assert err[mxfp4.ScaleRule.mse].sum() < err[mxfp4.ScaleRule.ceil].sum()


def test_weight_properties_and_parts() -> None:
    w = randn(48, 64, seed=3)
    bias = randn(48, seed=4)
    weight = mxfp4.Mxfp4Weight.quantize(w, bias)
    assert not weight.stacked and weight.num_experts == 1
    assert (weight.out_features, weight.in_features) == (48, 64)
    assert weight.device == "cpu"
    assert weight.blocks.shape == (48, 32) and weight.scales.shape == (48, 2)
    np.testing.assert_array_equal(weight.bias, bias)
    assert not np.shares_memory(weight.bias, bias)  # quantize copies the bias
    assert "out_features=48" in repr(weight)
    experts = mxfp4.Mxfp4Weight.quantize(randn(3, 16, 32, seed=5))
    assert experts.stacked and experts.num_experts == 3 and experts.bias is None
    assert "experts=3" in repr(experts)


def gpu_layout_bytes(blocks: np.ndarray) -> np.ndarray:
    """Standard blocks [..., K/2] in the GPU block layout, by its definition: word t of a block
    holds byte t + 4s in slot s (magnitudes at bits 3s and 16 + 3s, signs at 12 + s and 28 + s),
    words little-endian."""
    b = blocks.reshape(-1, 4, 4).astype(np.uint32)  # [block, s, t]: byte t + 4s
    lo, hi = b & 15, b >> 4
    s = np.arange(4, dtype=np.uint32)[None, :, None]
    slots = ((lo & 7) << (3 * s)) | ((hi & 7) << (16 + 3 * s)) | ((lo >> 3) << (12 + s)) | \
        ((hi >> 3) << (28 + s))
    words = np.bitwise_or.reduce(slots, axis=1).astype("<u4")  # [block, t]
    return words.view(np.uint8).reshape(blocks.shape)


def test_block_layouts() -> None:
    assert mxfp4.BlockLayout.standard.value == 0 and mxfp4.BlockLayout.gpu.value == 1
    for shape in ((24, 96), (3, 8, 64)):
        weight = mxfp4.Mxfp4Weight.quantize(randn(*shape, seed=70), randn(*shape[:-1], seed=71))
        assert weight.layout == mxfp4.BlockLayout.standard
        gpu = weight.with_layout(mxfp4.BlockLayout.gpu)
        assert gpu.layout == mxfp4.BlockLayout.gpu and "layout=gpu" in repr(gpu)
        assert "layout" not in repr(weight)
        np.testing.assert_array_equal(gpu.blocks, gpu_layout_bytes(weight.blocks))
        assert not np.array_equal(gpu.blocks, weight.blocks)
        assert np.shares_memory(gpu.scales, weight.scales)
        assert np.shares_memory(gpu.bias, weight.bias)
        back = gpu.with_layout(mxfp4.BlockLayout.standard)
        assert back.layout == mxfp4.BlockLayout.standard
        np.testing.assert_array_equal(back.blocks, weight.blocks)
        assert np.shares_memory(weight.with_layout(mxfp4.BlockLayout.standard).blocks,
                                weight.blocks)
        copy = gpu.to("cpu")
        assert copy.layout == mxfp4.BlockLayout.gpu
        np.testing.assert_array_equal(copy.blocks, gpu.blocks)
        for dtype in ("f32", "bf16", "f16"):
            want = weight.dequantize(dtype)
            got = gpu.dequantize(dtype)
            np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
    x = randn(2, 96, seed=72)
    with pytest.raises(mxfp4.Unsupported, match="BlockLayout::gpu, which only the CUDA backend"):
        mxfp4.linear(x, mxfp4.Mxfp4Weight.quantize(randn(4, 96)).with_layout(mxfp4.BlockLayout.gpu))
    stack = mxfp4.Mxfp4Weight.quantize(randn(3, 4, 64)).with_layout(mxfp4.BlockLayout.gpu)
    with pytest.raises(mxfp4.Unsupported, match="gather_linear"):
        mxfp4.gather_linear(randn(2, 64), np.array([[0, 1], [2, 0]], np.int32), stack)
    # A weight viewing the caller's arrays: the re-laid-out one shares them and keeps them alive.
    weight = mxfp4.Mxfp4Weight.quantize(randn(4, 64, seed=76))
    blocks, scales = np.array(weight.blocks), np.array(weight.scales)
    view = mxfp4.Mxfp4Weight.from_parts(blocks, scales)
    relaid = view.with_layout(mxfp4.BlockLayout.gpu)
    assert np.shares_memory(relaid.scales, scales)
    del view, blocks, scales
    np.testing.assert_array_equal(relaid.with_layout(mxfp4.BlockLayout.standard).blocks,
                                  weight.blocks)
    np.testing.assert_array_equal(relaid.scales, weight.scales)
    big = mxfp4.Mxfp4Weight.quantize(randn(4, 64, scale=1e6))
    with pytest.raises(mxfp4.InvalidArgument, match=r"row 0, block 0 has scale 1[0-9][0-9]"):
        big.with_layout(mxfp4.BlockLayout.gpu)
    with pytest.raises(TypeError):
        big.with_layout("gpu")


def test_gpu_layout_weights_are_saved_with_the_standard_bytes(tmp_path: pathlib.Path) -> None:
    dense = mxfp4.Mxfp4Weight.quantize(randn(16, 64, seed=73), randn(16, seed=74))
    experts = mxfp4.Mxfp4Weight.quantize(randn(3, 8, 32, seed=75))
    gpu = {"up": dense.with_layout(mxfp4.BlockLayout.gpu),
           "experts": experts.with_layout(mxfp4.BlockLayout.gpu)}
    for fmt, name in (("safetensors", "m.safetensors"), ("gguf", "m.gguf"), ("uqff1", "m.uqff"),
                      ("gptoss", "g.safetensors"), ("uqff-legacy", "l.uqff")):
        mxfp4.save(str(tmp_path / ("std_" + name)), {"up": dense, "experts": experts}, format=fmt)
        mxfp4.save(str(tmp_path / ("gpu_" + name)), gpu, format=fmt)
        assert (tmp_path / ("gpu_" + name)).read_bytes() == \
            (tmp_path / ("std_" + name)).read_bytes(), fmt
        with mxfp4.open(str(tmp_path / ("gpu_" + name)), format=fmt) as f:
            back = f.load_weight("up")
            assert back.layout == mxfp4.BlockLayout.standard
            np.testing.assert_array_equal(back.blocks, dense.blocks)


def test_dequantize_is_exact_in_f32_and_bf16() -> None:
    weight = mxfp4.Mxfp4Weight.quantize(randn(32, 128, seed=6, scale=4.0))
    ref = decode(weight.blocks, weight.scales)
    f32 = weight.dequantize()
    assert f32.dtype == np.float32 and f32.shape == (32, 128)
    np.testing.assert_array_equal(f32.astype(np.float64), ref)
    bf16 = mxfp4.dequantize(weight, "bf16")
    assert bf16.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(bf16.astype(np.float64), ref)
    f16 = weight.dequantize(np.float16)
    assert f16.dtype == np.float16
    np.testing.assert_array_equal(f16, ref.astype(np.float16))
    out = np.empty((32, 128), np.float32)
    assert weight.dequantize(out=out) is out
    np.testing.assert_array_equal(out, f32)


def test_quantize_accepts_bf16_and_f16() -> None:
    w = randn(16, 64, seed=7)
    for dtype in (ml_dtypes.bfloat16, np.float16):
        low = w.astype(dtype)
        blocks, scales = mxfp4.quantize(low)
        ref_blocks, ref_scales = mxfp4.quantize(low.astype(np.float32))
        np.testing.assert_array_equal(blocks, ref_blocks)
        np.testing.assert_array_equal(scales, ref_scales)


def test_quantize_into_caller_buffers() -> None:
    w = randn(8, 64, seed=8)
    blocks = np.zeros((8, 32), np.uint8)
    scales = np.zeros((8, 2), np.uint8)
    result = mxfp4.quantize(w, out=(blocks, scales))
    assert result[0] is blocks and result[1] is scales
    ref = mxfp4.quantize(w)
    np.testing.assert_array_equal(blocks, ref[0])
    np.testing.assert_array_equal(scales, ref[1])


def test_nan_policy() -> None:
    w = randn(2, 64, seed=9)
    w[1, 40] = np.nan
    with pytest.raises(mxfp4.NonFiniteValue, match="NaN at row 1, column 40"):
        mxfp4.quantize(w)
    blocks, scales = mxfp4.quantize(w, non_finite=mxfp4.NonFinitePolicy.nan_block)
    assert scales[1, 1] == 0xFF and scales[1, 0] != 0xFF
    deq = mxfp4.Mxfp4Weight.from_parts(blocks, scales).dequantize()
    assert np.isnan(deq[1, 32:]).all() and not np.isnan(deq[1, :32]).any()


@pytest.mark.parametrize("rule", RULES)
def test_linear_matches_float64(rule: mxfp4.ScaleRule) -> None:
    w = randn(40, 96, seed=10)
    bias = randn(40, seed=11)
    x = randn(7, 96, seed=12)
    weight = mxfp4.Mxfp4Weight.quantize(w, bias, rule=rule)
    ref = x.astype(np.float64) @ decode(weight.blocks, weight.scales).T + bias
    y = mxfp4.linear(x, weight)
    assert y.dtype == np.float32 and y.shape == (7, 40)
    np.testing.assert_allclose(y, ref, rtol=tolerance(96), atol=tolerance(96))


def test_linear_dtypes_shapes_and_out() -> None:
    weight = mxfp4.Mxfp4Weight.quantize(randn(24, 64, seed=13))
    x = randn(2, 3, 64, seed=14)
    ref = x.astype(np.float64) @ decode(weight.blocks, weight.scales).T
    y = mxfp4.linear(x, weight)
    assert y.shape == (2, 3, 24)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    yb = mxfp4.linear(x.astype(ml_dtypes.bfloat16), weight)
    assert yb.dtype == ml_dtypes.bfloat16
    refb = x.astype(ml_dtypes.bfloat16).astype(np.float64) @ decode(weight.blocks,
                                                                      weight.scales).T
    np.testing.assert_allclose(yb.astype(np.float64), refb, rtol=1e-2, atol=1e-2)
    yh = mxfp4.linear(x.astype(np.float16), weight)
    assert yh.dtype == np.float16
    empty = mxfp4.linear(np.zeros((0, 64), np.float32), weight)
    assert empty.shape == (0, 24)
    out = np.empty((2, 3, 24), np.float32)
    assert mxfp4.linear(x, weight, out=out) is out
    np.testing.assert_array_equal(out, y)
    readonly = np.empty((2, 3, 24), np.float32)
    readonly.flags.writeable = False
    with pytest.raises(mxfp4.InvalidArgument, match="read-only"):
        mxfp4.linear(x, weight, out=readonly)
    strided = np.zeros((24, 3, 2), np.float32).transpose(2, 1, 0)
    with pytest.raises(mxfp4.InvalidArgument, match="out must be C-contiguous"):
        mxfp4.linear(x, weight, out=strided)
    assert not strided.any()


def test_non_contiguous_inputs_are_read_correctly() -> None:
    weight = mxfp4.Mxfp4Weight.quantize(randn(16, 64, seed=30))
    wide = randn(4, 128, seed=31)
    np.testing.assert_array_equal(mxfp4.linear(wide[:, ::2], weight),
                                  mxfp4.linear(np.ascontiguousarray(wide[:, ::2]), weight))
    fortran = np.asfortranarray(randn(5, 64, seed=32))
    np.testing.assert_array_equal(mxfp4.linear(fortran, weight),
                                  mxfp4.linear(np.ascontiguousarray(fortran), weight))


@pytest.mark.parametrize("id_dtype", [np.int32, np.int64, np.uint32])
def test_gather_linear_matches_float64(id_dtype: type) -> None:
    e, n, k, t, topk = 6, 16, 64, 5, 3
    weight = mxfp4.Mxfp4Weight.quantize(randn(e, n, k, seed=15), randn(e, n, seed=16))
    ids = rng(17).integers(0, e, size=(t, topk)).astype(id_dtype)
    dense = decode(weight.blocks, weight.scales)
    bias = weight.bias.astype(np.float64)
    x = randn(t, k, seed=18)
    y = mxfp4.gather_linear(x, ids, weight)
    assert y.shape == (t, topk, n)
    ref = np.einsum("tk,tsnk->tsn", x.astype(np.float64), dense[ids]) + bias[ids]
    np.testing.assert_allclose(y, ref, rtol=tolerance(k), atol=tolerance(k))
    xs = randn(t, topk, k, seed=19)
    ys = mxfp4.gather_linear(xs, ids, weight)
    refs = np.einsum("tsk,tsnk->tsn", xs.astype(np.float64), dense[ids]) + bias[ids]
    np.testing.assert_allclose(ys, refs, rtol=tolerance(k), atol=tolerance(k))


def check_expert_order(ids: np.ndarray, experts: int, y: np.ndarray, out: np.ndarray,
                       perm: np.ndarray, offsets: np.ndarray) -> None:
    """out/perm/offsets against numpy: perm the stable argsort of the ids, offsets the running
    counts after a 0, row p of out gather_linear's pair perm[p] bit for bit."""
    pairs = ids.size
    assert perm.dtype == np.int32 and perm.shape == (pairs,)
    assert offsets.dtype == np.int32 and offsets.shape == (experts + 1,)
    np.testing.assert_array_equal(perm, np.argsort(ids.ravel(), kind="stable"))
    counts = np.bincount(ids.ravel().astype(np.int64), minlength=experts)
    np.testing.assert_array_equal(offsets, np.concatenate([[0], np.cumsum(counts)]))
    assert out.dtype == y.dtype and out.shape == (pairs, y.shape[-1])
    np.testing.assert_array_equal(out, y.reshape(pairs, -1)[perm])


@pytest.mark.parametrize("id_dtype", [np.int32, np.int64, np.uint32])
def test_gather_linear_expert_order_matches_numpy(id_dtype: type) -> None:
    e, n, k, t, topk = 6, 16, 64, 9, 3
    weight = mxfp4.Mxfp4Weight.quantize(randn(e, n, k, seed=90), randn(e, n, seed=91))
    ids = rng(92).integers(0, e, size=(t, topk)).astype(id_dtype)
    ids[ids == 4] = 5  # expert 4 gets no pair
    x, xs = randn(t, k, seed=93), randn(t, topk, k, seed=94)
    for xin in (x, xs, x.astype(np.float16), x.astype(ml_dtypes.bfloat16)):
        out, perm, offsets = mxfp4.gather_linear_expert_order(xin, ids, weight)
        check_expert_order(ids, e, mxfp4.gather_linear(xin, ids, weight), out, perm, offsets)
        assert offsets[4] == offsets[5]
    approx = mxfp4.gather_linear_expert_order(x, ids, weight, precision="int8_activations")
    check_expert_order(ids, e, mxfp4.gather_linear(x, ids, weight, precision="int8_activations"),
                       *approx)
    # A workspace on the CPU is accepted and ignored.
    ws = np.zeros(mxfp4.gather_linear_workspace_bytes(t, topk, e) + 16, dtype=np.uint8)
    out, perm, offsets = mxfp4.gather_linear_expert_order(x, ids, weight, workspace=ws)
    check_expert_order(ids, e, mxfp4.gather_linear(x, ids, weight), out, perm, offsets)


def test_gather_linear_expert_order_into_given_arrays() -> None:
    e, n, k, t, topk = 4, 8, 64, 5, 2
    weight = mxfp4.Mxfp4Weight.quantize(randn(e, n, k, seed=95))
    ids = np.array([[3, 0], [1, 3], [0, 0], [2, 1], [3, 3]], dtype=np.int32)
    x = randn(t, k, seed=96)
    out = np.full((t * topk, n), np.nan, np.float32)
    perm = np.full(t * topk, -1, np.int32)
    offsets = np.full(e + 1, -1, np.int32)
    result = mxfp4.gather_linear_expert_order(x, ids, weight, out=out, perm=perm, offsets=offsets)
    assert isinstance(result, tuple) and len(result) == 3
    assert result[0] is out and result[1] is perm and result[2] is offsets
    check_expert_order(ids, e, mxfp4.gather_linear(x, ids, weight), out, perm, offsets)
    np.testing.assert_array_equal(offsets, [0, 3, 5, 6, 10])

    with pytest.raises(mxfp4.DTypeMismatch, match=r"perm must be i32 \[10\], got perm u32"):
        mxfp4.gather_linear_expert_order(x, ids, weight, out=out, perm=perm.view(np.uint32),
                                         offsets=offsets)
    with pytest.raises(mxfp4.ShapeMismatch, match=r"offsets must be i32 \[5\]"):
        mxfp4.gather_linear_expert_order(x, ids, weight, out=out, perm=perm, offsets=offsets[:4])
    with pytest.raises(mxfp4.ShapeMismatch, match=r"out must be f32 \[10, 8\]"):
        mxfp4.gather_linear_expert_order(x, ids, weight, out=out.reshape(t, topk, n), perm=perm,
                                         offsets=offsets)
    with pytest.raises(mxfp4.InvalidArgument, match="together, or none"):
        mxfp4.gather_linear_expert_order(x, ids, weight, out=out)
    readonly = perm.copy()
    readonly.flags.writeable = False
    with pytest.raises(mxfp4.InvalidArgument, match="perm is read-only"):
        mxfp4.gather_linear_expert_order(x, ids, weight, out=out, perm=readonly, offsets=offsets)
    with pytest.raises(mxfp4.InvalidArgument, match="unknown precision 'int4'"):
        mxfp4.gather_linear_expert_order(x, ids, weight, precision="int4")
    bad = ids.copy()
    bad[3, 1] = e
    with pytest.raises(mxfp4.IndexOutOfRange, match=r"indices\[3, 1\] = 4 is outside \[0, 4\)"):
        mxfp4.gather_linear_expert_order(x, bad, weight)
    with pytest.raises(mxfp4.ShapeMismatch, match="gather_linear_expert_order"):
        mxfp4.gather_linear_expert_order(x, ids, mxfp4.Mxfp4Weight.quantize(randn(8, 64)))


def test_from_parts_views_without_copy() -> None:
    q = mxfp4.Mxfp4Weight.quantize(randn(8, 64, seed=20))
    blocks = np.array(q.blocks)
    scales = np.array(q.scales)
    weight = mxfp4.Mxfp4Weight.from_parts(blocks, scales)
    assert np.shares_memory(weight.blocks, blocks)
    x = randn(2, 64, seed=21)
    np.testing.assert_array_equal(mxfp4.linear(x, weight), mxfp4.linear(x, q))
    scales[:] = 127  # the weight views the caller's arrays
    assert not np.array_equal(mxfp4.linear(x, weight), mxfp4.linear(x, q))
    del blocks, scales  # the weight keeps them alive
    assert weight.blocks.shape == (8, 32)


def test_part_views_keep_the_weight_alive() -> None:
    weight = mxfp4.Mxfp4Weight.quantize(randn(8, 64, seed=22))
    expected = np.array(weight.blocks)
    blocks = weight.blocks
    del weight
    np.testing.assert_array_equal(blocks, expected)


def test_errors_carry_the_library_messages() -> None:
    weight = mxfp4.Mxfp4Weight.quantize(randn(8, 64, seed=23))
    with pytest.raises(mxfp4.ShapeMismatch, match=r"K=64 .* got x f32 \[2, 32\]") as e:
        mxfp4.linear(randn(2, 32), weight)
    assert isinstance(e.value, ValueError) and isinstance(e.value, mxfp4.Error)
    assert e.value.code == "shape_mismatch"
    with pytest.raises(mxfp4.DTypeMismatch, match="float64") as d:
        mxfp4.linear(np.zeros((2, 64)), weight)
    assert isinstance(d.value, TypeError)
    with pytest.raises(mxfp4.ShapeMismatch, match="multiple of 32"):
        mxfp4.quantize(randn(4, 40))
    with pytest.raises(mxfp4.ShapeMismatch, match="gather_linear"):
        mxfp4.linear(randn(2, 64), mxfp4.Mxfp4Weight.quantize(randn(2, 8, 64)))
    experts = mxfp4.Mxfp4Weight.quantize(randn(2, 8, 64))
    with pytest.raises(mxfp4.IndexOutOfRange, match=r"indices\[1, 0\] = 2") as i:
        mxfp4.gather_linear(randn(2, 64), np.array([[0, 1], [2, 0]], np.int32), experts)
    assert isinstance(i.value, IndexError)
    with pytest.raises(mxfp4.InvalidArgument, match="x is None"):
        mxfp4.linear(None, weight)
    with pytest.raises(mxfp4.InvalidArgument, match="must be an array"):
        mxfp4.linear("not an array", weight)
    with pytest.raises(mxfp4.InvalidArgument, match="unknown output dtype 'int8'"):
        weight.dequantize("int8")
    with pytest.raises(mxfp4.InvalidArgument, match="unknown device 'tpu'"):
        weight.to("tpu")
    with pytest.raises(mxfp4.InvalidArgument):
        mxfp4.set_num_threads(-1)
    with pytest.raises(TypeError):
        mxfp4.quantize(randn(4, 32), rule="nearest")


@pytest.mark.skipif(mxfp4.cuda_built(), reason="checks the refusal of a build without CUDA")
def test_cuda_refused_without_cuda_backend() -> None:
    weight = mxfp4.Mxfp4Weight.quantize(randn(8, 64))
    with pytest.raises(mxfp4.Unsupported, match="no CUDA backend") as e:
        weight.to("cuda")
    assert isinstance(e.value, NotImplementedError)


def test_threads_setting() -> None:
    before = mxfp4.num_threads()
    try:
        mxfp4.set_num_threads(1)
        assert mxfp4.num_threads() == 1
    finally:
        mxfp4.set_num_threads(before)


def test_save_and_open_round_trip(tmp_path: pathlib.Path) -> None:
    dense = mxfp4.Mxfp4Weight.quantize(randn(16, 64, seed=24), randn(16, seed=25))
    experts = mxfp4.Mxfp4Weight.quantize(randn(3, 8, 32, seed=26))
    norm = randn(64, seed=27)
    emb = randn(10, 64, seed=28).astype(ml_dtypes.bfloat16)
    path = tmp_path / "model.safetensors"
    size = mxfp4.save(str(path), {"layers.0.up": dense, "experts": experts, "norm.weight": norm,
                                  "embed": emb}, metadata={"origin": "pytest"})
    assert size == path.stat().st_size
    with mxfp4.open(str(path)) as f:
        assert f.format == "safetensors" and f.path == str(path)
        names = [t.name for t in f.tensors]
        assert names == ["layers.0.up.blocks", "layers.0.up.scales", "layers.0.up.bias",
                         "experts.blocks", "experts.scales", "norm.weight", "embed"]
        info = f.tensors[6]
        assert (info.dtype, info.file_dtype, info.shape, info.nbytes) == ("bf16", "BF16",
                                                                           (10, 64), 1280)
        assert repr(info) == "TensorInfo(name='embed', file_dtype='BF16', shape=(10, 64))"
        assert f.metadata == {"origin": "pytest"}
        assert f.weight_names == ["layers.0.up", "experts"]
        loaded = f.load_weight("layers.0.up")
        np.testing.assert_array_equal(f.read("norm.weight"), norm)
        back = f.read("embed")
        assert back.dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(back.view(np.uint16), emb.view(np.uint16))
        with pytest.raises(mxfp4.InvalidArgument, match="no MXFP4 weight 'layers.1'"):
            f.load_weight("layers.1")
        with pytest.raises(mxfp4.InvalidArgument, match="no tensor 'absent'"):
            f.read("absent")
    with pytest.raises(mxfp4.InvalidArgument, match="closed"):
        f.read("norm.weight")
    np.testing.assert_array_equal(loaded.blocks, dense.blocks)
    np.testing.assert_array_equal(loaded.bias, dense.bias)
    x = randn(3, 64, seed=29)
    np.testing.assert_array_equal(mxfp4.linear(x, loaded), mxfp4.linear(x, dense))


@pytest.mark.parametrize("fmt,filename,dense_tensors", [
    ("safetensors", "m.safetensors", True),
    ("gguf", "m.gguf", True),
    ("uqff1", "m.uqff", True),
    ("gptoss", "gptoss.safetensors", True),
    ("uqff-legacy", "legacy.uqff", False),
])
def test_every_format_round_trips_weights_bit_exactly(tmp_path: pathlib.Path, fmt: str,
                                                      filename: str, dense_tensors: bool) -> None:
    dense = mxfp4.Mxfp4Weight.quantize(randn(16, 64, seed=60), randn(16, seed=61))
    experts = mxfp4.Mxfp4Weight.quantize(randn(3, 8, 32, seed=62))
    norm = randn(64, seed=63)
    tensors: dict[str, object] = {"layers.0.up": dense, "experts": experts}
    if dense_tensors:
        tensors["norm.weight"] = norm
    path = tmp_path / filename
    size = mxfp4.save(str(path), tensors, metadata={"origin": "pytest"}, format=fmt)
    assert size == path.stat().st_size
    assert os.listdir(tmp_path) == [filename]
    by_content = fmt in ("safetensors", "gguf", "uqff1")
    if not by_content:  # GPT-OSS and legacy UQFF files are safetensors unless named
        with mxfp4.open(str(path)) as f:
            assert f.format == "safetensors"
    for open_as in (("auto",) if by_content else ()) + (fmt,):
        with mxfp4.open(str(path), format=open_as) as f:
            assert f.format == fmt
            assert f.weight_names == ["layers.0.up", "experts"]
            assert f.metadata["origin"] == "pytest"
            for name, want in (("layers.0.up", dense), ("experts", experts)):
                got = f.load_weight(name)
                np.testing.assert_array_equal(got.blocks, want.blocks)
                np.testing.assert_array_equal(got.scales, want.scales)
                assert (got.bias is None) == (want.bias is None)
                if want.bias is not None:
                    np.testing.assert_array_equal(got.bias, want.bias)
            np.testing.assert_array_equal(f.read("experts.scales"), experts.scales)
            if dense_tensors:
                np.testing.assert_array_equal(f.read("norm.weight"), norm)
    if fmt in ("gguf", "uqff1"):  # told from the extension too
        again = tmp_path / ("again." + filename.split(".")[-1])
        mxfp4.save(str(again), tensors)
        with mxfp4.open(str(again)) as f:
            assert f.format == fmt


def test_formats_refuse_what_they_cannot_hold(tmp_path: pathlib.Path) -> None:
    weight = mxfp4.Mxfp4Weight.quantize(randn(4, 32))
    with pytest.raises(mxfp4.InvalidArgument, match="MXFP4 weights only"):
        mxfp4.save(str(tmp_path / "x.uqff"), {"w": weight, "norm": randn(4)},
                   format="uqff-legacy")
    with pytest.raises(mxfp4.InvalidArgument, match="'raw' is U8"):
        mxfp4.save(str(tmp_path / "x.gguf"), {"raw": np.zeros(4, np.uint8)})
    assert os.listdir(tmp_path) == []
    mxfp4.save(str(tmp_path / "m.safetensors"), {"w": weight})
    with pytest.raises(mxfp4.FormatError):
        mxfp4.open(str(tmp_path / "m.safetensors"), format="gguf")


def int8_bound(x: np.ndarray, wdq: np.ndarray) -> np.ndarray:
    """The documented bound on |int8_activations - exact| for x [M, K] and w [N, K]."""
    xb = np.abs(x.astype(np.float64)).reshape(x.shape[0], -1, 32).max(axis=2) / 254.0  # [M, B]
    wb = np.abs(wdq.astype(np.float64)).reshape(wdq.shape[0], -1, 32).sum(axis=2)      # [N, B]
    return xb @ wb.T


def test_precision_int8_activations_stays_within_its_bound() -> None:
    weight = mxfp4.Mxfp4Weight.quantize(randn(24, 128, seed=70), randn(24, seed=71))
    x = randn(4, 128, seed=72)
    exact = mxfp4.linear(x, weight)
    np.testing.assert_array_equal(mxfp4.linear(x, weight, precision="exact"), exact)
    approx = mxfp4.linear(x, weight, precision="int8_activations")
    assert approx.shape == exact.shape and approx.dtype == exact.dtype
    diff = np.abs(approx.astype(np.float64) - exact)
    assert np.any(diff > 0)  # x is not on the int8 grid
    bound = int8_bound(x, weight.dequantize()) + 1e-5 * (1 + np.abs(exact))
    assert np.all(diff <= bound)

    experts = mxfp4.Mxfp4Weight.quantize(randn(3, 16, 64, seed=73))
    xs = randn(5, 64, seed=74)
    ids = np.array([[0, 2], [1, 1], [2, 0], [0, 1], [2, 2]], dtype=np.int32)
    gexact = mxfp4.gather_linear(xs, ids, experts)
    np.testing.assert_array_equal(mxfp4.gather_linear(xs, ids, experts, precision="exact"),
                                  gexact)
    gapprox = mxfp4.gather_linear(xs, ids, experts, precision="int8_activations")
    dq = experts.dequantize()
    gdiff = np.abs(gapprox.astype(np.float64) - gexact)
    assert np.any(gdiff > 0)
    for t in range(5):
        for s in range(2):
            b = int8_bound(xs[t:t + 1], dq[ids[t, s]])[0] + 1e-5 * (1 + np.abs(gexact[t, s]))
            assert np.all(gdiff[t, s] <= b)
    # A workspace on the CPU is accepted and ignored.
    ws = np.zeros(mxfp4.gather_linear_workspace_bytes(5, 2, 3) + 16, dtype=np.uint8)
    np.testing.assert_array_equal(mxfp4.gather_linear(xs, ids, experts, workspace=ws), gexact)
    np.testing.assert_array_equal(mxfp4.linear(x, weight, workspace=ws), exact)
    # Only CUDA linear on Hopper takes scratch (stream-K's partial sums: 131076 bytes per SM).
    lw = mxfp4.linear_workspace_bytes()
    assert lw % 131076 == 0
    if mxfp4.cuda_device_count() == 0:
        assert lw == 0
    with pytest.raises(mxfp4.InvalidArgument, match="unknown precision 'int4'"):
        mxfp4.linear(x, weight, precision="int4")
    with pytest.raises(mxfp4.InvalidArgument, match="tokens"):
        mxfp4.gather_linear_workspace_bytes(-1, 2, 3)
    # With the weight's k: room to stage 16-bit x rows (2 k bytes a pair) besides the plan.
    plan = mxfp4.gather_linear_workspace_bytes(1000, 4, 8)
    assert mxfp4.gather_linear_workspace_bytes(1000, 4, 8, k=64) >= plan + 4000 * 64 * 2
    with pytest.raises(mxfp4.InvalidArgument, match="multiple of 32"):
        mxfp4.gather_linear_workspace_bytes(1000, 4, 8, k=48)


def test_file_errors(tmp_path: pathlib.Path) -> None:
    with pytest.raises(mxfp4.IoError, match="absent.safetensors") as e:
        mxfp4.open(str(tmp_path / "absent.safetensors"))
    assert isinstance(e.value, OSError)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(mxfp4.FormatError, match="garbage.safetensors"):
        mxfp4.open(str(garbage))
    with pytest.raises(mxfp4.InvalidArgument, match="unknown file format 'gguf2'"):
        mxfp4.open(str(garbage), format="gguf2")
    with pytest.raises(mxfp4.InvalidArgument, match="extension"):
        mxfp4.save(str(tmp_path / "x.bin"), {"a": randn(2)})


def test_failed_save_keeps_the_old_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "keep.safetensors"
    mxfp4.save(str(path), {"a": randn(4)})
    before = path.read_bytes()
    weight = mxfp4.Mxfp4Weight.quantize(randn(4, 32))
    with pytest.raises(mxfp4.InvalidArgument, match="'w.blocks' appears twice"):
        mxfp4.save(str(path), {"w": weight, "w.blocks": randn(4)})
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["keep.safetensors"]


def test_stubs_name_what_the_module_has() -> None:
    stub = pathlib.Path(mxfp4.__file__).with_name("_mxfp4.pyi")
    assert pathlib.Path(mxfp4.__file__).with_name("py.typed").exists()
    tree = ast.parse(stub.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                cls = getattr(mxfp4._mxfp4, node.name)
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and not item.name.startswith("__"):
                        assert hasattr(cls, item.name), f"{node.name}.{item.name}"
    public = {n for n in dir(mxfp4._mxfp4) if not n.startswith("_")}
    assert names == public
    for name in mxfp4.__all__:
        assert hasattr(mxfp4, name)


def test_docstrings() -> None:
    for obj in (mxfp4.linear, mxfp4.gather_linear, mxfp4.gather_linear_expert_order,
                mxfp4.quantize, mxfp4.dequantize, mxfp4.save, mxfp4.open, mxfp4.Mxfp4Weight,
                mxfp4.Mxfp4Weight.quantize, mxfp4.File.load_weight):
        assert obj.__doc__ and len(obj.__doc__) > 20, obj


def test_concurrent_calls_from_python_threads() -> None:
    # The module releases the GIL while the library runs; a weight is shared for reading.
    from concurrent.futures import ThreadPoolExecutor

    weight = mxfp4.Mxfp4Weight.quantize(randn(256, 512, seed=40))
    inputs = [randn(16, 512, seed=41 + i) for i in range(8)]
    expected = [mxfp4.linear(x, weight) for x in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda x: mxfp4.linear(x, weight), inputs * 4))
    for i, y in enumerate(results):
        np.testing.assert_array_equal(y, expected[i % len(inputs)])


class _DLPackOnly:
    """An array seen only through the DLPack protocol (as PyTorch and others hand theirs over)."""

    def __init__(self, a: np.ndarray) -> None:
        self.a = a

    def __dlpack__(self, **kwargs):
        return self.a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()


def test_dlpack_producers_without_copies() -> None:
    weight = mxfp4.Mxfp4Weight.quantize(randn(8, 64, seed=50))
    x = randn(3, 64, seed=51)
    np.testing.assert_array_equal(mxfp4.linear(_DLPackOnly(x), weight), mxfp4.linear(x, weight))
    blocks, scales = np.array(weight.blocks), np.array(weight.scales)
    view = mxfp4.Mxfp4Weight.from_parts(_DLPackOnly(blocks), _DLPackOnly(scales))
    assert np.shares_memory(view.blocks, blocks)
    out = np.zeros((3, 8), np.float32)
    mxfp4.linear(x, view, out=_DLPackOnly(out))
    np.testing.assert_array_equal(out, mxfp4.linear(x, weight))
