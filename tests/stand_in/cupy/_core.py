"""The stand-in's array and the one path every computation takes.

An ``ndarray`` holds a NumPy array (its "device memory") and a device id. It is
not a ``numpy.ndarray`` subclass, so NumPy cannot see its data: every result
is computed by ``_call``, which unwraps the stand-in arrays among the
arguments, refuses NumPy arrays, checks that all arrays live on one device,
runs the NumPy function and wraps what comes back on that device.
"""
import numbers

import numpy

from cupy import cuda
from cupy.cuda import runtime
from cupy.stand_in import count

_COMPARISONS = ("equal", "not_equal", "less", "less_equal", "greater", "greater_equal")
_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. "
             "Please use `.get()` to construct a NumPy array explicitly.")


def _refuse_host_array(value):
    raise TypeError(f"Unsupported type {type(value)}: a NumPy array cannot be mixed with a CuPy array; "
                    "move it explicitly with cupy.asarray() (host -> device) or .get() (device -> host)")


def _is_scalar(value):
    return isinstance(value, (numbers.Number, numpy.generic))


def _current_device():
    """The current device's id, after checking that the machine has it."""
    return runtime.check_device(cuda.get_device_id())


def _one_device(arrays, devices=()):
    """The device all ``arrays`` (and ``devices``, ids) are on; the current one when none is given."""
    devices = {array._device for array in arrays} | set(devices)
    if len(devices) > 1:
        raise ValueError(f"arrays on devices {sorted(devices)} are mixed in one operation, and peer access "
                         "between these devices is not enabled; copy them to one device with cupy.asarray "
                         "inside `with cupy.cuda.Device(i):`")
    return devices.pop() if devices else _current_device()


def _unwrap(value, arrays):
    """``value`` with each stand-in array replaced by its NumPy data (recorded in ``arrays``)."""
    if isinstance(value, ndarray):
        arrays.append(value)
        return value._data
    if isinstance(value, numpy.ndarray):
        _refuse_host_array(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(item, arrays) for item in value)
    return value


def _wrap(result, device, arrays):
    """NumPy results as stand-in arrays on ``device``; other values as they are."""
    if isinstance(result, (list, tuple)):
        return type(result)(_wrap(item, device, arrays) for item in result)
    if isinstance(result, numpy.generic):
        result = numpy.asarray(result)                       # CuPy returns 0-d arrays, never scalars
    if not isinstance(result, numpy.ndarray):
        return result
    for array in arrays:
        if result is array._data:                            # out=, astype(copy=False), ...: the same array
            return array
    base = None
    if arrays and result.base is not None and numpy.may_share_memory(result, arrays[0]._data):
        base = arrays[0].base if arrays[0].base is not None else arrays[0]
    return ndarray._from_data(result, device, base)


def _call(function, *args, **kwargs):
    """``function`` (NumPy's) on the device data of its arguments; stand-in results."""
    arrays = []
    args = _unwrap(args, arrays)
    kwargs = {key: _unwrap(value, arrays) for key, value in kwargs.items()}
    device = _one_device(arrays)
    return _wrap(function(*args, **kwargs), device, arrays)


def _index(key, device):
    """An index as NumPy takes it: stand-in arrays unwrapped (same device), NumPy
    arrays and lists accepted as CuPy accepts them, each a host -> device copy."""
    if isinstance(key, tuple):
        return tuple(_index(item, device) for item in key)
    if isinstance(key, ndarray):
        _one_device([key], [device])
        return key._data
    if isinstance(key, (numpy.ndarray, list)):
        count("to_device")
    return key


def _elementwise_operand(value):
    """True for what a CuPy operator takes (arrays, scalars); TypeError for a NumPy array."""
    if isinstance(value, numpy.ndarray):
        _refuse_host_array(value)
    return isinstance(value, ndarray) or _is_scalar(value)


def _binary(ufunc, reflected=False):
    def operator(self, other):
        if not _elementwise_operand(other):
            return NotImplemented
        return _call(ufunc, other, self) if reflected else _call(ufunc, self, other)
    operator.__name__ = f"__{'r' if reflected else ''}{ufunc.__name__}__"
    return operator


