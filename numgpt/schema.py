"""What numgpt accepts in the files it reads: structural limits, with names, and
the checks of single values that every file's validator is made of.

A model directory, a run directory or a checkpoint may come from a stranger,
so every field numgpt reads from one of their JSON files is checked here
before it is used: its presence, its type, its range. A value that fails is
one error naming the file, the field, the value and what was expected (the
error class is the caller's: ``ConfigError`` for a model config,
``CheckpointError`` for checkpoint.json, ``RunError`` for settings.json...).

The limits bound what a file can ask numgpt to build before any memory is
taken. They are far above the largest published models (Llama 3.1 405B: 126
layers, 128 heads, hidden 16384, MLP 53248; Gemma: a 256000-token
vocabulary; DeepSeek-V3: about 92 thousand tensors in its index), and the
memory check (numgpt.models.memory) refuses what passes them but does not fit.
"""
import math

from numgpt.errors import NumgptError

MAX_LAYERS = 1024                  # transformer blocks
MAX_HEADS = 1024                   # attention heads (and key/value heads)
MAX_VOCAB = 2**24                  # token ids
MAX_WIDTH = 2**17                  # emb_dim, hidden_size, intermediate_size, head_dim
MAX_CONTEXT = 2**24                # positions (GPT-2's table holds one row per position)
MAX_TENSOR_DIMS = 8                # dimensions of one tensor in a weights file
MAX_TENSORS = 2**17                # tensors in one safetensors file or sharded index
MAX_TENSOR_NAME = 1024             # characters of a tensor's name
MAX_FILE_NAME = 255                # bytes of a file name (most file systems' limit)
MAX_LISTED_PROBLEMS = 30           # problems an error message lists before it counts the rest
MAX_SHOWN_VALUE = 80               # characters of a bad value quoted in a message


class SchemaError(NumgptError, ValueError):
    """A value in a file that is not what numgpt expects there."""


def shown(value):
    """``value`` as a message quotes it: its repr, cut to MAX_SHOWN_VALUE characters."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN_VALUE else text[:MAX_SHOWN_VALUE - 3] + "..."


def fail(where, field, value, expected, error=SchemaError):
    """Raise ``error``: the file ``where``, its ``field`` holds ``value``, not what was ``expected``."""
    raise error(f"{where}: {field} is {shown(value)}; expected {expected}")


def missing(where, field, expected, error=SchemaError):
    raise error(f"{where}: {field} is missing; expected {expected}")


def listed(problems, limit=MAX_LISTED_PROBLEMS):
    """The first ``limit`` problems, one per line, and how many more there are."""
    lines = list(problems[:limit])
    if len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more")
    return "\n  ".join(lines)


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def integer(doc, field, where, low=None, high=None, error=SchemaError, default=None, required=True):
    """``doc[field]``, an integer in [low, high]; ``default`` when absent and not ``required``."""
    if field not in doc:
        if required:
            missing(where, field, _range_words("an integer", low, high), error)
        return default
    value = doc[field]
    if not is_int(value) or (low is not None and value < low) or (high is not None and value > high):
        fail(where, field, value, _range_words("an integer", low, high), error)
    return value


def number(doc, field, where, low=None, high=None, error=SchemaError, default=None, required=True,
           above=None, below=None):
    """``doc[field]``, a finite number (int or float, not bool) in [low, high] and in (above, below)."""
    if field not in doc:
        if required:
            missing(where, field, _range_words("a number", low, high, above, below), error)
        return default
    value = doc[field]
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
            or (low is not None and value < low) or (high is not None and value > high)
            or (above is not None and value <= above) or (below is not None and value >= below)):
        fail(where, field, value, _range_words("a number", low, high, above, below), error)
    return value


def boolean(doc, field, where, error=SchemaError, default=None, required=True):
    if field not in doc:
        if required:
            missing(where, field, "true or false", error)
        return default
    if not isinstance(doc[field], bool):
        fail(where, field, doc[field], "true or false", error)
    return doc[field]


def string(doc, field, where, error=SchemaError, default=None, required=True, choices=None, nullable=False):
    """``doc[field]``, a string (one of ``choices`` when given; None too when ``nullable``)."""
    expected = f"one of {', '.join(map(repr, choices))}" if choices else "a string"
    if nullable:
        expected += " or null"
    if field not in doc:
        if required:
            missing(where, field, expected, error)
        return default
    value = doc[field]
    if value is None and nullable:
        return None
    if not isinstance(value, str) or (choices and value not in choices):
        fail(where, field, value, expected, error)
    return value


def mapping(doc, field, where, error=SchemaError, default=None, required=True, nullable=False):
    """``doc[field]``, a JSON object (None too when ``nullable``)."""
    expected = "a JSON object" + (" or null" if nullable else "")
    if field not in doc:
        if required:
            missing(where, field, expected, error)
        return default
    value = doc[field]
    if value is None and nullable:
        return None
    if not isinstance(value, dict):
        fail(where, field, value, expected, error)
    return value


def _range_words(kind, low=None, high=None, above=None, below=None):
    bounds = []
    if low is not None:
        bounds.append(f">= {low}")
    if above is not None:
        bounds.append(f"> {above}")
    if high is not None:
        bounds.append(f"<= {high}")
    if below is not None:
        bounds.append(f"< {below}")
    return kind + (" " + " and ".join(bounds) if bounds else "")
