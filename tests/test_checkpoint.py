"""numgpt.io.checkpoint: exact round trips, bit-exact resume, atomic saves that survive kill -9 and
full disks, and checkpoints that can never run code or hold NaN."""
import ast
import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import tokenize
import zipfile
from pathlib import Path

import numpy as np
import pytest

import numgpt
from numgpt import backend
from numgpt.io import safe_io
from numgpt.io.checkpoint import (MARKER_FILE, MODEL_FILE, CheckpointError, CheckpointManager, build_model,
                                  load_checkpoint, restore, save_checkpoint)

REPO = Path(__file__).resolve().parents[1]
CFG = {"vocab_size": 37, "context_length": 8, "emb_dim": 16, "n_heads": 2, "n_layers": 2, "drop_rate": 0.1,
       "qkv_bias": True}


def make(cfg=CFG, seed=123):
    numgpt.manual_seed(seed)
    model = numgpt.GPTModel(cfg)
    return model, numgpt.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)


def train(model, optimizer, steps):
    """``steps`` AdamW steps on batches drawn from numgpt's generator, dropout on; the losses."""
    model.train()
    losses = []
    for _ in range(steps):
        batch = backend.get_generator().integers(0, model.cfg["vocab_size"], size=(2, model.cfg["context_length"] + 1))
        optimizer.zero_grad()
        logits = model(batch[:, :-1])
        loss = numgpt.cross_entropy(logits.flatten(0, 1), numgpt.Tensor(batch[:, 1:]).flatten())
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def logits_of(model):
    model.eval()
    with numgpt.no_grad():
        out = model(np.arange(8).reshape(1, 8) % model.cfg["vocab_size"]).numpy().copy()
    model.train()
    return out


def assert_same_training_state(model_a, opt_a, model_b, opt_b):
    for (name, a), (_, b) in zip(model_a.named_parameters(), model_b.named_parameters()):
        assert np.array_equal(a.data, b.data), name
    sa, sb = opt_a.state_dict(), opt_b.state_dict()
    assert sa["state"].keys() == sb["state"].keys()
    for index in sa["state"]:
        assert sa["state"][index]["step"] == sb["state"][index]["step"]
        for key in ("exp_avg", "exp_avg_sq"):
            assert np.array_equal(sa["state"][index][key], sb["state"][index][key]), (index, key)


def stale_dirs(directory):
    """Leftovers of unfinished saves (none where nothing was ever saved: no directory yet)."""
    if not Path(directory).is_dir():
        return []
    return [p.name for p in Path(directory).iterdir() if re.search(r"\.(tmp|old|trash)-", p.name)]


# ---------------------------------------------------------------- round trip and resume

def test_round_trip_keeps_weights_moments_config_and_state(tmp_path):
    model, opt = make()
    train(model, opt, 3)
    loader = {"epoch": 1, "batch": 7, "order": [3, 1, 2]}
    save_checkpoint(tmp_path / "ck", model, opt, step=3, epoch=1, loader_state=loader, train_losses=[9.5, 9.25],
                    note=np.float32(0.5))
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.config == model.cfg and ck.state["step"] == 3 and ck.state["loader_state"] == loader
    assert ck.state["train_losses"] == [9.5, 9.25] and ck.state["note"] == 0.5
    assert ck.state["rng_state"] == backend.get_rng_state()
    for name, array in model.state_dict().items():
        assert ck.model_state[name].dtype == array.dtype and np.array_equal(ck.model_state[name], array)
    fresh, fresh_opt = make(seed=7)
    restore(ck, fresh, fresh_opt)
    assert np.array_equal(logits_of(fresh), logits_of(model))
    assert_same_training_state(model, opt, fresh, fresh_opt)
    assert np.array_equal(logits_of(build_model(ck)), logits_of(model))


@pytest.mark.parametrize("tie", [False, True])
def test_resume_from_a_checkpoint_equals_uninterrupted_training(tmp_path, tie):
    cfg = dict(CFG, tie_weights=tie)
    model, opt = make(cfg)
    losses = train(model, opt, 3)
    save_checkpoint(tmp_path / "ck", model, opt, step=3, losses=losses)
    losses += train(model, opt, 2)                      # uninterrupted: 5 steps

    backend.manual_seed(999)                            # a different generator state, a different init
    resumed, resumed_opt = make(cfg, seed=5)
    state = restore(load_checkpoint(tmp_path / "ck"), resumed, resumed_opt, require=("rng_state", "step"))
    resumed_losses = state["losses"] + train(resumed, resumed_opt, 2)
    assert resumed_losses == losses
    assert_same_training_state(model, opt, resumed, resumed_opt)
    assert (resumed.out_head.weight is resumed.tok_emb.weight) == tie


