"""
Bindings of the mxfp4 C++ library (use the mxfp4 package, not this module).
"""

import enum
from typing import Any, Literal, Sequence, TypeVar

import numpy

#: Arrays the library takes: numpy arrays and DLPack tensors (torch.Tensor, ...).
Array = Any
_A = TypeVar("_A")

__version__: str


def cuda_built() -> bool:
    """True when this build of the library has its CUDA backend."""

def cuda_device_count() -> int:
    """
    Number of usable CUDA devices (0 without the CUDA backend, a driver or a GPU).
    """

def synchronize(stream: int | None = None) -> None:
    """Waits for the work enqueued on a CUDA stream (None: default)."""

def set_num_threads(n: int) -> None:
    """
    Threads a CPU call uses, the caller included (0: the CPUs this process may use).
    """

def num_threads() -> int:
    """Threads a CPU call uses now."""

class ScaleRule(enum.Enum):
    """How the shared E8M0 scale of a 32-element block is chosen."""

    floor = 0
    """OCP spec: floor(log2 amax) - 2; saturates."""

    ceil = 1
    """NVIDIA/triton: ceil(log2(amax / 6))."""

    even = 2
    """torchao EVEN."""

    mse = 3
    """
    ceil exponent or one below, whichever has the smaller error (the default).
    """

    mistralrs = 4
    """mistral.rs 0.8.1's clipping rule, only to reproduce its bytes."""

class NonFinitePolicy(enum.Enum):
    """What quantize does with NaN or Inf."""

    error = 0
    """Raise NonFiniteValue (the default)."""

    nan_block = 1
    """Code the block with scale 0xFF, which decodes as NaN."""

class BlockLayout(enum.Enum):
    """
    How a weight's blocks hold their codes (only the bits inside a
    16-byte block move).
    """

    standard = 0
    """
    Element 2j in the low nibble of byte j: what files hold and every backend reads.
    """

    gpu = 1
    """
    The CUDA kernels' own layout (optional, made with Mxfp4Weight.with_layout): only
    the CUDA backend reads it; CPU linear refuses it. Needs every scale at most 128.
    """

class Mxfp4Weight:
    """
    An MXFP4 weight: a dense matrix [N, K] or a stack of experts [E, N, K],
    stored as blocks u8 [.., N, K/2], scales u8 [.., N, K/32] and an optional
    bias [N] or [E, N]. Create it with Mxfp4Weight.quantize, Mxfp4Weight.from_parts
    or File.load_weight.
    """

    @staticmethod
    def quantize(weight: Array, bias: Array | None = None, *, rule: ScaleRule = ScaleRule.mse, non_finite: NonFinitePolicy = NonFinitePolicy.error, stream: int | None = None) -> Mxfp4Weight:
        """
        Quantizes weight (f32/f16/bf16 [N, K] or [E, N, K], K a multiple of 32).
        bias (optional, [N] or [E, N]) is copied. The weight lives on the input's device.
        """

    @staticmethod
    def quantize_gptq(weight: Array, hessian: Hessian | Array | Sequence[Hessian | Array], bias: Array | None = None, *, rule: ScaleRule = ScaleRule.mse, damp: float = 0.01, refine_sweeps: int = 0) -> Mxfp4Weight:
        """
        Quantizes weight (f32/f16/bf16 [N, K] on the CPU, K a multiple of 32) with
        GPTQ error correction: each column's rounding error moves onto the columns
        not yet quantized so that x W^T changes least on the calibration inputs.
        hessian: a Hessian accumulated from the layer's inputs, or an array X^T X
        [K, K] (float32 or float64); for a stack of experts [E, N, K], a list of E
        of them (each expert's own inputs). Each 32-column block's scale is chosen
        by rule from the error-updated weights. damp * mean(diag H) is added to H's
        diagonal (0.01, GPTQ's default). bias (optional, [N] or [E, N]) is copied.
        A diagonal H gives exactly Mxfp4Weight.quantize's result.
        refine_sweeps (0 to 1000, default 0): after GPTQ, up to this many sweeps of
        coordinate descent on the codes, scales kept: each weight moves to a
        neighbouring E2M1 value when that lowers tr((Q - W) H (Q - W)^T).
        """

    @staticmethod
    def from_parts(blocks: Array, scales: Array, bias: Array | None = None) -> Mxfp4Weight:
        """
        A weight viewing existing parts (no copy; the arrays are kept alive):
        blocks u8 [.., N, K/2], scales u8 [.., N, K/32], bias [N] / [E, N] or None.
        """

    @property
    def stacked(self) -> bool:
        """True for a stack of experts [E, N, K]."""

    @property
    def num_experts(self) -> int:
        """E (1 for a dense weight)."""

    @property
    def out_features(self) -> int:
        """N."""

    @property
    def in_features(self) -> int:
        """K."""

    @property
    def device(self) -> str:
        """'cpu' or 'cuda:N'."""

    @property
    def blocks(self) -> Array:
        """
        The packed E2M1 codes, u8 [.., N, K/2], in the weight's layout (a view of the
        weight's storage).
        """

    @property
    def scales(self) -> Array:
        """The E8M0 scales, u8 [.., N, K/32] (a view of the weight's storage)."""

    @property
    def bias(self) -> Array | None:
        """The bias, or None."""

    def dequantize(self, dtype: str | Any | None = None, *, out: Array | None = None, stream: int | None = None) -> Array:
        """
        The full weight [N, K] or [E, N, K] in dtype 'f32' (default), 'f16' or 'bf16'
        (exact in f32 and bf16), or written into out.
        """

    @property
    def layout(self) -> BlockLayout:
        """The BlockLayout of blocks (standard unless made with with_layout)."""

    def to(self, device: str) -> Mxfp4Weight:
        """
        A copy of the weight on device ('cpu', 'cuda', 'cuda:N'), in the same layout.
        """

    def with_layout(self, layout: BlockLayout) -> Mxfp4Weight:
        """
        This weight with its blocks in layout (a BlockLayout): new blocks converted block
        by block, scales and bias shared (everything shared when already in it).
        BlockLayout.gpu is an optional re-layout for the CUDA kernels; it needs every
        scale at most 128 (InvalidArgument names the first block above). Files always
        hold the standard layout: saving converts.
        """

    def __repr__(self) -> str: ...

