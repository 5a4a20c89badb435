"""Other libraries' chatter kept off the ``numgpt`` command's stderr, so that bad
input stays one line: huggingface_hub's retry warnings (``'[Errno 111] Connection
refused' thrown while requesting HEAD ...``, ``Retrying in 1s``), its progress
bars when stderr is not a terminal, and the warnings of numba, huggingface_hub
and the rest. ``NUMGPT_DEBUG=1`` leaves all of it on.

What stays: numgpt's own messages (printed), log records at ERROR and above,
and the Python warnings numgpt's own code raises or triggers (a NumPy overflow in
an op, a checkpoint that could not be deleted).
"""
import contextlib
import functools
import importlib.util
import logging
import os
import sys
import warnings
from pathlib import Path

import numgpt


def debugging():
    """True when ``NUMGPT_DEBUG`` asks for tracebacks and every library's messages."""
    return os.environ.get("NUMGPT_DEBUG", "") not in ("", "0")


@contextlib.contextmanager
def third_parties_quiet():
    """Within the block (the command's life), third-party logging below ERROR, third-party
    warnings and huggingface_hub's progress bars off a terminal are silenced; all restored after."""
    if debugging():
        yield
        return
    previous_disable = logging.root.manager.disable
    previous_bars = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    logging.disable(logging.WARNING)                   # every logger: huggingface_hub's, urllib3's, ...
    if not sys.stderr.isatty():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")   # read when huggingface_hub is imported
    try:
        with warnings.catch_warnings():
            shown_by_default = warnings.showwarning

            def show_numgpts_own(message, category, filename, lineno, file=None, line=None):
                if _numgpts_own(category, filename):
                    shown_by_default(message, category, filename, lineno, file, line)
            warnings.showwarning = show_numgpts_own
            yield
    finally:
        logging.disable(previous_disable)
        if previous_bars is None:
            os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)


@functools.cache
def _numgpt_folders():
    """The folders of numgpt's code: the package and its kernels (a folder of their own in a
    source checkout), found without importing the kernels."""
    folders = [Path(numgpt.__file__).resolve().parent]
    spec = importlib.util.find_spec("numgpt.kernels")
    folders += [Path(folder).resolve() for folder in (spec.submodule_search_locations or ())] if spec else []
    return folders


def _numgpts_own(category, filename):
    """A warning numgpt raised or triggered: a built-in or numgpt category, from a line of numgpt's code."""
    if category.__module__.partition(".")[0] not in ("builtins", "numgpt"):
        return False                                   # e.g. numba's NumbaPerformanceWarning
    where = Path(filename).resolve()
    return any(where.is_relative_to(folder) for folder in _numgpt_folders())
