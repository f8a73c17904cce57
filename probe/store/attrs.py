"""Reading and writing HDF5 attribute values the same way everywhere in a run file (strings,
lists of strings, numbers). One job; imports h5py and numpy, nothing from probe.
"""

from __future__ import annotations

import h5py
import numpy as np


def read_attr(value):
    """An attribute as h5py returns it, as plain Python (str, list, int, float)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [read_attr(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def to_attr(value):
    """Attributes as h5py stores them: lists of strings become variable-length string arrays."""
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return np.array(list(value), dtype=h5py.string_dtype())
    if value is None:
        return ""
    if isinstance(value, str):
        return str(value)  # plain str: h5py cannot store str subclasses (e.g. TorchVersion)
    return value
