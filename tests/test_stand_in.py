"""The CuPy stand-in (tests/stand_in/cupy) refuses what real CuPy refuses, counts
every transfer, and computes what NumPy computes.

Each strictness test is a mistake that works with NumPy and fails on a GPU;
the stand-in must fail on it too, or numgpt's CUDA path is not tested at all.
The stand-in is imported by a module fixture and taken out of ``sys.path`` and
``sys.modules`` after these tests, so other test modules see no ``cupy``.
"""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

STAND_IN = Path(__file__).resolve().parent / "stand_in"
B, T, C = 2, 3, 4


@pytest.fixture(scope="module")
def cupy():
    sys.path.insert(0, str(STAND_IN))
    try:
        module = importlib.import_module("cupy")
        assert Path(module.__file__).parent == STAND_IN / "cupy", f"imported a cupy that is not the stand-in: {module}"
        assert module.stand_in.IS_STAND_IN
        yield module
    finally:
        sys.path.remove(str(STAND_IN))
        for name in [name for name in sys.modules if name == "cupy" or name.startswith("cupy.")]:
            del sys.modules[name]


@pytest.fixture(autouse=True)
def counts_from_zero(cupy, monkeypatch):
    monkeypatch.delenv("NUMGPT_STAND_IN_DEVICES", raising=False)
    cupy.stand_in.reset_transfers()


@pytest.fixture
def x(cupy):
    """A (B, T, C) float32 device array, 0 .. 23."""
    return cupy.arange(B * T * C, dtype=cupy.float32).reshape(B, T, C)


def no_transfers(cupy):
    return cupy.stand_in.transfers() == {"to_host": 0, "to_device": 0}


# ---------------------------------------------------------------- what real CuPy refuses

def test_implicit_conversion_to_numpy_raises(cupy, x):
    for convert in (numpy.asarray, numpy.array, lambda a: numpy.array([a, a]), lambda a: numpy.float32(a)):
        with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
            convert(x)
    assert no_transfers(cupy)


def test_mixing_with_a_numpy_array_raises(cupy, x):
    host = numpy.ones(C, dtype=numpy.float32)
    mixes = [lambda: x + host, lambda: host + x, lambda: x * host, lambda: x @ host, lambda: x == host,
             lambda: cupy.exp(host), lambda: cupy.maximum(x, host), lambda: cupy.where(x > 0, x, host),
             lambda: numpy.add(x, host), lambda: numpy.maximum(host, x)]
    for mix in mixes:
        with pytest.raises(TypeError, match="numpy.ndarray"):
            mix()
    with pytest.raises(TypeError):
        x += host


def test_numpy_functions_run_on_the_device_unless_mixed(cupy, x):
    assert isinstance(numpy.exp(x), cupy.ndarray)                      # __array_ufunc__
    both = numpy.concatenate([x, x], axis=0)                           # __array_function__
    assert isinstance(both, cupy.ndarray) and both.shape == (2 * B, T, C)
    assert isinstance(numpy.sum(x), cupy.ndarray) and numpy.sum(x).ndim == 0
    with pytest.raises(TypeError, match="numpy.ndarray"):
        numpy.concatenate([x, numpy.zeros((1, T, C), dtype=numpy.float32)])
    with pytest.raises(TypeError):
        numpy.linalg.norm(x)                                           # a function the stand-in lacks
    with pytest.raises(TypeError):
        numpy.add.at(x, (0, 0, 0), 1.0)                                # ufunc methods: cupy.add.at only
    assert no_transfers(cupy)


def test_scalars_mix_freely(cupy, x):
    assert isinstance(2 * x, cupy.ndarray)
    assert isinstance(x / numpy.float32(2), cupy.ndarray)
    assert isinstance(numpy.float32(2) * x, cupy.ndarray)
    assert isinstance(numpy.float64(1.5) < x, cupy.ndarray)            # NumPy passes its scalar as 0-d here
    assert (2 ** x[0, 0, :2]).tolist() == [1.0, 2.0]


def test_python_scalars_only_from_one_element(cupy, x):
    with pytest.raises(TypeError):
        float(x)
    with pytest.raises(ValueError):
        bool(x)
    with pytest.raises(ValueError):
        x.item()
    with pytest.raises(TypeError):
        range(x[0, 0, 3])                                               # no __index__, as CuPy
    assert cupy.stand_in.transfers()["to_host"] == 0
    assert (float(x[0, 0, 1]), int(x[0, 0, 2]), bool(x[0, 0, 1]), x[1, 2, 3].item()) == (1.0, 2, True, 23.0)
    assert cupy.stand_in.transfers()["to_host"] == 4


def test_reductions_and_elements_stay_on_the_device(cupy, x):
    for result in (x.sum(), x.max(), x.mean(), x.argmax(), x[0, 1, 2], cupy.sum(x), numpy.max(x)):
        assert isinstance(result, cupy.ndarray) and result.ndim == 0
    assert no_transfers(cupy)


