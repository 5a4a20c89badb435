"""Checkpoints as data, written atomically: safetensors for arrays, JSON for the rest.

A checkpoint is a directory::

    step-00000120/
      model.safetensors       model.state_dict(), a tied weight stored once
      optimizer.safetensors   AdamW moments, keys state.{index}.exp_avg / state.{index}.exp_avg_sq
      checkpoint.json         format version, model config, ties, optimizer param_groups and steps,
                              and the caller's JSON state (step, epoch, rng_state, loader position, losses)
      COMMITTED               written last: the sha256 of every file above

Saving writes everything into a temporary directory beside the target (same
parent, so the rename cannot cross file systems), fsyncs each file and the
directory, renames it into place and fsyncs the parent. An existing checkpoint
of the same name is renamed aside first and deleted only once the new one is
in place. Loading refuses a directory without a valid COMMITTED marker, a file
whose hash does not match it, and any NaN or Inf in an array; nothing is ever
unpickled. (The JSON state may hold NaN / Infinity floats, as Python's json
writes them, so that a loss history with a NaN round-trips exactly.)

``CheckpointManager`` keeps ``directory/step-{step:08d}`` checkpoints for a
training run: it deletes old ones only after the new one is committed, finds
the newest committed one, and removes the temporaries a killed run leaves.
It neither writes nor deletes through a symbolic link (numgpt.safe_write): its
directory, a step directory or a file there that is a link is refused.
"""
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import NamedTuple, Optional

import numpy

from numgpt import backend, safe_write, schema
from numgpt.errors import NumgptError
from numgpt.io import safe_io
from numgpt.models import model_from_config
from numgpt.models.gpt import check_config as check_gpt_config
from numgpt.models.llama_config import check_config as check_llama_config, is_llama_config
from numgpt.models.memory import check_model_fits

FORMAT = "numgpt-checkpoint"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "checkpoint.json"
MARKER_FILE = "COMMITTED"
CHECKPOINT_FILES = (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE)
MAX_MARKER_BYTES = 2**20
MAX_STATE_BYTES = 256 * 2**20

# model config fields that change the architecture; a checkpoint only loads into a model that agrees on them
ARCHITECTURE_KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "qkv_bias", "tie_weights")
MOMENT_KEY = re.compile(r"state\.(0|[1-9][0-9]*)\.(exp_avg|exp_avg_sq)")
STEP_DIR = re.compile(r"step-([0-9]{8,})")


class CheckpointError(NumgptError):
    """A checkpoint that cannot be saved, is not committed, is corrupted or does not fit."""


class Checkpoint(NamedTuple):
    """What ``load_checkpoint`` returns: data only, nothing executable."""
    path: Path
    config: dict             # the model config (model.cfg)
    model_state: dict        # name -> array (views of the file's bytes), a tied weight under every name
    optimizer_state: Optional[dict]  # AdamW.state_dict() layout, or None
    state: dict              # the caller's JSON state: step, epoch, rng_state, loader position, losses, ...


# ---------------------------------------------------------------- helpers

def _os_reason(exc):
    if isinstance(exc, OSError):
        name = f" [{exc.filename}]" if exc.filename else ""
        return f"{exc.strerror or exc}{name}"
    return f"{type(exc).__name__}: {exc}"


def _json_ready(value, where):
    """``value`` with tuples as lists and NumPy scalars as Python numbers; CheckpointError on
    anything JSON cannot hold exactly. NaN and Inf floats are kept (written as NaN / Infinity)."""
    if value is None or isinstance(value, (bool, str, int, float)):
        return value
    if isinstance(value, numpy.generic) and value.dtype.kind in "biuf":
        return value.item()
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise CheckpointError(f"checkpoint state {where}: key {key!r} is a {type(key).__name__}; "
                                      f"JSON object keys must be strings")
            out[key] = _json_ready(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_json_ready(item, f"{where}[{i}]") for i, item in enumerate(value)]
    hint = " (store arrays in the model or as .tolist())" if isinstance(value, numpy.ndarray) else ""
    raise CheckpointError(f"checkpoint state {where} is a {type(value).__name__}, which JSON cannot hold{hint}")


