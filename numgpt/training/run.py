"""A run directory: what ``numgpt train --out RUN`` keeps there, and how a
run is resumed from it with no flags.

    RUN/
      settings.json   the resolved settings, written when the run starts
      metrics.jsonl   one JSON line per evaluation, appended as the run goes
      losses.json     the seed's lists (train and validation losses, tokens seen) and their epochs
      loss-plot.pdf   the seed's loss plot, redrawn at each evaluation
      checkpoints/    committed step-NNNNNNNN checkpoints (numgpt.io.checkpoint)
      tokenizer/      a Llama-family model's tokenizer files, copied from --init
      .lock           held by the training process for the run's life

Nothing in it is written through a symbolic link (numgpt.safe_write): a link
where numgpt writes (``.lock``, ``checkpoints``, ``settings.json``, ...) is
refused, naming it, before anything is written.

``settings.json`` records every training flag as resolved (defaults filled
in), the model config, the optimizer and schedule, the data file with its
sha256, and the numgpt / Python / NumPy / numba versions and kernel mode.
``resolve_settings`` merges it with the flags typed on a resume: a flag in
``SAFE_TO_CHANGE`` is taken, any other flag must agree with the run.
"""
import fcntl
import json
import math
import os
import re
from pathlib import Path

from numgpt import safe_write, schema
from numgpt.errors import UsageError
from numgpt.io import safe_io
from numgpt.io.checkpoint import check_model_config
from numgpt.io.families import RUN_TOKENIZER_DIR
from numgpt.training.plot import plot_losses
from numgpt.training.train import LRSchedule
from numgpt.precision import TRAINING_PRECISIONS

SETTINGS_FILE = "settings.json"
METRICS_FILE = "metrics.jsonl"
LOSSES_FILE = "losses.json"
PLOT_FILE = "loss-plot.pdf"
LOCK_FILE = ".lock"
CHECKPOINTS_DIR = "checkpoints"
SETTINGS_FORMAT = "numgpt-run"
SETTINGS_VERSION = 1
MAX_SETTINGS_BYTES = 2**20            # settings.json is a few kilobytes
MAX_METRICS_BYTES = 256 * 2**20       # metrics.jsonl: about a million evaluations

# flags a resumed run may change: how long it runs, how often it saves, evaluates and reports
SAFE_TO_CHANGE = ("epochs", "max_steps", "checkpoint_every", "keep_last", "eval_freq", "eval_iter",
                  "start_context", "threads", "device")


class RunError(UsageError):
    """A run directory that cannot be used as asked."""


