"""The mixture-of-experts block of GPT-OSS on MXFP4 experts, through the mxfp4 package.

    router:   logits = x R^T + b_R                     (dense, as GPT-OSS keeps it in bf16)
              top 4 logits per token, softmax over those 4 only
    experts:  h = gate_up(x)                           (gather_linear, [T, 4, 2I], interleaved:
              gate = h[..., 0::2], up = h[..., 1::2]    column 2i is gate_i, 2i+1 is up_i)
              g = min(gate, 7), u = clamp(up, -7, 7)
              a = (u + 1) * g * sigmoid(1.702 g)
              y = down(a)                              (gather_linear, slot (t, s) uses a[t, s])
    output:   sum over the 4 slots of weight * y       (FORMATS.md section 3)

The same `moe_block` runs on numpy arrays (CPU) and on PyTorch tensors (CPU or CUDA): every
array operation goes through the small `_Ops` table of the input's framework, and mxfp4 returns
results in the input's framework and device.

Run it: `python examples/gptoss_moe_block.py` builds a small fixture (hidden 64, intermediate 64,
8 experts), writes it as a GPT-OSS-named safetensors file (blocks [E, N, K/32, 16], as the real
checkpoints store them), loads it back, runs the block and compares with a float64 numpy
computation on the dequantized weights; with torch and a GPU it runs on CUDA too.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np

import mxfp4

TOP_K = 4
SWIGLU_LIMIT = 7.0
SWIGLU_ALPHA = 1.702


def _is_torch(a: Any) -> bool:
    return type(a).__module__.split(".")[0] == "torch"


class _Ops:
    """The handful of array operations the block needs, for numpy or torch."""

    def __init__(self, like: Any) -> None:
        self.torch = _is_torch(like)
        if self.torch:
            import torch

            self.t = torch

    def topk(self, logits: Any, k: int) -> tuple[Any, Any]:
        """The k largest values per row, largest first, and their indices (int32)."""
        if self.torch:
            values, ids = logits.topk(k, dim=-1)
            return values, ids.to(self.t.int32)
        ids = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
        return np.take_along_axis(logits, ids, axis=-1), ids.astype(np.int32)

    def exp(self, a: Any) -> Any:
        return self.t.exp(a) if self.torch else np.exp(a)

    def clip(self, a: Any, lo: float | None, hi: float | None) -> Any:
        return self.t.clamp(a, lo, hi) if self.torch else np.clip(a, lo, hi)

    def softmax(self, a: Any) -> Any:
        if self.torch:
            return self.t.softmax(a, dim=-1)
        e = np.exp(a - a.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def sigmoid(self, a: Any) -> Any:
        return 1.0 / (1.0 + self.exp(-a))


@dataclass
class MoeWeights:
    router_weight: Any  # [E, hidden], dense
    router_bias: Any  # [E]
    gate_up: mxfp4.Mxfp4Weight  # [E, 2 * intermediate, hidden], interleaved gate/up rows, bias
    down: mxfp4.Mxfp4Weight  # [E, hidden, intermediate], bias


def swiglu(h: Any, ops: _Ops) -> Any:
    """GPT-OSS's clamped SwiGLU on the interleaved gate_up output [..., 2I] -> [..., I]."""
    gate = h[..., 0::2]
    up = h[..., 1::2]
    g = ops.clip(gate, None, SWIGLU_LIMIT)
    u = ops.clip(up, -SWIGLU_LIMIT, SWIGLU_LIMIT)
    return (u + 1.0) * g * ops.sigmoid(SWIGLU_ALPHA * g)


def moe_block(x: Any, w: MoeWeights) -> Any:
    """x [T, hidden] -> [T, hidden]; numpy or torch (CPU or CUDA), in x's dtype."""
    ops = _Ops(x)
    logits = x @ w.router_weight.T + w.router_bias  # [T, E]
    top_logits, ids = ops.topk(logits, TOP_K)  # [T, 4]
    weights = ops.softmax(top_logits)  # softmax over the 4 chosen only
    h = mxfp4.gather_linear(x, ids, w.gate_up)  # [T, 4, 2I]: every slot sees row x[t]
    a = swiglu(h, ops)  # [T, 4, I]
    if ops.torch:
        a = a.contiguous()  # the strided gate/up halves make a non-contiguous result
    y = mxfp4.gather_linear(a, ids, w.down)  # [T, 4, hidden]: slot (t, s) uses a[t, s]
    return (weights[..., None] * y).sum(1)


