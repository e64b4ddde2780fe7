"""Model layers on the wire: the ``.npy`` bytes both Flower halves carry, read without a copy.

Legacy ``Parameters.tensors`` and Message-API ``Array.data`` both hold each layer as the
bytes ``np.save`` writes.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from strategies.aggregate import Array

_NPY_MAGIC = b"\x93NUMPY"
# .npy major version -> (header length field size, reader); the header follows the field.
_NPY_HEADER_READERS = {
    1: (2, np.lib.format.read_array_header_1_0),
    2: (4, np.lib.format.read_array_header_2_0),
}


@functools.lru_cache(maxsize=1024)
def _npy_header(prefix: bytes) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """Shape, Fortran order and dtype of an ``.npy`` header.

    Every client sends the same model layout, so a round parses each distinct header
    once instead of once per client and layer.
    """
    stream = io.BytesIO(prefix)
    major, _ = np.lib.format.read_magic(stream)
    shape, fortran_order, dtype = _NPY_HEADER_READERS[major][1](stream)
    if dtype.hasobject:
        raise ValueError("object arrays are not model parameters")
    return shape, fortran_order, dtype


def decode_tensors(tensors: Sequence[bytes]) -> list[Array]:
    """Read-only views of the ``.npy`` arrays in ``tensors``, without copying their bytes.

    Raises ValueError for anything that is not a plain ``.npy`` array (whatever numpy's
    header parser raises on garbage: a bad reply must be rejected, not crash the round).
    """
    try:
        return _decode(tensors)
    except ValueError:
        raise
    except Exception as err:
        raise ValueError(f"not .npy data ({type(err).__name__}: {err})") from err


def _decode(tensors: Sequence[bytes]) -> list[Array]:
    arrays = []
    for tensor in tensors:
        if len(tensor) < 8 or tensor[:6] != _NPY_MAGIC:
            raise ValueError(f"not .npy data: no magic string (starts with {bytes(tensor[:8])!r})")
        reader = _NPY_HEADER_READERS.get(tensor[6])
        if reader is None:  # a rarer .npy version: let numpy parse (and copy) it
            arrays.append(np.load(io.BytesIO(tensor), allow_pickle=False))
            continue
        length_bytes = reader[0]
        offset = 8 + length_bytes + int.from_bytes(tensor[8 : 8 + length_bytes], "little")
        shape, fortran_order, dtype = _npy_header(bytes(tensor[:offset]))
        flat = np.frombuffer(tensor, dtype=dtype, count=math.prod(shape), offset=offset)
        arrays.append(flat.reshape(shape, order="F" if fortran_order else "C"))
    return arrays


def encode_tensors(arrays: list[Array]) -> list[bytes]:
    """``arrays`` as ``.npy`` bytes, byte for byte what ``np.save`` writes.

    Each C-contiguous layer is copied once, straight into its bytes (``np.save`` into a
    buffer copies twice), and ``arrays`` is emptied as it goes, so the peak is the model
    plus one layer.
    """
    tensors = []
    while arrays:
        array = arrays.pop(0)
        if not array.flags.c_contiguous or array.dtype.kind not in "biuf":
            buffer = io.BytesIO()
            np.save(buffer, array, allow_pickle=False)
            tensors.append(buffer.getvalue())
            continue
        header = io.BytesIO()  # a plain dtype's header always fits format 1.0, as in np.save
        np.lib.format.write_array_header_1_0(
            header, np.lib.format.header_data_from_array_1_0(array)
        )
        tensors.append(b"".join((header.getvalue(), array.data)))
        del array
    return tensors
