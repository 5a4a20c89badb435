"""Reusable memory for the few arrays of a step that are large (>= 32 MB:
the cross-entropy probabilities, the (V, C) weight gradients).

glibc hands arrays that large straight from the kernel (mmap) and returns
them on free, so each step would fault their pages in afresh; in this
project's VM that costs up to ~0.5 s per 154 MB. ``reusable`` hands back the
array it gave last time under the same name when nothing references it any
more (its reference count says so), else a new one: a caller that keeps an
array never sees it overwritten.
"""
import sys

import numpy

LARGE_BYTES = 32 * 2 ** 20
_pool = {}   # name -> the last large array handed out under that name


def reusable(name, shape, dtype):
    """An uninitialised array of ``shape`` and ``dtype`` (recycled when large and free)."""
    dtype = numpy.dtype(dtype)
    if int(numpy.prod(shape)) * dtype.itemsize < LARGE_BYTES:
        return numpy.empty(shape, dtype)
    array = _pool.get(name)
    # references: the pool, ``array`` and getrefcount's argument; a view or a user adds more
    if array is None or array.shape != tuple(shape) or array.dtype != dtype or sys.getrefcount(array) > 3:
        array = _pool[name] = numpy.empty(shape, dtype)
    return array
