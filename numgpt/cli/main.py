"""The ``numgpt`` command: train, plot, generate, eval, gradcheck, download,
export, info.

Bad input (any ``NumgptError``) ends with exit status 2 and one line on
stderr; any other exception is a bug and shows its traceback (exit 1).
``NUMGPT_DEBUG=1`` shows the traceback of bad input too. Every argument is
checked before the subcommand does any work (numgpt.arguments: the flags'
types and a check per subcommand), and other libraries' log lines, warnings
and progress bars stay off stderr (numgpt.quiet) unless ``NUMGPT_DEBUG=1``. An interrupted
training run (SIGINT, SIGTERM) finishes its step, saves a committed
checkpoint and exits 130 or 143.
"""
import argparse
import contextlib
import dataclasses
import functools
import os
import platform
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

import numpy

from numgpt import __version__ as numgpt_version
from numgpt import arguments, backend, distributed, safe_io
from numgpt.arguments import NO_BACKWARD, byte_size, integer, non_empty, real
from numgpt.errors import NumgptError, UsageError
from numgpt.memory import check_training_fits as _check_memory
from numgpt.memory import memory_available as _memory_available
from numgpt.quiet import debugging, third_parties_quiet

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}
SEED_START_CONTEXT = "Every effort moves you"


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


# the argparse types of the flags below (numgpt.arguments): finite numbers only, each in its range


# ---------------------------------------------------------------- train
# Every training flag and its default: the seed's run. A flag left out is None
# on the command line, so that a resumed run can tell typed flags from defaults.
TRAIN_DEFAULTS = {
    "preset": "gpt2-124m", "init": None, "data": None, "epochs": 10, "max_steps": None, "batch_size": 2,
    "context_length": None, "lr": 4e-4, "weight_decay": 0.1, "drop_rate": None, "grad_clip": None,
    "max_skipped_steps": 5, "eval_freq": 5, "eval_iter": 5, "train_ratio": 0.9, "start_context": SEED_START_CONTEXT,
    "seed": 123, "checkpoint_every": None, "keep_last": None, "allow_special": False, "warmup_steps": 0,
    "lr_schedule": "constant", "min_lr": 0.0, "initial_lr": 0.0, "grad_accum": 1, "threads": None,
    "backward": [], "device": "auto", "tokenizer": None, "sampling": "windows",
}
# The training window when --context-length is not given and the model's own context is longer
# (a Llama-family model knows 8192 to 131072 positions; GPT-2's 1024 stays).
DEFAULT_MAX_WINDOW = 1024
ADAMW_BETAS, ADAMW_EPS = (0.9, 0.999), 1e-8


class StopRequest:
    """SIGINT/SIGTERM handling: the first signal asks the loop to stop after the
    current step; a second one exits at once."""

    def __init__(self):
        self.signum = None

    def __enter__(self):
        self.previous = {s: signal.signal(s, self._handle) for s in EXIT_SIGNAL}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        if self.signum is not None:
            os._exit(EXIT_SIGNAL[signum])  # second signal: now, the last committed checkpoint stays
        self.signum = signum
        print(f"numgpt: {signal.Signals(signum).name} received: finishing the step and saving a checkpoint "
              f"(again to quit at once)", file=sys.stderr, flush=True)


class Stopped(Exception):
    def __init__(self, signum):
        self.signum = signum


def _read_corpus(data):
    """(text, sha256 of its bytes) of --data, or of the bundled corpus when None."""
    from numgpt import bundled
    from numgpt.data import read_text
    path = bundled.bundled_path(bundled.VERDICT) if data is None else Path(data)
    text = read_text(path)
    return text, safe_io.sha256_file(path)


def _recorded_data_present(flags, saved, run):
    """A resumed run whose recorded data file is gone: RunError asking for its new path."""
    from numgpt.run import RunError
    recorded = saved["train"].get("data")
    if flags["data"] == recorded and recorded is not None and not os.path.lexists(recorded):
        raise RunError(f"this run's data {recorded} is gone (in {run.settings_path}, sha256 "
                       f"{saved['data_sha256']}): if it moved, give its new path with --data")


def _same_data(flags, saved, run, data_sha256):
    """A resumed run's data is matched by its bytes (a store by its manifest's), not its path:
    --data NEW_PATH continues a run whose data moved; other bytes are refused."""
    from numgpt.run import RunError
    if data_sha256 != saved["data_sha256"]:
        raise RunError(f"the data {_data_name(flags['data'])} has sha256 {data_sha256}, but this run trained "
                       f"on {_data_name(saved['train'].get('data'))} with sha256 {saved['data_sha256']} (in "
                       f"{run.settings_path}): resume with the same bytes, or start a new run with another --out")


def _data_name(data):
    return data or "the bundled the-verdict.txt"


def _training_data(flags, saved, run, tokenizer, special, context):
    """(train loader, validation loader, data sha256) of --data, checked before training starts;
    a resumed run's (``saved``) must be the data it trained on.

    --data is a text file (default the bundled the-verdict.txt; split at --train-ratio of its
    characters), a token store directory (numgpt prepare; its manifest's sha256 names it) or a
    directory of other tools' token files (nanoGPT, llm.c, Megatron; sha256 over their bytes).
    Either way the windows are read on demand; the training windows are shuffled per epoch by
    the run's generator, or drawn at random offsets with --sampling random."""
    from numgpt.data import DataLoader, GPTDatasetV1, RandomWindowLoader, TokenWindows, split_text
    from numgpt.token_files import holds_token_files, open_token_files
    from numgpt.token_store import MANIFEST, TokenStore
    if saved is not None:
        _recorded_data_present(flags, saved, run)
    path = None if flags["data"] is None else Path(flags["data"])
    if path is not None and path.is_dir():
        if (path / MANIFEST).is_file():
            store = TokenStore(path)
            _check_store_tokenizer(store, tokenizer)
            splits, data_sha256 = {split: store.split(split) for split in ("train", "val")}, store.manifest_sha256
        elif holds_token_files(path):
            splits, data_sha256 = open_token_files(path, tokenizer.n_vocab)
        else:
            raise UsageError(f"--data {path}: a directory with neither a token store ({MANIFEST}) nor *train*.bin "
                             f"token files; make a store with numgpt prepare SOURCE... --out DIR")
        if saved is not None:
            _same_data(flags, saved, run, data_sha256)
        train_set = TokenWindows(splits["train"], context, context, what=f"the training split of {path}")
        val_set = TokenWindows(splits["val"], context, context, what=f"the validation split of {path}")
    else:
        text, data_sha256 = _read_corpus(flags["data"])
        if saved is not None:
            _same_data(flags, saved, run, data_sha256)
        train_text, val_text = split_text(text, flags["train_ratio"])
        with _naming_the_split("training", flags, context):
            train_set = GPTDatasetV1(train_text, tokenizer, context, context, special)
        with _naming_the_split("validation", flags, context):
            val_set = GPTDatasetV1(val_text, tokenizer, context, context, special)
    if flags["sampling"] == "random":
        train_loader = RandomWindowLoader(train_set.tokens, context, flags["batch_size"])
    else:
        train_loader = DataLoader(train_set, batch_size=flags["batch_size"], shuffle=True, drop_last=True)
    val_loader = DataLoader(val_set, batch_size=flags["batch_size"], shuffle=False, drop_last=False)
    return train_loader, val_loader, data_sha256


