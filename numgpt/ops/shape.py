"""Ops that move elements without arithmetic: reshape, transpose, indexing, concatenation.

Each output element is a copy of one input element: out[j] = x[src(j)] for
some map src, so d out[j] / d x[i] is 1 if i = src(j) and 0 otherwise. The
backward therefore does no arithmetic on values either: it moves each
gradient back to where its element came from,

    dx[i] = sum over the j with src(j) = i of dout[j]

reshape    (...) -> shape, the same elements in the same C order:
           dx = dout.reshape(x.shape)
transpose  swap axes dim0 and dim1 (a view); swapping twice is the identity:
           dx = dout.swapaxes(dim0, dim1)
concat     x1 (..., n1, ...), x2 (..., n2, ...) -> (..., n1 + n2, ...):
           dx1, dx2 = dout split at the same bounds along the same axis
getitem    out = x[index]. For a slice each element is picked at most once;
           one never picked gets 0. An integer array index may pick the same
           element twice (x[[0, 0]]): that is fan-out, so its gradient is the
           sum. dx starts at zeros of x's shape and numpy.add.at scatter-ADDs
           dout into it, unbuffered; dx[index] += dout would keep only one of
           the repeats (the embedding's backward, for the same reason).

The first three are one-to-one, so the sum has a single term and the
backward is the inverse move.
"""
import itertools


from numgpt.autograd import Tensor, record
from numgpt.device import array_module


def reshape(x, shape):
    """x.reshape(shape); the gradient is reshaped back."""
    in_shape = x.shape
    out = x.data.reshape(shape)
    return record(out, (x,), lambda dout: (dout.reshape(in_shape),), "reshape")


def transpose(x, dim0, dim1):
    """Swap two axes (a view); the gradient swaps them back."""
    out = x.data.swapaxes(dim0, dim1)
    return record(out, (x,), lambda dout: (dout.swapaxes(dim0, dim1),), "transpose")


def getitem(x, index):
    """x[index]; the gradient scatters back into zeros of x's shape (adding repeats)."""
    index = index.data if isinstance(index, Tensor) else index
    out = x.data[index]

    def backward(dout):
        xp = array_module(x.data)
        dx = xp.zeros_like(x.data)
        xp.add.at(dx, index, dout)
        return (dx,)

    return record(out, (x,), backward, "getitem")


def concat(tensors, axis=0):
    """numpy.concatenate of tensors; the gradient is split back into views."""
    arrays = [t.data for t in tensors]
    xp = array_module(*arrays)
    out = xp.concatenate(arrays, axis=axis)
    bounds = list(itertools.accumulate(a.shape[axis] for a in arrays))[:-1]
    return record(out, tuple(tensors), lambda dout: tuple(xp.split(dout, bounds, axis=axis)), "concat")
