"""The exception classes the mxfp4 library raises.

Each carries the library's one-line message (the argument, what was expected, what was given)
and derives from both :class:`Error` and the built-in exception a Python caller would expect,
so ``except ValueError`` catches a shape mismatch as well as ``except mxfp4.ShapeMismatch``.
The classes are made from one table (their names, built-in bases and codes follow the C++
library's ErrorCode); ``_errors.pyi`` declares them for type checkers.
"""

from __future__ import annotations


class Error(Exception):
    """Base class of every error the mxfp4 library raises."""

    code: str = "error"


# name, built-in base, code (ErrorCode's name), docstring
_CLASSES: tuple[tuple[str, type[Exception], str, str], ...] = (
    ("InvalidArgument", ValueError, "invalid_argument",
     "A value outside its domain (unknown rule or device, absent tensor name, ...)."),
    ("ShapeMismatch", ValueError, "shape_mismatch",
     "A tensor's rank or dims disagree with what the call needs."),
    ("DTypeMismatch", TypeError, "dtype_mismatch",
     "A tensor's element type is not one the call accepts."),
    ("IndexOutOfRange", IndexError, "index_out_of_range", "An expert id outside [0, E)."),
    ("NonFiniteValue", ValueError, "non_finite", "NaN or Inf where a finite value is required."),
    ("FormatError", ValueError, "format_error", "A file does not follow its format."),
    ("IoError", OSError, "io_error", "The operating system refused a read, write or rename."),
    ("Unsupported", NotImplementedError, "unsupported",
     "A valid request this build or device cannot do (e.g. CUDA tensors without CUDA)."),
    ("DeviceError", RuntimeError, "device_error", "The CUDA runtime reported a failure."),
)

for _name, _base, _code, _doc in _CLASSES:
    globals()[_name] = type(
        _name, (Error, _base), {"__doc__": _doc, "__module__": __name__, "code": _code}
    )
del _name, _base, _code, _doc

__all__ = ["Error", *(entry[0] for entry in _CLASSES)]