def test_tied_weight_is_stored_once_and_survives(tmp_path):
    model, opt = make(dict(CFG, tie_weights=True))
    train(model, opt, 1)
    save_checkpoint(tmp_path / "ck", model, opt)
    stored, _ = safe_io.read_safetensors(tmp_path / "ck" / MODEL_FILE)
    assert "tok_emb.weight" in stored and "out_head.weight" not in stored
    assert json.loads((tmp_path / "ck" / "checkpoint.json").read_text())["tied"] == {
        "out_head.weight": "tok_emb.weight"}
    rebuilt = build_model(load_checkpoint(tmp_path / "ck"))
    assert rebuilt.out_head.weight is rebuilt.tok_emb.weight
    assert np.array_equal(logits_of(rebuilt), logits_of(model))


def test_build_model_leaves_the_generator_alone(tmp_path):
    model, _ = make()
    save_checkpoint(tmp_path / "ck", model)
    ck = load_checkpoint(tmp_path / "ck")
    before = backend.get_rng_state()
    build_model(ck)
    assert backend.get_rng_state() == before
    assert ck.optimizer_state is None


def test_restore_refuses_a_different_architecture_and_missing_fields(tmp_path):
    model, opt = make()
    save_checkpoint(tmp_path / "ck", model, opt, step=1)
    ck = load_checkpoint(tmp_path / "ck")
    other, other_opt = make(dict(CFG, emb_dim=32))
    with pytest.raises(CheckpointError, match="emb_dim=16.*emb_dim=32"):
        restore(ck, other, other_opt)
    with pytest.raises(CheckpointError, match="lacks loader_state"):
        restore(ck, *make(), require=("rng_state", "loader_state"))
    save_checkpoint(tmp_path / "bare", model)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        restore(load_checkpoint(tmp_path / "bare"), *make())


def test_overwriting_a_checkpoint_replaces_it_whole(tmp_path):
    model, opt = make()
    save_checkpoint(tmp_path / "ck", model, opt, step=1)
    train(model, opt, 1)
    save_checkpoint(tmp_path / "ck", model, opt, step=2)
    assert load_checkpoint(tmp_path / "ck").state["step"] == 2
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_refuses_to_replace_a_directory_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "losses.pdf").write_bytes(b"%PDF")
    with pytest.raises(CheckpointError, match="not a numgpt checkpoint"):
        save_checkpoint(tmp_path / "run", make()[0])
    assert (tmp_path / "run" / "losses.pdf").exists()


# ---------------------------------------------------------------- what is refused at save time

def test_non_finite_weights_or_moments_are_never_saved(tmp_path):
    model, opt = make()
    train(model, opt, 1)
    model.trf_blocks[0].norm1.scale.data[0] = np.nan
    with pytest.raises(CheckpointError, match=r"model holds non-finite values in trf_blocks\.0\.norm1\.scale"):
        save_checkpoint(tmp_path / "ck", model, opt)
    model.trf_blocks[0].norm1.scale.data[0] = 1.0
    next(iter(opt.state.values()))["exp_avg_sq"].flat[0] = np.inf
    with pytest.raises(CheckpointError, match=r"optimizer holds non-finite values in state\.0\.exp_avg_sq"):
        save_checkpoint(tmp_path / "ck", model, opt)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("value, message", [
    ({1, 2}, r"\['bad'\] is a set"),
    (np.zeros(3), "ndarray.*tolist"),
    ({"nested": [object()]}, r"\['bad'\]\['nested'\]\[0\] is a object"),
    ({0: "x"}, "key 0 is a int"),
])
def test_state_that_json_cannot_hold_is_refused(tmp_path, value, message):
    with pytest.raises(CheckpointError, match=message):
        save_checkpoint(tmp_path / "ck", make()[0], bad=value)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- commit marker and corruption

