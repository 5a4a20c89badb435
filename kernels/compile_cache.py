"""Keeps numba's on-disk cache of the kernels honest about code they take from
another file.

numba stamps a cached function with a hash of the one source file that
defines it. A kernel whose compiled code also contains another file's code
(``vexp``'s overload is inlined into the softmax, GELU and cross-entropy
loops; the fused epilogues call GELU's and LayerNorm's row functions) therefore keeps loading the
old machine code after that other file changes: nothing in its own file moved. ``refresh`` closes that gap. It hashes
each kernel module's dependency files (``DEPENDENCIES``), compares the hashes
with a stamp kept in numba's cache directory for this folder, and for every
kernel module whose hash moved removes that module's cache files (``*.nbi``
index, ``*.nbc`` data), so numba compiles it again on its next call; then it
writes the new stamp. Kernel modules with no cross-file code are never
touched. Call it before the first kernel runs (``kernels/__init__.py`` calls it
before importing the kernel modules); a second call changes nothing.

A missing stamp counts as a change: the first run after the stamp file is lost
(or this module arrives) recompiles the dependent modules once.

``DEPENDENCIES`` is the list by hand; tests/test_kernels.py rebuilds it from
the sources (each name a kernel's jitted functions read, traced to the
module it is imported from) and fails when the two differ, or when jitted
code reads a name from numgpt outside this folder (constants such as GELU's
are passed as arguments instead).
"""
import glob
import hashlib
import json
import os

from numba.core.caching import FunctionCache

# kernel module -> the modules of this folder whose code is compiled into it
DEPENDENCIES = {
    "attention": ("philox", "vexp"),
    "bf16_weights": ("bf16_units",),
    "cross_entropy": ("vexp",),
    "fused": ("gelu", "layer_norm", "vexp"),
    "gelu": ("vexp",),
}
STAMP_NAME = "numgpt-kernel-dependencies.json"
FOLDER = os.path.dirname(os.path.abspath(__file__))


def cache_directory():
    """The directory numba caches this folder's functions in (it depends on the
    folder only: NUMBA_CACHE_DIR, else __pycache__ here when writable, else the
    user-wide cache), found the way numba finds it; None if numba cannot cache here."""
    try:
        return FunctionCache(cache_directory).cache_path
    except RuntimeError:                               # numba: "no locator available"
        return None


def dependency_digest(module):
    """sha256 of the files ``module`` takes code from (their names and bytes), in hex."""
    digest = hashlib.sha256()
    for name in sorted(DEPENDENCIES[module]):
        with open(os.path.join(FOLDER, name + ".py"), "rb") as source:
            digest.update(name.encode() + b"\0" + source.read() + b"\0")
    return digest.hexdigest()


def refresh():
    """Remove the cached machine code of every kernel module whose dependencies
    changed since the stamp was written; returns those modules' names."""
    directory = cache_directory()
    if directory is None:
        return []
    stamp_path = os.path.join(directory, STAMP_NAME)
    try:
        with open(stamp_path, encoding="utf-8") as f:
            stamp = json.load(f)
    except (OSError, ValueError):
        stamp = {}
    if not isinstance(stamp, dict):
        stamp = {}
    current = {module: dependency_digest(module) for module in DEPENDENCIES}
    stale = sorted(module for module in current if stamp.get(module) != current[module])
    if not stale:
        return []
    try:
        for module in stale:                           # numba's names: <module>.<function>-<line>.py<ver>[.<n>].nb[ic]
            for path in glob.glob(os.path.join(glob.escape(directory), module + ".*.nb[ic]")):
                try:
                    os.remove(path)
                except FileNotFoundError:              # another process removed it first
                    pass
        temporary = f"{stamp_path}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump(current, f, indent=1, sort_keys=True)
        os.replace(temporary, stamp_path)              # atomic: readers see the old or the new stamp
    except OSError:                                    # no stamp written: the next import tries again
        pass
    return stale
