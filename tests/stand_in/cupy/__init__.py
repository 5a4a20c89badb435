"""A strict stand-in for CuPy, for testing numgpt's GPU path on a machine without a GPU.

Put ``tests/stand_in`` on ``sys.path`` (or ``PYTHONPATH``) and ``import cupy``
finds this package. It computes with NumPy underneath, but its arrays refuse
what real CuPy refuses, so that code which would break on a GPU breaks here:

- no implicit conversion: ``numpy.asarray(x)``, ``numpy.array(x)`` and any
  other use of ``__array__`` raise TypeError; the data reaches the host only
  through ``x.get()``, ``cupy.asnumpy(x)``, ``x.item()``, ``x.tolist()``,
  ``float/int/bool(x)`` (size-1 arrays, by NumPy's rules) and ``format``;
- no mixing with host arrays: a NumPy array (not a scalar) in an operator,
  a ufunc or a ``cupy.*`` function raises TypeError, as does
  ``numpy.concatenate([x, numpy_array])``; NumPy ufuncs and functions on
  stand-in arrays alone run on the device and return stand-in arrays
  (``__array_ufunc__``, ``__array_function__``), as they do with CuPy;
- no silent cross-device work: arrays on two devices in one operation raise
  ValueError (peer access not enabled); results live on their operands' device;
- no device at all when NUMGPT_STAND_IN_DEVICES=0: ``cuda.is_available()``
  is False and allocating raises ``cuda.runtime.CUDARuntimeError``;
- ``add.at`` only (of the ufunc methods), and only for the dtypes CUDA's
  atomics support (not int64); reductions return 0-d arrays, never scalars.

What it counts: every transfer, in ``cupy.stand_in.transfers()``. What it does
not model: streams, memory pools, asynchrony, ``cupy.random``, CuPy's
wrap-around of out-of-bounds integer indices (it raises, as NumPy does).
"""
import builtins

import numpy

from cupy import cuda, stand_in  # noqa: F401  (cupy.stand_in, for the tests)
from cupy._core import _current_device, function, ndarray, ufunc
from cupy.stand_in import count

float16, float32, float64 = numpy.float16, numpy.float32, numpy.float64
int8, int16, int32, int64 = numpy.int8, numpy.int16, numpy.int32, numpy.int64
uint8, uint16, uint32, uint64 = numpy.uint8, numpy.uint16, numpy.uint32, numpy.uint64
bool_, dtype = numpy.bool_, numpy.dtype
newaxis, inf, nan, pi = numpy.newaxis, numpy.inf, numpy.nan, numpy.pi

# Below, as in CuPy, sum, max, min, abs, any and all are the array functions;
# this module's own code reaches Python's through ``builtins``.


# ---------------------------------------------------------------- transfers and the array module

def array(obj, dtype=None, copy=True):
    """``obj`` as a new array on the current device: host data (NumPy arrays,
    lists, scalars) in one host -> device transfer, a CuPy array by a copy
    on the device (``copy=False``: itself, when it is there already)."""
    if isinstance(obj, ndarray):
        if not copy and obj._device == cuda.get_device_id():
            return obj.astype(obj.dtype if dtype is None else dtype, copy=False)
        return ndarray._from_data(numpy.array(obj._data, dtype=dtype), _current_device())
    if isinstance(obj, (list, tuple)) and obj and builtins.all(isinstance(item, ndarray) for item in obj):
        stacked = stack(obj)                             # CuPy arrays in a list: stacked on the device
        return stacked if dtype is None else stacked.astype(dtype)
    device = _current_device()
    count("to_device")
    return ndarray._from_data(numpy.array(obj, dtype=dtype), device)   # a copy: host memory is not device memory


def asarray(a, dtype=None):
    """``a`` on the current device, copied only when it is not there already."""
    return array(a, dtype, copy=False)


def asnumpy(a):
    """``a`` on the host: a NumPy array (a device -> host transfer for a CuPy array)."""
    return a.get() if isinstance(a, ndarray) else numpy.asarray(a)


def get_array_module(*args):
    """This module when any argument is a CuPy array, else NumPy."""
    import cupy
    return cupy if builtins.any(isinstance(arg, ndarray) for arg in args) else numpy


# ---------------------------------------------------------------- creation (on the current device)

empty = function(numpy.empty)
zeros = function(numpy.zeros)
ones = function(numpy.ones)
full = function(numpy.full)
arange = function(numpy.arange)
linspace = function(numpy.linspace)
eye = function(numpy.eye)
tri = function(numpy.tri)