def _untie(state_dict):
    """(arrays stored once, {alias: stored name}) from a state_dict where tied names share an array."""
    stored, tied, first_name = {}, {}, {}
    for name, array in state_dict.items():
        key = id(array)
        if key in first_name:
            tied[name] = first_name[key]
        else:
            first_name[key] = name
            stored[name] = array
    return stored, tied


def _optimizer_payload(optimizer, model):
    """(moment arrays, JSON part) of an AdamW's state_dict."""
    sd = optimizer.state_dict()
    arrays, steps = {}, {}
    for index, entry in sd["state"].items():
        arrays[f"state.{index}.exp_avg"] = entry["exp_avg"]
        arrays[f"state.{index}.exp_avg_sq"] = entry["exp_avg_sq"]
        steps[str(index)] = int(entry["step"])
    names = {id(param): name for name, param in model.named_parameters()}
    params = [param for group in optimizer.param_groups for param in group["params"]]
    groups = [dict(group) for group in sd["param_groups"]]
    return arrays, {"param_groups": _json_ready(groups, "optimizer param_groups"), "steps": steps,
                    "param_names": [names.get(id(param)) for param in params]}


def _replaceable(path):
    """True when ``path`` is absent or is a checkpoint directory (holds only checkpoint files)."""
    if not os.path.lexists(path):
        return True
    return path.is_dir() and not path.is_symlink() and set(os.listdir(path)) <= {*CHECKPOINT_FILES, MARKER_FILE}


def _remove_tree(path):
    """Delete a directory: renamed to a trash name first, so a crash midway leaves no half checkpoint."""
    trash = path.parent / f".{path.name}.trash-{uuid.uuid4().hex[:8]}"
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


# ---------------------------------------------------------------- saving

def save_checkpoint(path, model, optimizer=None, **state):
    """Write a committed checkpoint directory at ``path`` (see the module docstring); returns its Path.

    ``state`` is anything JSON can hold: step, epoch, the data-loader position, losses...
    ``rng_state`` defaults to numgpt's generator state now. Raises CheckpointError, leaving
    any previous checkpoint at ``path`` intact and no temporary directory behind, when a
    value is not JSON-able, an array holds NaN/Inf, or the file system fails.
    """
    path = Path(path)
    # 1. everything that can be refused is refused before the disk is touched
    model_arrays, tied = _untie(model.state_dict())
    opt_arrays, opt_json = _optimizer_payload(optimizer, model) if optimizer is not None else ({}, None)
    for arrays, what in ((model_arrays, "model"), (opt_arrays, "optimizer")):
        try:
            safe_io.check_finite(arrays, path)
        except safe_io.NonFiniteError as exc:
            raise CheckpointError(f"refusing to save checkpoint {path}: the {what} holds non-finite values in "
                                  f"{', '.join(exc.tensors)}") from None
    state = dict(state)
    state.setdefault("rng_state", backend.get_rng_state())
    document = {"format": FORMAT, "version": FORMAT_VERSION, "config": _json_ready(model.cfg, "config"),
                "tied": tied, "optimizer": opt_json, "state": _json_ready(state, "")}
    state_bytes = json.dumps(document, indent=1).encode("utf-8")
    safe_write.refuse_link(path)
    if not _replaceable(path):
        raise CheckpointError(f"refusing to save checkpoint {path}: it exists and is not a numgpt checkpoint "
                              f"directory (it holds other files)")
    # 2. write into a temporary directory beside the target, then rename it into place
    tmp = aside = None
    placed = False
    try:
        if os.path.exists(path.parent) and not path.parent.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path.parent))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        os.chmod(tmp, 0o755)
        dtype = {"dtype": str(next(iter(model_arrays.values())).dtype)} if model_arrays else {}
        safe_io.write_safetensors(tmp / MODEL_FILE, model_arrays, {"format": FORMAT, **dtype})
        files = [MODEL_FILE]
        if optimizer is not None:
            safe_io.write_safetensors(tmp / OPTIMIZER_FILE, opt_arrays, {"format": FORMAT})
            files.append(OPTIMIZER_FILE)
        safe_write.write_new_file(tmp / STATE_FILE, state_bytes)
        files.append(STATE_FILE)
        marker = {"format": FORMAT, "version": FORMAT_VERSION,
                  "sha256": {name: safe_io.sha256_file(tmp / name) for name in files}}
        # 3. the marker, last
        safe_write.write_new_file(tmp / MARKER_FILE, json.dumps(marker, indent=1).encode("utf-8"))
        safe_write.fsync_path(tmp)
        if os.path.lexists(path):                       # 4. the old one aside, the new one in
            aside = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(path, aside)
        os.rename(tmp, path)
        tmp, placed = None, True
        safe_write.fsync_path(path.parent)
    except BaseException as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        try:
            if placed:                                  # not durable: a failed save leaves the old state
                _remove_tree(path)
            if aside is not None and not os.path.lexists(path):
                os.rename(aside, path)
        except OSError:
            pass  # the aside copy stays, and load_checkpoint / clean_stale find it
        if isinstance(exc, Exception):
            raise CheckpointError(f"could not save checkpoint {path}: {_os_reason(exc)}") from exc
        raise
    if aside is not None:                               # 5. only now the old one goes
        shutil.rmtree(aside, ignore_errors=True)
    return path


