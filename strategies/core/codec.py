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
    shape, fortran_order, dtype = _NPY_HEADER_READERS[prefix[6]][1](io.BytesIO(prefix[8:]))
    if dtype.hasobject:
        raise ValueError("object arrays are not model parameters")
    return shape, fortran_order, dtype


def decode_tensors(tensors: Sequence[bytes]) -> list[Array]:
    """Read-only views of the ``.npy`` arrays in ``tensors`` (no copy); a ValueError otherwise."""
    try:
        return [_decode(tensor) for tensor in tensors]
    except ValueError:
        raise
    except Exception as err:  # numpy's parser raises all sorts on garbage: reject, do not crash
        raise ValueError(f"not .npy data ({type(err).__name__}: {err})") from err


def _decode(tensor: bytes) -> Array:
    if len(tensor) < 8 or tensor[:6] != b"\x93NUMPY":
        raise ValueError(f"not .npy data: no magic string (starts with {bytes(tensor[:8])!r})")
    if (reader := _NPY_HEADER_READERS.get(tensor[6])) is None:  # a rarer version: numpy copies it
        return np.asarray(np.load(io.BytesIO(tensor), allow_pickle=False))
    offset = 8 + reader[0] + int.from_bytes(tensor[8 : 8 + reader[0]], "little")
    shape, fortran_order, dtype = _npy_header(bytes(tensor[:offset]))
    flat = np.frombuffer(tensor, dtype=dtype, count=math.prod(shape), offset=offset)
    return flat.reshape(shape, order="F" if fortran_order else "C")


def encode_tensors(arrays: list[Array]) -> list[bytes]:
    """``arrays`` as the bytes ``np.save`` writes, emptying ``arrays`` as it goes (peak: the model
    plus one layer); a C-contiguous layer of a plain dtype is copied once (``np.save``: twice)."""
    tensors = []
    while arrays:
        array, buffer = arrays.pop(0), io.BytesIO()
        if array.flags.c_contiguous and array.dtype.kind in "biuf":
            npy.write_array_header_1_0(buffer, npy.header_data_from_array_1_0(array))
            tensors.append(b"".join((buffer.getvalue(), array.data)))
        else:
            np.save(buffer, array, allow_pickle=False)
            tensors.append(buffer.getvalue())
    return tensors
