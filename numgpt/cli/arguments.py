"""The command line's argument layer: what each flag's value may be, checked
before any work (a download, a weight file read, a kernel compiled, a run
directory created).

Two parts, both run before a subcommand starts:

- **types** for argparse's ``type=``: ``integer(minimum)``, ``real(low, high)``
  (finite numbers only: NaN and infinities are refused), ``non_empty``,
  ``byte_size`` ("10", "10MB", "5GB", "2GiB", read as transformers reads
  ``max_shard_size``), ``training_precision``. A bad value ends the parse with
  ``numgpt SUB: error: argument --FLAG: expected ..., got 'VALUE'``.
- **one check per subcommand** (``check_train``, ``check_plot``, ...; the
  parser names each as its subcommand's ``check``), for what a type cannot see alone:
  paths by their kind (a missing file, a directory where a file is wanted, a
  file where a directory is wanted) and flags that contradict each other. A
  check only looks (``stat``); it writes nothing. Its ``UsageError`` names the
  flag and the value.

numgpt's own modules are imported by the checks that need them, as numgpt.cli
imports them, so that ``numgpt --help`` and a refused flag stay quick.
"""
import argparse
import math
import re
from pathlib import Path

from numgpt.data.token_files import holds_token_files
from numgpt.data.token_store import MANIFEST
from numgpt.device import parse_device
from numgpt.errors import UsageError
from numgpt.io.download import canonical_size
from numgpt.io.hub import parse_repo_id
from numgpt.io.torch_format import TORCH_SUFFIXES
from numgpt.precision import PRECISIONS, TRAINING_PRECISIONS
from numgpt.registry import op_pairs
from numgpt.training.plot import PLOT_FORMATS


# ---------------------------------------------------------------- types
def integer(minimum):
    """An argparse type: an integer >= ``minimum``."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value
    return parse


def real(low, high=math.inf, low_open=False, high_open=False):
    """An argparse type: a finite number in the interval from ``low`` to ``high``
    (each end included unless open); NaN and infinities are refused."""
    if high == math.inf:
        wanted = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        wanted = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        inside = (math.isfinite(value) and (value > low if low_open else value >= low)
                  and (value < high if high_open else value <= high))
        if not inside:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value
    return parse


def training_precision(text):
    """An argparse type: a precision ``numgpt train`` trains in (numgpt/precision.py)."""
    if text in TRAINING_PRECISIONS:
        return text
    wanted = f"one of {', '.join(TRAINING_PRECISIONS)}"
    if text in PRECISIONS:
        raise argparse.ArgumentTypeError(f"{text} is an inference precision (weights stored in bf16, for generate "
                                         f"and eval, as in Lightning), not one to train in: expected {wanted}")
    raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")


def non_empty(text):
    """An argparse type: any text but the empty string."""
    if text == "":
        raise argparse.ArgumentTypeError("expected at least one character of text, got ''")
    return text


# transformers' units for max_shard_size (its convert_file_size_to_int): KB, MB, GB in powers of 10,
# KiB, MiB, GiB in powers of 2, letters in any case; a decimal unit written with a lower-case final
# "b" (5Gb) counts bits. A bare number is bytes.
NO_BACKWARD = "none"                 # --backward none: train with numgpt's own backwards
SIZE_UNITS = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9}
SIZE_PATTERN = re.compile(r"\s*(\d+(?:\.\d*)?)\s*([A-Za-z]*)\s*")


def byte_size(text):
    """An argparse type: a size of at least one byte, e.g. "10" (bytes), "10MB", "5GB", "2GiB"."""
    wanted = "a size of at least 1 byte: bytes, or a number with KB, MB, GB, KiB, MiB or GiB"
    match = SIZE_PATTERN.fullmatch(text)
    unit = match.group(2).upper() if match else None
    if match is None or (unit and unit not in SIZE_UNITS):
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
    size = float(match.group(1)) * SIZE_UNITS.get(unit, 1)
    if unit in ("KB", "MB", "GB") and match.group(2).endswith("b"):
        size /= 8                                        # bits, as transformers reads 5Gb
    if size < 1:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
    return int(size)


# ---------------------------------------------------------------- paths
def existing_file(flag, path, wanted="a file"):
    """UsageError unless ``path`` is an existing file that is not empty."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UsageError(f"{flag} {path} does not exist: expected {wanted}")
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a directory: expected {wanted}")
    if path.stat().st_size == 0:
        raise UsageError(f"{flag} {path} is empty: expected {wanted}")


