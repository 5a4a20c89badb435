"""numgpt train: the run's settings (new or resumed), its model and tokenizer, its data
(numgpt.cli.train_data), then the loop on rank 0 (checkpoints, metrics, plot) and on the others.
An interrupted run (SIGINT, SIGTERM) finishes its step, saves a committed checkpoint and exits 130
or 143.
"""
import contextlib
import copy
import dataclasses
import functools
import os
import platform
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy

from numgpt import __version__ as numgpt_version, backend
from numgpt.cli import arguments
from numgpt.cli.arguments import NO_BACKWARD, integer, non_empty, real
from numgpt.cli.common import EXIT_FAILURE, EXIT_SIGNAL, add_threads, load_function, resolve_device, window
from numgpt.cli.train_data import store_vocabulary, training_data
from numgpt.errors import NumgptError, UsageError
from numgpt.io.checkpoint import CheckpointManager, restore
from numgpt.io.families import RUN_TOKENIZER_DIR, copy_tokenizer, load_pretrained, locate, tokenizer_directory
from numgpt.io.hf_tokenizer import HFTokenizer
from numgpt.io.safe_io import read_json
from numgpt.io.tokenizer import get_tokenizer
from numgpt.io.torch_format import TORCH_SUFFIXES
from numgpt.io.torch_weights import optimizer_state
from numgpt.models import model_from_config
from numgpt.models.gpt import PRESETS, GPTModel
from numgpt.models.llama_config import PRESETS as LLAMA_PRESETS, from_hf_config, is_llama_config
from numgpt.models.memory import check_training_fits as _check_memory, memory_available as _memory_available
from numgpt.optim import AdamW
from numgpt.precision import emulation_notice, precision_context
from numgpt.registry import use_backward
from numgpt.training import distributed
from numgpt.training.run import SAFE_TO_CHANGE, RunDirectory, RunError, resolve_settings
from numgpt.training.train import LRSchedule, NonFiniteTraining, TrainState, train_model_simple


SEED_START_CONTEXT = "Every effort moves you"


# ---------------------------------------------------------------- train
# Every training flag and its default: the seed's run. A flag left out is None
# on the command line, so that a resumed run can tell typed flags from defaults.
TRAIN_DEFAULTS = {
    "preset": "gpt2-124m", "init": None, "data": None, "epochs": 10, "max_steps": None, "batch_size": 2,
    "context_length": None, "lr": 4e-4, "weight_decay": 0.1, "drop_rate": None, "grad_clip": None,
    "max_skipped_steps": 5, "eval_freq": 5, "eval_iter": 5, "train_ratio": 0.9, "start_context": SEED_START_CONTEXT,
    "seed": 123, "checkpoint_every": None, "keep_last": None, "allow_special": False, "warmup_steps": 0,
    "lr_schedule": "constant", "min_lr": 0.0, "initial_lr": 0.0, "grad_accum": 1, "threads": None,
    "backward": [], "device": "auto", "tokenizer": None, "sampling": "windows", "precision": "32-true",
}


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


def _environment():
    # numba: heavy to import; only its version is recorded here
    import numba
    return {"numgpt": numgpt_version, "python": platform.python_version(), "numpy": numpy.__version__,
            "numba": numba.__version__, "kernel_mode": backend.get_kernel_mode()}


