"""Read numpy arrays out of a pickle file WITHOUT unpickling it.

Some packages ship their example scans as a pickled ``dict`` of numpy arrays (``mdreg``'s
``VFA.pkl``). :mod:`pickle` would run whatever the file names, so this module never calls it:
:func:`read_pickled_arrays` walks the opcodes with :func:`pickletools.genops` (a pure parser)
and evaluates a closed subset itself: containers, strings, numbers, bytes, and only the numpy
constructors, rebuilt here from their arguments: ``numpy.dtype``, ``_frombuffer`` (an array from
raw bytes, how protocol 5 stores contiguous arrays), ``_reconstruct`` + state (protocols 3 and 4)
and ``scalar``. Instances of the allow-listed record classes of :data:`RECORDS` (plain
containers of arrays, e.g. ``vreg.vol.Volume3D``) come back as their state ``dict`` with the
class name under ``"__class__"``; the class itself is never imported. Anything else (another global, an object build, a persistent
id) is refused with a :class:`~mrprior.errors.DataError` naming the opcode or the callable.
"""

from __future__ import annotations

import pickletools
from pathlib import Path
from typing import Any

import numpy as np

from mrprior.errors import DataError

_MODULES = ("numpy", "numpy.core.numeric", "numpy._core.numeric", "numpy.core.multiarray",
            "numpy._core.multiarray")  # fmt: skip
_NAMES = {"dtype", "_frombuffer", "scalar", "_reconstruct", "ndarray"}

_PUSH = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINBYTES",
         "BINBYTES", "BINBYTES8", "BYTEARRAY8", "BININT", "BININT1", "BININT2", "LONG1",
         "LONG4", "BINFLOAT", "INT", "LONG", "FLOAT"}  # fmt: skip
_CONST = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_SKIP = {"PROTO", "FRAME", "MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT"}


#: classes whose instances are plain records of arrays: read as their state dict
RECORDS = {("vreg.vol", "Volume3D")}


class _Global:
    def __init__(self, module: str, name: str) -> None:
        self.record = (module, name) in RECORDS
        self.qualname = f"{module}.{name}"
        self.name = name
        if not self.record and (module not in _MODULES or name not in _NAMES):
            raise DataError(f"pickle refers to {module}.{name}: only numpy arrays are read")


class _Mark:
    pass


class _Record(dict):
    """An instance of a :data:`RECORDS` class: its state, and its class name under ``__class__``."""


class _EmptyArray:
    """``_reconstruct(ndarray, ...)``: an array whose shape, dtype and bytes the BUILD gives."""