def test_a_directory_without_a_valid_marker_is_never_loaded(tmp_path):
    model, opt = make()
    manager = CheckpointManager(tmp_path)
    manager.save(1, model, opt)
    manager.save(2, model, opt)
    (tmp_path / "step-00000002" / MARKER_FILE).unlink()
    with pytest.raises(CheckpointError, match="not a committed checkpoint"):
        load_checkpoint(tmp_path / "step-00000002")
    assert manager.latest() == tmp_path / "step-00000001"

    (tmp_path / "step-00000002" / MARKER_FILE).write_text("{garbage")
    with pytest.raises(CheckpointError, match="invalid COMMITTED marker"):
        load_checkpoint(tmp_path / "step-00000002")
    assert manager.latest() == tmp_path / "step-00000001"


def test_a_file_changed_after_the_commit_is_refused(tmp_path):
    model, opt = make()
    manager = CheckpointManager(tmp_path)
    manager.save(1, model, opt)
    manager.save(2, model, opt)
    weights = tmp_path / "step-00000002" / MODEL_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        load_checkpoint(tmp_path / "step-00000002")
    assert manager.latest() == tmp_path / "step-00000001"


def test_nan_written_behind_numgpt_back_is_refused_on_load(tmp_path):
    model, _ = make()
    save_checkpoint(tmp_path / "ck", model)
    arrays, metadata = safe_io.read_safetensors(tmp_path / "ck" / MODEL_FILE)
    arrays["final_norm.scale"][0] = np.nan
    safe_io.write_safetensors(tmp_path / "ck" / MODEL_FILE, arrays, metadata)
    marker = json.loads((tmp_path / "ck" / MARKER_FILE).read_text())  # a forger rewrites the hash too
    marker["sha256"][MODEL_FILE] = safe_io.sha256_file(tmp_path / "ck" / MODEL_FILE)
    (tmp_path / "ck" / MARKER_FILE).write_text(json.dumps(marker))
    with pytest.raises(safe_io.NonFiniteError, match="final_norm.scale"):
        load_checkpoint(tmp_path / "ck")


# ---------------------------------------------------------------- the manager

def test_keep_last_deletes_only_after_the_new_one_is_committed(tmp_path):
    model, opt = make()
    manager = CheckpointManager(tmp_path / "run", keep_last=2)
    assert manager.latest() is None and manager.load_latest() is None
    for step in range(1, 6):
        train(model, opt, 1)
        manager.save(step, model, opt, step_loss=float(step))
    assert [p.name for p in manager.checkpoints()] == ["step-00000004", "step-00000005"]
    assert manager.latest() == tmp_path / "run" / "step-00000005"
    assert manager.load_latest().state["step"] == 5
    assert stale_dirs(tmp_path / "run") == []


def test_keep_last_never_deletes_the_newest_checkpoint(tmp_path):
    model, _ = make()
    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.save(10, model)
    manager.save(5, model)  # an older step saved later is kept, and so is the newest
    assert [p.name for p in manager.checkpoints()] == ["step-00000005", "step-00000010"]
    assert manager.latest().name == "step-00000010"


def test_clean_stale_removes_temporaries_and_puts_back_an_aside_checkpoint(tmp_path):
    model, _ = make()
    manager = CheckpointManager(tmp_path)
    manager.save(1, model)
    manager.save(2, model)
    (tmp_path / ".step-00000003.tmp-abc123").mkdir()
    (tmp_path / ".step-00000003.tmp-abc123" / MODEL_FILE).write_bytes(b"half")
    (tmp_path / ".step-00000001.trash-0f0f").mkdir()
    os.rename(tmp_path / "step-00000002", tmp_path / ".step-00000002.old-1234abcd")  # killed between renames
    assert load_checkpoint(tmp_path / "step-00000002").state["step"] == 2  # found aside
    removed = manager.clean_stale()
    assert sorted(p.name for p in removed) == [".step-00000001.trash-0f0f", ".step-00000003.tmp-abc123"]
    assert sorted(os.listdir(tmp_path)) == ["step-00000001", "step-00000002"]
    assert manager.latest().name == "step-00000002"


# ---------------------------------------------------------------- failed saves