def _inplace(ufunc):
    def operator(self, other):
        if not _elementwise_operand(other):
            return NotImplemented
        return _call(ufunc, self, other, out=self)
    operator.__name__ = f"__i{ufunc.__name__}__"
    return operator


def _unary(ufunc):
    def operator(self):
        return _call(ufunc, self)
    operator.__name__ = f"__{ufunc.__name__}__"
    return operator


def _method(function):
    """A method that runs NumPy's ``function`` with the array as first argument."""
    def method(self, *args, **kwargs):
        return _call(function, self, *args, **kwargs)
    method.__name__ = function.__name__
    return method


class Flags:
    """The read-only memory-layout flags of an array."""

    def __init__(self, data):
        self.c_contiguous = data.flags.c_contiguous
        self.f_contiguous = data.flags.f_contiguous
        self.owndata = data.base is None

    def __repr__(self):
        return (f"  C_CONTIGUOUS : {self.c_contiguous}\n  F_CONTIGUOUS : {self.f_contiguous}\n"
                f"  OWNDATA : {self.owndata}")


class ndarray:
    """An array on a (pretend) CUDA device: ``ndarray(shape, dtype)`` allocates
    uninitialised memory on the current device, as CuPy's does."""

    def __init__(self, shape, dtype=float):
        self._data = numpy.empty(shape, dtype)
        self._device = _current_device()
        self._base = None

    @classmethod
    def _from_data(cls, data, device, base=None):
        array = cls.__new__(cls)
        array._data = data
        array._device = device
        array._base = base
        return array

    # ---------------------------------------------------------------- attributes

    shape = property(lambda self: self._data.shape)
    dtype = property(lambda self: self._data.dtype)
    ndim = property(lambda self: self._data.ndim)
    size = property(lambda self: self._data.size)
    itemsize = property(lambda self: self._data.itemsize)
    nbytes = property(lambda self: self._data.nbytes)
    strides = property(lambda self: self._data.strides)
    flags = property(lambda self: Flags(self._data))
    base = property(lambda self: self._base, doc="The array this one is a view of, or None.")
    device = property(lambda self: cuda.Device(self._device), doc="The CUDA device the array lives on.")
    T = property(lambda self: self._result(self._data.T))

    def _result(self, data):
        """``data`` (computed from this array) as a stand-in array; a view keeps ``base``."""
        return _wrap(data, self._device, [self])

    # ---------------------------------------------------------------- explicit transfers

    def get(self):
        """A copy on the host, as a NumPy array (one device -> host transfer)."""
        count("to_host")
        return self._data.copy(order="C")

    def item(self):
        """The one element as a Python scalar (one device -> host transfer)."""
        if self.size != 1:
            raise ValueError("can only convert an array of size 1 to a Python scalar")
        count("to_host")
        return self._data.item()

    def tolist(self):
        """The elements as nested Python lists (one device -> host transfer)."""
        count("to_host")
        return self._data.tolist()

    def _to_python(self, convert):
        result = convert(self._data)                         # NumPy's rules: size-1 only, ...
        count("to_host")
        return result

    def __float__(self):
        return self._to_python(float)

    def __int__(self):
        return self._to_python(int)

    def __bool__(self):
        return self._to_python(bool)

    def __format__(self, spec):
        return self._to_python(lambda data: format(data, spec))

    def __array__(self, dtype=None, copy=None):
        raise TypeError(_IMPLICIT)

    def __repr__(self):
        return repr(self._data)                              # not counted: for reading, not computing

    def __str__(self):
        return str(self._data)

    # ---------------------------------------------------------------- NumPy's protocols

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        """``numpy.exp(x)`` runs on the device, as with CuPy; only plain calls
        (``numpy.add.at`` etc. are refused: use ``cupy.add.at``)."""
        if method != "__call__":
            return NotImplemented
        if ufunc.__name__ in _COMPARISONS:                   # numpy/numpy#12142: NumPy scalars arrive as 0-d
            inputs = tuple(value.item() if isinstance(value, numpy.ndarray) and value.ndim == 0 else value
                           for value in inputs)
        for value in inputs + kwargs.get("out", ()):
            if not _elementwise_operand(value):
                return NotImplemented
        return _call(ufunc, *inputs, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        """``numpy.concatenate([x, y])`` runs ``cupy.concatenate``, as with CuPy:
        NotImplemented (so TypeError) where the stand-in has no such function."""
        import cupy
        module = cupy
        for name in func.__module__.split(".")[1:]:
            module = getattr(module, name, None)
        implementation = getattr(module, func.__name__, None)
        if implementation is None:
            return NotImplemented
        if not all(issubclass(t, (ndarray, numpy.ndarray)) for t in types):
            return NotImplemented
        return implementation(*args, **kwargs)

    # ---------------------------------------------------------------- containers

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self.shape[0]))

    def __getitem__(self, key):
        key = _index(key, self._device)
        data = self._data[key]
        if not isinstance(data, numpy.ndarray):              # an element: CuPy gives a 0-d view
            data = self._data[(key if isinstance(key, tuple) else (key,)) + (Ellipsis,)]
        return self._result(data)

    def __setitem__(self, key, value):
        key = _index(key, self._device)
        if isinstance(value, ndarray):
            _one_device([self, value])
            value = value._data
        elif isinstance(value, numpy.ndarray) and value.ndim > 0:
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill: copy it to the device "
                             "with cupy.asarray() first")
        elif isinstance(value, (list, tuple)):
            raise TypeError(f"Unsupported type {type(value)}: assign a scalar or a CuPy array")
        self._data[key] = value

    # ---------------------------------------------------------------- shape and copies

    def reshape(self, *shape, order="C"):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = shape[0]
        return self._result(self._data.reshape(shape, order=order))

    def transpose(self, *axes):
        return self._result(self._data.transpose(*axes))

    def swapaxes(self, axis1, axis2):
        return self._result(self._data.swapaxes(axis1, axis2))

    def view(self, dtype=None):
        return self._result(self._data.view() if dtype is None else self._data.view(dtype))

    def astype(self, dtype, copy=True):
        return self._result(self._data.astype(dtype, copy=copy))

    def copy(self, order="C"):
        return self._result(self._data.copy(order=order))

    def fill(self, value):
        if isinstance(value, (ndarray, numpy.ndarray)) and value.ndim > 0:
            raise ValueError(f"non-scalar {type(value).__module__}.ndarray cannot be used for fill")
        self._data.fill(value._data if isinstance(value, ndarray) else value)

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    def flatten(self):
        return self._result(self._data.flatten())

    ravel = _method(numpy.ravel)
    squeeze = _method(numpy.squeeze)
    repeat = _method(numpy.repeat)
    take = _method(numpy.take)
    clip = _method(numpy.clip)
    dot = _method(numpy.dot)
    nonzero = _method(numpy.nonzero)

    # ---------------------------------------------------------------- reductions

    sum = _method(numpy.sum)
    mean = _method(numpy.mean)
    var = _method(numpy.var)
    std = _method(numpy.std)
    prod = _method(numpy.prod)
    max = _method(numpy.max)
    min = _method(numpy.min)
    argmax = _method(numpy.argmax)
    argmin = _method(numpy.argmin)
    any = _method(numpy.any)
    all = _method(numpy.all)
    cumsum = _method(numpy.cumsum)

    # ---------------------------------------------------------------- operators

    __add__, __radd__, __iadd__ = _binary(numpy.add), _binary(numpy.add, True), _inplace(numpy.add)
    __sub__, __rsub__, __isub__ = (_binary(numpy.subtract), _binary(numpy.subtract, True),
                                   _inplace(numpy.subtract))
    __mul__, __rmul__, __imul__ = (_binary(numpy.multiply), _binary(numpy.multiply, True),
                                   _inplace(numpy.multiply))
    __truediv__, __rtruediv__, __itruediv__ = (_binary(numpy.true_divide), _binary(numpy.true_divide, True),
                                               _inplace(numpy.true_divide))
    __floordiv__, __rfloordiv__ = _binary(numpy.floor_divide), _binary(numpy.floor_divide, True)
    __mod__, __rmod__ = _binary(numpy.remainder), _binary(numpy.remainder, True)
    __pow__, __rpow__, __ipow__ = _binary(numpy.power), _binary(numpy.power, True), _inplace(numpy.power)
    __matmul__, __rmatmul__ = _binary(numpy.matmul), _binary(numpy.matmul, True)
    __and__, __rand__, __iand__ = (_binary(numpy.bitwise_and), _binary(numpy.bitwise_and, True),
                                   _inplace(numpy.bitwise_and))
    __or__, __ror__, __ior__ = (_binary(numpy.bitwise_or), _binary(numpy.bitwise_or, True),
                                _inplace(numpy.bitwise_or))
    __xor__, __rxor__ = _binary(numpy.bitwise_xor), _binary(numpy.bitwise_xor, True)
    __lt__, __le__ = _binary(numpy.less), _binary(numpy.less_equal)
    __gt__, __ge__ = _binary(numpy.greater), _binary(numpy.greater_equal)
    __eq__, __ne__ = _binary(numpy.equal), _binary(numpy.not_equal)
    __neg__, __pos__ = _unary(numpy.negative), _unary(numpy.positive)
    __abs__, __invert__ = _unary(numpy.absolute), _unary(numpy.invert)
    __hash__ = None


