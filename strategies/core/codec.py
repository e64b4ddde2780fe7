"""Model layers on the wire: each one the bytes ``np.save`` writes, read without a copy."""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.lib import format as npy

from strategies.aggregate import Array

# .npy major version -> (size of its header-length field, its header reader)
_NPY_HEADER_READERS = {1: (2, npy.read_array_header_1_0), 2: (4, npy.read_array_header_2_0)}


@functools.lru_cache(maxsize=1024)  # every client sends the same layout: parse each header once
def _npy_header(prefix: bytes) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """Shape, Fortran order and dtype of an ``.npy`` header."""
    stream = io.BytesIO(prefix)
    major, _ = npy.read_magic(stream)
    shape, fortran_order, dtype = _NPY_HEADER_READERS[major][1](stream)
    if dtype.hasobject:
        raise ValueError("object arrays are not model parameters")
    return shape, fortran_order, dtype


def decode_tensors(tensors: Sequence[bytes]) -> list[Array]:
    """Read-only views of the ``.npy`` arrays in ``tensors``, without copying their bytes; a
    ValueError for anything else (a bad reply must be rejected, not crash the round)."""
    try:
        return [_decode(tensor) for tensor in tensors]
    except ValueError:
        raise
    except Exception as err:  # numpy's header parser raises all sorts on garbage
        raise ValueError(f"not .npy data ({type(err).__name__}: {err})") from err


def _decode(tensor: bytes) -> Array:
    if len(tensor) < 8 or tensor[:6] != b"\x93NUMPY":
        raise ValueError(f"not .npy data: no magic string (starts with {bytes(tensor[:8])!r})")
    reader = _NPY_HEADER_READERS.get(tensor[6])
    if reader is None:  # a rarer .npy version: numpy parses (and copies) it
        return np.asarray(np.load(io.BytesIO(tensor), allow_pickle=False))
    offset = 8 + reader[0] + int.from_bytes(tensor[8 : 8 + reader[0]], "little")
    shape, fortran_order, dtype = _npy_header(bytes(tensor[:offset]))
    flat = np.frombuffer(tensor, dtype=dtype, count=math.prod(shape), offset=offset)
    return flat.reshape(shape, order="F" if fortran_order else "C")


def encode_tensors(arrays: list[Array]) -> list[bytes]:
    """``arrays`` as ``.npy`` bytes, byte for byte what ``np.save`` writes, emptying ``arrays``
    as it goes (peak: the model plus one layer). A C-contiguous layer of a plain dtype (whose
    header fits format 1.0, as in ``np.save``) is copied once, not twice as by ``np.save``."""
    tensors = []
    while arrays:
        array = arrays.pop(0)
        buffer = io.BytesIO()
        if array.flags.c_contiguous and array.dtype.kind in "biuf":
            npy.write_array_header_1_0(buffer, npy.header_data_from_array_1_0(array))
            tensors.append(b"".join((buffer.getvalue(), array.data)))
        else:
            np.save(buffer, array, allow_pickle=False)
            tensors.append(buffer.getvalue())
    return tensors