def _store_vocabulary(flags, cfg, tokenizer_dir):
    """(cfg, tokenizer directory) of a new run from random weights on a token store that has a tokenizer
    of its own (numgpt prepare --tokenizer-train): that tokenizer, and the model's vocab_size its size."""
    from numgpt.token_store import MANIFEST, TOKENIZER_DIR
    store = None if flags["data"] is None else Path(flags["data"])
    own = None if store is None or not (store / MANIFEST).is_file() else store / TOKENIZER_DIR
    if flags["init"] or tokenizer_dir is not None or own is None or not (own / "tokenizer.json").is_file():
        return cfg, tokenizer_dir
    from numgpt.hf_tokenizer import HFTokenizer
    return dict(cfg, vocab_size=HFTokenizer(own).n_vocab), own


def _check_store_tokenizer(store, tokenizer):
    """UsageError unless the run's tokenizer is the one the store was made with."""
    from numgpt.hf_tokenizer import HFTokenizer
    recorded = store.manifest["tokenizer"]
    own = recorded["files"].get("tokenizer.json")
    if own is None and not isinstance(tokenizer, HFTokenizer):
        return                                              # GPT-2's bundled tokenizer on both sides
    if own is not None and isinstance(tokenizer, HFTokenizer):
        actual = safe_io.sha256_file(tokenizer.directory / "tokenizer.json")
        if actual == own:
            return
    raise UsageError(f"{store.manifest_path} was made with the tokenizer {recorded['name']} "
                     f"({'tokenizer.json sha256 ' + own if own else 'GPT-2, bundled'}) but this run tokenizes "
                     f"with {tokenizer.name}: train with the store's tokenizer (--tokenizer {store.directory})")


def _environment():
    import numba
    return {"numgpt": numgpt_version, "python": platform.python_version(), "numpy": numpy.__version__,
            "numba": numba.__version__, "kernel_mode": backend.get_kernel_mode()}


def _train_settings(args, run, processes=1):
    """(resolved flags, the run's saved settings or None) for this invocation.

    A run resumed on another number of processes keeps its global batch
    (batch_size x grad_accum x processes): grad_accum becomes the saved
    product divided by the processes now, which must divide it."""
    from numgpt.run import RunError, resolve_settings
    given = {name: getattr(args, name) for name in TRAIN_DEFAULTS
             if getattr(args, name) is not None and name != "backward"}
    typed_backwards = _typed_backwards(args.backward)
    if "data" in given:
        given["data"] = str(Path(given["data"]).expanduser().resolve())
    saved = run.read_settings()
    if args.resume:
        if saved is None:
            raise RunError(f"--resume: {run.path} holds no run to continue (no {run.settings_path.name}); "
                           f"start one with numgpt train --out {run.path}")
        saved_processes = saved.get("processes", 1)
        if processes != saved_processes:
            micro_batches = saved["train"]["grad_accum"] * saved_processes       # per step, all processes
            if micro_batches % processes:
                raise RunError(f"this run took {micro_batches} micro-batches per step on {saved_processes} "
                               f"processes (in {run.settings_path}); {processes} processes cannot share them "
                               f"evenly: resume on a number of processes that divides {micro_batches}")
            grad_accum = micro_batches // processes
            if given.get("grad_accum", grad_accum) != grad_accum:
                raise RunError(f"--grad-accum {given['grad_accum']}: on {processes} processes this run's global "
                               f"batch needs --grad-accum {grad_accum} (in {run.settings_path}: "
                               f"{saved['train']['grad_accum']} on {saved_processes})")
            given.pop("grad_accum", None)
            saved = dict(saved, train=dict(saved["train"], grad_accum=grad_accum))
        moved_data = given.pop("data", None)                # the data is matched by its sha256 (_run_corpus)
        flags = resolve_settings(given, TRAIN_DEFAULTS, saved["train"], run.settings_path)
        backwards = _resumed_backwards(typed_backwards, saved["train"].get("backward", []), run.settings_path)
        flags = dict(flags, backward=backwards)
        return (flags if moved_data is None else dict(flags, data=moved_data)), saved
    if run.holds_a_run():
        raise RunError(f"{run.path} already holds a run: continue it with numgpt train --resume --out {run.path}, "
                       f"or choose another --out")
    return resolve_settings(dict(given, backward=typed_backwards or []), TRAIN_DEFAULTS), None


def _typed_backwards(specs):
    """The --backward flags as typed: None when none was typed, [] for --backward none."""
    if specs is None:
        return None
    if NO_BACKWARD not in specs:
        return list(specs)
    if len(specs) > 1:
        raise UsageError(f"--backward {NO_BACKWARD} trains with numgpt's own backwards: it cannot go with "
                         f"--backward {next(spec for spec in specs if spec != NO_BACKWARD)}")
    return []


def _resumed_backwards(typed, recorded, settings_path):
    """The learner backwards a resumed run trains with: the ones typed now, never the ones
    its settings.json names (a run directory may come from anyone, and names no code that
    numgpt runs); ``recorded`` is only compared. A run that recorded some needs the same
    flags typed again, or --backward none to go on with numgpt's own."""
    from numgpt.run import RunError
    if typed is None and recorded:
        shown = _as_flags(recorded) if _is_list_of_str(recorded) else f"the value {str(recorded)[:200]!r}"
        raise RunError(f"this run trained with {shown} (in {settings_path}); numgpt runs no code that a run "
                       f"directory names: type the same --backward flags to go on with them, or --backward "
                       f"{NO_BACKWARD} to go on with numgpt's own backwards")
    if typed and typed != recorded:
        shown = _as_flags(recorded) if recorded and _is_list_of_str(recorded) else "numgpt's own backwards"
        raise RunError(f"{_as_flags(typed)} contradicts this run's {shown} (in {settings_path}); type the run's "
                       f"own --backward flags, or --backward {NO_BACKWARD}, or start a new run with another --out")
    return typed or []


def _is_list_of_str(value):
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _as_flags(specs):
    return " ".join(f"--backward {spec}" for spec in specs)


def _model_config(flags):
    """The model config of a new run from a preset (the weights of --init come with theirs)."""
    import copy

    from numgpt.llama import PRESETS as LLAMA_PRESETS
    from numgpt.model import PRESETS
    if flags["preset"] in LLAMA_PRESETS:
        return copy.deepcopy(LLAMA_PRESETS[flags["preset"]])
    cfg = dict(PRESETS[flags["preset"]])
    if flags["context_length"] is not None:
        cfg["context_length"] = flags["context_length"]
    if flags["drop_rate"] is not None:
        cfg["drop_rate"] = flags["drop_rate"]
    return cfg


def _initial_model(flags):
    """(model config, pretrained model or None, tokenizer directory or None) of a new run.
    A tokenizer directory means the model's own tokenizer.json; None, GPT-2's bundled one."""
    from numgpt.families import load_pretrained, locate, tokenizer_directory
    from numgpt.llama import from_hf_config, is_llama_config
    from numgpt.model import GPTModel
    from numgpt.safe_io import read_json
    if not flags["init"]:
        cfg = _model_config(flags)
        if not is_llama_config(cfg):
            return cfg, None, None
        if flags["tokenizer"] is None:
            raise UsageError(f"--preset {flags['preset']} starts from random weights and needs a tokenizer: "
                             f"--tokenizer HF_ID_OR_DIR (a directory with tokenizer.json)")
        directory = tokenizer_directory(flags["tokenizer"])
        if directory is None:
            raise UsageError(f"--tokenizer {flags['tokenizer']} is a GPT-2 model: its tokenizer is numgpt's "
                             f"bundled one, for the GPT presets")
        return cfg, None, directory
    kind, where = locate(flags["init"])
    if kind == "hf":                                        # the shape is known before the weights are read
        hf_config = read_json(Path(where) / "config.json") if (Path(where) / "config.json").is_file() else {}
        if isinstance(hf_config, dict) and is_llama_config(hf_config):
            cfg = from_hf_config(hf_config, where=str(Path(where) / "config.json"))
            _check_memory(cfg, flags["batch_size"], _training_window(flags, cfg), _memory_available())
    model = load_pretrained(where if kind == "hf" else flags["init"])
    if is_llama_config(model.cfg):
        if flags["drop_rate"]:
            raise UsageError(f"--drop-rate {flags['drop_rate']}: {model.cfg['model_type']} models train without "
                             f"dropout in numgpt (leave --drop-rate out)")
        return model.cfg, model, tokenizer_directory(where if kind == "hf" else flags["init"])
    if flags["drop_rate"] is None or flags["drop_rate"] == model.cfg["drop_rate"]:
        return model.cfg, model, None
    weights, cfg = model.state_dict(), dict(model.cfg, drop_rate=flags["drop_rate"])
    model = GPTModel(cfg)                                   # the weights, in a model built with this dropout
    model.load_state_dict(weights)
    return cfg, model, None