def _train_settings(args, run, processes=1):
    """(resolved flags, the run's saved settings or None) for this invocation.

    A run resumed on another number of processes keeps its global batch
    (batch_size x grad_accum x processes): grad_accum becomes the saved
    product divided by the processes now, which must divide it."""
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
    return window(flags["context_length"], cfg, source)


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
    world = distributed.world()                             # one process, unless started by mpiexec
    run = RunDirectory(args.out)
    # A run directory that exists is locked before anything is read: a second process stops here. A new
    # one is created only after every check below, so that a start that fails leaves nothing behind.
    existed = world.any(os.path.lexists(run.path)) if world.size > 1 else os.path.lexists(run.path)
    if existed:
        _claim(run, world)
    flags, saved = _train_settings(args, run, world.size)
    world.barrier()                                         # every rank has read the settings before rank 0 writes
    _set_threads(flags, world)
    yours = _load_learner_backwards(args.backward)     # typed now; settings.json's are only compared
    device = resolve_device(flags["device"])
    cfg, pretrained, tokenizer_dir = _run_model(flags, saved, run)
    context = _training_window(flags, cfg)
    flags = dict(flags, context_length=context, drop_rate=cfg["drop_rate"])
    if saved is None and flags["init"]:
        flags["preset"] = None                              # the shape is --init's
        if tokenizer_dir is not None:
            flags["tokenizer"] = str(tokenizer_dir)
    _check_memory(cfg, flags["batch_size"], context, _memory_available())

    tokenizer, special = _run_tokenizer(flags, cfg, tokenizer_dir)
    train_loader, val_loader, data_sha256 = training_data(flags, saved, run, tokenizer, special, context,
                                                          cfg["vocab_size"])
    total_steps = _total_steps(flags, len(train_loader), world, context)

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


