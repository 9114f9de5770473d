# The official Hugging Face `safetensors` package against our files, both ways: it reads every
# dtype we write (dense copies of its own files, MXFP4 blocks and scales, dequantized f32 / bf16 /
# f16, shards with an index), and we read every dtype it writes. MXFP4 values are checked against a
# numpy dequantization written here from the format's definition, not from our code.
import json
import os

import ml_dtypes
import numpy as np
import pytest
import safetensors
from safetensors import safe_open

# Every dtype name of the format with the numpy dtype that holds its bytes and the one that
# gives values (None: compared as bytes only).
DTYPES = {
    "BOOL": ("bool", np.bool_, np.bool_),
    "U8": ("uint8", np.uint8, np.uint8),
    "I8": ("int8", np.int8, np.int8),
    "I16": ("int16", np.int16, np.int16),
    "U16": ("uint16", np.uint16, np.uint16),
    "F16": ("float16", np.float16, np.float16),
    "BF16": ("bfloat16", np.uint16, ml_dtypes.bfloat16),
    "I32": ("int32", np.int32, np.int32),
    "U32": ("uint32", np.uint32, np.uint32),
    "F32": ("float32", np.float32, np.float32),
    "F64": ("float64", np.float64, np.float64),
    "I64": ("int64", np.int64, np.int64),
    "U64": ("uint64", np.uint64, np.uint64),
    "F8_E4M3": ("float8_e4m3fn", np.uint8, ml_dtypes.float8_e4m3fn),
    "F8_E5M2": ("float8_e5m2", np.uint8, ml_dtypes.float8_e5m2),
    "F8_E8M0": ("float8_e8m0fnu", np.uint8, None),
    "F4": ("float4_e2m1fn_x2", np.uint8, None),
}

E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float64)