def _training_window(flags, cfg):
    """The window of a run: --context-length (at most the model's context), else the model's up to
    DEFAULT_MAX_WINDOW."""
    source = f"--init {flags['init']}" if flags["init"] else f"--preset {flags['preset']}"
    return _window(flags["context_length"], cfg, source)


def _window(requested, cfg, source):
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


def _load_learner_backwards(typed):
    """[(op, function, spec)] from the --backward OP=MODULE:FUNCTION flags as typed on the
    command line (None or [none]: numgpt's own backwards). It imports the learner's modules:
    only ever called with the command line's flags, never with a value read from a file."""
    chosen = []
    for spec in _typed_backwards(typed) or []:
        op, function = arguments.backward_spec(spec)
        chosen.append((op, load_function(function), spec))
    return chosen


def cmd_train(args):
    from numgpt.families import RUN_TOKENIZER_DIR, copy_tokenizer
    from numgpt.llama import is_llama_config
    from numgpt.run import RunDirectory, RunError
    from numgpt.tokenizer import get_tokenizer

    world = distributed.world()                             # one process, unless started by mpiexec
    run = RunDirectory(args.out)
    # A run directory that exists is locked before anything is read: a second process stops here. A new
    # one is created only after every check below, so that a start that fails leaves nothing behind.
    existed = world.any(os.path.lexists(run.path)) if world.size > 1 else os.path.lexists(run.path)
    if existed:
        _claim(run, world)
    flags, saved = _train_settings(args, run, world.size)
    world.barrier()                                         # every rank has read the settings before rank 0 writes
    if flags["threads"] is not None:
        backend.set_num_threads(flags["threads"])
    elif world.size > 1:                                    # the cores shared by this machine's ranks
        backend.set_num_threads(max(1, (os.cpu_count() or 1) // distributed.local_ranks()))
    yours = _load_learner_backwards(args.backward)     # typed now; settings.json's are only compared
    device = resolve_device(flags["device"])
    if saved is not None:
        cfg, pretrained = saved["model"], None              # the weights come from the checkpoint
        own = is_llama_config(cfg) or (run.path / RUN_TOKENIZER_DIR / "tokenizer.json").is_file()
        tokenizer_dir = run.path / RUN_TOKENIZER_DIR if own else None
        environment = _environment()
        if environment != saved["environment"]:
            changed = ", ".join(f"{k} {saved['environment'].get(k)} -> {v}" for k, v in environment.items()
                                if saved["environment"].get(k) != v)
            print(f"numgpt train: note: resuming with {changed}: the continuation may differ from an "
                  f"uninterrupted run in the last bits", file=sys.stderr)
    else:
        cfg, pretrained, tokenizer_dir = _initial_model(flags)
        cfg, tokenizer_dir = _store_vocabulary(flags, cfg, tokenizer_dir)
    context = _training_window(flags, cfg)
    flags = dict(flags, context_length=context, drop_rate=cfg["drop_rate"])
    if saved is None and flags["init"]:
        flags["preset"] = None                              # the shape is --init's
        if tokenizer_dir is not None:
            flags["tokenizer"] = str(tokenizer_dir)
    _check_memory(cfg, flags["batch_size"], context, _memory_available())

    if tokenizer_dir is None:
        tokenizer = get_tokenizer()
        special = {"<|endoftext|>"} if flags["allow_special"] else ()
    else:
        from numgpt.hf_tokenizer import HFTokenizer
        tokenizer = HFTokenizer(tokenizer_dir)
        special = tokenizer.special_tokens_set if flags["allow_special"] else ()
        if tokenizer.n_vocab > cfg["vocab_size"]:
            raise UsageError(f"the tokenizer in {tokenizer_dir} has {tokenizer.n_vocab} tokens, more than the "
                             f"model's vocab_size {cfg['vocab_size']}")
    train_loader, val_loader, data_sha256 = _training_data(flags, saved, run, tokenizer, special, context)
    steps_per_epoch = len(train_loader) // (flags["grad_accum"] * world.size)
    if steps_per_epoch == 0:
        raise UsageError(f"the training text gives no full step of {flags['grad_accum']} x {flags['batch_size']} "
                         f"x {context} tokens{f' on each of {world.size} processes' if world.size > 1 else ''}: "
                         f"lower --batch-size, --grad-accum or --context-length")
    total_steps = flags["epochs"] * steps_per_epoch
    if flags["max_steps"] is not None:
        total_steps = min(total_steps, flags["max_steps"])

    created = None if existed else _claim(run, world)      # every check passed: the run directory now
    try:
        if not existed and not args.resume and world.is_main and run.holds_a_run():
            raise RunError(f"{run.path} already holds a run (another numgpt train started it meanwhile): "
                           f"continue it with numgpt train --resume --out {run.path}, or choose another --out")
        if saved is None and tokenizer_dir is not None and world.is_main:
            copy_tokenizer(tokenizer_dir, run.path)         # the run keeps its tokenizer: resumable offline
        started = _start_training(run, world, flags, saved, cfg, pretrained, device, total_steps, data_sha256)
    except BaseException:
        if created is not None:                            # a start that fails leaves no directory it created
            shutil.rmtree(created, ignore_errors=True)
        raise
    if started is None:
        return 0                                            # a finished run: nothing left to do
    model, optimizer, manager, state, schedule = started
    if not world.is_main:
        return _follow(world, model, optimizer, train_loader, val_loader, tokenizer, flags, schedule, state)
    return _train_run(run, world, flags, yours, model, optimizer, manager, state, schedule, train_loader,
                      val_loader, tokenizer)


def _claim(run, world):
    """Lock the run directory on rank 0, creating it when missing; the others wait for it. Returns
    the topmost directory this call created (None when ``run.path`` existed), for a failed start
    to remove, and nothing that was there before."""
    from numgpt.run import RunError
    created = None
    if world.is_main:
        path = run.path.absolute()
        while not os.path.lexists(path):
            created, path = path, path.parent
        try:
            run.lock()                                      # before anything is read or written
        except OSError as error:
            raise RunError(f"cannot use {run.path} as the run directory: {error.strerror or error}") from None
    world.barrier()                                         # the others read it once rank 0 holds it
    return created


def _start_training(run, world, flags, saved, cfg, pretrained, device, total_steps, data_sha256):
    """The model, optimizer, checkpoint manager, training state and schedule of the run, restored
    from its newest checkpoint when it resumes; the settings written. None, with a message, when a
    resumed run has no step left to take (nothing is written then)."""
    from numgpt.checkpoint import CheckpointManager, restore
    from numgpt.families import model_from_config
    from numgpt.optim import AdamW
    from numgpt.train import LRSchedule, TrainState

    schedule = LRSchedule(peak_lr=flags["lr"], total_steps=total_steps, warmup_steps=flags["warmup_steps"],
                          kind=flags["lr_schedule"], min_lr=flags["min_lr"], initial_lr=flags["initial_lr"])
    reanchored = []
    backend.manual_seed(flags["seed"])
    model = pretrained if pretrained is not None else model_from_config(cfg)   # on the host, as on every device
    model.to(device)
    optimizer = AdamW(model.parameters(), lr=flags["lr"], betas=ADAMW_BETAS, eps=ADAMW_EPS,
                      weight_decay=flags["weight_decay"])
    manager = CheckpointManager(run.checkpoints, keep_last=flags["keep_last"])
    state = TrainState()
    if saved is not None:
        if world.is_main:
            manager.clean_stale()
        world.barrier()
        checkpoint = manager.load_latest()
        if checkpoint is None:
            if world.is_main:
                print(f"numgpt train: note: {run.path} holds no committed checkpoint yet: starting the run over "
                      f"from step 0", file=sys.stderr)
        else:
            restore(checkpoint, model, optimizer, require=("rng_state", "train_state"))
            state = TrainState.from_dict(checkpoint.state["train_state"], checkpoint.path / "checkpoint.json")
            if state.global_step + 1 >= total_steps:
                if world.is_main:
                    print(f"Nothing left to do: {run.path} has taken its {total_steps} steps (steps 0 to "
                          f"{total_steps - 1}; {checkpoint.path} holds step {state.global_step}); raise --max-steps "
                          f"or --epochs to train further")
                return None
            if world.is_main:
                print(f"Resuming from {checkpoint.path} (step {state.global_step} done, step "
                      f"{state.global_step + 1} next)")
            schedule, reanchored = _resumed_schedule(saved, run.settings_path, schedule, state.global_step + 1,
                                                     world.is_main)
    if world.is_main:
        run.write_settings({
            "train": flags, "data_sha256": data_sha256, "model": cfg,
            "optimizer": {"name": "AdamW", "lr": flags["lr"], "weight_decay": flags["weight_decay"],
                          "betas": list(ADAMW_BETAS), "eps": ADAMW_EPS},
            "schedule": {"kind": flags["lr_schedule"], "warmup_steps": flags["warmup_steps"],
                         "initial_lr": flags["initial_lr"], "peak_lr": flags["lr"], "min_lr": flags["min_lr"],
                         "total_steps": total_steps, "grad_accum": flags["grad_accum"], "reanchored": reanchored},
            "environment": saved["environment"] if saved is not None else _environment(),
            "processes": world.size,
        })
    return model, optimizer, manager, state, schedule


def _resumed_schedule(saved, source, schedule, next_step, say):
    """(the schedule, its re-anchoring record) of a run resumed at ``next_step``: the one the run was
    following (settings.json's total_steps and re-anchorings), re-anchored when the run's length
    changed and its rate depends on it (LRSchedule.reanchored): the rate goes on from where it was."""
    from numgpt.run import RunError
    recorded = saved.get("schedule", {})
    reanchored = list(recorded.get("reanchored", []))
    if not all(isinstance(entry, dict) and type(entry.get("step")) is int and type(entry.get("lr")) is float
               and type(entry.get("total_steps")) is int for entry in reanchored):
        raise RunError(f"{source}: schedule.reanchored must be a list of {{step, lr, total_steps}} records, "
                       f"got {reanchored!r}")
    previous = dataclasses.replace(schedule, total_steps=recorded.get("total_steps", schedule.total_steps))
    if reanchored:
        previous = dataclasses.replace(previous, anchor_step=reanchored[-1]["step"], anchor_lr=reanchored[-1]["lr"])
    resumed = previous.reanchored(next_step, schedule.total_steps)
    if resumed.anchor_step != previous.anchor_step or resumed.anchor_lr != previous.anchor_lr:
        reanchored.append({"step": next_step, "lr": resumed.anchor_lr, "total_steps": resumed.total_steps})
        if say:
            print(f"numgpt train: note: this run now takes {resumed.total_steps} steps, not {previous.total_steps}: "
                  f"its cosine goes on from the rate of step {next_step - 1} ({resumed.anchor_lr:.4g}) down to "
                  f"--min-lr {resumed.min_lr:g} at the run's new end (recorded in settings.json's "
                  f"schedule.reanchored)", file=sys.stderr)
    return resumed, reanchored


def _train_run(run, world, flags, yours, model, optimizer, manager, state, schedule, train_loader, val_loader,
               tokenizer):
    """Rank 0's training loop, checkpoints, metrics and plot; its exit status."""
    import contextlib

    from numgpt.registry import use_backward
    from numgpt.run import RunError
    from numgpt.train import NonFiniteTraining, train_model_simple

    records = run.start_metrics(keep_through_step=state.global_step)
    saved_step = state.global_step                          # the step the newest checkpoint holds (-1: none)

    def save():
        """A checkpoint named by the step it holds, the seed's 0-based step of the log lines, once."""
        nonlocal saved_step
        if state.global_step != saved_step:
            path = manager.save(state.global_step, model, optimizer, rng_state=backend.get_rng_state(),
                                train_state=state.to_dict())
            saved_step = state.global_step
            print(f"Saved checkpoint {path}", flush=True)
        world.barrier()                                     # the other ranks wait for the commit

    def after_evaluation(current, record):
        run.append_metrics(record)
        records.append(record)
        run.write_losses(current, records)
        run.draw_plot(records)

    start_time = time.time()
    try:
        with StopRequest() as stop, contextlib.ExitStack() as backwards:
            for op, function, spec in yours:
                backwards.enter_context(use_backward(op, function))
                print(f"{op} trains with your backward {spec.partition('=')[2]}", flush=True)

            def after_step(current):
                if world.any(stop.signum is not None):      # every rank stops after the same step
                    save()
                    raise Stopped(stop.signum or signal.SIGTERM)
                if flags["checkpoint_every"] and (current.global_step + 1) % flags["checkpoint_every"] == 0:
                    save()

            try:
                train_model_simple(model, train_loader, val_loader, optimizer, "cpu", tokenizer=tokenizer,
                                   on_evaluate=after_evaluation,
                                   **_loop_options(flags, schedule, after_step, state, world))
            except Stopped as stopped:
                return EXIT_SIGNAL[stopped.signum]
            except NonFiniteTraining as exc:
                print(f"numgpt train: error: {exc}; {_resume_point(manager, run)}", file=sys.stderr)
                return EXIT_FAILURE
        minutes = (time.time() - start_time) / 60
        print(f"Training completed in {minutes:.2f} minutes.")
        save()
        run.write_losses(state, records)
        if records:
            run.draw_plot(records)
    except NumgptError as exc:                              # e.g. a full disk: one line, naming what is kept
        raise RunError(f"{exc}; {_resume_point(manager, run)}") from exc
    except Exception:                                       # a bug: what is kept, then its traceback
        print(f"numgpt train: training failed; {_resume_point(manager, run)}", file=sys.stderr, flush=True)
        raise
    print(f"Wrote {run.plot_path}, {run.losses_path} and {run.metrics_path}")
    return 0


def _resume_point(manager, run):
    """Which committed checkpoint a failed run keeps, and how to go on from it."""
    latest = manager.latest()
    if latest is None:
        return (f"no checkpoint was committed (--checkpoint-every N saves one every N steps); "
                f"numgpt train --resume --out {run.path} starts the run over")
    return f"the last committed checkpoint is {latest}: continue from it with numgpt train --resume --out {run.path}"


@contextlib.contextmanager
def _naming_the_split(split, flags, context):
    """A split too short for one window becomes a UsageError naming the split, its tokens and the
    flags that would help."""
    from numgpt.data import TooFewTokens
    try:
        yield
    except TooFewTokens as short:
        ratio = flags["train_ratio"]
        if split == "training":
            share, more = f"the first {ratio:.0%}", "a larger"
        else:
            share, more = f"the last {1 - ratio:.0%}", "a smaller"
        data = flags["data"] or "the bundled the-verdict.txt"
        raise UsageError(f"the {split} split of {data} ({share} of its characters, --train-ratio {ratio:g}) has "
                         f"{short.n_tokens} tokens, and one window of --context-length {context} needs "
                         f"{context + 1}: give {more} --train-ratio, a smaller --context-length or a longer "
                         f"text") from None


def _loop_options(flags, schedule, after_step, state, world):
    """train_model_simple's options from the run's flags, the same on every rank."""
    return dict(num_epochs=flags["epochs"], eval_freq=flags["eval_freq"], eval_iter=flags["eval_iter"],
                start_context=flags["start_context"], max_steps=flags["max_steps"], grad_clip=flags["grad_clip"],
                grad_accum=flags["grad_accum"], lr_schedule=schedule, on_step=after_step, on_epoch_end=after_step,
                state=state, max_skipped_steps=flags["max_skipped_steps"], world=world)


def _follow(world, model, optimizer, train_loader, val_loader, tokenizer, flags, schedule, state):
    """A rank other than 0: the same loop, writing nothing; it meets rank 0 at every
    stop check and checkpoint commit (barriers)."""
    from numgpt.train import NonFiniteTraining, train_model_simple

    with StopRequest() as stop:
        def after_step(current):
            if world.any(stop.signum is not None):
                world.barrier()                              # rank 0's checkpoint
                raise Stopped(stop.signum or signal.SIGTERM)
            if flags["checkpoint_every"] and (current.global_step + 1) % flags["checkpoint_every"] == 0:
                world.barrier()

        try:
            train_model_simple(model, train_loader, val_loader, optimizer, "cpu", tokenizer=tokenizer,
                               **_loop_options(flags, schedule, after_step, state, world))
        except Stopped as stopped:
            return EXIT_SIGNAL[stopped.signum]
        except NonFiniteTraining:
            return EXIT_FAILURE
    world.barrier()                                          # rank 0's final checkpoint
    return 0


def cmd_plot(args):
    from numgpt.run import RunDirectory
    run = RunDirectory(args.run_dir)
    records = run.read_metrics()
    if not records:
        raise UsageError(f"{run.metrics_path} holds no evaluation to plot (expected a numgpt run directory)")
    print(f"Wrote {run.draw_plot(records, args.output)}")
    return 0


# ---------------------------------------------------------------- generate / eval
def _load_model(args):
    """The model a command names: --model (any source numgpt.load_pretrained takes), --checkpoint
    (a run directory or one checkpoint) or --gpt2 (a size name, a directory or a .safetensors file)."""
    if getattr(args, "gpt2", None):
        from numgpt.pretrained import load_gpt2
        return load_gpt2(args.gpt2)
    from numgpt.families import is_run_or_checkpoint, load_pretrained
    from numgpt.safe_io import check_not_pickle
    if getattr(args, "model", None):
        return load_pretrained(args.model)
    path = Path(args.checkpoint)
    if not path.exists():
        raise UsageError(f"checkpoint {path} does not exist")
    if path.is_file():
        check_not_pickle(path)
        raise UsageError(f"checkpoint {path} is a file: expected a numgpt checkpoint or run directory "
                         f"(for GPT-2 weights in a .safetensors file, use --gpt2)")
    if not is_run_or_checkpoint(path):
        raise UsageError(f"{path} holds no committed checkpoint (expected a run directory or a checkpoint)")
    return load_pretrained(path)


def _source_flag(args):
    """The flag that names the model of a command, with its value: "--checkpoint RUN"."""
    flag = next(name for name in ("model", "checkpoint", "gpt2") if getattr(args, name, None))
    return f"--{flag} {getattr(args, flag)}"


def _tokenizer_of(args):
    """The tokenizer of the model a command names (see _load_model)."""
    from numgpt.families import get_tokenizer
    return get_tokenizer(None if getattr(args, "gpt2", None) else (getattr(args, "model", None) or args.checkpoint))


def _check_token_ids(model, ids, what, tokenizer):
    """UsageError when ``ids`` (the tokens of ``what``) hold an id the model has no embedding for."""
    vocab_size = model.cfg["vocab_size"]
    largest = int(numpy.max(ids, initial=-1))
    if largest >= vocab_size:
        raise UsageError(f"{what} holds token id {largest}, outside the model's vocab_size {vocab_size} (its "
                         f"tokenizer has {tokenizer.n_vocab} tokens): expected ids below {vocab_size}")


def _use_threads(args):
    if args.threads is not None:
        backend.set_num_threads(args.threads)


def resolve_device(spec):
    """--device: "auto" is "cuda" when numgpt.cuda.is_available(), else "cpu"; a "cuda" device
    asked for without CuPy or without a GPU is a one-line error."""
    from numgpt import cuda
    from numgpt.device import cupy_module, parse_device
    if spec == "auto":
        return parse_device("cuda" if cuda.is_available() else "cpu")
    device = parse_device(spec)
    if device.type == "cuda":
        cupy_module()
    return device


def cmd_generate(args):
    from numgpt.generate import generate
    from numgpt.tokenizer import text_to_token_ids, token_ids_to_text
    _use_threads(args)
    model = _load_model(args).eval().to(resolve_device(args.device))
    tokenizer = _tokenizer_of(args)
    backend.manual_seed(args.seed)
    idx = text_to_token_ids(args.prompt, tokenizer)
    if idx.shape[1] == 0:
        raise UsageError(f"--prompt {args.prompt!r} encodes to no token: give some text the tokenizer keeps")
    _check_token_ids(model, idx, "--prompt", tokenizer)
    out = generate(model, idx, args.max_new_tokens, model.cfg["context_length"], temperature=args.temperature,
                   top_k=args.top_k, eos_id=None if args.no_eos else tokenizer.eot_token)
    print(token_ids_to_text(out, tokenizer))
    return 0


def cmd_eval(args):
    from numgpt.data import TooFewTokens, create_dataloader_v1, read_text
    from numgpt.train import calc_loss_loader, perplexity
    _use_threads(args)
    model = _load_model(args).eval().to(resolve_device(args.device))
    context = _window(args.context_length, model.cfg, _source_flag(args))
    tokenizer = _tokenizer_of(args)
    try:
        loader = create_dataloader_v1(read_text(args.data), batch_size=args.batch_size, max_length=context,
                                      stride=context, shuffle=False, drop_last=False, tokenizer=tokenizer)
    except TooFewTokens as short:
        raise UsageError(f"--data {args.data} has {short.n_tokens} tokens; one window of --context-length {context} "
                         f"needs {context + 1}: give a longer text or a smaller --context-length") from None
    for ids in (loader.dataset.input_ids, loader.dataset.target_ids):
        _check_token_ids(model, ids, f"--data {args.data}", tokenizer)
    from numgpt.autograd import no_grad
    with no_grad():
        loss = calc_loss_loader(loader, model)
    print(f"loss {loss:.4f}, perplexity {perplexity(loss):.2f} ({len(loader)} batches of {context} tokens)")
    return 0


# ---------------------------------------------------------------- gradcheck
def load_function(spec):
    """The function named by ``module:function`` or ``path/to/file.py:function`` (a learner's code)."""
    import importlib
    import importlib.util
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


GRADCHECK_NAME_WIDTH = 24     # the column of case names: the longest, grouped_query_attention, and a space


def _gradcheck_line(name, label, result):
    verdict = "ok    " if result.ok else "FAILED"
    return (f"{name:<{GRADCHECK_NAME_WIDTH}} {label:<11} {verdict} worst rel error {result.worst_rel_error:.2e} "
            f"(abs {result.worst_abs_error:.2e}, {result.checked} elements)")


def _twin_difference(name):
    """The largest difference of the numba twin's output and gradients from the reference's, relative."""
    import numpy as np
    from numgpt.gradcheck import analytic_gradients
    reference = analytic_gradients(name, "reference")
    twin = analytic_gradients(name, "numba")
    pairs = [(reference[0], twin[0])] + list(zip(reference[1], twin[1]))
    return max(float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-300)) for a, b in pairs)