# ---------------------------------------------------------------- loading

def _read_manifest(path):
    """{file name: sha256} from a checkpoint's COMMITTED marker; CheckpointError when absent or invalid."""
    marker = path / MARKER_FILE
    if not marker.is_file():
        raise CheckpointError(f"{path} is not a committed checkpoint (no {MARKER_FILE} marker): its save did not "
                              f"finish; use an older checkpoint")
    try:
        manifest = safe_io.read_json(marker, MAX_MARKER_BYTES)
    except safe_io.UnsafeFileError as exc:
        raise CheckpointError(f"{path}: invalid {MARKER_FILE} marker: {exc}") from None
    hashes = manifest.get("sha256") if isinstance(manifest, dict) else None
    if (not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(hashes, dict)
            or not set(hashes) <= set(CHECKPOINT_FILES) or not {MODEL_FILE, STATE_FILE} <= set(hashes)
            or not all(isinstance(h, str) and re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes.values())):
        raise CheckpointError(f"{path}: invalid {MARKER_FILE} marker (expected format {FORMAT!r} and the sha256 "
                              f"of {MODEL_FILE} and {STATE_FILE})")
    if manifest.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {manifest.get('version')!r}; this numgpt reads "
                              f"version {FORMAT_VERSION}")
    return hashes


def _read_verified(path, name, expected):
    """The bytes of checkpoint file ``name``, checked against its sha256 from the marker."""
    try:
        data = safe_io.read_bytes(path / name)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read {name}: {_os_reason(exc)}") from None
    if hashlib.sha256(data).hexdigest() != expected:
        raise CheckpointError(f"{path}: {name} does not match the sha256 in {MARKER_FILE}: the file is "
                              f"corrupted or was changed after the save")
    return data


def is_committed(path):
    """True when ``path`` is a checkpoint directory with a valid marker and files matching its hashes."""
    path = Path(path)
    try:
        hashes = _read_manifest(path)
        return all(safe_io.sha256_file(path / name) == expected for name, expected in hashes.items())
    except (CheckpointError, safe_io.UnsafeFileError, OSError):       # a FIFO or device is not a checkpoint file
        return False


def _aside_copy(path):
    """A committed copy left beside ``path`` by a save killed between its two renames, or None."""
    for candidate in sorted(path.parent.glob(f".{path.name}.old-*")):
        if candidate.is_dir() and is_committed(candidate):
            return candidate
    return None