def _finite_or_none(value):
    """Metrics as strict JSON: a NaN or infinite float becomes null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def resolve_settings(given, defaults, saved=None, source=None):
    """The training flags of a run.

    ``given`` holds the flags typed on the command line (name -> value, only
    those typed). A new run (``saved`` None) takes ``defaults`` overridden by
    ``given``. A resumed run takes ``saved`` (the ``train`` part of its
    settings.json at ``source``): a typed flag in SAFE_TO_CHANGE replaces the
    saved value, any other typed flag must equal it (RunError naming both).
    """
    if saved is None:
        return {**defaults, **given}
    resolved = {**defaults, **saved}
    for name, value in given.items():
        if name in SAFE_TO_CHANGE:
            resolved[name] = value
        elif value != resolved.get(name):
            flag = "--" + name.replace("_", "-")
            raise RunError(f"{flag} {value} contradicts this run's {name} = {resolved.get(name)!r} (in {source}); "
                           f"leave {flag} out to continue the run, or start a new run with another --out")
    return resolved


class RunDirectory:
    """The files of one training run (see the module docstring)."""

    def __init__(self, path):
        self.path = Path(path)
        self.settings_path = self.path / SETTINGS_FILE
        self.metrics_path = self.path / METRICS_FILE
        self.losses_path = self.path / LOSSES_FILE
        self.plot_path = self.path / PLOT_FILE
        self.checkpoints = self.path / CHECKPOINTS_DIR
        self._lock_file = None

    # ------------------------------------------------------------ the lock
    def lock(self):
        """Hold RUN/.lock for this process's life (released when it exits, even killed):
        a second training process on the same directory stops here, having written nothing.
        A link in place of the lock or of anything numgpt writes here is refused first."""
        self.path.mkdir(parents=True, exist_ok=True)
        for entry in (SETTINGS_FILE, METRICS_FILE, LOSSES_FILE, PLOT_FILE, CHECKPOINTS_DIR, RUN_TOKENIZER_DIR):
            safe_write.refuse_link(self.path / entry)
        handle = os.fdopen(safe_write.open_existing_or_new(self.path / LOCK_FILE, os.O_RDWR), "r+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise RunError(f"run directory {self.path} is in use by another numgpt train (pid {holder}); "
                           f"wait for it to finish, or choose another --out") from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock_file = handle

    # ------------------------------------------------------------ settings
    def holds_a_run(self):
        """True when a run has started here (its settings or a checkpoint exist)."""
        return self.settings_path.exists() or (self.checkpoints.is_dir() and any(self.checkpoints.iterdir()))

    def read_settings(self):
        """The settings.json document, or None when there is none; every field numgpt reads
        from it is checked (check_settings)."""
        if not self.settings_path.exists():
            return None
        document = safe_io.read_json(self.settings_path, MAX_SETTINGS_BYTES)
        if (not isinstance(document, dict) or document.get("format") != SETTINGS_FORMAT
                or not isinstance(document.get("train"), dict)):
            raise RunError(f"{self.settings_path} is not a numgpt run's settings (expected format "
                           f"{SETTINGS_FORMAT!r} with a 'train' object)")
        if document.get("version") != SETTINGS_VERSION:
            raise RunError(f"{self.settings_path}: settings version {document.get('version')!r}; this numgpt "
                           f"reads version {SETTINGS_VERSION}")
        check_settings(document, self.settings_path)
        return document

    def write_settings(self, document):
        document = {"format": SETTINGS_FORMAT, "version": SETTINGS_VERSION, **document}
        safe_write.atomic_write(self.settings_path,
                                lambda fh: fh.write(json.dumps(document, indent=1).encode("utf-8") + b"\n"))

    # ------------------------------------------------------------ metrics
    def read_metrics(self):
        """The records of metrics.jsonl, in order ([] when there is none). A last line cut
        short by a crash (no newline) is left out; any other bad line is a RunError."""
        try:
            text = safe_io.read_limited(self.metrics_path, MAX_METRICS_BYTES, "metrics file").decode("utf-8")
        except FileNotFoundError:
            return []
        except safe_io.UnsafeFileError as error:
            raise RunError(str(error)) from None
        except UnicodeDecodeError as error:
            raise RunError(f"{self.metrics_path} is not UTF-8 text (byte offset {error.start})") from None
        lines = text.split("\n")
        complete = lines[:-1]                     # the part after the last newline is cut short, or empty
        records = []
        for number, line in enumerate(complete, start=1):
            try:
                record = safe_io.parse_json(line.encode("utf-8"), f"{self.metrics_path}:{number}")
            except safe_io.UnsafeFileError as error:
                raise RunError(str(error)) from None
            if not isinstance(record, dict):
                raise RunError(f"{self.metrics_path}:{number}: expected a JSON object with an integer 'step'")
            check_metrics_record(record, f"{self.metrics_path}:{number}")
            records.append(record)
        return records

    def start_metrics(self, keep_through_step):
        """The records up to and including ``keep_through_step`` (-1: none), after rewriting
        metrics.jsonl to hold only those: a resumed run drops what came after its checkpoint."""
        safe_write.refuse_link(self.metrics_path)          # it is rewritten: not read through a link either
        records = [r for r in self.read_metrics() if r["step"] <= keep_through_step]
        text = "".join(json.dumps(r) + "\n" for r in records)
        safe_write.atomic_write(self.metrics_path, lambda fh: fh.write(text.encode("utf-8")))
        return records

    def append_metrics(self, record):
        """Append one evaluation's record as a JSON line, flushed to disk."""
        line = json.dumps({key: _finite_or_none(value) for key, value in record.items()}, allow_nan=False)
        fd = safe_write.open_existing_or_new(self.metrics_path, os.O_WRONLY | os.O_APPEND)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    # ------------------------------------------------------------ losses.json and the plot
    def write_losses(self, state, records):
        """losses.json from the training state, the epochs from the metrics records."""
        report = {"train_losses": state.train_losses, "val_losses": state.val_losses,
                  "tokens_seen": state.track_tokens_seen, "epochs_seen": epochs_of(records),
                  "global_step": state.global_step, "total_tokens": state.tokens_seen}
        report = json.loads(json.dumps(report), parse_constant=lambda name: None)   # NaN/Infinity -> null
        safe_write.atomic_write(self.losses_path, lambda fh: fh.write(json.dumps(report, indent=1).encode("utf-8")))

    def draw_plot(self, records, path=None):
        """The seed's loss plot of ``records`` at ``path`` (default RUN/loss-plot.pdf)."""
        nan = float("nan")
        train = [nan if r.get("train_loss") is None else r["train_loss"] for r in records]
        val = [nan if r.get("val_loss") is None else r["val_loss"] for r in records]
        return plot_losses(epochs_of(records), [r["tokens_seen"] for r in records], train, val,
                           self.plot_path if path is None else path)


