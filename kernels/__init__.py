"""numba twins of numgpt's hot ops, importable as ``numgpt.kernels``.

Each kernel has the same name, signature and cache type as its NumPy twin in
``numgpt.ops``; ``NUMBA_TWINS`` maps that name to the kernel, and
``numgpt.backend.dispatch`` picks it when the kernel mode is ``numba``.
"""
NUMBA_TWINS = {}