def load_checkpoint(path):
    """The Checkpoint in directory ``path``, verified against its COMMITTED marker.

    Refuses (CheckpointError) an uncommitted or corrupted directory and a file offered
    instead of a directory; a pickle / zip / .npy file raises safe_io.PickleFormatError
    without being unpickled; a hostile safetensors or JSON file raises
    safe_io.UnsafeFileError; NaN or Inf anywhere raises safe_io.NonFiniteError.
    """
    path = Path(path)
    if not path.exists():
        aside = _aside_copy(path) if path.parent.is_dir() else None
        if aside is None:
            raise CheckpointError(f"no checkpoint at {path}")
        path = aside
    if not path.is_dir():
        safe_io.check_not_pickle(path)
        raise CheckpointError(f"{path} is a file; a numgpt checkpoint is a directory holding {MODEL_FILE}, "
                              f"{STATE_FILE} and a {MARKER_FILE} marker (save one with numgpt.save_checkpoint)")
    hashes = _read_manifest(path)
    document = safe_io.parse_json(_read_verified(path, STATE_FILE, hashes[STATE_FILE]), path / STATE_FILE,
                                  allow_nan=True)
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CheckpointError(f"{path / STATE_FILE} is not a numgpt checkpoint description")
    if document.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {document.get('version')!r}; this numgpt reads "
                              f"version {FORMAT_VERSION}")
    config, tied, state = document.get("config"), document.get("tied"), document.get("state")
    if not isinstance(config, dict) or not isinstance(tied, dict) or not isinstance(state, dict):
        raise CheckpointError(f"{path / STATE_FILE}: 'config', 'tied' and 'state' must be JSON objects")
    check_model_config(config, f"{path / STATE_FILE}: config")

    # the arrays are views of the file's bytes: a load takes the memory of the files, once
    model_state, _ = safe_io.parse_safetensors(_read_verified(path, MODEL_FILE, hashes[MODEL_FILE]),
                                               path / MODEL_FILE, copy=False)
    safe_io.check_finite(model_state, path / MODEL_FILE)
    for alias, name in tied.items():
        if not isinstance(name, str) or name not in model_state or alias in model_state:
            raise CheckpointError(f"{path}: tie {alias!r} -> {name!r} does not fit the tensors in {MODEL_FILE}")
        model_state[alias] = model_state[name]

    optimizer_state = None
    opt = document.get("optimizer")
    if opt is not None:
        if OPTIMIZER_FILE not in hashes:
            raise CheckpointError(f"{path}: {STATE_FILE} describes optimizer state but {MARKER_FILE} lists no "
                                  f"{OPTIMIZER_FILE}")
        optimizer_state = _optimizer_state(path, opt, _read_verified(path, OPTIMIZER_FILE, hashes[OPTIMIZER_FILE]))
    return Checkpoint(path, config, model_state, optimizer_state, state)


def _optimizer_state(path, opt, data):
    """AdamW.state_dict() layout from the JSON part and the moments file."""
    moments, _ = safe_io.parse_safetensors(data, path / OPTIMIZER_FILE, copy=False)
    safe_io.check_finite(moments, path / OPTIMIZER_FILE)
    if not isinstance(opt, dict):
        schema.fail(path / STATE_FILE, "optimizer", opt, "a JSON object or null", CheckpointError)
    steps, groups = opt.get("steps"), opt.get("param_groups")
    if not isinstance(steps, dict) or not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise CheckpointError(f"{path / STATE_FILE}: optimizer 'steps' and 'param_groups' are malformed")
    for number, group in enumerate(groups):
        _check_param_group(group, f"{path / STATE_FILE}: optimizer param_groups[{number}]")
    names = opt.get("param_names")
    if names is not None and not (isinstance(names, list) and all(n is None or isinstance(n, str) for n in names)):
        schema.fail(path / STATE_FILE, "optimizer param_names", names, "a list of parameter names", CheckpointError)
    state = {}
    for key in moments:
        match = MOMENT_KEY.fullmatch(key)
        if match is None:
            raise CheckpointError(f"{path / OPTIMIZER_FILE}: unexpected tensor {key!r} (expected "
                                  f"state.<index>.exp_avg / exp_avg_sq)")
        state.setdefault(int(match.group(1)), {})[match.group(2)] = moments[key]
    if {str(i) for i in state} != set(steps):
        raise CheckpointError(f"{path}: optimizer moments for parameters {sorted(state)} but steps for "
                              f"{sorted(steps)}")
    for index, entry in state.items():
        step = steps[str(index)]
        if len(entry) != 2 or not isinstance(step, int) or isinstance(step, bool) or step < 1:
            raise CheckpointError(f"{path}: optimizer state of parameter {index} lacks a moment or a valid step")
        entry["step"] = step
    return {"state": dict(sorted(state.items())), "param_groups": groups, "param_names": opt.get("param_names")}


