"""Token-selection methods. Importing this package registers every built-in method."""

from sift.compressors.base import CompressionBatch, Compressor, Selection, keep_count
from sift.compressors.registry import available_compressors, get_compressor, register, unregister
from sift.compressors import dycoke, none, omniselect, omnisift, omnizip, random_drop, stvp  # noqa: F401  (registration)

__all__ = [
    "Compressor",
    "CompressionBatch",
    "Selection",
    "keep_count",
    "register",
    "unregister",
    "get_compressor",
    "available_compressors",
]
