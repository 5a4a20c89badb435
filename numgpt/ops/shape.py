"""Ops that move elements without arithmetic: reshape, transpose, indexing, concatenation."""
import numpy

from numgpt.autograd import Tensor, record


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
        dx = numpy.zeros_like(x.data)
        numpy.add.at(dx, index, dout)
        return (dx,)

    return record(out, (x,), backward, "getitem")


def concat(tensors, axis=0):
    """numpy.concatenate of tensors; the gradient is split back into views."""
    arrays = [t.data for t in tensors]
    out = numpy.concatenate(arrays, axis=axis)
    bounds = numpy.cumsum([a.shape[axis] for a in arrays])[:-1]
    return record(out, tuple(tensors), lambda dout: tuple(numpy.split(dout, bounds, axis=axis)), "concat")