def _check_param_group(group, where):
    """One AdamW parameter group of checkpoint.json: its hyper-parameters and parameter indices."""
    schema.number(group, "lr", where, low=0, error=CheckpointError)
    schema.number(group, "eps", where, low=0, error=CheckpointError)
    schema.number(group, "weight_decay", where, low=0, error=CheckpointError)
    betas = group.get("betas")
    if not (isinstance(betas, list) and len(betas) == 2
            and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
        schema.fail(where, "betas", betas, "a list of two numbers in [0, 1)", CheckpointError)
    params = group.get("params")
    if not (isinstance(params, list) and all(schema.is_int(i) and i >= 0 for i in params)):
        schema.fail(where, "params", params, "a list of parameter indices", CheckpointError)


def check_model_config(config, where):
    """The family's validator of a model config read from a file: GPT-2's (numgpt.models.gpt.check_config)
    or the Llama family's (numgpt.models.llama_config.check_config), naming ``where``."""
    if is_llama_config(config):
        check_llama_config(config, where)
    elif "model_type" in config:
        schema.fail(where, "model_type", config["model_type"], "absent (GPT-2) or one of llama, qwen2, qwen3",
                    CheckpointError)
    else:
        check_gpt_config(config, where)


# ---------------------------------------------------------------- restoring

def check_config(checkpoint, cfg):
    """CheckpointError naming the first architecture field where ``cfg`` differs from the checkpoint's."""
    if is_llama_config(checkpoint.config) or is_llama_config(cfg):
        for key in sorted(set(checkpoint.config) | set(cfg)):
            if key != "drop_rate" and checkpoint.config.get(key) != cfg.get(key):
                raise CheckpointError(f"checkpoint {checkpoint.path} was saved with "
                                      f"{key}={checkpoint.config.get(key)!r} but the model has "
                                      f"{key}={cfg.get(key)!r}: build the model from the checkpoint "
                                      f"(numgpt.build_model)")
        return
    for key in ARCHITECTURE_KEYS:
        default = False if key == "tie_weights" else None
        saved, given = checkpoint.config.get(key, default), cfg.get(key, default)
        if saved != given:
            raise CheckpointError(f"checkpoint {checkpoint.path} was saved with {key}={saved!r} but the model has "
                                  f"{key}={given!r}: build the model from the checkpoint (numgpt.build_model) or "
                                  f"pass --{key.replace('_', '-')} {saved}")


def restore(checkpoint, model, optimizer=None, require=()):
    """Load a Checkpoint into ``model`` (and ``optimizer``) and set numgpt's RNG state from it.

    ``require`` names state fields that must be present (e.g. ("rng_state", "loader_state")
    for a bit-exact resume). Returns ``checkpoint.state``.
    """
    missing = [field for field in require if field not in checkpoint.state]
    if missing:
        raise CheckpointError(f"checkpoint {checkpoint.path} cannot resume this run: it lacks "
                              f"{', '.join(missing)}")
    check_config(checkpoint, model.cfg)
    try:
        model.load_state_dict(checkpoint.model_state)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {checkpoint.path}: {exc}") from None
    if optimizer is not None:
        if checkpoint.optimizer_state is None:
            raise CheckpointError(f"checkpoint {checkpoint.path} holds no optimizer state")
        saved_names = checkpoint.optimizer_state.get("param_names")
        names = {id(param): name for name, param in model.named_parameters()}
        own_names = [names.get(id(p)) for group in optimizer.param_groups for p in group["params"]]
        if saved_names is not None and saved_names != own_names:
            raise CheckpointError(f"checkpoint {checkpoint.path}: the optimizer was saved for parameters "
                                  f"{saved_names[:3]}... but this one holds {own_names[:3]}...")
        try:
            optimizer.load_state_dict(checkpoint.optimizer_state)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {checkpoint.path}: optimizer state does not fit: {exc}") from None
    if "rng_state" in checkpoint.state:
        try:
            backend.set_rng_state(checkpoint.state["rng_state"])
        except (ValueError, TypeError, KeyError) as exc:
            raise CheckpointError(f"checkpoint {checkpoint.path}: invalid rng_state: {exc}") from None
    return checkpoint.state


def build_model(checkpoint):
    """The model (GPTModel or LlamaForCausalLM) of the checkpoint's config, with its weights;
    numgpt's RNG state is left as it was."""
    where = Path(checkpoint.path) / STATE_FILE
    check_model_config(checkpoint.config, f"{where}: config")
    check_model_fits(checkpoint.config, f"{where}: config")                 # before anything is allocated
    rng_state = backend.get_rng_state()
    try:
        model = model_from_config(checkpoint.config)
    finally:
        backend.set_rng_state(rng_state)
    try:
        model.load_state_dict(checkpoint.model_state)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {checkpoint.path}: {exc}") from None
    return model


# ---------------------------------------------------------------- a run's checkpoints

class CheckpointManager:
    """``directory/step-{step:08d}`` checkpoints of one run, at most ``keep_last`` of them kept
    (None keeps all). Not safe for two processes saving into one directory at once."""

    def __init__(self, directory, keep_last=None):
        if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 1):
            raise ValueError(f"keep_last must be a positive integer or None, got {keep_last!r}")
        self.directory = Path(directory)
        self.keep_last = keep_last

    def path_for(self, step):
        return self.directory / f"step-{step:08d}"

    def _step_dirs(self):
        """[(step, path)] of the step-* directories, oldest first (committed or not)."""
        if not self.directory.is_dir():
            return []
        found = []
        for entry in self.directory.iterdir():
            match = STEP_DIR.fullmatch(entry.name)
            if match and entry.is_dir() and not entry.is_symlink():
                found.append((int(match.group(1)), entry))
        return sorted(found)

    def checkpoints(self):
        """Paths of the step directories holding a COMMITTED marker, oldest first (hashes not checked)."""
        return [path for _, path in self._step_dirs() if (path / MARKER_FILE).is_file()]

    def save(self, step, model, optimizer=None, **state):
        """Save ``step`` atomically, then delete committed checkpoints beyond keep_last (never this one)."""
        if not isinstance(step, (int, numpy.integer)) or step < 0:
            raise ValueError(f"step must be a non-negative integer, got {step!r}")
        safe_write.refuse_link(self.directory)
        path = save_checkpoint(self.path_for(int(step)), model, optimizer, step=int(step), **state)
        if self.keep_last is not None:
            committed = self.checkpoints()
            for old in committed[:max(0, len(committed) - self.keep_last)]:
                if old != path:
                    try:
                        _remove_tree(old)
                    except OSError as exc:  # the new checkpoint is committed; an old one lingers
                        warnings.warn(f"could not delete old checkpoint {old}: {_os_reason(exc)}", stacklevel=2)
        return path

    def latest(self):
        """The path of the newest checkpoint (by step) that verifies, or None."""
        for _, path in reversed(self._step_dirs()):
            if is_committed(path):
                return path
        return None

    def load_latest(self):
        """load_checkpoint(latest()), or None when there is no committed checkpoint."""
        path = self.latest()
        return None if path is None else load_checkpoint(path)

    def clean_stale(self):
        """Remove what interrupted saves and deletions left (temporary and trash directories); put back
        a committed checkpoint that a killed save had renamed aside. Returns the paths removed."""
        removed = []
        safe_write.refuse_link(self.directory)     # what it deletes must be this run's
        if not self.directory.is_dir():
            return removed
        stale = re.compile(r"\.(step-[0-9]{8,})\.(tmp|trash|old)-[0-9A-Za-z_]+")
        for entry in sorted(self.directory.iterdir()):
            match = stale.fullmatch(entry.name)
            if not match or not entry.is_dir() or entry.is_symlink():
                continue
            target = self.directory / match.group(1)
            if match.group(2) == "old" and not os.path.lexists(target) and is_committed(entry):
                os.rename(entry, target)
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
        return removed