def test_failed_fsync_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, opt = make()
    save_checkpoint(tmp_path / "ck", model, opt, step=1)
    train(model, opt, 1)

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)  # a real full disk is in the tmpfs test below
    with pytest.raises(CheckpointError, match=f"could not save checkpoint {re.escape(str(tmp_path / 'ck'))}: "
                                              f"No space left on device"):
        save_checkpoint(tmp_path / "ck", model, opt, step=2)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "ck").state["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_failed_fsync_of_the_parent_after_the_rename_puts_the_old_checkpoint_back(tmp_path, monkeypatch):
    model, opt = make()
    save_checkpoint(tmp_path / "ck", model, opt, step=1)
    parent_inode = os.stat(tmp_path).st_ino
    real_fsync = os.fsync

    def failing_on_the_parent(fd):
        if os.fstat(fd).st_ino == parent_inode:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_on_the_parent)
    with pytest.raises(CheckpointError, match="Input/output error"):
        save_checkpoint(tmp_path / "ck", model, opt, step=2)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "ck").state["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_failed_save_when_the_parent_is_a_file(tmp_path):
    (tmp_path / "not-a-dir").write_text("x")
    with pytest.raises(CheckpointError, match=r"not-a-dir/step-00000001: .*Not a directory"):
        CheckpointManager(tmp_path / "not-a-dir").save(1, make()[0])


@pytest.fixture
def tiny_disk(tmp_path):
    """A 192 KiB tmpfs: a real file system that fills up."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mount_point)],
                            capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_real_full_disk_keeps_the_previous_checkpoint(tiny_disk):
    small, _ = make()
    manager = CheckpointManager(tiny_disk / "run", keep_last=1)
    manager.save(1, small)
    big, _ = make(dict(CFG, vocab_size=2000, emb_dim=32))  # ~1 MB of weights: does not fit
    with pytest.raises(CheckpointError, match="step-00000002.*(No space left on device|os error 28)"):
        manager.save(2, big)
    assert manager.latest().name == "step-00000001"
    assert load_checkpoint(manager.latest()).config == CFG
    assert stale_dirs(tiny_disk / "run") == []
    with pytest.raises(CheckpointError, match="No space left|os error 28"):  # replacing in place fails too
        save_checkpoint(tiny_disk / "run" / "step-00000001", big)
    assert load_checkpoint(tiny_disk / "run" / "step-00000001").config == CFG
    assert sorted(os.listdir(tiny_disk / "run")) == ["step-00000001"]


# ---------------------------------------------------------------- kill -9 during saves

KILL_SCRIPT = r"""
import sys
import numgpt
from numgpt.io.checkpoint import CheckpointManager, restore

cfg = {"vocab_size": 300, "context_length": 16, "emb_dim": 32, "n_heads": 2, "n_layers": 2, "drop_rate": 0.1,
       "qkv_bias": False}
manager = CheckpointManager(sys.argv[1], keep_last=2)
manager.clean_stale()
numgpt.manual_seed(0)
model = numgpt.GPTModel(cfg)
optimizer = numgpt.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
step = 0
ck = manager.load_latest()
if ck is not None:
    step = restore(ck, model, optimizer, require=("rng_state", "step"))["step"]
print("ready", step, flush=True)
while True:
    batch = numgpt.backend.get_generator().integers(0, cfg["vocab_size"], size=(2, cfg["context_length"] + 1))
    optimizer.zero_grad()
    loss = numgpt.cross_entropy(model(batch[:, :-1]).flatten(0, 1), numgpt.Tensor(batch[:, 1:]).flatten())
    loss.backward()
    optimizer.step()
    step += 1
    manager.save(step, model, optimizer, loss=loss.item())
    print("saved", step, flush=True)
"""


def test_kill_9_at_random_moments_never_loses_the_newest_committed_checkpoint(tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, NUMGPT_KERNELS="numpy", PYTHONPATH=str(REPO))
    rng = random.Random(int(time.time()))
    seed_note = f"(random delays seeded with {rng.getstate()[1][0]})"
    manager = CheckpointManager(run)
    newest, killed_mid_save = 0, 0
    for round_ in range(15):
        process = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(run)], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env=env, text=True)
        ready = process.stdout.readline().split()
        assert ready[:1] == ["ready"], (ready, process.stderr.read() if process.poll() is not None else "")
        assert int(ready[1]) == newest, f"round {round_}: resumed from step {ready[1]}, newest is {newest}"
        time.sleep(rng.uniform(0.0, 0.4))
        process.send_signal(signal.SIGKILL)
        out, _ = process.communicate()
        assert process.returncode == -signal.SIGKILL
        printed = [int(line.split()[1]) for line in out.splitlines() if line.startswith("saved")]
        killed_mid_save += bool(stale_dirs(run))

        latest = manager.latest()
        if latest is None:
            assert newest == 0 and not printed, seed_note
            continue
        ck = load_checkpoint(latest)
        step = ck.state["step"]
        assert step >= max(printed, default=newest) >= newest, (round_, step, printed, newest, seed_note)
        assert latest.name == f"step-{step:08d}"
        assert len(manager.checkpoints()) <= 3, manager.checkpoints()  # keep_last 2, +1 if killed before pruning
        build_model(ck)
        newest = step
    assert newest > 0
    print(f"kill -9: 15 rounds, newest step {newest}, {killed_mid_save} kills left a save unfinished")


# ---------------------------------------------------------------- nothing loaded runs code

def hostile_pickle(command):
    """Protocol-2 pickle bytes that would call os.system(command) if unpickled (never done here)."""
    cmd = command.encode()
    return b"\x80\x02cos\nsystem\nX" + len(cmd).to_bytes(4, "little") + cmd + b"\x85R."


def test_pickle_and_torch_files_offered_as_checkpoints_are_refused(tmp_path):
    marker = tmp_path / "PWNED"
    payload = hostile_pickle(f"touch {marker}")
    (tmp_path / "model.pkl").write_bytes(payload)
    with zipfile.ZipFile(tmp_path / "model.pt", "w") as archive:   # torch.save's layout
        archive.writestr("model/data.pkl", payload)
        archive.writestr("model/version", "3\n")
    for offered in ("model.pkl", "model.pt"):
        with pytest.raises(safe_io.PickleFormatError, match="does not load pickle-based formats"):
            load_checkpoint(tmp_path / offered)
    with pytest.raises(safe_io.PickleFormatError):
        safe_io.read_safetensors(tmp_path / "model.pkl")

    # the same payload inside a committed checkpoint, as its weights, with a matching hash
    model, _ = make()
    save_checkpoint(tmp_path / "ck", model)
    (tmp_path / "ck" / MODEL_FILE).write_bytes(payload)
    manifest = json.loads((tmp_path / "ck" / MARKER_FILE).read_text())
    manifest["sha256"][MODEL_FILE] = safe_io.sha256_file(tmp_path / "ck" / MODEL_FILE)
    (tmp_path / "ck" / MARKER_FILE).write_text(json.dumps(manifest))
    with pytest.raises(safe_io.PickleFormatError):
        load_checkpoint(tmp_path / "ck")
    assert not marker.exists()


def test_a_safetensors_file_is_not_a_checkpoint_directory(tmp_path):
    safe_io.write_safetensors(tmp_path / "w.safetensors", {"a": np.ones(2, np.float32)})
    with pytest.raises(CheckpointError, match="is a file; a numgpt checkpoint is a directory"):
        load_checkpoint(tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing")


PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "shelve", "marshal", "joblib", "cloudpickle"}


def forbidden_uses(path):
    """[(line, what)] for every pickle-family module, torch.load, allow_pickle=True and bare eval( / exec(
    in the code of ``path``; comments and string literals (docstrings, messages) are not code."""
    with open(path, "rb") as f:
        tokens = [t for t in tokenize.tokenize(f.readline) if t.type in (tokenize.NAME, tokenize.OP)]
    words = [t.string for t in tokens] + ["", ""]
    found = []
    for i, token in enumerate(tokens):
        previous, following = words[i - 1] if i else "", words[i + 1:i + 3]
        if token.string in PICKLE_MODULES:
            found.append((token.start[0], f"the {token.string} module"))
        elif token.string == "torch" and following == [".", "load"]:
            found.append((token.start[0], "torch.load"))
        elif token.string == "allow_pickle" and following == ["=", "True"]:
            found.append((token.start[0], "allow_pickle=True"))
        elif token.string in ("eval", "exec") and previous not in (".", "def") and following[0] == "(":
            found.append((token.start[0], f"{token.string}("))
    return found


def test_source_holds_no_pickle_eval_or_exec():
    files = sorted((REPO / "numgpt").rglob("*.py")) + sorted((REPO / "kernels").rglob("*.py"))
    assert len(files) > 5
    found = [f"{path.relative_to(REPO)}:{line}: {what}" for path in files for line, what in forbidden_uses(path)]
    assert not found, "\n".join(found)


def test_the_source_scan_catches_what_it_looks_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle  # comment with eval(\nx = eval('1')\nnp.load(f, allow_pickle=True)\n"
                   "torch.load(f)\nexec (code)\nmodel.eval()\ns = 'pickle, eval(x), torch.load'\n"
                   "def eval(self):\n    pass\n")
    assert forbidden_uses(bad) == [(1, "the pickle module"), (2, "eval("), (3, "allow_pickle=True"),
                                   (4, "torch.load"), (5, "exec(")]


# What imports or runs code named at run time. numgpt does it in one function (cli.load_function,
# a learner's --backward / gradcheck module), reached only from the command line's own flags.
DYNAMIC_CODE = {"import_module", "spec_from_file_location", "module_from_spec", "exec_module", "__import__",
                "runpy", "run_path", "run_module"}
CODE_LOADERS = {"load_function", "_load_learner_backwards"}
LOADER_HOME = ("numgpt/cli/common.py", "load_function")
# kernels/ imported as a top-level ``kernels`` loads, in its place, the package Python would have found
# without it (tests/test_import_shadowing.py): the name comes from the import statement, never from a file
STEP_ASIDE = ("kernels/__init__.py", "_step_aside")


def _functions_around(tree):
    """(node, name of the innermost function around it, or None) for every node of ``tree``."""
    def walk(node, function):
        for child in ast.iter_child_nodes(node):
            yield child, function
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            yield from walk(child, inner)
    return walk(tree, None)


def _name_of(node):
    return node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None


def dynamic_code(source):
    """[(line, what, function)] for every use of DYNAMIC_CODE in ``source``."""
    found = []
    for node, function in _functions_around(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
            found += [(node.lineno, part, function) for module in modules for part in module.split(".")
                      if part in DYNAMIC_CODE]
        elif _name_of(node) in DYNAMIC_CODE:
            found.append((node.lineno, _name_of(node), function))
    return found


def loader_misuses(source):
    """[(line, what)] where a CODE_LOADERS function is called with anything but an ``args.<flag>``
    of the parsed command line (outside the loaders themselves), or passed on as a value."""
    tree = ast.parse(source)
    as_callee = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    found = []
    for node, function in _functions_around(tree):
        if isinstance(node, ast.Call) and _name_of(node.func) in CODE_LOADERS and function not in CODE_LOADERS:
            for value in [*node.args, *(keyword.value for keyword in node.keywords)]:
                if not (isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name)
                        and value.value.id == "args"):
                    found.append((node.lineno, f"{_name_of(node.func)}({ast.unparse(value)})"))
        elif (_name_of(node) in CODE_LOADERS and id(node) not in as_callee
              and isinstance(getattr(node, "ctx", None), ast.Load)):
            found.append((node.lineno, f"{_name_of(node)} passed on as a value"))
    return found


def test_no_module_is_imported_by_a_name_that_came_from_a_file():
    files = sorted((REPO / "numgpt").rglob("*.py")) + sorted((REPO / "kernels").rglob("*.py"))
    uses = [(str(path.relative_to(REPO)), line, what, function) for path in files
            for line, what, function in dynamic_code(path.read_text())]
    print("\n".join(f"{path}:{line}: {what} in {function}" for path, line, what, function in uses))
    assert uses and all((path, function) in (LOADER_HOME, STEP_ASIDE) for path, _, _, function in uses)
    misuses = [f"{path.relative_to(REPO)}:{line}: {what}" for path in files
               for line, what in loader_misuses(path.read_text())]
    assert not misuses, "\n".join(misuses)


def test_the_dynamic_import_scan_catches_what_it_looks_for():
    bad = ("import importlib\n"
           "from runpy import run_path\n"
           "def resume(args, flags, saved):\n"
           "    importlib.import_module(saved['module'])\n"
           "    __import__(flags['module'])\n"
           "    _load_learner_backwards(flags['backward'])\n"
           "    load_function(saved['train']['backward'][0])\n"
           "    load_function(args.backward)\n"
           "    hooks = [load_function]\n"
           "def _load_learner_backwards(typed):\n"
           "    return [load_function(spec) for spec in typed]\n")
    assert dynamic_code(bad) == [(2, "run_path", None), (2, "runpy", None), (4, "import_module", "resume"),
                                 (5, "__import__", "resume")]
    assert loader_misuses(bad) == [(6, "_load_learner_backwards(flags['backward'])"),
                                   (7, "load_function(saved['train']['backward'][0])"),
                                   (9, "load_function passed on as a value")]