class ufunc:
    """A CuPy ufunc: NumPy's on device data; ``at`` only where CuPy has it."""

    def __init__(self, numpy_ufunc, scatter_dtypes=None):
        self._ufunc = numpy_ufunc
        self._scatter_dtypes = scatter_dtypes                # dtypes ``at`` accepts; None: no ``at``
        self.__name__ = numpy_ufunc.__name__
        self.nin, self.nout = numpy_ufunc.nin, numpy_ufunc.nout

    def __call__(self, *args, **kwargs):
        out = kwargs.get("out")
        for value in args + (() if out is None else out if isinstance(out, tuple) else (out,)):
            if not _elementwise_operand(value):
                raise TypeError(f"Unsupported type {type(value)}")
        return _call(self._ufunc, *args, **kwargs)

    def at(self, a, indices, b=None):
        """In place on ``a`` at ``indices``; repeated indices accumulate (CuPy's scatter op)."""
        if self._scatter_dtypes is None:
            raise NotImplementedError(f"the stand-in provides .at for add only, not {self.__name__}; give this "
                                      "ufunc the scatter_dtypes CuPy supports for it if numgpt needs it")
        if not isinstance(a, ndarray):
            raise TypeError(f"{self.__name__}.at needs a CuPy array, got {type(a)}")
        if a.dtype not in self._scatter_dtypes:
            raise TypeError(f"{self.__name__}.at only supports {', '.join(map(str, self._scatter_dtypes))} "
                            f"(CUDA atomics), got {a.dtype}")
        if b is not None and not _elementwise_operand(b):
            raise TypeError(f"Unsupported type {type(b)}")
        values = () if b is None else (b._data if isinstance(b, ndarray) else b,)
        _one_device([a] + ([b] if isinstance(b, ndarray) else []))
        self._ufunc.at(a._data, _index(indices, a._device), *values)

    def __repr__(self):
        return f"<ufunc 'cupy_{self.__name__}'>"


def function(numpy_function):
    """The stand-in ``cupy.<name>``: ``numpy_function`` run by ``_call``."""
    def stand_in(*args, **kwargs):
        return _call(numpy_function, *args, **kwargs)
    stand_in.__name__ = stand_in.__qualname__ = numpy_function.__name__
    stand_in.__doc__ = f"numpy.{numpy_function.__name__} on device arrays (the stand-in's cupy)."
    return stand_in
