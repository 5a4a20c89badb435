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
from numgpt.errors import UsageError
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
    """[(label, value)]: whether numgpt's float32 kernel can run, and the choice per shape class
    between it and the BLAS with the file that keeps it (kernels/matmul_choice.py)."""
    from numgpt.kernels import matmul   # numba's kernels: heavy, and loaded only when numgpt info asks
    if not matmul.HAS_AVX512:
        return [("matmul kernel", "not used: this CPU has no AVX-512 (matrix products go to the BLAS; nothing "
                                  "measured, no choice file)")]
    if backend.get_kernel_mode() != "numba":
        return [("matmul kernel", "not used: kernel mode numpy (matrix products go to the BLAS)")]
    chooser = matmul.chooser()
    shapes = chooser.shapes
    kernel_count = sum(entry["choice"] == "kernel" for entry in shapes.values())
    set_aside = f"; the file there was set aside: {chooser.set_aside}" if chooser.set_aside else ""
    set_aside += f"; not written, this process only: {chooser.unsaved}" if chooser.unsaved else ""
    rows = [("matmul kernel", "in use (AVX-512, kernels/matmul.py) per shape class where it beats the BLAS, "
                              "measured on a class's first product and kept"),
            ("matmul choices", f"{len(shapes)} shape classes measured ({kernel_count} kernel, "
                               f"{len(shapes) - kernel_count} BLAS) in {chooser.path}{set_aside}")]
    for key, entry in sorted(shapes.items()):
        rows.append(("matmul choice", f"{key}: {entry['choice']} (kernel {entry['kernel_gflops']:.0f}, BLAS "
                                      f"{entry['blas_gflops']:.0f} GFLOP/s)"))
    return rows


def _bf16_path():
    """'emulated (the CPU has neither amx-bf16 nor avx512bf16; it has avx2)': the bf16 matrix path and why."""
    from numgpt.kernels.bf16_detect import bf16_path   # the CPU features, without loading the kernels
    try:
        path = bf16_path()
    except UsageError as error:            # a bad NUMGPT_BF16: info still reports the rest
        return f"not decided: {error}"
    return f"{path.name} ({path.reason})"


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
        *_matmul_kernel(),
        ("bf16 path", _bf16_path()),
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
