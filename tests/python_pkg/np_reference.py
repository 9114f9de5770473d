"""Independent numpy definitions of MXFP4 (FORMATS.md section 1) that the tests compare with."""

from __future__ import annotations

import numpy as np

E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                 -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype=np.float64)


def decode(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """blocks u8 [.., N, K/2] and scales u8 [.., N, K/32] -> float64 [.., N, K]."""
    lo = blocks & 0x0F
    hi = blocks >> 4
    codes = np.stack([lo, hi], axis=-1).reshape(*blocks.shape[:-1], blocks.shape[-1] * 2)
    values = E2M1[codes]
    k = codes.shape[-1]
    scale = np.ldexp(1.0, scales.astype(np.int64) - 127)  # 0xFF is NaN in the spec
    scale = np.where(scales == 0xFF, np.nan, scale)
    return values * np.repeat(scale, 32, axis=-1)[..., :k]


def _round_e2m1(v: np.ndarray) -> np.ndarray:
    """Codes of the nearest E2M1 values to v (already divided by the scale), ties to the even
    code, saturating at +/-6."""
    mags = E2M1[:8]
    a = np.abs(v)[..., None]
    dist = np.abs(a - mags)
    best = dist.min(axis=-1, keepdims=True)
    candidates = dist == best
    # Among equally near codes prefer the even one (ties to even mantissa).
    even = candidates & (np.arange(8) % 2 == 0)
    code = np.where(even.any(axis=-1), even.argmax(axis=-1), candidates.argmax(axis=-1))
    code = np.where(np.abs(v) >= 6.0, 7, code)
    return (code + np.where(np.signbit(v), 8, 0)).astype(np.uint8)


def quantize_ceil(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The `ceil` rule (NVIDIA, triton_kernels) for finite f32 input [.., N, K]: e = ceil(log2(amax
    / 6)) computed exactly, all-zero blocks get scale 127."""
    w = w.astype(np.float64)
    k = w.shape[-1]
    blocks_in = w.reshape(*w.shape[:-1], k // 32, 32)
    amax = np.abs(blocks_in).max(axis=-1)
    mant, exp = np.frexp(np.where(amax > 0, amax, 1.0))  # amax = mant * 2^exp, mant in [0.5, 1)
    fl = exp - 1  # floor(log2 amax)
    e = np.where(mant * 2 <= 1.5, fl - 2, fl - 1)
    e = np.clip(e, -127, 127)
    e = np.where(amax > 0, e, 0)
    scaled = blocks_in / np.ldexp(1.0, e)[..., None]
    codes = _round_e2m1(scaled).reshape(*w.shape[:-1], k)
    packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
    return packed, (e + 127).astype(np.uint8)
