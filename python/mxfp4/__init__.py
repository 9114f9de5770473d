"""mxfp4: MXFP4 (OCP Microscaling FP4) weights for numpy and PyTorch.

32 E2M1 values share one E8M0 power-of-two scale: 4.25 bits per weight. This package is the
Python front end of the mxfp4 C++ library, with the same names:

>>> import numpy as np, mxfp4
>>> w = mxfp4.Mxfp4Weight.quantize(np.random.randn(64, 128).astype(np.float32))
>>> y = mxfp4.linear(np.ones((4, 128), np.float32), w)        # x W^T (+ bias), shape (4, 64)
>>> experts = mxfp4.Mxfp4Weight.quantize(np.random.randn(8, 64, 128).astype(np.float32))
>>> ids = np.array([[0, 3], [7, 1]], np.int32)
>>> z = mxfp4.gather_linear(np.ones((2, 128), np.float32), ids, experts)   # (2, 2, 64)

Arrays: numpy arrays (bf16 as ``ml_dtypes.bfloat16``) and any DLPack tensor, PyTorch CPU and
CUDA tensors included; inputs are viewed, never copied (non-contiguous ones are made
contiguous first). Results come back in the input's framework: numpy for numpy, torch for
torch (on the input's device). Operations on CUDA tensors run on PyTorch's current stream
unless ``stream=`` names a ``cudaStream_t`` (as an int).

Errors: the classes of :mod:`mxfp4._errors` (re-exported here), carrying the library's
messages.

Data-aware quantization: :meth:`Mxfp4Weight.quantize_gptq` (GPTQ) takes a :class:`Hessian`
accumulated from a layer's calibration inputs (:func:`hessian`, ``Hessian.add``);
:func:`rotate_blocks` (a Hadamard transform of each 32-element block) lets it work on the
rotated problem ``(x R)(W R)^T``.

Files: :func:`open` lists the tensors and MXFP4 weights of a file and loads them;
:func:`save` writes arrays and weights. Formats: safetensors, gguf, uqff1 (mistral.rs UQFF 1.x),
gptoss (GPT-OSS safetensors) and uqff-legacy (UQFF 0.2.0 blobs); MXFP4 weights appear as
``P.blocks``, ``P.scales`` and ``P.bias`` in all of them.
"""

from __future__ import annotations

from ._errors import (
    DeviceError,
    DTypeMismatch,
    Error,
    FormatError,
    IndexOutOfRange,
    InvalidArgument,
    IoError,
    NonFiniteValue,
    ShapeMismatch,
    Unsupported,
)
from ._mxfp4 import (
    BlockLayout,
    File,
    Hessian,
    Mxfp4Weight,
    NonFinitePolicy,
    ScaleRule,
    TensorInfo,
    __version__,
    cuda_built,
    cuda_device_count,
    dequantize,
    gather_linear,
    gather_linear_expert_order,
    gather_linear_workspace_bytes,
    hessian,
    linear,
    linear_workspace_bytes,
    num_threads,
    quantize,
    rotate_blocks,
    save,
    set_num_threads,
    synchronize,
)

#: The scale rule quantize uses unless told otherwise (the lowest measured error).
DEFAULT_SCALE_RULE = ScaleRule.mse


def open(path: str, format: str = "auto") -> File:  # noqa: A001 - the name users expect
    """Opens and validates a file of tensors; use it as a context manager. ``format="auto"``
    reads GGUF and UQFF 1.x by their contents and anything else as safetensors; name
    ``"gptoss"`` or ``"uqff-legacy"`` to see those files' weights as ``P.blocks``/``P.scales``.

    >>> with mxfp4.open("model.safetensors") as f:
    ...     w = f.load_weight(f.weight_names[0])
    """
    return File.open(path, format)


__all__ = [
    "BlockLayout",
    "DEFAULT_SCALE_RULE",
    "DeviceError",
    "DTypeMismatch",
    "Error",
    "File",
    "FormatError",
    "Hessian",
    "IndexOutOfRange",
    "InvalidArgument",
    "IoError",
    "Mxfp4Weight",
    "NonFinitePolicy",
    "NonFiniteValue",
    "ScaleRule",
    "ShapeMismatch",
    "TensorInfo",
    "Unsupported",
    "__version__",
    "cuda_built",
    "cuda_device_count",
    "dequantize",
    "gather_linear",
    "gather_linear_expert_order",
    "gather_linear_workspace_bytes",
    "hessian",
    "linear",
    "linear_workspace_bytes",
    "num_threads",
    "open",
    "quantize",
    "rotate_blocks",
    "save",
    "set_num_threads",
    "synchronize",
]