def _has_twin(case):
    from numgpt.registry import fused_twins, numba_twins, op_pairs
    if case.fused is not None:
        return case.fused in fused_twins()
    return case.op is not None and any(fn in numba_twins() for fn in op_pairs()[case.op])


def _tolerance_words(tolerance):
    from numgpt.gradcheck import TOLERANCES
    atol, rtol = TOLERANCES[tolerance]
    return f"tolerance {tolerance}: |analytic - numeric| <= {atol:.0e} + {rtol:.0e} |numeric|"


def cmd_gradcheck(args):
    # a numba twin computes in float64 what its reference computes, in another order: round-off apart
    from numgpt.gradcheck import ROUNDOFF_RTOL, check_case, check_model, kernel_mode, op_cases
    from numgpt.registry import op_pairs
    cases = op_cases()
    if args.list:
        for name, case in cases.items():
            pair = op_pairs()[case.op] if case.op else None
            if case.fused is not None:
                where = f"{case.fused.__module__}: {case.fused.__name__}, its parts op by op"
            elif pair:
                where = f"{pair.forward.__module__}: {pair.forward.__name__} / {pair.backward.__name__}"
            else:
                where = "the autograd's own op (numgpt/ops/shape.py, elementwise.py)"
            twin = " (numba twin)" if _has_twin(case) else ""
            print(f"{name:<{GRADCHECK_NAME_WIDTH}} {where}{twin}")
        print(f"{'model':<{GRADCHECK_NAME_WIDTH}} every parameter of a tiny GPTModel")
        return 0
    names = list(cases) + ["model"]
    if args.op and args.op not in names:
        raise UsageError(f"unknown op {args.op!r}: expected one of {', '.join(names)} (numgpt gradcheck --list)")
    if args.backward and not args.op:
        raise UsageError("--backward needs the op it replaces: numgpt gradcheck OP --backward module:function")
    if args.backward:
        return _check_your_backward(args.op, load_function(args.backward), args.backward, args.tolerance)
    twins = args.kernels == "numba"
    print("float64 central differences with a random upstream gradient, of numgpt's reference pairs (numgpt/ops)"
          + (" and their numba twins (numgpt/registry.py)" if twins else "") + f"; {_tolerance_words(args.tolerance)}")
    failed = 0
    for name in [args.op] if args.op else names:
        if name == "model":
            results = [("reference", check_model(tolerance=args.tolerance))]
            if twins:
                with kernel_mode("numba"):
                    results.append(("numba twin", check_model(tolerance=args.tolerance)))
        else:
            results = [("reference", check_case(name, tolerance=args.tolerance))]
            if twins and _has_twin(cases[name]):
                results.append(("numba twin", check_case(name, "numba", tolerance=args.tolerance)))
        for label, result in results:
            failed += not result.ok
            print(_gradcheck_line(name, label, result))
            if args.op:
                _print_inputs(result)
        if twins and name != "model" and _has_twin(cases[name]):
            difference = _twin_difference(name)
            failed += difference > ROUNDOFF_RTOL
            print(f"{'':<{GRADCHECK_NAME_WIDTH}} {'twin':<11} {'ok    ' if difference <= ROUNDOFF_RTOL else 'FAILED'} output and "
                  f"gradients within {difference:.1e} of the reference (relative; limit {ROUNDOFF_RTOL:.0e})")
    return 1 if failed else 0


