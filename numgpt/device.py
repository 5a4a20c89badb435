"""Devices as the seed names them: ``"cpu"``, ``"cuda"``, ``"cuda:N"``.

An array's device is its array module: NumPy arrays live on the CPU, CuPy
arrays on a CUDA device. numgpt's ops take the array module from their
inputs (``array_module``), so one model code runs on both; nothing here
imports CuPy until a CUDA device is asked for (``cupy_module``), and asking
without CuPy or without a device is one clear error.

Moving data is always explicit: ``to_device`` (host -> device, or between
devices) and ``to_host`` (device -> host), one array at a time.
"""
from typing import NamedTuple, Optional

import numpy

from numgpt.errors import UsageError

DEVICE_TYPES = ("cpu", "cuda")


class Device(NamedTuple):
    type: str                 # "cpu" or "cuda"
    index: Optional[int]      # the CUDA device number (None: the current one; always None on the CPU)

    def __str__(self):
        return self.type if self.index is None else f"{self.type}:{self.index}"


CPU = Device("cpu", None)


def parse_device(spec):
    """A Device from "cpu", "cuda", "cuda:N", a Device, or None (the CPU)."""
    if spec is None:
        return CPU
    if isinstance(spec, Device):
        return spec
    if not isinstance(spec, str):
        spec = str(spec)                     # e.g. an object whose str() is "cuda:0"
    kind, _, index = spec.strip().lower().partition(":")
    if kind not in DEVICE_TYPES or (index and (kind == "cpu" or not index.isdigit())):
        raise UsageError(f"device {spec!r}: expected 'cpu', 'cuda' or 'cuda:N'")
    return Device(kind, int(index) if index else None)


def is_host(array):
    """True for a NumPy array (or a scalar), False for a CuPy array."""
    return not type(array).__module__.startswith("cupy")


def array_module(*arrays):
    """numpy, or cupy when any of ``arrays`` is a CuPy array: the module to compute them with."""
    for array in arrays:
        if array is not None and not is_host(array):
            return cupy_module()
    return numpy


def cupy_module():
    """CuPy, imported now; UsageError when it is not installed or no CUDA device is present."""
    try:
        # optional: the cuda12 extra
        import cupy
    except ImportError:
        raise UsageError("a CUDA device was asked for but CuPy is not installed: pip install 'numgpt[cuda12]' "
                         "(CUDA 12), or use the device 'cpu'") from None
    if not cupy.cuda.is_available():
        raise UsageError("a CUDA device was asked for but CuPy finds none (cupy.cuda.is_available() is False): "
                         "use the device 'cpu'")
    return cupy


def device_of(array):
    """The Device an array lives on."""
    return CPU if is_host(array) else Device("cuda", int(array.device.id))


def to_device(array, device):
    """``array`` on ``device`` (a copy when it moves; the array itself when it is there already)."""
    device = parse_device(device)
    if device.type == "cpu":
        return to_host(array)
    cupy = cupy_module()
    if device.index is not None and device.index >= cupy.cuda.runtime.getDeviceCount():
        raise UsageError(f"device cuda:{device.index}: only {cupy.cuda.runtime.getDeviceCount()} CUDA device(s)")
    with cupy.cuda.Device(device.index if device.index is not None else cupy.cuda.runtime.getDevice()):
        return cupy.asarray(array)


def to_host(array):
    """``array`` as a NumPy array: an explicit device -> host copy for a CuPy array."""
    return array if is_host(array) else array.get()


def like(array, reference):
    """``array`` moved to ``reference``'s device (host data to a device array's device, or back)."""
    if is_host(reference):
        return to_host(array)
    return to_device(array, device_of(reference))