def moe_block_float64(x: np.ndarray, w: MoeWeights) -> np.ndarray:
    """The same block in float64 numpy on the dequantized (exact) weights: the check."""
    x = np.asarray(x, np.float64)
    rw = np.asarray(w.router_weight, np.float64)
    rb = np.asarray(w.router_bias, np.float64)
    gu = w.gate_up.dequantize().astype(np.float64)
    gu_bias = np.asarray(w.gate_up.bias, np.float64)
    dn = w.down.dequantize().astype(np.float64)
    dn_bias = np.asarray(w.down.bias, np.float64)
    out = np.zeros_like(x)
    logits = x @ rw.T + rb
    for t in range(x.shape[0]):
        ids = np.argsort(-logits[t], kind="stable")[:TOP_K]
        p = np.exp(logits[t, ids] - logits[t, ids].max())
        p /= p.sum()
        for s, e in enumerate(ids):
            h = gu[e] @ x[t] + gu_bias[e]
            g = np.minimum(h[0::2], SWIGLU_LIMIT)
            u = np.clip(h[1::2], -SWIGLU_LIMIT, SWIGLU_LIMIT)
            a = (u + 1.0) * g / (1.0 + np.exp(-SWIGLU_ALPHA * g))
            out[t] += p[s] * (dn[e] @ a + dn_bias[e])
    return out


# ---- A small fixture stored the way GPT-OSS checkpoints store their experts ----

PREFIX = "model.layers.0.mlp."


def write_fixture(path: str, hidden: int = 64, intermediate: int = 64, experts: int = 8,
                  seed: int = 0) -> None:
    """A random GPT-OSS-shaped MoE layer: router in f32, experts quantized to MXFP4 with the
    gpt-oss names and the [E, N, K/32, 16] blocks layout."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    # gate_up is scaled so that some gate and up values pass the clamp at +/-7.
    gate_up = (rng.standard_normal((experts, 2 * intermediate, hidden)) * 4 / np.sqrt(hidden))
    down = (rng.standard_normal((experts, hidden, intermediate)) / np.sqrt(intermediate))
    gu_blocks, gu_scales = mxfp4.quantize(gate_up.astype(f32))
    dn_blocks, dn_scales = mxfp4.quantize(down.astype(f32))
    tensors = {
        PREFIX + "router.weight": rng.standard_normal((experts, hidden)).astype(f32),
        PREFIX + "router.bias": (0.1 * rng.standard_normal(experts)).astype(f32),
        PREFIX + "experts.gate_up_proj_blocks":
            gu_blocks.reshape(experts, 2 * intermediate, hidden // 32, 16),
        PREFIX + "experts.gate_up_proj_scales": gu_scales,
        PREFIX + "experts.gate_up_proj_bias":
            (0.1 * rng.standard_normal((experts, 2 * intermediate))).astype(f32),
        PREFIX + "experts.down_proj_blocks":
            dn_blocks.reshape(experts, hidden, intermediate // 32, 16),
        PREFIX + "experts.down_proj_scales": dn_scales,
        PREFIX + "experts.down_proj_bias": (0.1 * rng.standard_normal((experts, hidden))).astype(f32),
    }
    mxfp4.save(path, tensors, metadata={"fixture": "gptoss_moe_block"})


def load_fixture(path: str) -> MoeWeights:
    """Reads a GPT-OSS MoE layer: blocks [E, N, K/32, 16] are viewed as [E, N, K/2]."""
    with mxfp4.open(path) as f:
        def expert_weight(name: str) -> mxfp4.Mxfp4Weight:
            blocks = f.read(PREFIX + f"experts.{name}_blocks")
            blocks = blocks.reshape(*blocks.shape[:2], -1)
            return mxfp4.Mxfp4Weight.from_parts(blocks, f.read(PREFIX + f"experts.{name}_scales"),
                                                f.read(PREFIX + f"experts.{name}_bias"))

        return MoeWeights(f.read(PREFIX + "router.weight"), f.read(PREFIX + "router.bias"),
                          expert_weight("gate_up_proj"), expert_weight("down_proj"))


def to_torch(w: MoeWeights, device: str) -> MoeWeights:
    import torch

    return MoeWeights(torch.from_numpy(w.router_weight).to(device),
                      torch.from_numpy(w.router_bias).to(device), w.gate_up.to(device),
                      w.down.to(device))


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "gptoss_moe.safetensors")
        write_fixture(path)
        w = load_fixture(path)
    x = np.random.default_rng(1).standard_normal((6, w.gate_up.in_features)).astype(np.float32)
    ref = moe_block_float64(x, w)
    y = moe_block(x, w)
    err = np.abs(y - ref).max() / np.abs(ref).max()
    print(f"numpy CPU: output {y.shape}, max relative error vs float64: {err:.2e}")
    ok = err < 1e-4
    try:
        import torch
    except ImportError:
        print("torch not installed: CUDA run skipped")
        return 0 if ok else 1
    if torch.cuda.is_available() and mxfp4.cuda_built():
        yt = moe_block(torch.from_numpy(x).cuda(), to_torch(w, "cuda"))
        err_cuda = np.abs(yt.cpu().numpy() - ref).max() / np.abs(ref).max()
        print(f"torch CUDA: max relative error vs float64: {err_cuda:.2e}")
        ok = ok and err_cuda < 1e-3
    else:
        print("no CUDA GPU visible to torch, or mxfp4 built without CUDA: CUDA run skipped")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