def hf_write(path, tensors, metadata=None):
    """Writes {name: (dtype, shape, bytes)} with the official serializer."""
    keep = []
    specs = {}
    for name, (dtype, shape, data) in tensors.items():
        buf = np.frombuffer(bytes(data), np.uint8).copy() if data else np.zeros(1, np.uint8)
        keep.append(buf)
        if hasattr(safetensors, "TensorSpec"):
            # The F4 spec takes the storage shape (bytes) and doubles the last dim itself.
            spec_shape = list(shape[:-1]) + [shape[-1] // 2] if dtype == "F4" else list(shape)
            specs[name] = safetensors.TensorSpec(
                dtype=DTYPES[dtype][0], shape=spec_shape, data_ptr=buf.ctypes.data, data_len=len(data)
            )
        else:
            specs[name] = {"dtype": dtype, "shape": list(shape), "data": bytes(data)}
    safetensors.serialize_file(specs, str(path), metadata=metadata)
    del keep


def hf_read(path):
    """{name: (dtype, shape, bytes)} through the official deserializer."""
    with open(path, "rb") as f:
        return {n: (v["dtype"], list(v["shape"]), bytes(v["data"])) for n, v in safetensors.deserialize(f.read())}


def hf_metadata(path):
    with safe_open(str(path), framework="numpy") as f:
        return f.metadata() or {}


def values(entry):
    dtype, shape, data = entry
    _, storage, view = DTYPES[dtype]
    return np.frombuffer(data, storage).view(view).reshape(shape)


def dequantize(blocks, scales):
    """MXFP4 by definition: element 2j in the low nibble of byte j, times 2^(scale - 127)."""
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(*blocks.shape[:-1], -1)
    v = E2M1[codes].reshape(*scales.shape, 32)
    s = np.ldexp(1.0, scales.astype(np.int64) - 127)[..., None]
    s = np.where(scales[..., None] == 0xFF, np.nan, s)
    return (v * s).reshape(*blocks.shape[:-1], -1)


def test_we_read_every_dtype_hf_writes_and_hf_reads_our_copy(tmp_path, run):
    rng = np.random.default_rng(1)
    tensors = {}
    for i, dtype in enumerate(DTYPES):
        shape = [3, 4] if dtype != "F4" else [3, 8]
        nbytes = int(np.prod(shape)) * (np.dtype(DTYPES[dtype][1]).itemsize if dtype != "F4" else 1)
        if dtype == "F4":
            nbytes //= 2
        data = rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes()
        if dtype == "BOOL":
            data = bytes(b & 1 for b in data)
        tensors[f"t{i}.{dtype.lower()}"] = (dtype, shape, data)
    src = tmp_path / "hf.safetensors"
    hf_write(src, tensors, metadata={"format": "np", "origin": "hf"})

    inspected = json.loads(run("inspect", src, "--json").stdout)
    by_name = {t["name"]: t for t in inspected["tensors"]}
    assert set(by_name) == set(tensors)
    for name, (dtype, shape, data) in tensors.items():
        assert by_name[name]["dtype"] == dtype
        assert by_name[name]["shape"] == shape
        assert by_name[name]["bytes"] == len(data)
    assert inspected["metadata"] == {"format": "np", "origin": "hf"}

    # Our writer's copy, read back by the official reader: same dtypes, shapes, bytes, metadata.
    ours = tmp_path / "ours.safetensors"
    run("convert", src, ours, "--to", "linear")
    back = hf_read(ours)
    assert back == tensors
    assert hf_metadata(ours) == {"format": "np", "origin": "hf"}
    for name, entry in back.items():
        if DTYPES[entry[0]][2] is not None:
            np.testing.assert_array_equal(values(entry), values(tensors[name]))


@pytest.mark.parametrize("layout", ["linear", "gptoss"])
def test_hf_reads_quantized_checkpoints_and_their_dequantization(tmp_path, run, layout):
    ex = tmp_path / "example.safetensors"
    q = tmp_path / "q.safetensors"
    run("example", ex)
    run("quantize", ex, q, "--layout", layout)
    src = hf_read(ex)
    got = hf_read(q)
    sep = "." if layout == "linear" else "_"
    for prefix, e in [("layers.0.mlp.up", None), ("layers.0.mlp.down", None), ("experts", 4)]:
        dtype, shape, data = got[prefix + sep + "blocks"]
        assert dtype == "U8"
        blocks = np.frombuffer(data, np.uint8).reshape(shape)
        if layout == "gptoss":
            assert shape[-1] == 16
            blocks = blocks.reshape(*shape[:-2], -1)
        sdtype, sshape, sdata = got[prefix + sep + "scales"]
        scales = np.frombuffer(sdata, np.uint8).reshape(sshape)
        mine = dequantize(blocks, scales)
        weight = values(src[prefix + ".weight"]).astype(np.float64)
        assert mine.shape == weight.shape
        # An MXFP4 element is within half a step of the source (steps are at most 2 units of the
        # block's scale, saturating at 6 * scale).
        scale = np.ldexp(1.0, scales.astype(np.int64) - 127).repeat(32, axis=-1)
        assert np.all(np.abs(mine - weight) <= scale * 1.0 + np.maximum(np.abs(weight) - 6 * scale, 0))
        assert got[prefix + sep + "bias"] == src[prefix + ".bias"]
        for out_dtype, np_dtype in [("f32", np.float32), ("bf16", ml_dtypes.bfloat16), ("f16", np.float16)]:
            d = tmp_path / f"d_{layout}_{out_dtype}.safetensors"
            if not d.exists():
                run("dequantize", q, d, "--dtype", out_dtype)
            entry = hf_read(d)[prefix + ".weight"]
            assert entry[0] == {"f32": "F32", "bf16": "BF16", "f16": "F16"}[out_dtype]
            np.testing.assert_array_equal(values(entry), mine.astype(np_dtype))
    # Tensors that were not quantized are byte-identical.
    for name in ["norm.weight", "embed.weight", "position_ids"]:
        assert got[name] == src[name]


def test_hf_reads_our_shards_through_the_index(tmp_path, run):
    ex = tmp_path / "example.safetensors"
    run("example", ex)
    out = tmp_path / "sharded"
    run("quantize", ex, out, "--max-shard-size", "40kB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1
    merged = {}
    for f in files:
        with safe_open(str(out / f), framework="numpy") as h:
            for k in h.keys():
                assert index["weight_map"][k] == f
        merged.update(hf_read(out / f))
        assert os.path.getsize(out / f) < 40_000 + 4096  # data at most 40 kB, plus the header
    assert set(merged) == set(index["weight_map"])
    single = tmp_path / "single.safetensors"
    run("quantize", ex, single)
    assert hf_read(single) == merged