class Hessian:
    """
    The sum of x^T x over a layer's calibration inputs x (rows are samples), [K, K] in
    float64: what Mxfp4Weight.quantize_gptq needs. Stream batches with add().
    """

    def __init__(self, in_features: int) -> None:
        """An all-zero Hessian for K inputs."""

    @staticmethod
    def from_array(hessian: Array) -> Hessian:
        """A Hessian holding an existing matrix [K, K] (float32 or float64)."""

    def add(self, activations: Array) -> None:
        """
        Adds x^T x for activations f32/f16/bf16 [..., K] (CPU); every row is a sample.
        """

    @property
    def in_features(self) -> int:
        """K."""

    @property
    def samples(self) -> int:
        """Rows added so far."""

    def numpy(self) -> numpy.ndarray:
        """The matrix as a new float64 numpy array [K, K]."""

    def __repr__(self) -> str: ...

def hessian(activations: Array) -> Hessian:
    """
    Hessian(K) with activations [..., K] added: x^T x over its rows, float64.
    """

def quantize(weight: _A, *, rule: ScaleRule = ScaleRule.mse, non_finite: NonFinitePolicy = NonFinitePolicy.error, out: tuple[Array, Array] | None = None, stream: int | None = None) -> tuple[_A, _A]:
    """
    weight f32/f16/bf16 [.., N, K] -> (blocks u8 [.., N, K/2], scales u8 [.., N, K/32]),
    new arrays or written into out=(blocks, scales).
    """

def dequantize(weight: Mxfp4Weight, dtype: str | Any | None = None, *, out: Array | None = None, stream: int | None = None) -> Array:
    """The same as weight.dequantize(dtype, out=out)."""

def linear(x: _A, weight: Mxfp4Weight, *, out: _A | None = None, stream: int | None = None, precision: Literal['exact', 'int8_activations'] = 'exact', workspace: Array | None = None) -> _A:
    """
    x [..., K] -> x W^T + bias [..., N] in x's dtype, for a dense weight; accumulates
    in f32. Returns a new array of x's framework, or writes into out.
    precision='int8_activations' rounds each 32-element block of x to int8 (CPU only,
    faster for few rows; error bounded by max|x_block|/254 * sum|w| per block);
    'exact' (default) uses x as given. workspace: an array on the weight's device (CUDA)
    of at least linear_workspace_bytes() bytes lent as scratch, so the call allocates
    nothing; CPU calls ignore it.
    """

def linear_workspace_bytes() -> int:
    """
    Bytes of workspace with which a CUDA linear on the current device never allocates:
    131076 per SM where the Hopper GEMM runs (stream-K's partial sums, for some bf16
    batches of more than 128 tokens), 0 elsewhere and in builds without CUDA.
    """

def rotate_blocks(x: _A, *, out: _A | None = None) -> _A:
    """
    x f32/f16/bf16 [..., K] (CPU, K a multiple of 32) -> x R in x's dtype: each 32-element
    block of every row times the normalized 32x32 Sylvester Hadamard matrix H (H = H^T =
    H^-1, entries +-1/sqrt(32)), computed in float64 and rounded once. Quantize
    rotate_blocks(W) and call linear(rotate_blocks(x), weight) to compute x W^T with the
    rotated weight; for GPTQ, take the Hessian of rotate_blocks(x). out may be x itself.
    """

