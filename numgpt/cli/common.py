"""The argument-and-error layer the subcommands share: exit statuses, the parser that
prints one line on bad flags, the flags that name a model (--model, --checkpoint, --gpt2), the
device and thread flags, the training window, and the learner's functions named on the command
line (load_function).
"""
import argparse
import importlib
import importlib.util
import os
import signal
import sys
from pathlib import Path

import numpy

from numgpt import backend, cuda
from numgpt.cli.arguments import integer
from numgpt.device import cupy_module, parse_device
from numgpt.errors import UsageError
from numgpt.io.families import get_tokenizer, is_run_or_checkpoint, load_pretrained
from numgpt.io.pretrained import load_gpt2
from numgpt.io.safe_io import check_not_pickle
from numgpt.nn.inference_bf16 import to_bf16_true
from numgpt.precision import PRECISIONS


EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows each flag's default, unless its text already says it or there is none."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return text
        if "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)".lstrip()


class OneLineParser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def add_threads(p):
    p.add_argument("--threads", type=integer(1),
                   help="threads for the numba kernels and the BLAS (default: one per core)")
    p.add_argument("--device", default=None if p.prog.endswith("train") else "auto",
                   help="cpu, cuda, cuda:N or auto (default: cuda when numgpt.cuda.is_available(), else cpu)")


def add_model_source(p):
    """--model, --checkpoint or --gpt2: the model a command reads (load_model)."""
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a Hugging Face hub id (HuggingFaceTB/SmolLM2-135M), a model directory "
                                        "(config.json, safetensors, tokenizer.json), a numgpt run directory "
                                        "or a GPT-2 size")
    source.add_argument("--checkpoint", help="a run directory (its newest checkpoint) or one checkpoint")
    source.add_argument("--gpt2", help="OpenAI's GPT-2 weights: 124m, 355m, 774m, 1558m (from the Hugging "
                                       "Face cache, else downloaded once), or a directory / .safetensors file "
                                       "in the Hugging Face layout")


def add_precision(p):
    p.add_argument("--precision", choices=PRECISIONS, default="32-true",
                   help="32-true: float32 (default); bf16-mixed: the matrix products take bf16 operands "
                        "(numgpt.autocast); bf16-true: weights kept as bf16 (half the memory, CPU only), "
                        "computed in float32")


def load_model(args, precision="32-true"):
    """The model a command names: --model (any source numgpt.load_pretrained takes), --checkpoint
    (a run directory or one checkpoint) or --gpt2 (a size name, a directory or a .safetensors file)."""
    if getattr(args, "gpt2", None):
        model = load_gpt2(args.gpt2)
        return to_bf16_true(model) if precision == "bf16-true" else model
    if getattr(args, "model", None):
        return load_pretrained(args.model, precision=precision)
    path = Path(args.checkpoint)
    if not path.exists():
        raise UsageError(f"checkpoint {path} does not exist")
    if path.is_file():
        check_not_pickle(path)
        raise UsageError(f"checkpoint {path} is a file: expected a numgpt checkpoint or run directory "
                         f"(for GPT-2 weights in a .safetensors file, use --gpt2)")
    if not is_run_or_checkpoint(path):
        raise UsageError(f"{path} holds no committed checkpoint (expected a run directory or a checkpoint)")
    return load_pretrained(path, precision=precision)


def inference_model(args):
    """The model of generate / eval, on its device, in eval mode, at --precision: bf16-true
    keeps the weights as bf16 (numgpt/nn/inference_bf16.py), on the CPU."""
    if args.precision != "bf16-true":
        return load_model(args).eval().to(resolve_device(args.device))
    if args.device not in ("auto", "cpu"):
        raise UsageError(f"--precision bf16-true runs on the CPU: got --device {args.device}, expected cpu or auto")
    return load_model(args, precision="bf16-true")


def source_flag(args):
    """The flag that names the model of a command, with its value: "--checkpoint RUN"."""
    flag = next(name for name in ("model", "checkpoint", "gpt2") if getattr(args, name, None))
    return f"--{flag} {getattr(args, flag)}"


def tokenizer_of(args):
    """The tokenizer of the model a command names (see load_model)."""
    return get_tokenizer(None if getattr(args, "gpt2", None) else (getattr(args, "model", None) or args.checkpoint))


def check_token_ids(model, ids, what, tokenizer):
    """UsageError when ``ids`` (the tokens of ``what``) hold an id the model has no embedding for."""
    vocab_size = model.cfg["vocab_size"]
    largest = int(numpy.max(ids, initial=-1))
    if largest >= vocab_size:
        raise UsageError(f"{what} holds token id {largest}, outside the model's vocab_size {vocab_size} (its "
                         f"tokenizer has {tokenizer.n_vocab} tokens): expected ids below {vocab_size}")


def use_threads(args):
    if args.threads is not None:
        backend.set_num_threads(args.threads)


def resolve_device(spec):
    """--device: "auto" is "cuda" when numgpt.cuda.is_available(), else "cpu"; a "cuda" device
    asked for without CuPy or without a GPU is a one-line error."""
    if spec == "auto":
        return parse_device("cuda" if cuda.is_available() else "cpu")
    device = parse_device(spec)
    if device.type == "cuda":
        cupy_module()
    return device


# The training window when --context-length is not given and the model's own context is longer
# (a Llama-family model knows 8192 to 131072 positions; GPT-2's 1024 stays).
DEFAULT_MAX_WINDOW = 1024


def window(requested, cfg, source):
    """``requested`` (--context-length) or, when None, the model's context up to DEFAULT_MAX_WINDOW.
    A window longer than the model's context is refused: its tokens past the last position have no
    position embedding (GPT-2) or were never trained at (RoPE)."""
    positions = cfg["context_length"]
    if requested is None:
        return min(positions, DEFAULT_MAX_WINDOW)
    if requested > positions:
        raise UsageError(f"--context-length {requested} is longer than the context of the model of {source} "
                         f"({positions} positions): give at most --context-length {positions}")
    return requested


def load_function(spec):
    """The function named by ``module:function`` or ``path/to/file.py:function`` (a learner's code)."""
    module_name, _, function_name = spec.rpartition(":")
    if not module_name or not function_name:
        raise UsageError(f"{spec!r}: expected module:function or path/to/file.py:function")
    try:
        if module_name.endswith(".py") or os.sep in module_name:
            path = Path(module_name)
            if not path.is_file():
                raise UsageError(f"{spec!r}: no file {path}")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())    # as `python -m` would: your modules in this directory
            module = importlib.import_module(module_name)
    except ImportError as error:
        raise UsageError(f"{spec!r}: cannot import {module_name}: {error}") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise UsageError(f"{spec!r}: {module_name} has no function {function_name}")
    return function