def _print_inputs(result):
    for report in result.inputs:
        print(f"    {report.name:<10} {str(report.shape):<12} {'ok    ' if report.ok else 'FAILED'} worst abs "
              f"{report.worst_abs_error:.2e}, worst rel {report.worst_rel_error:.2e}, at {report.worst_index}: "
              f"analytic {report.analytic:.6e}, numeric {report.numeric:.6e}")


def _check_your_backward(name, backward, spec, tolerance):
    """Finite differences at ``tolerance``, and numgpt's reference at round-off whatever the tolerance:
    a backward that finite differences pass but that differs from numgpt's beyond round-off is FAILED."""
    from numgpt.gradcheck import check_case
    if name == "model":
        raise UsageError("--backward replaces one op's backward: name the op (numgpt gradcheck --list)")
    result = check_case(name, backward=backward, tolerance=tolerance)
    print(f"{name} with your backward {spec}, against float64 central differences ({_tolerance_words(tolerance)}):")
    _print_inputs(result)
    print(f"    {result.reference.describe()}")
    if all(report.ok for report in result.inputs) and not result.reference.ok:
        print(f"    finite differences alone pass at tolerance {tolerance}; numgpt's backward, "
              f"at float64 round-off, does not")
    print("ok" if result.ok else "FAILED")
    return 0 if result.ok else 1


