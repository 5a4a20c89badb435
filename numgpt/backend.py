"""The one place numgpt chooses its array module, its dtype policy, its random
generator and its kernel mode.

- ``xp`` is the array module of new host arrays (NumPy). Arrays on a CUDA
  device are CuPy arrays; ops take the module from their inputs
  (``numgpt.device.array_module``), so one model code runs on both.
- The default float dtype is float32. float64 is selectable (gradient checks)
  with ``set_default_dtype``; nothing else is accepted.
- One ``numpy.random.Generator`` serves initialisation, dropout, shuffling and
  sampling, so ``manual_seed`` makes a whole run repeatable, and its state can
  be saved in a checkpoint as JSON (``get_rng_state`` / ``set_rng_state``).
- Threads: ``set_num_threads(n)`` sets how many threads the numba kernels and
  the BLAS library use (default: one per core); ``choose_threading_layer``
  picks how numba runs its parallel loops (GNU OpenMP, waiting passively).
- The kernel mode: ``numba`` (the default where numba is installed) runs the
  numba twins of the hot ops, ``numpy`` (``NUMGPT_KERNELS=numpy``) the NumPy
  references alone; numgpt/registry.py says which function runs for which.
"""
import contextlib
import ctypes
import ctypes.util
import importlib.util
import os

import numpy

from numgpt.device import is_host
from numgpt.errors import UsageError

xp = numpy

FLOAT_DTYPES = (numpy.float32, numpy.float64)
INDEX_DTYPE = numpy.int64

_default_dtype = numpy.dtype(numpy.float32)


def get_default_dtype():
    """The float dtype new parameters and float arrays get (float32 unless changed)."""
    return _default_dtype


def set_default_dtype(dtype):
    """Choose float32 (the default) or float64 (for gradient checks)."""
    global _default_dtype
    dtype = numpy.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"default dtype must be float32 or float64, got {dtype}")
    _default_dtype = dtype


def asarray(data, dtype=None):
    """``data`` as an array, as ``torch.tensor`` does: an array keeps its dtype
    and its device (a CuPy array stays one), Python floats (scalars, lists) get
    the default dtype, unless ``dtype`` is given."""
    if not is_host(data):
        return data if dtype is None else data.astype(dtype, copy=False)
    if dtype is not None:
        return xp.asarray(data).astype(dtype, copy=False)
    if isinstance(data, xp.ndarray):
        return data
    array = xp.asarray(data)
    if array.dtype.kind == "f" and array.dtype != _default_dtype:
        return array.astype(_default_dtype)
    return array


# ---------------------------------------------------------------- random numbers

_generator = numpy.random.Generator(numpy.random.PCG64(0))


