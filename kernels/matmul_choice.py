"""Which float32 product runs each shape in numba mode: numgpt's AVX-512 kernel
(kernels/matmul.py) or NumPy's BLAS (issue 24, item 3).

Neither wins everywhere. On Intel Emerald Rapids OpenBLAS ran the seed's
products at 387-425 GFLOP/s and the kernel at 207-340; on AMD Zen 4, where
the environment pins OpenBLAS to its AVX2 kernels, the kernel ran 360-460
against ~250. So the choice is measured, once per machine, and kept:

- The rule. Without AVX-512 the kernel cannot run: every product goes to the
  BLAS, nothing is measured. Otherwise, the first time a product of a new
  *shape class* runs, both sides compute it on its own operands, alternating,
  ``MEASURE_ROUNDS`` times each after one untimed call each; the kernel is
  chosen when its best time beats the BLAS's best by more than
  ``KERNEL_MARGIN`` (a tie goes to the BLAS, which needs no compile).
- The shape class: M, K and N each rounded up to a power of two, whether A
  and B are stored transposed, and whether the product is one matrix or a
  stack (the kernel splits a stack by whole products, a matrix by blocks).
  A training run meets a few dozen classes; generation's growing sequence
  falls into a handful.
- The cache: one JSON file per machine in numgpt's cache directory
  (``numgpt info`` names it), ``matmul-choice-<fingerprint>.json``, the
  fingerprint a hash of the CPU model, its SIMD flags, numgpt's version, the
  BLAS and the thread counts. Each new class is added to it and the file
  rewritten atomically (numgpt.safe_write), so every later run on the
  machine reads the same choices: a run is reproducible without measuring.
  The file is JSON read with ``json.loads`` and checked field by field;
  anything else (not JSON, another machine's, an unknown choice, a number
  that is not finite and positive, a file over ``MAX_CACHE_BYTES``) is set
  aside and the classes measured again, as if there were no file. A file
  that cannot be written (a read-only cache, a link planted in its place,
  which numgpt.safe_write refuses) leaves the choices to this process, with
  one warning.

Both sides compute the same dot products in float32 (in different orders),
so a choice moves results within float32 accumulation error, never more.
"""
import hashlib
import json
import math
import importlib.metadata
import os
import platform
import stat
import time
import warnings
from pathlib import Path

import numpy

from numgpt.cache import default_cache_dir
from numgpt.safe_write import atomic_write

KERNEL, BLAS = "kernel", "blas"
CACHE_FORMAT = "numgpt matmul choice"
CACHE_VERSION = 1
MEASURE_ROUNDS = 3            # timed calls per side, after one untimed call each
KERNEL_MARGIN = 1.05          # the kernel must be this many times faster than the BLAS to be chosen
MAX_CACHE_BYTES = 1 << 20     # a larger file is not a cache numgpt wrote
FLAGS_THAT_MATTER = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def shape_class(a, b):
    """'512x1024x4096 a=N b=T one' for a (..., M, K) @ (..., K, N): the dimensions rounded up to a
    power of two, the operands' storage (N: as is, T: a transposed view) and one matrix or a stack."""
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    dims = "x".join(str(1 << max(0, math.ceil(math.log2(d)))) for d in (M, K, N))
    stored = " ".join(f"{name}={'N' if x.flags.c_contiguous else 'T'}" for name, x in (("a", a), ("b", b)))
    return f"{dims} {stored} {'one' if a.ndim == 2 or a[..., 0, 0].size == 1 else 'stack'}"