# ---------------------------------------------------------------- GPT-2 weights
def cmd_download(args):
    from numgpt.download import canonical_size, download_gpt2
    if canonical_size(args.model) is not None or "/" not in args.model:     # a GPT-2 size (or a wrong one)
        directory = download_gpt2(args.model)
        print(f"GPT-2 weights in {directory}")
        return 0
    from numgpt.hub import download_model
    directory = download_model(args.model, revision=args.revision)
    print(f"{args.model} in {directory}")
    return 0


def cmd_export(args):
    from numgpt.families import export_pretrained
    from numgpt.llama import describe, is_llama_config
    model = _load_model(args)
    tokenizer_dir = None
    if is_llama_config(model.cfg):
        from numgpt.families import tokenizer_directory
        tokenizer_dir = tokenizer_directory(args.model or args.checkpoint)
    directory = export_pretrained(model, args.out, tokenizer_dir=tokenizer_dir, max_shard_bytes=args.max_shard_size)
    family = describe(model.cfg) if is_llama_config(model.cfg) else "GPT-2"
    print(f"Wrote the Hugging Face layout of {family} to {directory}")
    return 0


def cmd_info(args):
    from numgpt.info import describe
    facts = describe()
    width = max(len(label) for label, _ in facts)
    for label, value in facts:
        print(f"{label:<{width}}  {value}")
    return 0


# ---------------------------------------------------------------- prepare
def cmd_prepare(args):
    from numgpt.prepare import prepare
    if args.tokenizer_train and args.vocab_size is None:
        raise UsageError("--tokenizer-train needs --vocab-size N (the number of ids of the new tokenizer)")
    if args.vocab_size is not None and not args.tokenizer_train:
        raise UsageError("--vocab-size is the size of a tokenizer to train: add --tokenizer-train")
    if args.tokenizer_train and args.tokenizer is not None:
        raise UsageError("--tokenizer-train makes a tokenizer of its own: leave --tokenizer out")
    started = time.time()
    manifest = prepare(args.sources, args.out, tokenizer=args.tokenizer, workers=args.workers,
                       shard_tokens=args.shard_tokens, val_fraction=args.val_fraction, val_docs=args.val_docs,
                       train_ratio=args.train_ratio, text_field=args.text_field, allow_special=args.allow_special,
                       train_vocab_size=args.vocab_size, split=args.split)
    splits = manifest["splits"]
    print(f"Wrote a token store of {splits['train']['n_tokens']:,} training and {splits['val']['n_tokens']:,} "
          f"validation tokens ({manifest['dtype']}, {manifest['documents']:,} documents, tokenizer "
          f"{manifest['tokenizer']['name']}) to {args.out} in {time.time() - started:.1f} s")
    return 0


