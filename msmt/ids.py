"""Stable ids from strings: the same string gets the same 64-bit digest in every process and machine.

blake2b-64 of the UTF-8 bytes, computed once per distinct value (not per row). The
importers turn string keys into int64 ids with it, and the data path hashes string
features with it, so both agree on what a string is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

_MASK63 = np.uint64((1 << 63) - 1)


def string_digests(values: pa.Array | pa.ChunkedArray | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(blake2b-64 of each distinct string `(D,)` uint64, each row's index into them `(N,)`, -1 = null)."""
    array = values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values, pa.string())
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    encoded = array.dictionary_encode()
    digests = [int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8).digest(), "little")
               for v in encoded.dictionary.to_pylist()]  # fmt: skip
    return np.array(digests, dtype=np.uint64), encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)


def stable_hash(values: pa.Array | pa.ChunkedArray | Sequence[str]) -> np.ndarray:
    """Strings → non-negative int64 per row (the digest with its top bit cleared); nulls are not allowed."""
    digests, indices = string_digests(values)
    if (indices < 0).any():
        raise ValueError("stable_hash of a null string")
    return (digests & _MASK63).astype(np.int64)[indices]
