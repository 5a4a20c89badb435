"""``numgpt.cuda.is_available()``, as ``torch.cuda.is_available()``: True when
CuPy is installed and finds a CUDA device. It imports CuPy (and only it does,
or a request for a "cuda" device)."""


def is_available():
    """Whether a "cuda" device can be used."""
    try:
        # optional: the cuda12 extra
        import cupy
    except ImportError:
        return False
    try:
        return bool(cupy.cuda.is_available())
    except Exception:          # a broken CUDA install: no device, not a crash  # noqa: BLE001
        return False


def device_count():
    """How many CUDA devices CuPy sees (0 without CuPy)."""
    if not is_available():
        return 0
    # optional: the cuda12 extra
    import cupy
    return int(cupy.cuda.runtime.getDeviceCount())
