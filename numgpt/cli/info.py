"""What ``numgpt info`` prints: the install, the libraries under it and how the
hot path will run on this machine."""
import os
import platform
import sys
from pathlib import Path

import numpy

import numgpt
from numgpt import backend, cuda
from numgpt.cli import arguments
from numgpt.io.download import default_cache_dir, hf_hub_cache


def _blas():
    """'OpenBLAS 0.3.31, SkylakeX kernels (OpenBLAS's own choice), 2 threads' from threadpoolctl."""
    from threadpoolctl import threadpool_info       # only numgpt info asks the BLAS pools
    pools = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    if not pools:
        return "none found in this process"
    pool = pools[0]
    name = {"openblas": "OpenBLAS", "mkl": "Intel MKL", "blis": "BLIS"}.get(pool["internal_api"],
                                                                            pool["internal_api"])
    pinned = os.environ.get("OPENBLAS_CORETYPE")
    chooser = f"OPENBLAS_CORETYPE={pinned}" if pinned and pool["internal_api"] == "openblas" else "its own choice"
    core = f", {pool['architecture']} kernels ({chooser})" if pool.get("architecture") else ""
    return f"{name} {pool['version']}{core}, {pool['num_threads']} threads ({pool['filepath']})"


def _matmul_kernel():
    from numgpt.kernels import matmul   # numba's kernels: heavy, and loaded only when numgpt info asks
    if not matmul.HAS_AVX512:
        return "not used: this CPU has no AVX-512 (matrix products go to the BLAS)"
    if backend.get_kernel_mode() != "numba":
        return "not used: kernel mode numpy (matrix products go to the BLAS)"
    return "in use (AVX-512, kernels/matmul.py)"


def _cuda():
    try:
        import cupy                     # optional: the cuda12 extra
    except ImportError:
        return "CuPy not installed (pip install 'numgpt[cuda12]' for --device cuda)"
    if not cuda.is_available():
        return f"CuPy {cupy.__version__}, no CUDA device"
    return f"CuPy {cupy.__version__}, {cuda.device_count()} device(s)"


def _caches():
    import numba                        # heavy: loaded by numgpt info, not by every command

    from numgpt import kernels          # numba's kernels: heavy, and loaded only when numgpt info asks
    numba_cache = numba.config.CACHE_DIR or str(Path(kernels.__file__).parent / "__pycache__")
    return [("numgpt cache", str(default_cache_dir())), ("Hugging Face hub cache", str(hf_hub_cache())),
            ("numba cache", numba_cache)]


def describe():
    """[(label, value)] of the facts ``numgpt info`` prints."""
    import llvmlite                     # heavy (numba's compiler): reported by numgpt info only
    import numba

    from numgpt import kernels  # noqa: F401  (sets numba's threading layer, as a training run does)

    kernel_threads, blas_threads = backend.get_num_threads()
    mode_source = "NUMGPT_KERNELS" if os.environ.get("NUMGPT_KERNELS") else "default"
    return [
        ("numgpt", f"{numgpt.__version__} ({Path(numgpt.__file__).parent})"),
        ("Python", f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})"),
        ("NumPy", numpy.__version__),
        ("numba", f"{numba.__version__} (llvmlite {llvmlite.__version__}, threading layer "
                  f"{numba.threading_layer()})"),        # started by get_num_threads above
        ("BLAS", _blas()),
        ("kernel mode", f"{backend.get_kernel_mode()} ({mode_source})"),
        ("matmul kernel", _matmul_kernel()),
        ("threads", f"{kernel_threads} for numba kernels, {blas_threads} for the BLAS, {os.cpu_count()} cores"),
        ("CUDA", _cuda()),
        *_caches(),
    ]


def cmd_info(args):
    facts = describe()
    width = max(len(label) for label, _ in facts)
    for label, value in facts:
        print(f"{label:<{width}}  {value}")
    return 0


def add_parser(sub):
    """The info subcommand's flags (none)."""
    info = sub.add_parser("info", help="numgpt, its libraries, kernels, threads and caches on this machine")
    info.set_defaults(run=cmd_info, check=arguments.check_nothing)