def training_data(flag, path):
    """UsageError unless ``path`` is a non-empty text file, a token store (numgpt prepare) or a
    directory of other tools' token files (*train*.bin)."""
    wanted = "a UTF-8 text file, a token store (numgpt prepare) or a directory of *train*.bin token files"
    path = Path(path).expanduser()
    if not path.is_dir():
        existing_file(flag, path, wanted)
    elif not (path / MANIFEST).is_file() and not holds_token_files(path):
        raise UsageError(f"{flag} {path} is a directory that holds no corpus: expected {wanted}")


def existing_directory(path, wanted="a directory"):
    """UsageError unless ``path`` (a positional argument: the line names it alone) is an existing directory."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UsageError(f"{path} does not exist: expected {wanted}")
    if not path.is_dir():
        raise UsageError(f"{path} is a file: expected {wanted}")


def directory_to_write(flag, path, wanted="a directory"):
    """UsageError when ``path``, or a folder on the way to it, is something other than a
    directory: numgpt could not create it (or write into it) there."""
    path = Path(path).expanduser()
    for place in (path, *path.parents):
        if place.exists():
            if not place.is_dir():
                where = "is a file" if place == path else f"cannot be created: {place} is a file"
                raise UsageError(f"{flag} {path} {where}: expected {wanted}")
            return


def file_to_write(flag, path, suffixes):
    """UsageError unless ``path`` ends in one of ``suffixes`` and could be written: its
    folder exists and it is not itself a directory."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in suffixes:
        raise UsageError(f"{flag} {path}: expected a file name ending in {', '.join(suffixes)}")
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a directory: expected a file name ending in {', '.join(suffixes)}")
    folder = path.parent
    if not folder.is_dir():
        why = "does not exist" if not folder.exists() else "is a file"
        raise UsageError(f"{flag} {path}: its folder {folder} {why}")


# ---------------------------------------------------------------- one check per subcommand
def check_train(args, defaults):
    """``defaults``: the training flags' defaults (numgpt.cli.TRAIN_DEFAULTS), for a typed flag
    checked against one left out."""
    if args.init is not None and args.preset is not None:
        raise UsageError(f"--preset {args.preset} contradicts --init {args.init}: the model's shape comes from "
                         f"--init; leave --preset out")
    if args.min_lr is not None and not args.resume:
        peak = defaults["lr"] if args.lr is None else args.lr
        if args.min_lr > peak:
            raise UsageError(f"--min-lr {args.min_lr:g} is above the peak learning rate --lr {peak:g}: the cosine "
                             f"decays from --lr down to --min-lr")
    if args.init is not None:
        model_name("--init", args.init)
    if args.tokenizer is not None:
        model_name("--tokenizer", args.tokenizer, files=False)
    if args.data is not None:
        training_data("--data", args.data)
    directory_to_write("--out", args.out, "a run directory")
    for spec in args.backward or ():
        if spec != NO_BACKWARD:
            backward_spec(spec)
    _check_threads(args.threads)
    _check_device(args.device)