def _set_threads(flags, world):
    """--threads, or on several ranks the cores of this machine shared between its ranks."""
    if flags["threads"] is not None:
        backend.set_num_threads(flags["threads"])
    elif world.size > 1:                                    # the cores shared by this machine's ranks
        backend.set_num_threads(max(1, (os.cpu_count() or 1) // distributed.local_ranks()))


def _run_model(flags, saved, run):
    """(model config, pretrained model or None, tokenizer directory or None) of the run: a resumed
    run's from its settings (the weights come from its checkpoint, the tokenizer from the run
    directory), a new run's from --preset or --init and --data's store."""
    if saved is None:
        cfg, pretrained, tokenizer_dir = _initial_model(flags)
        cfg, tokenizer_dir = store_vocabulary(flags, cfg, tokenizer_dir)
        return cfg, pretrained, tokenizer_dir
    cfg = saved["model"]                                    # the weights come from the checkpoint
    own = is_llama_config(cfg) or (run.path / RUN_TOKENIZER_DIR / "tokenizer.json").is_file()
    tokenizer_dir = run.path / RUN_TOKENIZER_DIR if own else None
    environment = _environment()
    if environment != saved["environment"]:
        changed = ", ".join(f"{k} {saved['environment'].get(k)} -> {v}" for k, v in environment.items()
                            if saved["environment"].get(k) != v)
        print(f"numgpt train: note: resuming with {changed}: the continuation may differ from an "
              f"uninterrupted run in the last bits", file=sys.stderr)
    return cfg, None, tokenizer_dir


def _run_tokenizer(flags, cfg, tokenizer_dir):
    """(tokenizer, the special tokens the text may hold) of the run: GPT-2's bundled one, or the
    tokenizer.json in ``tokenizer_dir``, which must fit the model's vocabulary."""
    if tokenizer_dir is None:
        return get_tokenizer(), {"<|endoftext|>"} if flags["allow_special"] else ()
    tokenizer = HFTokenizer(tokenizer_dir)
    if tokenizer.n_vocab > cfg["vocab_size"]:
        raise UsageError(f"the tokenizer in {tokenizer_dir} has {tokenizer.n_vocab} tokens, more than the "
                         f"model's vocab_size {cfg['vocab_size']}")
    return tokenizer, tokenizer.special_tokens_set if flags["allow_special"] else ()


def _total_steps(flags, batches, world, context):
    """The run's optimizer steps: --epochs over ``batches`` training batches (grad_accum of them per
    step on each rank), at most --max-steps; a UsageError when not one step fits."""
    steps_per_epoch = batches // (flags["grad_accum"] * world.size)
    if steps_per_epoch == 0:
        raise UsageError(f"the training text gives no full step of {flags['grad_accum']} x {flags['batch_size']} "
                         f"x {context} tokens{f' on each of {world.size} processes' if world.size > 1 else ''}: "
                         f"lower --batch-size, --grad-accum or --context-length")
    total_steps = flags["epochs"] * steps_per_epoch
    return total_steps if flags["max_steps"] is None else min(total_steps, flags["max_steps"])


def _claim(run, world):
    """Lock the run directory on rank 0, creating it when missing; the others wait for it. Returns
    the topmost directory this call created (None when ``run.path`` existed), for a failed start
    to remove, and nothing that was there before."""
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


def _continue_torch_optimizer(optimizer, path, announce):
    """Load the moments and step counts of the seed's optimizer_state_dict in ``path`` (when it holds
    one) into ``optimizer``; the hyper-parameters stay the command line's, as in any run."""
    state = optimizer_state(path)
    if state is None:
        return
    own = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, settings in zip(optimizer.param_groups, own):
        group.update(settings)
    if announce:
        steps = max((entry["step"] for entry in optimizer.state.values()), default=0)
        print(f"Continuing the optimizer state of {path} (AdamW moments after {steps} steps)")


def _start_training(run, world, flags, saved, cfg, pretrained, device, total_steps, data_sha256):
    """The model, optimizer, checkpoint manager, training state and schedule of the run, restored
    from its newest checkpoint when it resumes; the settings written. None, with a message, when a
    resumed run has no step left to take (nothing is written then)."""
    schedule = LRSchedule(peak_lr=flags["lr"], total_steps=total_steps, warmup_steps=flags["warmup_steps"],
                          kind=flags["lr_schedule"], min_lr=flags["min_lr"], initial_lr=flags["initial_lr"])
    reanchored = []
    backend.manual_seed(flags["seed"])
    model = pretrained if pretrained is not None else model_from_config(cfg)   # on the host, as on every device
    model.to(device)
    optimizer = AdamW(model.parameters(), lr=flags["lr"], betas=ADAMW_BETAS, eps=ADAMW_EPS,
                      weight_decay=flags["weight_decay"])
    if saved is None and flags["init"] and Path(flags["init"]).suffix in TORCH_SUFFIXES:
        _continue_torch_optimizer(optimizer, flags["init"], world.is_main)
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
            backwards.enter_context(precision_context(flags["precision"]))
            if flags["precision"] == "bf16-mixed" and emulation_notice() is not None:
                print(f"numgpt train: note: {emulation_notice()}", file=sys.stderr, flush=True)

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


def _loop_options(flags, schedule, after_step, state, world):
    """train_model_simple's options from the run's flags, the same on every rank."""
    return dict(num_epochs=flags["epochs"], eval_freq=flags["eval_freq"], eval_iter=flags["eval_iter"],
                start_context=flags["start_context"], max_steps=flags["max_steps"], grad_clip=flags["grad_clip"],
                grad_accum=flags["grad_accum"], lr_schedule=schedule, on_step=after_step, on_epoch_end=after_step,
                state=state, max_skipped_steps=flags["max_skipped_steps"], world=world)


def _follow(world, model, optimizer, train_loader, val_loader, tokenizer, flags, schedule, state):
    """A rank other than 0: the same loop, writing nothing; it meets rank 0 at every
    stop check and checkpoint commit (barriers)."""
    with StopRequest() as stop:
        def after_step(current):
            if world.any(stop.signum is not None):
                world.barrier()                              # rank 0's checkpoint
                raise Stopped(stop.signum or signal.SIGTERM)
            if flags["checkpoint_every"] and (current.global_step + 1) % flags["checkpoint_every"] == 0:
                world.barrier()

        try:
            with precision_context(flags["precision"]):
                train_model_simple(model, train_loader, val_loader, optimizer, "cpu", tokenizer=tokenizer,
                                   **_loop_options(flags, schedule, after_step, state, world))
        except Stopped as stopped:
            return EXIT_SIGNAL[stopped.signum]
        except NonFiniteTraining:
            return EXIT_FAILURE
    world.barrier()                                          # rank 0's final checkpoint
    return 0


def add_parser(sub):
    """The train subcommand's flags (every default in TRAIN_DEFAULTS)."""
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
    train.add_argument("--precision", type=arguments.training_precision, metavar="{32-true,bf16-mixed}",
                       help="32-true (float32, the default) or bf16-mixed: the matrix products take bf16 operands, "
                            "weights, gradients and AdamW stay float32 (numgpt.autocast)")
    add_threads(train)
    train.set_defaults(run=cmd_train, check=functools.partial(arguments.check_train, defaults=TRAIN_DEFAULTS))