def test_transfers_are_counted(cupy, x):
    y = cupy.tanh(x) @ x.swapaxes(-1, -2) + 1.0                         # (B, T, T), all on the device
    assert no_transfers(cupy)
    y.get(), cupy.asnumpy(y), y[0, 0, 0].item(), float(y[0, 0, 0]), y.tolist(), f"{y.sum():.3f}"
    assert cupy.stand_in.transfers() == {"to_host": 6, "to_device": 0}
    cupy.asarray(numpy.ones(3)), cupy.array([1, 2]), cupy.asarray(2.0), cupy.asarray(x), cupy.asnumpy(numpy.ones(2))
    assert cupy.stand_in.transfers() == {"to_host": 6, "to_device": 3}
    cupy.stand_in.reset_transfers()
    assert no_transfers(cupy)


# ---------------------------------------------------------------- memory: views, copies, identity

def test_views_write_through(cupy):
    x = cupy.zeros((B, T, C), dtype=cupy.float32)
    views = [x[1], x[:, 1:], x.reshape(B * T, C), x.T, x.swapaxes(0, 1), x[0, 0, 0], x.ravel(), x.view()]
    for number, view in enumerate(views, start=1):
        view[...] = number
        assert (x == number).any().item(), f"view {number} did not write through"
        assert view.base is x
    x[0, 0] = cupy.full((C,), 7.0, dtype=cupy.float32)
    x[1:, :, 0] += 5
    assert x[0, 0].tolist() == [7.0] * C and x[1, 0, 0].item() == 8.0 + 5


def test_copies_and_host_data_do_not_write_through(cupy):
    host = numpy.zeros(C, dtype=numpy.float32)
    device = cupy.asarray(host)
    host[0] = 1.0                                                        # host memory is not device memory
    device.get()[1] = 1.0                                                # get() is a copy
    device.copy()[2] = 1.0
    device.astype(cupy.float64)[3] = 1.0
    assert device.tolist() == [0.0] * C and device.base is None


def test_same_array_where_cupy_returns_it(cupy, x):
    assert x.astype(x.dtype, copy=False) is x
    assert cupy.asarray(x) is x and cupy.ascontiguousarray(x) is x
    out = cupy.empty_like(x)
    assert cupy.exp(x, out=out) is out and numpy.exp(x, out=out) is out


# ---------------------------------------------------------------- indexing

def test_indexing_takes_device_numpy_and_list_indices(cupy, x):
    flat = x.reshape(-1)
    device_index = cupy.asarray([3, 1])
    cupy.stand_in.reset_transfers()
    assert flat[device_index].tolist() == [3.0, 1.0]
    assert flat[numpy.array([3, 1])].tolist() == [3.0, 1.0]                 # as CuPy: copied to the device
    assert flat[[3, 1]].tolist() == [3.0, 1.0]
    assert flat[flat > 21].tolist() == [22.0, 23.0]
    assert flat[numpy.arange(24) > 21].tolist() == [22.0, 23.0]
    assert cupy.stand_in.transfers() == {"to_host": 5, "to_device": 3}
    flat[device_index] = 0.0
    flat[numpy.array([0])] = cupy.asarray(-1.0, dtype=cupy.float32)
    assert x[0, 0].tolist() == [-1.0, 0.0, 2.0, 0.0]
    with pytest.raises(ValueError, match="numpy.ndarray"):
        flat[:2] = numpy.ones(2, dtype=numpy.float32)
    with pytest.raises(TypeError):
        flat[:2] = [1.0, 2.0]


def test_iteration_len_and_repr(cupy, x):
    rows = list(x[0])
    assert len(rows) == len(x[0]) == T and all(isinstance(row, cupy.ndarray) for row in rows)
    assert repr(x[0, 0]) == "array([0., 1., 2., 3.], dtype=float32)"
    with pytest.raises(TypeError):
        len(x.sum())
    with pytest.raises(TypeError):
        iter(x.sum())


def test_add_at_accumulates_repeated_indices(cupy):
    counts = cupy.zeros(4, dtype=cupy.float32)
    cupy.add.at(counts, cupy.asarray([0, 2, 2, 2]), 1.0)
    grad = cupy.zeros((3, 2), dtype=cupy.float32)                         # an embedding's backward
    cupy.add.at(grad, cupy.asarray([1, 1, 0]), cupy.ones((3, 2), dtype=cupy.float32))
    assert counts.tolist() == [1.0, 0.0, 3.0, 0.0] and grad.tolist() == [[1.0, 1.0], [2.0, 2.0], [0.0, 0.0]]
    with pytest.raises(TypeError, match="int64"):
        cupy.add.at(cupy.zeros(4, dtype=cupy.int64), cupy.asarray([0]), 1)   # no int64 atomicAdd
    with pytest.raises(TypeError, match="numpy.ndarray"):
        cupy.add.at(counts, cupy.asarray([0]), numpy.ones(1, dtype=numpy.float32))