def model_name(flag, source, files=True):
    """UsageError unless ``source`` could name a model, told apart as numgpt.io.families.locate tells
    them, without asking the hub: an existing directory (or, with ``files``, a .safetensors file),
    a GPT-2 size or a hub id (owner/name[@revision])."""
    path = Path(source).expanduser()
    wanted = ("a model or run directory, a GPT-2 .safetensors file, the seed's .pth, a GPT-2 size (124m, 355m, 774m, "
              "1558m) or a hub id (owner/name)" if files
              else "a directory with tokenizer.json or a hub id (owner/name)")
    if path.is_file() and not (files and path.suffix in (".safetensors", *TORCH_SUFFIXES)):
        raise UsageError(f"{flag} {source} is a file: expected {wanted}")
    if not path.exists() and canonical_size(source) is None and parse_repo_id(source) is None:
        raise UsageError(f"{flag} {source} does not exist: expected {wanted}")


def backward_spec(spec):
    """(op, "MODULE:FUNCTION") of a --backward OP=MODULE:FUNCTION flag; UsageError when it
    is not of that form, names no op, or names a .py file that is not there."""
    op, _, function = spec.partition("=")
    module, _, name = function.rpartition(":")
    if not module or not name:
        raise UsageError(f"--backward {spec}: expected OP=MODULE:FUNCTION, e.g. layer_norm=mine:layer_norm_backward")
    if op not in op_pairs():
        raise UsageError(f"--backward {spec}: unknown op {op!r}: expected one of {', '.join(op_pairs())}")
    _python_file_of(spec)
    return op, function


def _check_device(spec):
    if spec is not None and spec != "auto":
        try:
            parse_device(spec)
        except UsageError as error:
            raise UsageError(f"--device {spec}: {error}") from None


def _check_threads(threads):
    if threads is not None:
        from numba import config        # numba's thread pool size, as numba read it at import; no pool starts
        if threads > config.NUMBA_NUM_THREADS:
            raise UsageError(f"--threads {threads}: expected 1 to {config.NUMBA_NUM_THREADS} (numba's thread pool "
                             f"on this machine, NUMBA_NUM_THREADS)")


def _check_model_source(args):
    if args.model is not None:
        model_name("--model", args.model)
    if args.checkpoint is not None and not Path(args.checkpoint).expanduser().exists():
        raise UsageError(f"--checkpoint {args.checkpoint} does not exist: expected a run directory or a checkpoint")
    _check_threads(getattr(args, "threads", None))
    _check_device(getattr(args, "device", None))


def check_generate(args):
    _check_model_source(args)


def check_eval(args):
    existing_file("--data", args.data, "a UTF-8 text file")
    _check_model_source(args)


def check_export(args):
    directory_to_write("--out", args.out, "a directory for the exported model")
    _check_model_source(args)


def check_prepare(args):
    directory_to_write("--out", args.out, "a token store directory")
    if args.tokenizer is not None:
        model_name("--tokenizer", args.tokenizer, files=False)


def check_convert(args):
    existing_file("convert", args.file, "a PyTorch file (.pth, .pt, .bin)")
    if Path(args.file).suffix not in TORCH_SUFFIXES:
        raise UsageError(f"convert {args.file}: expected a PyTorch file ending in {', '.join(TORCH_SUFFIXES)}")
    directory_to_write("--out", args.out, "a directory for the safetensors weights")


def check_plot(args):
    existing_directory(args.run_dir, "a run directory (numgpt train --out RUN)")
    if args.output is not None:
        file_to_write("--output", args.output, PLOT_FORMATS)


def check_gradcheck(args):
    if args.backward is not None:
        _python_file_of(args.backward)


def _python_file_of(spec):
    """UsageError when a --backward value names a .py file that is not there."""
    module = spec.partition("=")[2].rpartition(":")[0] if "=" in spec else spec.rpartition(":")[0]
    if module.endswith(".py") and not Path(module).expanduser().is_file():
        raise UsageError(f"--backward {spec}: {module} is not a file (expected your Python file)")


def check_nothing(args):
    """download and info: their values are checked by the command itself, before it fetches anything."""
