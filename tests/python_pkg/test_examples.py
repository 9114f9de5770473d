"""examples/gptoss_moe_block.py: the GPT-OSS MoE block on MXFP4 experts against float64 numpy."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import numpy as np
import pytest

import mxfp4

REPO = pathlib.Path(__file__).resolve().parents[2]


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


moe = load_example("gptoss_moe_block")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory):
    path = str(tmp_path_factory.mktemp("moe") / "gptoss.safetensors")
    moe.write_fixture(path)
    return moe.load_fixture(path)


def tokens(w, t: int = 9) -> np.ndarray:
    return np.random.default_rng(3).standard_normal((t, w.gate_up.in_features)).astype(np.float32)


def test_fixture_has_the_gptoss_layout(weights, tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "f.safetensors")
    moe.write_fixture(path)
    with mxfp4.open(path) as f:
        shapes = {t.name: t.shape for t in f.tensors}
    assert shapes[moe.PREFIX + "experts.gate_up_proj_blocks"] == (8, 128, 2, 16)
    assert shapes[moe.PREFIX + "experts.gate_up_proj_scales"] == (8, 128, 2)
    assert shapes[moe.PREFIX + "experts.down_proj_blocks"] == (8, 64, 2, 16)
    assert weights.gate_up.stacked and weights.gate_up.num_experts == 8
    assert (weights.gate_up.out_features, weights.down.out_features) == (128, 64)


def test_moe_block_matches_float64(weights) -> None:
    x = tokens(weights)
    ref = moe.moe_block_float64(x, weights)
    y = moe.moe_block(x, weights)
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_fixture_exercises_routing_and_clamp(weights) -> None:
    x = tokens(weights)
    logits = x @ weights.router_weight.T + weights.router_bias
    _, ids = moe._Ops(x).topk(logits, moe.TOP_K)
    assert len({tuple(sorted(r)) for r in ids.tolist()}) > 1  # tokens pick different experts
    h = mxfp4.gather_linear(x, ids, weights.gate_up)
    assert (h[..., 0::2] > moe.SWIGLU_LIMIT).any()
    assert (np.abs(h[..., 1::2]) > moe.SWIGLU_LIMIT).any()


def test_swiglu_definition() -> None:
    h = np.array([[9.0, 8.0, -3.0, -9.0, 0.5, 2.0]])  # (gate, up) pairs
    a = moe.swiglu(h, moe._Ops(h))
    g = np.array([7.0, -3.0, 0.5])
    u = np.array([7.0, -7.0, 2.0])
    np.testing.assert_allclose(a[0], (u + 1) * g / (1 + np.exp(-1.702 * g)))


def test_moe_block_on_torch_cpu(weights) -> None:
    torch = pytest.importorskip("torch")
    x = tokens(weights)
    y = moe.moe_block(torch.from_numpy(x), moe.to_torch(weights, "cpu"))
    assert isinstance(y, torch.Tensor)
    np.testing.assert_allclose(y.numpy(), moe.moe_block_float64(x, weights), rtol=1e-4,
                               atol=1e-3)


def test_moe_block_on_cuda(weights) -> None:
    torch = pytest.importorskip("torch")
    if not (torch.cuda.is_available() and mxfp4.cuda_built()):
        pytest.skip("needs a CUDA GPU visible to torch and mxfp4 built with -DMXFP4_CUDA=ON")
    x = tokens(weights)
    try:
        y = moe.moe_block(torch.from_numpy(x).cuda(), moe.to_torch(weights, "cuda"))
    except mxfp4.Unsupported as e:
        pytest.xfail(f"gather_linear has no CUDA kernel in this build yet: {e}")
    assert y.is_cuda
    ref = moe.moe_block_float64(x, weights)
    np.testing.assert_allclose(y.cpu().numpy(), ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