def _array(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    if (
        not isinstance(dtype, np.dtype)
        or order not in ("C", "F")
        or not isinstance(buf, bytes | bytearray)
    ):
        raise DataError(f"pickled array of dtype {dtype!r}, order {order!r} not understood")
    n = int(np.prod(shape)) * dtype.itemsize
    if len(buf) != n:
        raise DataError(f"pickled array: {len(buf)} bytes for shape {shape} {dtype}")
    return np.frombuffer(bytes(buf), dtype).reshape(shape, order=order)


def _call(fn: _Global, args: tuple) -> Any:
    if fn.name == "dtype":
        return np.dtype(str(args[0]))
    if fn.name == "_frombuffer":
        return _array(*args)
    if fn.name == "_reconstruct":
        if not (isinstance(args[0], _Global) and args[0].name == "ndarray"):
            raise DataError("pickle reconstructs something other than a numpy array")
        return _EmptyArray()
    if fn.name == "scalar":
        dtype, raw = args
        return np.frombuffer(bytes(raw), dtype)[0]
    raise DataError(f"pickle calls numpy {fn.name}")


def _build(obj: Any, state: Any) -> Any:
    if isinstance(obj, _Record):
        if not isinstance(state, dict):
            raise DataError(f"{obj['__class__']} record with a {type(state).__name__} state")
        obj.update(state)  # in place: memo references stay the same object
        return obj
    if isinstance(obj, np.dtype) and isinstance(state, tuple) and len(state) > 1:
        return obj.newbyteorder(state[1]) if state[1] in "<>" else obj
    if isinstance(obj, _EmptyArray) and isinstance(state, tuple) and len(state) == 5:
        _, shape, dtype, fortran, raw = state
        return _array(raw, dtype, shape, "F" if fortran else "C")
    raise DataError(f"pickle builds a {type(obj).__name__} object: only numpy arrays are read")


def read_pickled_arrays(path: str | Path) -> Any:
    """The object a pickle of plain containers and numpy arrays encodes, never unpickling it.

    Parameters
    ----------
    path
        the pickle file.

    Returns
    -------
    object
        dicts, lists, tuples, strings, numbers and numpy arrays / scalars as in the file.

    Raises
    ------
    DataError
        malformed pickle, or one that names anything but the numpy array constructors.
    """
    data = Path(path).read_bytes()
    stack: list[Any] = []
    memo: list[Any] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            name = op.name
            if name in _PUSH:
                stack.append(arg)
            elif name in _CONST:
                stack.append(_CONST[name])
            elif name == "MARK":
                stack.append(_Mark())
            elif name in ("EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE"):
                stack.append({"EMPTY_DICT": {}, "EMPTY_LIST": [], "EMPTY_TUPLE": ()}[name])
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                k = int(name[-1])
                items = tuple(stack[-k:])
                del stack[-k:]
                stack.append(items)
            elif name in ("TUPLE", "SETITEMS", "APPENDS"):
                i = max(j for j, v in enumerate(stack) if isinstance(v, _Mark))
                items = stack[i + 1 :]
                del stack[i:]
                if name == "TUPLE":
                    stack.append(tuple(items))
                elif name == "SETITEMS":
                    stack[-1].update(zip(items[::2], items[1::2], strict=True))
                else:
                    stack[-1].extend(items)
            elif name == "SETITEM":
                value = stack.pop()
                key = stack.pop()
                stack[-1][key] = value
            elif name == "APPEND":
                value = stack.pop()
                stack[-1].append(value)
            elif name == "STACK_GLOBAL":
                qual = stack.pop()
                stack.append(_Global(stack.pop(), qual))
            elif name == "GLOBAL":
                module, qual = str(arg).split(" ", 1)
                stack.append(_Global(module, qual))
            elif name == "NEWOBJ":
                args = stack.pop()
                cls = stack.pop()
                if not (isinstance(cls, _Global) and cls.record) or args != ():
                    raise DataError(f"pickle creates a {getattr(cls, 'qualname', cls)!r} object")
                stack.append(_Record(__class__=cls.qualname))  # BUILD fills its state
            elif name == "REDUCE":
                args = stack.pop()
                fn = stack.pop()
                if not isinstance(fn, _Global) or fn.record:
                    raise DataError(f"pickle calls {getattr(fn, 'qualname', type(fn).__name__)}")
                stack.append(_call(fn, args))
            elif name == "BUILD":
                state = stack.pop()
                stack.append(_build(stack.pop(), state))
            elif name in _SKIP:
                if name == "MEMOIZE":
                    memo.append(stack[-1])
                elif name != "PROTO" and name != "FRAME":
                    memo.extend([None] * (int(arg) + 1 - len(memo)))
                    memo[int(arg)] = stack[-1]
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                stack.append(memo[int(arg)])
            elif name == "STOP":
                if len(stack) != 1:
                    raise DataError(f"{path}: malformed pickle (stack of {len(stack)} at STOP)")
                return stack[0]
            else:
                raise DataError(f"{path}: pickle opcode {name} is not read (numpy arrays only)")
    except DataError:
        raise
    except (ValueError, IndexError, TypeError, KeyError) as exc:
        raise DataError(f"{path}: malformed pickle: {exc}") from exc
    raise DataError(f"{path}: pickle ends without STOP")
