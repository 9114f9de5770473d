"""llama.cpp's own Python package (`gguf` on PyPI) against our GGUF codec, both directions.

The C++ side is driven through tests/tools/gguf_tool (path in $MXFP4_GGUF_TOOL):
  gguf_tool write OUT.gguf DIR  -> a GGUF file from a fixed recipe + DIR/manifest.json + .f32 files
  gguf_tool read IN.gguf DIR    -> what our reader sees in any GGUF file, in the same form
"""

import json
import os
import subprocess

import numpy as np
import pytest

import gguf
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as VT
from gguf.quants import dequantize, quantize

TOOL = os.environ.get("MXFP4_GGUF_TOOL")

# Our value type names (gguf_value_type_name) -> gguf-py's enum.
VALUE_TYPES = {
    "uint8": VT.UINT8, "int8": VT.INT8, "uint16": VT.UINT16, "int16": VT.INT16,
    "uint32": VT.UINT32, "int32": VT.INT32, "float32": VT.FLOAT32, "bool": VT.BOOL,
    "string": VT.STRING, "array": VT.ARRAY, "uint64": VT.UINT64, "int64": VT.INT64,
    "float64": VT.FLOAT64,
}


def run_tool(*args):
    if not TOOL:
        pytest.fail("MXFP4_GGUF_TOOL is not set (run through ctest)")
    r = subprocess.run([TOOL, *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, f"gguf_tool {' '.join(map(str, args))} failed: {r.stderr}"


def load_manifest(folder):
    with open(folder / "manifest.json", encoding="utf-8") as f:
        return json.load(f)


def f32_values(entry):
    return np.fromfile(entry["values"], dtype=np.float32).reshape(entry["shape"])


def same_values(a, b):
    """Equal element by element (inf equals inf; +0 equals -0, as ggml has no -0 in MXFP4)."""
    return a.shape == b.shape and np.array_equal(a, b)


# gguf's MXFP4 decoding multiplies in f32 and warns where the top scales overflow to inf (as ours).
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_gguf_reads_what_we_write(tmp_path):
    path = tmp_path / "ours.gguf"
    run_tool("write", path, tmp_path)
    manifest = load_manifest(tmp_path)
    reader = gguf.GGUFReader(path)

    assert reader.alignment == manifest["alignment"]
    for key, want in manifest["metadata"].items():
        field = reader.fields[key]
        assert field.types[0] == VALUE_TYPES[want["type"]], key
        if want["type"] == "array":
            assert field.types[-1] == VALUE_TYPES[want["element_type"]], key
        got = field.contents()
        assert got == want["value"], f"{key}: gguf reads {got!r}, we wrote {want['value']!r}"

    assert [t.name for t in reader.tensors] == [e["name"] for e in manifest["tensors"]]
    mxfp4_blocks = 0
    for t, entry in zip(reader.tensors, manifest["tensors"]):
        assert Q(t.tensor_type).name.lower() == entry["type"], t.name
        # gguf-py lists dims as stored (innermost first); ours are row-major.
        assert list(reversed(t.shape.tolist())) == entry["shape"], t.name
        # gguf's own decoding (gguf.quants.dequantize, MXFP4 included) equals ours.
        theirs = dequantize(t.data, Q(t.tensor_type)).reshape(entry["shape"])
        ours = f32_values(entry)
        assert same_values(theirs, ours), f"{t.name}: gguf's decoding differs from ours"
        if entry["type"] == "mxfp4":
            mxfp4_blocks += t.n_elements // 32
    assert mxfp4_blocks == 6 * 2 + 3 * 4 * 3 + 16 * 8


def test_we_read_what_gguf_writes(tmp_path):
    rng = np.random.default_rng(5)
    path = tmp_path / "theirs.gguf"
    w = gguf.GGUFWriter(str(path), arch="from-gguf-py")
    w.add_uint32("t.u32", 77)
    w.add_int64("t.i64", -(2**40))
    w.add_float64("t.f64", 0.375)
    w.add_bool("t.bool", False)
    w.add_string("t.str", "h\u00e9llo")
    w.add_array("t.strs", ["x", "yz"])
    w.add_array("t.ints", [1, 2, 3])

    f32 = rng.normal(size=(3, 5)).astype(np.float32)
    f16 = rng.normal(size=(2, 4)).astype(np.float16)
    bf16_src = rng.normal(size=(7,)).astype(np.float32)
    bf16 = quantize(bf16_src, Q.BF16)
    dense_src = rng.normal(size=(6, 96)).astype(np.float32) * 3
    dense = quantize(dense_src, Q.MXFP4)
    experts_src = rng.normal(size=(2, 3, 64)).astype(np.float32) / 100
    experts = quantize(experts_src, Q.MXFP4)
    w.add_tensor("f32", f32)
    w.add_tensor("f16", f16)
    w.add_tensor("bf16", bf16, raw_dtype=Q.BF16)
    w.add_tensor("dense", dense, raw_dtype=Q.MXFP4)
    w.add_tensor("experts", experts, raw_dtype=Q.MXFP4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    run_tool("read", path, tmp_path)
    manifest = load_manifest(tmp_path)
    meta = manifest["metadata"]
    assert meta["general.architecture"] == {"type": "string", "value": "from-gguf-py"}
    assert meta["t.u32"] == {"type": "uint32", "value": 77}
    assert meta["t.i64"] == {"type": "int64", "value": -(2**40)}
    assert meta["t.f64"] == {"type": "float64", "value": 0.375}
    assert meta["t.bool"] == {"type": "bool", "value": False}
    assert meta["t.str"] == {"type": "string", "value": "h\u00e9llo"}
    assert meta["t.strs"]["element_type"] == "string"
    assert meta["t.strs"]["value"] == ["x", "yz"]
    assert meta["t.ints"]["value"] == [1, 2, 3]

    tensors = {e["name"]: e for e in manifest["tensors"]}
    expected = {
        "f32": ("f32", [3, 5], f32),
        "f16": ("f16", [2, 4], f16.astype(np.float32)),
        "bf16": ("bf16", [7], dequantize(bf16, Q.BF16)),
        "dense": ("mxfp4", [6, 96], dequantize(dense, Q.MXFP4)),
        "experts": ("mxfp4", [2, 3, 64], dequantize(experts, Q.MXFP4)),
    }
    assert set(tensors) == set(expected)
    for name, (typ, shape, values) in expected.items():
        entry = tensors[name]
        assert entry["type"] == typ, name
        assert entry["shape"] == shape, name
        assert same_values(f32_values(entry), values.reshape(shape)), f"{name}: values differ"
    # Sanity of the comparison itself: MXFP4 decoding is lossy, so the source differs.
    assert not np.array_equal(f32_values(tensors["dense"]), dense_src)