def test_get_array_module(cupy, x):
    assert cupy.get_array_module(x) is cupy
    assert cupy.get_array_module(numpy.ones(2), None, x) is cupy
    assert cupy.get_array_module(numpy.ones(2), 3.0) is numpy
    assert cupy.get_array_module() is numpy


# ---------------------------------------------------------------- devices

def test_device_switching(cupy, monkeypatch):
    monkeypatch.setenv("NUMGPT_STAND_IN_DEVICES", "2")
    assert cupy.cuda.runtime.getDeviceCount() == 2 and cupy.zeros(1).device.id == 0
    with cupy.cuda.Device(1):
        on_one = cupy.zeros(1)
        assert cupy.cuda.get_device_id() == cupy.cuda.runtime.getDevice() == 1
    assert on_one.device.id == 1 and (on_one + 1).device == cupy.cuda.Device(1)
    assert cupy.cuda.get_device_id() == 0
    try:
        cupy.cuda.Device(1).use()
        assert cupy.ones(1).device.id == 1
    finally:
        cupy.cuda.Device(0).use()
    with pytest.raises(cupy.cuda.runtime.CUDARuntimeError, match="invalid device ordinal"):
        cupy.cuda.Device(2).use()


def test_mixing_devices_raises(cupy, monkeypatch):
    monkeypatch.setenv("NUMGPT_STAND_IN_DEVICES", "2")
    on_zero = cupy.zeros(3)
    with cupy.cuda.Device(1):
        on_one = cupy.ones(3)
        moved = cupy.asarray(on_zero)                                       # a device -> device copy
    assert moved.device.id == 1 and moved is not on_zero and no_transfers(cupy)
    for mix in (lambda: on_zero + on_one, lambda: cupy.concatenate([on_zero, on_one]),
                lambda: on_zero.__setitem__(0, on_one[0]), lambda: on_zero[on_one.astype(cupy.int32)]):
        with pytest.raises(ValueError, match="peer access"):
            mix()


def test_no_device(cupy, monkeypatch):
    monkeypatch.setenv("NUMGPT_STAND_IN_DEVICES", "0")
    assert cupy.cuda.is_available() is False
    for allocate in (lambda: cupy.zeros(3), lambda: cupy.asarray(numpy.ones(3)), lambda: cupy.arange(3),
                     cupy.cuda.runtime.getDeviceCount):
        with pytest.raises(cupy.cuda.runtime.CUDARuntimeError, match="no CUDA-capable device"):
            allocate()


def test_no_device_in_a_fresh_interpreter():
    """Import succeeds without a device, as real CuPy's does; the first allocation fails."""
    script = ("import cupy\n"
              "assert not cupy.cuda.is_available()\n"
              "try:\n    cupy.ones(2)\nexcept cupy.cuda.runtime.CUDARuntimeError as error:\n    print(error.status)\n")
    env = dict(os.environ, PYTHONPATH=str(STAND_IN), NUMGPT_STAND_IN_DEVICES="0")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "100"                                  # cudaErrorNoDevice


# ---------------------------------------------------------------- results equal NumPy's

def softmax(xp, a):
    e = xp.exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


SAMPLES = {
    "exp": lambda xp, a, b: xp.exp(a),
    "matmul": lambda xp, a, b: a @ b.swapaxes(-1, -2),
    "softmax": lambda xp, a, b: softmax(xp, a),
    "triu_mask": lambda xp, a, b: xp.where(xp.triu(xp.ones((T, T), dtype=bool), k=1), -xp.inf, a @ b.swapaxes(-1, -2)),
    "split_concatenate": lambda xp, a, b: xp.concatenate(xp.split(a, 2, axis=-1)[::-1], axis=-1),
    "take_along_axis": lambda xp, a, b: xp.take_along_axis(a, xp.argsort(b, axis=-1), axis=-1),
    "argsort": lambda xp, a, b: xp.argsort(a, axis=-1),
    "einsum": lambda xp, a, b: xp.einsum("btc,bsc->bts", a, b),
    "cumsum_sum": lambda xp, a, b: xp.cumsum(a, axis=1).sum(axis=0),
    "stack_max": lambda xp, a, b: xp.stack([a, b]).max(axis=0),
    "top_k_partition": lambda xp, a, b: xp.where(a < xp.partition(a, C - 2, axis=-1)[..., C - 2:C - 1], -xp.inf, a),
}


@pytest.mark.parametrize("name", SAMPLES)
def test_results_equal_numpy(cupy, name):
    rng = numpy.random.default_rng(0)
    a, b = (rng.standard_normal((B, T, C)).astype(numpy.float32) for _ in range(2))
    on_device = SAMPLES[name](cupy, cupy.asarray(a), cupy.asarray(b))
    assert cupy.stand_in.transfers() == {"to_host": 0, "to_device": 2}, "computing moved data"
    assert isinstance(on_device, cupy.ndarray)
    numpy.testing.assert_array_equal(cupy.asnumpy(on_device), SAMPLES[name](numpy, a, b))
