"""``cupy.cuda`` as far as numgpt needs it: is there a device, which one is
current, and switching with ``Device(i).use()`` or ``with Device(i):``.

The current device is per thread, as in CUDA; it starts at 0.
"""
import threading

from cupy.cuda import runtime

_state = threading.local()


def get_device_id():
    """The id of the current device (0 unless changed)."""
    return getattr(_state, "device_id", 0)


def is_available():
    """True when the machine has at least one device."""
    try:
        return runtime.getDeviceCount() > 0
    except runtime.CUDARuntimeError:
        return False


class Device:
    """One device. ``use()`` makes it current; as a context manager it is
    current inside the block and the previous one comes back after."""

    def __init__(self, device=None):
        self.id = get_device_id() if device is None else int(device)
        self._previous = []

    def use(self):
        _state.device_id = runtime.check_device(self.id)

    def synchronize(self):
        """Nothing to wait for: the stand-in computes eagerly."""

    def __enter__(self):
        self._previous.append(get_device_id())
        self.use()
        return self

    def __exit__(self, *exc_info):
        _state.device_id = self._previous.pop()

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return f"<CUDA Device {self.id}>"
