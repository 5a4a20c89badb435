"""The root of numgpt's own exceptions.

Every error numgpt raises for bad input (a file that cannot be read, a value
out of range, a checkpoint that does not fit, a download that failed) is a
``NumgptError``: the ``numgpt`` command prints it as one line and exits 2.
Anything else that escapes is a bug: the command shows its traceback and
exits 1. Each subclass also derives from the built-in exception a caller
would catch for it (``ValueError``, ``OSError``), so existing ``except``
clauses keep working.
"""


class NumgptError(Exception):
    """Bad input, reported by numgpt with the file, the value and what was expected."""


class UsageError(NumgptError, ValueError):
    """A value or combination of values that numgpt cannot run with."""