def manual_seed(seed):
    """Reseed numgpt's generator (the counterpart of ``torch.manual_seed``)."""
    if not isinstance(seed, (int, numpy.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    _generator.bit_generator.state = numpy.random.PCG64(int(seed)).state
    return _generator


def get_generator():
    """The one generator behind initialisation, dropout, shuffling and sampling."""
    return _generator


@contextlib.contextmanager
def random_stream(*key):
    """Within the block, numgpt's generator draws from its own stream for ``key`` (non-negative
    integers: PCG64 seeded by SeedSequence(key)); the generator's state is restored afterwards.
    The training loop keys each micro-batch's dropout by its place in the run, so that the
    masks do not depend on how the micro-batches are spread over processes."""
    saved = _generator.bit_generator.state
    _generator.bit_generator.state = numpy.random.PCG64(numpy.random.SeedSequence([int(k) for k in key])).state
    try:
        yield _generator
    finally:
        _generator.bit_generator.state = saved


def get_rng_state():
    """The generator's state as a JSON-serialisable dict."""
    return _generator.bit_generator.state


def set_rng_state(state):
    """Restore a state from ``get_rng_state``."""
    if not isinstance(state, dict) or state.get("bit_generator") != "PCG64":
        raise ValueError(f"RNG state must be a PCG64 state dict, got {state!r:.80}")
    _generator.bit_generator.state = state


# ---------------------------------------------------------------- threads

_blas_thread_limit = None   # threadpoolctl's limit object, kept alive while the limit holds
_threading_layer_chosen = False


def choose_threading_layer():
    """Set numba's threading layer before its first parallel loop (it is read then, and
    fixed for the process); an explicit NUMBA_THREADING_LAYER wins.

    A seed step starts about 550 parallel loops. Measured here, numba's own workqueue
    pool starts one in about 90 us, GNU OpenMP in about 2 us while its idle threads
    spin and 50 us when they wait passively. Spinning threads steal the cores from
    what runs between two loops: OpenBLAS's products (generation with the KV cache
    fell from 30 to 3.2 tokens/s; a step with the products on OpenBLAS took 1.25x as
    long). So: OpenMP waiting passively (unless OMP_WAIT_POLICY says otherwise), which
    took 0.88 of workqueue's time for the seed's step and 0.78 for generation;
    workqueue where OpenMP is missing, or already loaded by another library in this
    process (its wait policy was fixed when it loaded)."""
    global _threading_layer_chosen
    # numba: heavy to import, asked only when threads are read or set
    import numba
    from threadpoolctl import threadpool_info

    if _threading_layer_chosen or "NUMBA_THREADING_LAYER" in os.environ:
        return
    _threading_layer_chosen = True
    if any(pool["user_api"] == "openmp" for pool in threadpool_info()) or not _load_openmp_passive():
        numba.config.THREADING_LAYER = "workqueue"
        return
    numba.config.THREADING_LAYER = "default"
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]   # numba wants all three named


def _load_openmp_passive():
    """Load GNU OpenMP now, with OMP_WAIT_POLICY=passive unless the environment sets a policy:
    libgomp reads it once, when it loads (numba's OpenMP pool then uses this copy). The
    variable is not left in the environment, where subprocesses (PyTorch in the benchmarks)
    would inherit it. False when there is no libgomp to load."""
    path = ctypes.util.find_library("gomp")
    if path is None:
        return False
    ours = "OMP_WAIT_POLICY" not in os.environ
    if ours:
        os.environ["OMP_WAIT_POLICY"] = "passive"
    try:
        ctypes.CDLL(path)
    except OSError:
        return False
    finally:
        if ours:
            del os.environ["OMP_WAIT_POLICY"]
    return True


def set_num_threads(n):
    """Run the numba kernels and the BLAS on ``n`` threads (1 .. the cores numba saw at start)."""
    global _blas_thread_limit
    # numba: heavy to import, asked only when threads are read or set
    import numba
    from threadpoolctl import threadpool_limits

    choose_threading_layer()

    available = numba.config.NUMBA_NUM_THREADS
    if not isinstance(n, int) or not 1 <= n <= available:
        raise UsageError(f"threads {n!r}: expected 1 to {available} (numba's thread pool on this machine, "
                         f"NUMBA_NUM_THREADS)")
    numba.set_num_threads(n)
    _blas_thread_limit = threadpool_limits(limits=n, user_api="blas")


def get_num_threads():
    """(numba kernel threads, BLAS threads) as they are now."""
    # numba: heavy to import, asked only when threads are read or set
    import numba
    from threadpoolctl import threadpool_info

    choose_threading_layer()
    blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    return numba.get_num_threads(), (max(blas) if blas else None)


# ---------------------------------------------------------------- kernels

KERNEL_MODES = ("numpy", "numba")


def _initial_kernel_mode():
    mode = os.environ.get("NUMGPT_KERNELS")
    if mode is None:
        return "numba" if importlib.util.find_spec("numba") is not None else "numpy"
    if mode not in KERNEL_MODES:
        raise UsageError(f"NUMGPT_KERNELS={mode!r}: expected one of {', '.join(KERNEL_MODES)}")
    return mode


_kernel_mode = _initial_kernel_mode()


def get_kernel_mode():
    """'numba' or 'numpy'."""
    return _kernel_mode


def set_kernel_mode(mode):
    """Switch between the numba kernels and the NumPy reference path."""
    global _kernel_mode
    if mode not in KERNEL_MODES:
        raise ValueError(f"kernel mode {mode!r}: expected one of {', '.join(KERNEL_MODES)}")
    _kernel_mode = mode