# ---------------------------------------------------------------- the parser
def _add_threads(p):
    p.add_argument("--threads", type=integer(1),
                   help="threads for the numba kernels and the BLAS (default: one per core)")
    p.add_argument("--device", default=None if p.prog.endswith("train") else "auto",
                   help="cpu, cuda, cuda:N or auto (default: cuda when numgpt.cuda.is_available(), else cpu)")


def build_parser():
    from numgpt.llama import PRESETS as LLAMA_PRESETS
    from numgpt.model import PRESETS
    from numgpt.run import SAFE_TO_CHANGE
    from numgpt.train import LRSchedule
    parser = OneLineParser(prog="numgpt", description="GPT pretraining in pure NumPy.")
    parser.add_argument("--version", action="version", version=f"numgpt {numgpt_version}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    safe = ", ".join("--" + name.replace("_", "-") for name in SAFE_TO_CHANGE)
    train = sub.add_parser(
        "train", help="pretrain (or continue pretraining) a GPT on a text file",
        description="Pretrain a GPT. With no flags: the seed's run (GPT_CONFIG_124M on the bundled "
                    "the-verdict.txt, 10 epochs) into ./run. The run directory remembers its settings: "
                    f"--resume --out RUN continues with them; of the other flags only {safe} may change.")
    d = TRAIN_DEFAULTS
    train.add_argument("--data", help="UTF-8 text file (default: the seed's the-verdict.txt, bundled with numgpt), "
                                      "a token store (numgpt prepare), or a directory of nanoGPT, llm.c or Megatron "
                                      "*train*.bin / *val*.bin token files")
    train.add_argument("--sampling", choices=("windows", "random"),
                       help="windows: every window at a stride, shuffled per epoch (the seed's, default); "
                            "random: windows at random offsets (nanoGPT's)")
    train.add_argument("--out", default="run", help="run directory: settings, metrics, checkpoints, loss plot "
                                                    "(default: ./run)")
    train.add_argument("--preset", choices=sorted(PRESETS) + sorted(LLAMA_PRESETS),
                       help=f"model shape, from random weights (default {d['preset']})")
    train.add_argument("--init", help="start from pretrained weights: a hub id (HuggingFaceTB/SmolLM2-135M), a "
                                      "model directory, a run directory, gpt2-124m or a .safetensors file")
    train.add_argument("--tokenizer", help="the tokenizer of a Llama-family --preset: a hub id or a directory "
                                           "with tokenizer.json (--init brings its own)")
    train.add_argument("--epochs", type=integer(1), help=f"default {d['epochs']}")
    train.add_argument("--max-steps", type=integer(1), help="stop after this many optimizer steps in all")
    train.add_argument("--batch-size", type=integer(1), help=f"default {d['batch_size']}")
    train.add_argument("--grad-accum", type=integer(1),
                       help="sum the gradients of K batches into one AdamW step (an effective batch K times "
                            "larger in the memory of one; default 1)")
    train.add_argument("--context-length", type=integer(1),
                       help="window length (max_length = stride); default the preset's context")
    train.add_argument("--lr", type=real(0), help=f"peak learning rate (default {d['lr']})")
    train.add_argument("--lr-schedule", choices=LRSchedule.KINDS,
                       help="after the warmup: constant (the seed's, default) or cosine decay to --min-lr")
    train.add_argument("--warmup-steps", type=integer(0),
                       help="linear warmup from --initial-lr to --lr over this many steps (default 0)")
    train.add_argument("--initial-lr", type=real(0), help="learning rate of the first warmup step "
                                                                      "(default 0)")
    train.add_argument("--min-lr", type=real(0), help="where the cosine ends (default 0)")
    train.add_argument("--weight-decay", type=real(0), help=f"default {d['weight_decay']}")
    train.add_argument("--drop-rate", type=real(0, 1, high_open=True), help="in [0, 1); default the preset's (0.1)")
    train.add_argument("--grad-clip", type=real(0),
                       help="clip the global gradient norm to this (0: no clipping, as nanoGPT's grad_clip = 0.0 "
                            "and the Hugging Face Trainer's max_grad_norm = 0; default: no clipping)")
    train.add_argument("--max-skipped-steps", type=integer(1),
                       help="stop after this many consecutive steps with a non-finite loss or gradient (default 5)")
    train.add_argument("--eval-freq", type=integer(1), help=f"evaluate every N steps (default {d['eval_freq']})")
    train.add_argument("--eval-iter", type=integer(1), help=f"batches per evaluation (default {d['eval_iter']})")
    train.add_argument("--train-ratio", type=real(0, 1, low_open=True, high_open=True),
                       help=f"the first part of the text that trains, in (0, 1); the rest validates "
                            f"(default {d['train_ratio']})")
    train.add_argument("--start-context", type=non_empty, help=f"the sample's prompt (default {d['start_context']!r})")
    train.add_argument("--seed", type=integer(0), help=f"default {d['seed']}")
    train.add_argument("--checkpoint-every", type=integer(1), help="save every N steps (and always at the end)")
    train.add_argument("--keep-last", type=integer(1), help="keep only the newest K checkpoints")
    train.add_argument("--resume", action="store_true", help="continue the run in --out with its settings")
    train.add_argument("--allow-special", action="store_true", default=None,
                       help="encode a literal <|endoftext|> in the text as the special token (default: as text)")
    train.add_argument("--backward", action="append", metavar="OP=MODULE:FUNCTION",
                       help="train with your backward for OP (repeatable), e.g. layer_norm=mine:layer_norm_backward; "
                            "--resume needs the run's flags typed again (numgpt runs no code a run directory "
                            "names), or --backward none to go on with numgpt's own")
    _add_threads(train)
    train.set_defaults(run=cmd_train, check=functools.partial(arguments.check_train, defaults=TRAIN_DEFAULTS))

    plot = sub.add_parser("plot", help="redraw a run's loss plot from its metrics.jsonl")
    plot.add_argument("run_dir", metavar="RUN", help="a run directory")
    plot.add_argument("--output", help="the plot file (.pdf, .png or .svg; default RUN/loss-plot.pdf)")
    plot.set_defaults(run=cmd_plot, check=arguments.check_plot)

    def add_model_source(p):
        source = p.add_mutually_exclusive_group(required=True)
        source.add_argument("--model", help="a Hugging Face hub id (HuggingFaceTB/SmolLM2-135M), a model directory "
                                            "(config.json, safetensors, tokenizer.json), a numgpt run directory "
                                            "or a GPT-2 size")
        source.add_argument("--checkpoint", help="a run directory (its newest checkpoint) or one checkpoint")
        source.add_argument("--gpt2", help="OpenAI's GPT-2 weights: 124m, 355m, 774m, 1558m (from the Hugging "
                                           "Face cache, else downloaded once), or a directory / .safetensors file "
                                           "in the Hugging Face layout")

    gen = sub.add_parser("generate", help="continue a prompt")
    add_model_source(gen)
    gen.add_argument("--prompt", required=True, type=non_empty, help="the text to continue")
    gen.add_argument("--max-new-tokens", type=integer(1), default=50, help="at most this many tokens")
    gen.add_argument("--temperature", type=real(0), default=0.0,
                     help="sample with this temperature; 0 is greedy")
    gen.add_argument("--top-k", type=integer(1), help="sample among the k likeliest tokens (default: all)")
    gen.add_argument("--seed", type=integer(0), default=123, help="the sampling's seed")
    gen.add_argument("--no-eos", action="store_true", help="do not stop at <|endoftext|>")
    _add_threads(gen)
    gen.set_defaults(run=cmd_generate, check=arguments.check_generate)

    ev = sub.add_parser("eval", help="loss and perplexity of a model on a text file")
    add_model_source(ev)
    ev.add_argument("--data", required=True, help="a UTF-8 text file")
    ev.add_argument("--batch-size", type=integer(1), default=2, help="windows per batch")
    ev.add_argument("--context-length", type=integer(1),
                    help=f"window length (default: the model's context, at most {DEFAULT_MAX_WINDOW})")
    _add_threads(ev)
    ev.set_defaults(run=cmd_eval, check=arguments.check_eval)

    gc = sub.add_parser("gradcheck", help="float64 gradient check of each op and a tiny model",
                        description="Check numgpt's backward passes (the NumPy reference pairs in numgpt/ops, or "
                                    "with --kernels numba their numba twins too) against float64 central "
                                    "differences; or check your own backward of one op with --backward.")
    gc.add_argument("op", nargs="?", help="one op, with its inputs' worst errors (default: all, then the model)")
    gc.add_argument("--list", action="store_true", help="name every op and where its pair lives")
    gc.add_argument("--kernels", choices=("numpy", "numba"), default="numpy",
                    help="numpy: the reference pairs (default); numba: the numba twins as well")
    gc.add_argument("--backward", metavar="MODULE:FUNCTION",
                    help="your backward for OP (the signature of its <op>_backward), checked against finite "
                         "differences and against numgpt's: a difference from numgpt's beyond float64 round-off "
                         "fails, whatever --tolerance")
    gc.add_argument("--tolerance", choices=("float64", "torch"), default="float64",
                    help="float64: atol = rtol = 1e-6, from the measured float64 noise (default); torch: "
                         "PyTorch's atol=1e-5, rtol=1e-3, for checks ported from PyTorch")
    gc.set_defaults(run=cmd_gradcheck, check=arguments.check_gradcheck)

    dl = sub.add_parser("download", help="fetch a model into the Hugging Face cache: a hub id or a GPT-2 size")
    dl.add_argument("model", metavar="HF_ID", help="a hub id (HuggingFaceTB/SmolLM2-135M, Qwen/Qwen3-0.6B, ...) or "
                                                   "gpt2-124m, gpt2-355m, gpt2-774m, gpt2-1558m")
    dl.add_argument("--revision", type=non_empty, help="a branch, tag or commit of the hub repository (default main)")
    dl.set_defaults(run=cmd_download, check=arguments.check_nothing)

    ex = sub.add_parser("export", help="write a model in the Hugging Face layout of its family")
    add_model_source(ex)
    ex.add_argument("--out", required=True, help="the directory to write")
    ex.add_argument("--max-shard-size", type=byte_size, metavar="SIZE",
                    help="split the weights into files of at most SIZE: bytes, or with a unit as transformers reads "
                         "it (10KB, 500MB, 5GB in powers of 10; 2GiB in powers of 2) (default 5GiB)")
    ex.set_defaults(run=cmd_export, check=arguments.check_export)

    prep = sub.add_parser("prepare", help="tokenize a corpus once into a token store for numgpt train --data",
                          description="Tokenize text files, directories, globs, .jsonl(.gz) and .parquet files "
                                      "(and, with the datasets library, Hugging Face datasets) "
                                      "into a token store: uint16/uint32 shards and a manifest, trained on with "
                                      "numgpt train --data DIR.")
    prep.add_argument("sources", nargs="+", metavar="SOURCE")
    prep.add_argument("--out", required=True, help="the store directory (an interrupted prepare resumes there)")
    prep.add_argument("--tokenizer", help="what get_tokenizer takes: a model directory with tokenizer.json, a "
                                          "hub id or a run directory (default GPT-2's)")
    prep.add_argument("--tokenizer-train", action="store_true",
                      help="train a byte-level BPE on the sources (saved in OUT/tokenizer/tokenizer.json)")
    prep.add_argument("--vocab-size", type=integer(1), help="the size of the tokenizer --tokenizer-train makes")
    prep.add_argument("--text-field", default="text", help="the text of a .jsonl record or .parquet row "
                                                           "(default text)")
    prep.add_argument("--split", default="train", help="the split of a Hugging Face dataset source (default train)")
    prep.add_argument("--val-fraction", type=real(0, 1, high_open=True), default=0.1,
                      help="the fraction of documents for validation, spread evenly (default 0.1)")
    prep.add_argument("--val-docs", type=integer(0), help="the first N documents for validation instead")
    prep.add_argument("--train-ratio", type=real(0, 1, low_open=True, high_open=True), default=0.9,
                      help="a corpus of one text file: the fraction of its characters for training (default 0.9)")
    prep.add_argument("--allow-special", action="store_true",
                      help="encode special-token text (<|endoftext|>) in documents as the special token")
    prep.add_argument("--workers", type=integer(1), help="encoding processes (default: one per core)")
    prep.add_argument("--shard-tokens", type=integer(1), default=100_000_000,
                      help="tokens per shard (default 100,000,000)")
    prep.set_defaults(run=cmd_prepare, check=arguments.check_prepare)

    info = sub.add_parser("info", help="numgpt, its libraries, kernels, threads and caches on this machine")
    info.set_defaults(run=cmd_info, check=arguments.check_nothing)
    return parser


def main(argv=None):
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()                              # a closed pipe shows here, inside the try
    except BrokenPipeError:                                 # `numgpt gradcheck --list | head`: quiet, as the
        devnull = os.open(os.devnull, os.O_WRONLY)          # Python docs advise (signal module, "Note on
        os.dup2(devnull, sys.stdout.fileno())               # SIGPIPE"): the interpreter's last flush goes nowhere
        return EXIT_FAILURE


def _main(argv):
    args = build_parser().parse_args(argv)
    with third_parties_quiet():
        if distributed.launched_by_mpi():
            return _main_of_a_rank(args)
        try:
            return _checked_run(args)
        except NumgptError as exc:
            _print_error(args, exc)
            return EXIT_USAGE
        except KeyboardInterrupt:
            return EXIT_SIGNAL[signal.SIGINT]


def _checked_run(args):
    """The subcommand, after its arguments' check (numgpt.arguments): bad input stops before any work."""
    args.check(args)
    return args.run(args)


def _print_error(args, exc, rank=None):
    if debugging():
        traceback.print_exc()
    message = " ".join(str(exc).split()) or type(exc).__name__
    where = "" if not rank else f" (rank {rank})"
    print(f"numgpt {args.command}{where}: error: {message}", file=sys.stderr, flush=True)


# seconds a rank other than 0 waits before reporting its own error: if rank 0 failed alike, its
# MPI_Abort ends this rank first, so an error every rank meets is printed once
RANK_ERROR_GRACE_S = 2.0


def _main_of_a_rank(args):
    """One rank of ``mpiexec -n N numgpt ...``: an error on any rank aborts the whole job
    (MPI_Abort), so that no rank waits forever for one that has gone."""
    world = distributed.world()
    try:
        code = _checked_run(args)
    except NumgptError as exc:
        if not world.is_main:
            time.sleep(RANK_ERROR_GRACE_S)
        _print_error(args, exc, world.rank)
        world.abort(EXIT_USAGE)
    except BaseException:                                   # a bug: its traceback, then the job ends
        if not world.is_main:
            time.sleep(RANK_ERROR_GRACE_S)
        traceback.print_exc()
        world.abort(EXIT_FAILURE)
    return code                                             # every rank returns the same (collective stops)


if __name__ == "__main__":
    sys.exit(main())