def gather_linear(x: _A, indices: Array, weight: Mxfp4Weight, *, out: _A | None = None, stream: int | None = None, precision: Literal['exact', 'int8_activations'] = 'exact', workspace: Array | None = None) -> _A:
    """
    Mixture of experts: out[t, s] = x_row W[e]^T + bias[e], e = indices[t, s], for a
    stacked weight [E, N, K]. x is [T, K] (every slot uses row t) or [T, topk, K];
    indices u32/i32/i64 [T, topk] in [0, E). Output [T, topk, N] in x's dtype.
    precision: as for linear. workspace: an array on the weight's device (CUDA) of at
    least gather_linear_workspace_bytes(T, topk, E) bytes lent as scratch, so the call
    allocates nothing; CPU calls ignore it.
    """

def gather_linear_expert_order(x: _A, indices: Array, weight: Mxfp4Weight, *, out: _A | None = None, perm: Array | None = None, offsets: Array | None = None, stream: int | None = None, precision: Literal['exact', 'int8_activations'] = 'exact', workspace: Array | None = None) -> tuple[_A, Array, Array]:
    """
    gather_linear with its output in expert order, for fused pipelines. Returns
    (out, perm, offsets), new arrays of x's framework, or the arrays given as out=,
    perm= and offsets= (all three or none) written in place. Pair t * topk + s is
    (token t, slot s). out [T * topk, N] in x's dtype: row p is the result of pair
    perm[p]. perm int32 [T * topk]: the pairs grouped by expert in ascending id (the CPU
    keeps ascending pair order within an expert; CUDA may not). offsets int32 [E + 1]:
    expert e's rows are offsets[e]:offsets[e + 1]. x, indices, precision and workspace
    as for gather_linear.
    """

def gather_linear_workspace_bytes(tokens: int, topk: int, experts: int, k: int = 0) -> int:
    """
    Bytes of workspace a CUDA gather_linear of tokens x topk pairs over experts experts
    uses (0 for small batches). With the weight's k: also room to stage 16-bit x rows in
    expert order, which makes the Hopper GEMM for prefill faster.
    """

class TensorInfo:
    """A tensor as a file lists it."""

    @property
    def name(self) -> str: ...

    @property
    def dtype(self) -> str | None:
        """mxfp4's dtype name ('f32', 'u8', ...) or None when it has none."""

    @property
    def file_dtype(self) -> str:
        """The file's own dtype name ('F32', ...)."""

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape, a tuple."""

    @property
    def nbytes(self) -> int: ...

    def __repr__(self) -> str: ...

class File:
    """
    An opened file (safetensors, gguf, uqff1, gptoss or uqff-legacy); read-only.
    MXFP4 weights are listed as P.blocks, P.scales and P.bias in every format.
    """

    @staticmethod
    def open(path: str, format: str = 'auto') -> File:
        """
        Opens and validates path in format: 'auto' (gguf or uqff1 by the contents,
        else safetensors), 'safetensors', 'gguf', 'uqff1', 'gptoss' or 'uqff-legacy'.
        """

    @property
    def path(self) -> str:
        """The file's path."""

    @property
    def format(self) -> str:
        """The file's format ('safetensors', 'gguf', 'uqff1', 'gptoss', 'uqff-legacy')."""

    @property
    def tensors(self) -> list[TensorInfo]:
        """The tensors, in file order."""

    @property
    def metadata(self) -> dict[str, str]:
        """The file's string metadata."""

    @property
    def weight_names(self) -> list[str]:
        """
        Prefixes P of the MXFP4 weights (P.blocks + P.scales [+ P.bias]), in file order.
        """

    def read(self, name: str) -> numpy.ndarray:
        """Tensor name as a new numpy array."""

    def load_weight(self, prefix: str, device: str = 'cpu') -> Mxfp4Weight:
        """
        The MXFP4 weight prefix (prefix.blocks, prefix.scales, prefix.bias if present)
        on device.
        """

    def close(self) -> None:
        """Releases the file; loaded weights and read arrays stay valid."""

    def __enter__(self) -> File: ...

    def __exit__(self, type: object | None, value: object | None, traceback: object | None) -> bool: ...

def save(path: str, tensors: dict[str, Array | Mxfp4Weight], metadata: dict[str, str] | None = None, format: str = 'auto') -> int:
    """
    Writes tensors (a dict: name -> array, or prefix -> Mxfp4Weight, written as
    prefix.blocks, prefix.scales and prefix.bias) and string metadata to path, atomically,
    in format: 'auto' (from the extension: .safetensors, .gguf, .uqff = uqff1),
    'safetensors', 'gguf', 'uqff1', 'gptoss' or 'uqff-legacy' (MXFP4 weights only).
    Returns the file's size in bytes.
    """