def empty_like(a, dtype=None, shape=None):
    return empty(a.shape if shape is None else shape, a.dtype if dtype is None else dtype)


def zeros_like(a, dtype=None, shape=None):
    return zeros(a.shape if shape is None else shape, a.dtype if dtype is None else dtype)


def ones_like(a, dtype=None, shape=None):
    return ones(a.shape if shape is None else shape, a.dtype if dtype is None else dtype)


def full_like(a, fill_value, dtype=None, shape=None):
    return full(a.shape if shape is None else shape, fill_value, a.dtype if dtype is None else dtype)


# ---------------------------------------------------------------- ufuncs

# add.at is CuPy's scatter_add: CUDA's atomicAdd, which has no int64 (nor int8/int16/uint8) form
add = ufunc(numpy.add, scatter_dtypes=tuple(map(numpy.dtype, (float16, float32, float64, int32, uint32, uint64))))
subtract = ufunc(numpy.subtract)
multiply = ufunc(numpy.multiply)
divide = true_divide = ufunc(numpy.true_divide)
floor_divide = ufunc(numpy.floor_divide)
power = ufunc(numpy.power)
negative = ufunc(numpy.negative)
matmul = ufunc(numpy.matmul)
maximum = ufunc(numpy.maximum)
minimum = ufunc(numpy.minimum)
exp = ufunc(numpy.exp)
log = ufunc(numpy.log)
log1p = ufunc(numpy.log1p)
expm1 = ufunc(numpy.expm1)
sqrt = ufunc(numpy.sqrt)
square = ufunc(numpy.square)
tanh = ufunc(numpy.tanh)
sin = ufunc(numpy.sin)
cos = ufunc(numpy.cos)
abs = absolute = ufunc(numpy.absolute)
sign = ufunc(numpy.sign)
floor = ufunc(numpy.floor)
isfinite = ufunc(numpy.isfinite)
isnan = ufunc(numpy.isnan)
isinf = ufunc(numpy.isinf)
equal = ufunc(numpy.equal)
not_equal = ufunc(numpy.not_equal)
less = ufunc(numpy.less)
less_equal = ufunc(numpy.less_equal)
greater = ufunc(numpy.greater)
greater_equal = ufunc(numpy.greater_equal)
logical_and = ufunc(numpy.logical_and)
logical_or = ufunc(numpy.logical_or)
logical_not = ufunc(numpy.logical_not)


# ---------------------------------------------------------------- functions

where = function(numpy.where)
clip = function(numpy.clip)
triu = function(numpy.triu)
tril = function(numpy.tril)
concatenate = function(numpy.concatenate)
stack = function(numpy.stack)
split = function(numpy.split)
broadcast_to = function(numpy.broadcast_to)
ascontiguousarray = function(numpy.ascontiguousarray)
reshape = function(numpy.reshape)
transpose = function(numpy.transpose)
swapaxes = function(numpy.swapaxes)
moveaxis = function(numpy.moveaxis)
expand_dims = function(numpy.expand_dims)
squeeze = function(numpy.squeeze)
repeat = function(numpy.repeat)
tile = function(numpy.tile)
flip = function(numpy.flip)
take = function(numpy.take)
take_along_axis = function(numpy.take_along_axis)
copyto = function(numpy.copyto)
sort = function(numpy.sort)
argsort = function(numpy.argsort)
partition = function(numpy.partition)
argpartition = function(numpy.argpartition)
searchsorted = function(numpy.searchsorted)
unique = function(numpy.unique)
nonzero = function(numpy.nonzero)
count_nonzero = function(numpy.count_nonzero)
bincount = function(numpy.bincount)
dot = function(numpy.dot)
vdot = function(numpy.vdot)
may_share_memory = function(numpy.may_share_memory)
shares_memory = function(numpy.shares_memory)
outer = function(numpy.outer)
einsum = function(numpy.einsum)
sum = function(numpy.sum)
prod = function(numpy.prod)
mean = function(numpy.mean)
var = function(numpy.var)
std = function(numpy.std)
max = amax = function(numpy.max)
min = amin = function(numpy.min)
argmax = function(numpy.argmax)
argmin = function(numpy.argmin)
any = function(numpy.any)
all = function(numpy.all)
cumsum = function(numpy.cumsum)
shape = function(numpy.shape)
ndim = function(numpy.ndim)
size = function(numpy.size)
isscalar = numpy.isscalar                                # host-side: it looks at the type only
