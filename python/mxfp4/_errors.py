"""The exception classes the mxfp4 library raises.

Each carries the library's one-line message (the argument, what was expected, what was given)
and derives from both :class:`Error` and the built-in exception a Python caller would expect,
so ``except ValueError`` catches a shape mismatch as well as ``except mxfp4.ShapeMismatch``.
"""

from __future__ import annotations


class Error(Exception):
    """Base class of every error the mxfp4 library raises."""

    code: str = "error"


class InvalidArgument(Error, ValueError):
    """A value outside its domain (unknown rule or device, absent tensor name, ...)."""

    code = "invalid_argument"


class ShapeMismatch(Error, ValueError):
    """A tensor's rank or dims disagree with what the call needs."""

    code = "shape_mismatch"


class DTypeMismatch(Error, TypeError):
    """A tensor's element type is not one the call accepts."""

    code = "dtype_mismatch"


class IndexOutOfRange(Error, IndexError):
    """An expert id outside [0, E)."""

    code = "index_out_of_range"


class NonFiniteValue(Error, ValueError):
    """NaN or Inf where a finite value is required."""

    code = "non_finite"


class FormatError(Error, ValueError):
    """A file does not follow its format."""

    code = "format_error"


class IoError(Error, OSError):
    """The operating system refused a read, write or rename."""

    code = "io_error"


class Unsupported(Error, NotImplementedError):
    """A valid request this build or device cannot do (e.g. CUDA tensors without CUDA)."""

    code = "unsupported"


class DeviceError(Error, RuntimeError):
    """The CUDA runtime reported a failure."""

    code = "device_error"


__all__ = [
    "Error",
    "InvalidArgument",
    "ShapeMismatch",
    "DTypeMismatch",
    "IndexOutOfRange",
    "NonFiniteValue",
    "FormatError",
    "IoError",
    "Unsupported",
    "DeviceError",
]
