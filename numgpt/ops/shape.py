"""Ops that move elements without arithmetic: reshape, transpose, indexing, concatenation."""
import numpy

from numgpt.autograd import Tensor, record


def reshape(x, shape):
    """x.reshape(shape); the gradient is reshaped back."""
    in_shape = x.shape
    out = x.data.reshape(shape)
    return record(out, (x,), lambda dout: (dout.reshape(in_shape),))


def transpose(x, dim0, dim1):
    """Swap two axes (a view); the gradient swaps them back."""
    out = x.data.swapaxes(dim0, dim1)
    return record(out, (x,), lambda dout: (dout.swapaxes(dim0, dim1),))


def getitem(x, index):
    """x[index]; the gradient scatters back into zeros of x's shape (adding repeats)."""
    index = index.data if isinstance(index, Tensor) else index
    out = x.data[index]

    def backward(dout):
        dx = numpy.zeros_like(x.data)
        numpy.add.at(dx, index, dout)
        return (dx,)

    return record(out, (x,), backward)


def share_buffer(tensors):
    """Make the tensors' arrays consecutive views of one new buffer, stacked
    along axis 0 (values unchanged), so that ``concat(tensors)`` along axis 0
    is that buffer, with no copy. In-place writes (``load_state_dict``, the
    optimizer) keep the views valid."""
    buffer = numpy.concatenate([t.data for t in tensors], axis=0)
    start = 0
    for t in tensors:
        t.data = buffer[start:start + len(t.data)]
        start += len(t.data)
    return buffer


def _consecutive_base(arrays):
    """The array that ``arrays`` tile exactly, in order along axis 0, or None."""
    base = arrays[0].base
    if base is None or not base.flags.c_contiguous or any(a.base is not base for a in arrays):
        return None
    expected = base.__array_interface__["data"][0]
    for a in arrays:
        if not a.flags.c_contiguous or a.__array_interface__["data"][0] != expected or a.shape[1:] != base.shape[1:]:
            return None
        expected += a.nbytes
    return base if sum(a.nbytes for a in arrays) == base.nbytes else None


def concat(tensors, axis=0):
    """numpy.concatenate of tensors; the gradient is split back into views.
    Along axis 0, inputs that are consecutive views of one buffer (see
    ``share_buffer``) give that buffer itself, without a copy."""
    arrays = [t.data for t in tensors]
    out = _consecutive_base(arrays) if axis == 0 else None
    if out is None:
        out = numpy.concatenate(arrays, axis=axis)
    bounds = numpy.cumsum([a.shape[axis] for a in arrays])[:-1]
    return record(out, tuple(tensors), lambda dout: tuple(numpy.split(dout, bounds, axis=axis)))