def _optional(check):
    """A check of a train field that may also be null."""
    return lambda train, name, where: None if train[name] is None else check(train, name, where)


def _integer(low):
    return lambda train, name, where: schema.integer(train, name, where, low=low, error=RunError)


def _number(**bounds):
    return lambda train, name, where: schema.number(train, name, where, error=RunError, **bounds)


def _string(train, name, where):
    schema.string(train, name, where, error=RunError)


def _strings(train, name, where):
    if not (isinstance(train[name], list) and all(isinstance(item, str) for item in train[name])):
        schema.fail(where, name, train[name], "a list of strings", RunError)


# The fields of settings.json's "train" that a resumed run reads, and what each must hold;
# fields that are absent take their defaults, fields unknown here are left to whoever reads them.
TRAIN_FIELDS = {
    "preset": _optional(_string), "init": _optional(_string), "data": _optional(_string),
    "tokenizer": _optional(_string), "device": _string, "start_context": _string, "backward": _strings,
    "epochs": _integer(1), "max_steps": _optional(_integer(1)), "batch_size": _integer(1),
    "context_length": _optional(_integer(1)), "grad_accum": _integer(1), "eval_freq": _integer(1),
    "eval_iter": _integer(1), "checkpoint_every": _optional(_integer(1)), "keep_last": _optional(_integer(1)),
    "threads": _optional(_integer(1)), "max_skipped_steps": _integer(1), "warmup_steps": _integer(0),
    "seed": lambda train, name, where: schema.integer(train, name, where, error=RunError),
    "lr": _number(low=0), "weight_decay": _number(low=0), "min_lr": _number(low=0), "initial_lr": _number(low=0),
    "drop_rate": _optional(_number(low=0, below=1)), "grad_clip": _optional(_number(low=0)),
    "train_ratio": _number(above=0, below=1),
    "allow_special": lambda train, name, where: schema.boolean(train, name, where, error=RunError),
    "lr_schedule": lambda train, name, where: schema.string(train, name, where, error=RunError,
                                                            choices=LRSchedule.KINDS),
    "precision": lambda train, name, where: schema.string(train, name, where, error=RunError,
                                                          choices=TRAINING_PRECISIONS),
}


def check_settings(document, path):
    """RunError naming ``path``, the field, its value and what was expected, for the first field of a
    settings.json document (format and version already checked) that a resumed run cannot use."""
    train = document["train"]
    for name, check in TRAIN_FIELDS.items():
        if name in train:
            check(train, name, f"{path}: train")
    string = schema.string(document, "data_sha256", path, error=RunError)
    if not re.fullmatch(r"[0-9a-f]{64}", string):
        schema.fail(path, "data_sha256", string, "the sha256 of the data, 64 hexadecimal digits", RunError)
    check_model_config(schema.mapping(document, "model", path, error=RunError), f"{path}: model")
    environment = schema.mapping(document, "environment", path, error=RunError)
    if not all(isinstance(value, str) for value in environment.values()):
        schema.fail(path, "environment", environment, "an object of version strings", RunError)
    schema.integer(document, "processes", path, low=1, error=RunError, required=False)


def check_metrics_record(record, where):
    """RunError naming ``where`` (the file and line) for a metrics.jsonl record missing a field that
    the plot and a resumed run read, or holding the wrong kind of value there. Losses may be null
    (a NaN or infinite loss is written as null); other fields are not read."""
    schema.integer(record, "step", where, low=-1, error=RunError)
    schema.number(record, "epoch", where, low=0, error=RunError)
    schema.integer(record, "tokens_seen", where, low=0, error=RunError)
    for name in ("train_loss", "val_loss"):
        if record.get(name) is not None:
            schema.number(record, name, where, error=RunError)


def epochs_of(records):
    """The (fractional) epoch of each evaluation record."""
    return [r["epoch"] for r in records]
