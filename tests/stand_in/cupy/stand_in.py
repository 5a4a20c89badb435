"""What only the stand-in has: a flag that says so, and the transfer counters.

Every device -> host copy (``get``, ``asnumpy``, ``item``, ``tolist``,
``float``/``int``/``bool``, ``format``) adds one to ``to_host``; every host ->
device copy (``asarray``/``array`` of host data, a NumPy or list index) adds
one to ``to_device``. A test can reset them, run a step, and assert that the
step stayed on the device.
"""
IS_STAND_IN = True

_counts = {"to_host": 0, "to_device": 0}


def transfers():
    """The transfers counted since the last reset: {"to_host": n, "to_device": m}."""
    return dict(_counts)


def reset_transfers():
    """Set both counters to zero."""
    _counts["to_host"] = 0
    _counts["to_device"] = 0


def count(direction):
    """Record one transfer, "to_host" or "to_device" (called by the stand-in itself)."""
    _counts[direction] += 1