def cpu_model_and_flags(wanted=FLAGS_THAT_MATTER, cpuinfo=Path("/proc/cpuinfo")):
    """(model name, the flags in ``wanted`` this CPU has) from /proc/cpuinfo; (the processor's name or
    'unknown', ()) where there is none."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return platform.processor() or "unknown", ()
    model, flags = "unknown", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown":
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, tuple(flag for flag in wanted if flag in flags)


def blas_description():
    """'openblas 0.3.31 Haswell, 2 threads' for the BLAS NumPy calls (threadpoolctl), or 'none found'."""
    from threadpoolctl import threadpool_info      # imported on first use: it inspects the loaded libraries
    pools = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    if not pools:
        return "none found"
    pool = pools[0]
    return f"{pool['internal_api']} {pool['version']} {pool.get('architecture') or ''}, {pool['num_threads']} threads"


def machine_fingerprint(kernel_threads, blas=None):
    """What the choices depend on: {cpu, flags, numgpt, blas, kernel_threads}."""
    model, flags = cpu_model_and_flags()
    return {"cpu": model, "flags": list(flags), "numgpt": importlib.metadata.version("numgpt"),
            "blas": blas or blas_description(), "kernel_threads": kernel_threads}


def cache_path(machine, directory=None):
    """The machine's cache file: ``matmul-choice-<16 hex digits of its fingerprint's hash>.json``."""
    digest = hashlib.sha256(json.dumps(machine, sort_keys=True).encode()).hexdigest()[:16]
    return Path(directory or default_cache_dir()) / f"matmul-choice-{digest}.json"


def _valid_entry(entry):
    return (isinstance(entry, dict) and entry.get("choice") in (KERNEL, BLAS)
            and all(isinstance(entry.get(side), (int, float)) and not isinstance(entry.get(side), bool)
                    and math.isfinite(entry[side]) and entry[side] > 0 for side in ("kernel_gflops", "blas_gflops")))


def read_cache(path, machine):
    """(the cached {shape class: entry}, None) or ({}, why the file was set aside); ({}, None) when
    there is no file. Never follows a link, never reads more than MAX_CACHE_BYTES."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return {}, None
    except OSError as error:
        return {}, f"cannot open it ({error.strerror})"
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):                 # a FIFO or a device: not read
            return {}, "not a regular file"
        data = fh.read(MAX_CACHE_BYTES + 1)
    if len(data) > MAX_CACHE_BYTES:
        return {}, f"larger than {MAX_CACHE_BYTES} bytes"
    try:
        content = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        return {}, f"not JSON ({error})"
    if (not isinstance(content, dict) or content.get("format") != CACHE_FORMAT
            or content.get("version") != CACHE_VERSION):
        return {}, f"not a {CACHE_FORMAT!r} file of version {CACHE_VERSION}"
    if content.get("machine") != machine:
        return {}, "written for another machine"
    shapes = content.get("shapes")
    if not isinstance(shapes, dict) or not all(isinstance(k, str) and _valid_entry(v) for k, v in shapes.items()):
        return {}, "its shapes are not {class: {choice, kernel_gflops, blas_gflops}}"
    return shapes, None


def decide(kernel_seconds, blas_seconds):
    """KERNEL when the kernel's time beats the BLAS's by more than KERNEL_MARGIN, else BLAS."""
    return KERNEL if kernel_seconds * KERNEL_MARGIN < blas_seconds else BLAS


class MatmulChooser:
    """The per-shape-class choice, measured on first use and kept in ``path``.

    ``measure(a, b) -> (kernel seconds, blas seconds)`` times one product of each; ``path`` None
    keeps the choices in memory only. ``set_aside`` says why an existing file was not used;
    ``unsaved`` why the file could not be written (the choices then hold for this process only,
    and a warning says so once: a training run does not stop for its cache)."""

    def __init__(self, path, machine, measure):
        self.path, self.machine, self.measure = path, machine, measure
        self.shapes, self.set_aside = read_cache(path, machine) if path else ({}, None)
        self.unsaved = None

    def choice(self, a, b):
        """KERNEL or BLAS for ``a @ b`` (operands the kernel can take)."""
        key = shape_class(a, b)
        entry = self.shapes.get(key)
        if entry is None:
            kernel_seconds, blas_seconds = self.measure(a, b)
            flops = 2.0 * a[..., 0].size * a.shape[-1] * b.shape[-1]
            entry = {"choice": decide(kernel_seconds, blas_seconds), "kernel_gflops": flops / kernel_seconds / 1e9,
                     "blas_gflops": flops / blas_seconds / 1e9}
            self.shapes[key] = entry
            self.save()
        return entry["choice"]

    def save(self):
        if self.path is None:
            return
        content = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "machine": self.machine, "shapes": self.shapes}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, lambda fh: fh.write(json.dumps(content, indent=1, sort_keys=True).encode()))
        except OSError as error:                # read-only, full, or a link planted there (LinkRefused)
            if self.unsaved is None:
                warnings.warn(f"numgpt: the matmul choices cannot be kept in {self.path} ({error}); they hold "
                              f"for this process only", RuntimeWarning, stacklevel=2)
            self.unsaved = str(error)


def time_both(kernel_product, a, b):
    """(best kernel seconds, best BLAS seconds) for ``a @ b``, the two alternating after one untimed
    call each (the kernel's first call may compile or load it)."""
    out = numpy.empty(a.shape[:-1] + (b.shape[-1],), dtype=numpy.float32)
    sides = {KERNEL: kernel_product, BLAS: numpy.matmul}
    best = {side: math.inf for side in sides}
    for round_ in range(MEASURE_ROUNDS + 1):
        for side, product in sides.items():
            start = time.perf_counter()
            product(a, b, out=out)
            if round_:
                best[side] = min(best[side], time.perf_counter() - start)
    return best[KERNEL], best[BLAS]
