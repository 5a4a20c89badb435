"""numba twins of numgpt's hot ops, importable as ``numgpt.kernels``: one
file per op family, each function with the name, signature and cache type
of the NumPy reference it replaces (but attention's flash pair, which keeps
its own cache and runs as a pair). numgpt/registry.py registers each twin
against its reference function and decides when it runs (kernel mode
``numba``, the default).

Every kernel is ``@njit(cache=True)`` and compiles once per dtype on its first
call (float32 for training, float64 for gradient checks); the compiled code is
kept in ``kernels/__pycache__`` (or ``NUMBA_CACHE_DIR``), so later runs load it.
The first compile in a process prints one line, "compiling kernels, cached for
next time". ``warm_up(dtype)`` runs every kernel once on tiny inputs and
returns the seconds it took: the compile time on a first run, the cache-load
time afterwards.

Importing this package runs ``kernels/runtime.py``: it refreshes the compile
cache, loads every kernel module, chooses numba's threading layer and defines
``JITTED`` and ``warm_up``.

This folder is a package only as ``numgpt.kernels`` (setup.cfg maps it there).
From the repository root, where the current directory is first on
``sys.path``, Python would also find it as a top-level ``kernels`` and hide
another package of that name (Hugging Face's ``kernels``, which transformers
imports). Imported under any name but ``numgpt.kernels``, this file steps
aside: it loads the next ``kernels`` on ``sys.path`` in its place, or raises
ModuleNotFoundError when there is none.
"""


def _step_aside(name):
    """Imported as ``name``, not as numgpt.kernels: load the next module called
    ``name`` on ``sys.path``, skipping this folder, into ``sys.modules[name]``,
    which is what the import statement then returns."""
    # imported here: this function runs only when the folder is imported under another name
    import importlib.machinery
    import importlib.util
    import os
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    if "." in name:
        raise ImportError(f"{here} is numgpt's kernels package: import it as numgpt.kernels, not as {name}")

    def holds_this_folder(entry):
        candidate = os.path.join(entry or os.getcwd(), name)
        return os.path.isdir(candidate) and os.path.samefile(candidate, here)

    spec = importlib.machinery.PathFinder.find_spec(name, [e for e in sys.path if not holds_this_folder(e)])
    if spec is None:
        raise ModuleNotFoundError(f"No module named {name!r} (the folder {here} is numgpt's kernels, "
                                  f"imported as numgpt.kernels)", name=name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


if __name__ == "numgpt.kernels":
    from numgpt.kernels.runtime import JITTED, warm_up  # noqa: F401
else:
    _step_aside(__name__)
