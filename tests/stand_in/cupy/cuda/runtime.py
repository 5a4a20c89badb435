"""The CUDA runtime calls numgpt uses, answered from NUMGPT_STAND_IN_DEVICES.

The variable says how many devices the machine has (default 1). It is read at
every call, so a test can change it with ``monkeypatch.setenv``. With 0, as on a
machine without a GPU, ``getDeviceCount`` raises ``CUDARuntimeError`` as CUDA's
``cudaGetDeviceCount`` does, and so does everything that allocates.
"""
import os

ENV_DEVICES = "NUMGPT_STAND_IN_DEVICES"

errorNoDevice = 100
errorInvalidDevice = 101
_MESSAGES = {
    errorNoDevice: "cudaErrorNoDevice: no CUDA-capable device is detected",
    errorInvalidDevice: "cudaErrorInvalidDevice: invalid device ordinal",
}


class CUDARuntimeError(RuntimeError):
    """A failed CUDA runtime call; ``status`` is the CUDA error code."""

    def __init__(self, status):
        self.status = status
        super().__init__(_MESSAGES[status])


def getDeviceCount():
    """How many devices there are; CUDARuntimeError when there is none."""
    text = os.environ.get(ENV_DEVICES, "1")
    if not text.strip().isdigit():
        raise ValueError(f"{ENV_DEVICES}={text!r}: expected a whole number of devices (0, 1, 2, ...)")
    if int(text) == 0:
        raise CUDARuntimeError(errorNoDevice)
    return int(text)


def check_device(device_id):
    """``device_id`` if the machine has that device, else CUDARuntimeError."""
    if not 0 <= device_id < getDeviceCount():
        raise CUDARuntimeError(errorInvalidDevice)
    return device_id


def getDevice():
    """The current device's id."""
    from cupy.cuda import get_device_id
    return check_device(get_device_id())
