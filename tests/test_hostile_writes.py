"""Hostile run directories (issue 22, findings 1 and 2): nothing a run directory
holds names code that numgpt runs, and nothing numgpt writes goes through a link
planted in it.

A learner module whose import writes a marker file stands for code a run
directory might name: the marker's absence proves it never ran. Every write path
meets a symbolic link to a victim file (or directory) outside the run: the
victim's sha256 is the same afterwards, and the refusal names the link in one
line (exit 2 on the command line). The commands run in-process
(numgpt.cli.main) but for two real subprocesses that prove the command itself.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from cli_process import ENV, assert_usage_error

import numgpt
from numgpt import cli
from numgpt.io import safe_io
from numgpt.io.checkpoint import CheckpointManager, save_checkpoint
from numgpt.io.families import copy_tokenizer, export_pretrained
from numgpt.io.hf_weights import save_weights
from numgpt.safe_write import LinkRefused, atomic_write, open_existing_or_new, own_directory
from numgpt.training.run import RunDirectory

TINY = ["--preset", "tiny", "--context-length", "32", "--batch-size", "8", "--eval-freq", "1", "--eval-iter", "1"]
TRAINED_STEPS = 2
# one step more than the trained run: a resume that trains on does as little as it can
RESUME = ["--resume", "--max-steps", str(TRAINED_STEPS + 1)]
MARKER = "marker.txt"
# a learner's module whose import leaves a marker; its backward is numgpt's own, so a run that
# imports it (as typed on the command line) trains on
EVIL_SOURCE = f"""\
import pathlib
pathlib.Path(__file__).with_name({MARKER!r}).write_text("imported")
from numgpt.registry import op_pair
def f(dout, cache):
    return op_pair("layer_norm").backward(dout, cache)
"""
VICTIM_BYTES = b"precious: not numgpt's to write\n"


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_digest(directory):
    """{relative path: sha256 or 'dir'} of everything under ``directory``."""
    return {str(p.relative_to(directory)): "dir" if p.is_dir() else sha256(p) for p in sorted(directory.rglob("*"))}


class Victim:
    """A file and a directory outside the run, and their digests now."""

    def __init__(self, root):
        self.directory = root / "outside"
        self.directory.mkdir()
        self.file = self.directory / "victim.txt"
        self.file.write_bytes(VICTIM_BYTES)
        self.empty_directory = root / "outside-empty"
        self.empty_directory.mkdir()
        self.digest = tree_digest(self.directory)

    def assert_untouched(self):
        assert tree_digest(self.directory) == self.digest
        assert sha256(self.file) == hashlib.sha256(VICTIM_BYTES).hexdigest()
        assert list(self.empty_directory.iterdir()) == []


@pytest.fixture
def victim(tmp_path):
    return Victim(tmp_path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run directory of TRAINED_STEPS steps of the tiny model (trained once, copied per test)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert cli.main(["train", "--out", str(out), *TINY, "--max-steps", str(TRAINED_STEPS)]) == 0
    return out


@pytest.fixture
def run(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy, symlinks=True)
    return copy


def refused(capsys, argv, *fragments):
    """numgpt.cli.main(argv) exits 2 with one line on stderr holding every fragment; the line."""
    capsys.readouterr()
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    print(err)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def link(where, target):
    """Replace whatever is at ``where`` with a symbolic link to ``target``."""
    if where.is_dir() and not where.is_symlink():
        shutil.rmtree(where)
    elif os.path.lexists(where):
        where.unlink()
    where.symlink_to(target)
    return where


# ---------------------------------------------------------------- finding 1: no code a run directory names

def learner(tmp_path):
    """(directory holding evil.py, the marker path): the module writes the marker when imported."""
    directory = tmp_path / "learner"
    directory.mkdir()
    (directory / "evil.py").write_text(EVIL_SOURCE)
    return directory, directory / MARKER


def record_backward(run, value):
    settings = json.loads((run / "settings.json").read_text())
    settings["train"]["backward"] = value
    (run / "settings.json").write_text(json.dumps(settings, indent=1))


@pytest.mark.parametrize("form", ["absolute-path", "module-in-cwd", "a-string-not-a-list"])
def test_a_resume_runs_no_backward_that_settings_json_names(run, tmp_path, capsys, monkeypatch, form):
    directory, marker = learner(tmp_path)
    spec = {"absolute-path": f"layer_norm={directory / 'evil.py'}:f", "module-in-cwd": "layer_norm=evil:f",
            "a-string-not-a-list": "layer_norm=evil:f"}[form]
    record_backward(run, spec if form == "a-string-not-a-list" else [spec])
    monkeypatch.chdir(directory)                        # evil.py importable as `evil`
    settings = sha256(run / "settings.json")
    expected = (("backward is", "expected a list of strings") if form == "a-string-not-a-list"   # settings' schema
                else ("--backward none", "runs no code that a run directory names"))
    line = refused(capsys, ["train", "--out", run, *RESUME], "settings.json", *expected)
    assert spec in line
    assert not marker.exists() and "evil" not in sys.modules
    assert sha256(run / "settings.json") == settings    # only compared, left as it was


def test_backward_none_trains_on_with_numgpts_own_and_records_it(run, tmp_path, capsys, monkeypatch):
    directory, marker = learner(tmp_path)
    record_backward(run, [f"layer_norm={directory / 'evil.py'}:f"])
    monkeypatch.chdir(directory)
    assert cli.main(["train", "--out", str(run), *RESUME, "--backward", "none"]) == 0
    assert not marker.exists()
    assert json.loads((run / "settings.json").read_text())["train"]["backward"] == []
    refused(capsys, ["train", "--out", run, *RESUME, "--backward", "none", "--backward", "layer_norm=evil:f"],
            "--backward none", "cannot go with --backward layer_norm=evil:f")


def test_the_backward_that_runs_is_the_one_typed_again(run, tmp_path, capsys):
    """The marker can appear: typed on the command line, the same learner module runs."""
    directory, marker = learner(tmp_path)
    spec = f"layer_norm={directory / 'evil.py'}:f"
    record_backward(run, [spec])
    (directory / "other.py").write_text(EVIL_SOURCE)        # another learner module: compared, not imported
    refused(capsys, ["train", "--out", run, *RESUME, "--backward", f"layer_norm={directory / 'other.py'}:f"],
            "contradicts this run's --backward " + spec)
    assert not marker.exists()
    assert cli.main(["train", "--out", str(run), *RESUME, "--backward", spec]) == 0
    assert marker.read_text() == "imported"


def test_the_real_command_refuses_a_backward_from_settings_json(run, tmp_path):
    directory, marker = learner(tmp_path)
    record_backward(run, ["layer_norm=evil:f"])
    result = subprocess.run([sys.executable, "-m", "numgpt", "train", "--out", str(run), *RESUME],
                            capture_output=True, text=True, cwd=directory, env=ENV, timeout=300)
    assert_usage_error(result, "--backward layer_norm=evil:f", "--backward none")
    assert not marker.exists()


# ---------------------------------------------------------------- finding 2: the lock

@pytest.mark.parametrize("resume", [False, True], ids=["new-run", "resume"])
def test_a_lock_linked_elsewhere_is_refused_before_settings_are_read(tmp_path, victim, capsys, resume):
    run = tmp_path / "run"
    run.mkdir()
    link(run / ".lock", victim.file)
    (run / "settings.json").write_text("{{{ garbage")
    refused(capsys, ["train", "--out", run, *TINY, *(["--resume"] if resume else [])],
            f"{run / '.lock'}", "symbolic link", str(victim.file))
    victim.assert_untouched()


def test_the_real_command_leaves_the_target_of_a_linked_lock_alone(tmp_path, victim):
    run = tmp_path / "run"
    run.mkdir()
    link(run / ".lock", victim.file)
    (run / "settings.json").write_text("garbage")
    result = subprocess.run([sys.executable, "-m", "numgpt", "train", "--out", str(run), "--resume"],
                            capture_output=True, text=True, env=ENV, timeout=300)
    assert_usage_error(result, ".lock", "symbolic link")
    victim.assert_untouched()


def test_a_lock_that_is_a_second_name_or_a_fifo_is_refused(tmp_path, victim, capsys):
    run = tmp_path / "run"
    run.mkdir()
    os.link(victim.file, run / ".lock")                 # a hard link reaches the victim as a symbolic one would
    refused(capsys, ["train", "--out", run, *TINY], ".lock", "2 names")
    victim.assert_untouched()
    (run / ".lock").unlink()
    os.mkfifo(run / ".lock")                            # would block an ordinary open for writing
    refused(capsys, ["train", "--out", run, *TINY], ".lock", "not a regular file")


# ---------------------------------------------------------------- finding 2: what a run writes

RUN_ENTRIES = ["settings.json", "metrics.jsonl", "losses.json", "loss-plot.pdf", "checkpoints", "tokenizer"]


@pytest.mark.parametrize("entry", RUN_ENTRIES)
def test_a_link_where_a_resumed_run_writes_is_refused_before_anything_runs(run, victim, capsys, entry):
    target = victim.directory if entry in ("checkpoints", "tokenizer") else victim.file
    link(run / entry, target)
    before = tree_digest(run)
    refused(capsys, ["train", "--out", run, *RESUME], str(run / entry), "symbolic link")
    victim.assert_untouched()
    assert tree_digest(run) == before


def test_a_new_run_refuses_a_checkpoints_link_before_training(tmp_path, victim, capsys):
    run = tmp_path / "run"
    run.mkdir()
    link(run / "checkpoints", victim.empty_directory)   # empty: the run directory holds no run yet
    link(run / "settings.json", tmp_path / "not-there.json")   # dangling: its target must not appear
    refused(capsys, ["train", "--out", run, *TINY], "symbolic link")
    victim.assert_untouched()
    assert not (tmp_path / "not-there.json").exists()


@pytest.mark.parametrize("entry", [".loss-plot.partial.pdf", "loss-plot.pdf", "--output"])
def test_numgpt_plot_writes_through_no_link(run, tmp_path, victim, capsys, entry):
    if entry == ".loss-plot.partial.pdf":               # the name the plot's temporary file once had
        link(run / entry, victim.file)
        assert cli.main(["plot", str(run)]) == 0
        assert (run / "loss-plot.pdf").read_bytes().startswith(b"%PDF")
    elif entry == "loss-plot.pdf":
        link(run / entry, victim.file)
        refused(capsys, ["plot", run], str(run / entry), "symbolic link")
    else:
        output = link(tmp_path / "plot.svg", victim.file)
        refused(capsys, ["plot", run, "--output", output], str(output), "symbolic link")
    victim.assert_untouched()
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def write_through(what, root):
    """Each writer of a run directory, a checkpoint and an export, aimed at ``root``."""
    run = RunDirectory(root)
    records = [{"step": 0, "epoch": 0.1, "tokens_seen": 8, "train_loss": 1.0, "val_loss": 1.0}]
    numgpt.manual_seed(0)
    model = numgpt.GPTModel(dict(numgpt.PRESETS["tiny"], n_layers=1))
    writers = {
        "settings.json": lambda: run.write_settings({"train": {}}),
        "metrics.jsonl": lambda: run.start_metrics(-1),
        "metrics.jsonl appended": lambda: run.append_metrics(records[0]),
        "losses.json": lambda: run.write_losses(numgpt.TrainState(), records),
        "loss-plot.pdf": lambda: run.draw_plot(records),
        "checkpoints": lambda: CheckpointManager(root / "checkpoints").save(1, model),
        "checkpoints cleaned": lambda: CheckpointManager(root / "checkpoints").clean_stale(),
        "step-00000001": lambda: save_checkpoint(root / "step-00000001", model),
        "tokenizer": lambda: copy_tokenizer(root / "source", root),
        "tokenizer/tokenizer.json": lambda: copy_tokenizer(root / "source", root),
        "model.safetensors": lambda: export_pretrained(model, root),
        "config.json": lambda: export_pretrained(model, root),
        "model.safetensors of save_weights": lambda: save_weights({"w": np.ones(2, np.float32)}, root),
        "w.safetensors": lambda: safe_io.write_safetensors(root / "w.safetensors", {"w": np.ones(2, np.float32)}),
        "graph.svg": lambda: numgpt.draw_graph(model(np.zeros((1, 2), np.int64)).sum(), root / "graph.svg"),
        "graph.dot": lambda: numgpt.draw_graph(model(np.zeros((1, 2), np.int64)).sum(), root / "graph.dot"),
    }
    return writers[what]


@pytest.mark.parametrize("what", ["settings.json", "metrics.jsonl", "metrics.jsonl appended", "losses.json",
                                  "loss-plot.pdf", "checkpoints", "checkpoints cleaned", "step-00000001",
                                  "tokenizer", "tokenizer/tokenizer.json", "model.safetensors", "config.json",
                                  "model.safetensors of save_weights", "w.safetensors", "graph.svg", "graph.dot"])
def test_every_writer_refuses_a_link_naming_it(tmp_path, victim, what):
    root = tmp_path / "root"
    root.mkdir()
    (root / "source").mkdir()
    (root / "source" / "tokenizer.json").write_text("{}")
    name = what.split(" ")[0]
    if name == "tokenizer/tokenizer.json":
        (root / "tokenizer").mkdir()
    target = victim.empty_directory if name in ("checkpoints", "tokenizer", "step-00000001") else victim.file
    link(root / name, target)
    with pytest.raises(LinkRefused) as refusal:
        write_through(what, root)()
    print(refusal.value)
    assert str(root / name) in str(refusal.value) and "symbolic link" in str(refusal.value)
    victim.assert_untouched()


def test_numgpt_export_refuses_a_link_in_its_output(run, tmp_path, victim, capsys):
    out = tmp_path / "export"
    out.mkdir()
    link(out / "config.json", victim.file)
    refused(capsys, ["export", "--checkpoint", run, "--out", out], str(out / "config.json"), "symbolic link")
    victim.assert_untouched()


def test_a_download_takes_no_lock_or_partial_file_through_a_link(tmp_path, victim):
    from numgpt.io.download import fetch
    dest = tmp_path / "model.safetensors"
    for planted in (dest.with_name(dest.name + ".lock"), dest.with_name(dest.name + ".part")):
        link(planted, victim.file)
        with pytest.raises(LinkRefused, match="symbolic link"):    # before any connection is tried
            fetch("http://127.0.0.1:9/never-reached", dest, progress=False, retries=0)
        planted.unlink()
        victim.assert_untouched()


# ---------------------------------------------------------------- numgpt.safe_write itself

def test_atomic_write_leaves_the_old_file_or_the_new_one_and_no_temporary(tmp_path):
    path = tmp_path / "f.json"
    atomic_write(path, lambda fh: fh.write(b"old"))

    def fail(fh):
        fh.write(b"half")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_a_dangling_link_is_refused_and_its_target_never_created(tmp_path):
    where = link(tmp_path / "out.json", tmp_path / "elsewhere.json")
    with pytest.raises(LinkRefused):
        atomic_write(where, lambda fh: fh.write(b"x"))
    with pytest.raises(LinkRefused):
        open_existing_or_new(where, os.O_WRONLY | os.O_APPEND)
    assert not (tmp_path / "elsewhere.json").exists()


def test_own_directory_creates_reuses_and_refuses(tmp_path):
    assert own_directory(tmp_path / "a" / "b").is_dir()
    assert own_directory(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    (tmp_path / "file").write_text("x")
    with pytest.raises(LinkRefused, match="not a directory"):
        own_directory(tmp_path / "file")
    with pytest.raises(LinkRefused, match="symbolic link"):
        own_directory(link(tmp_path / "l", tmp_path / "a"))


def test_stale_temporaries_are_removed_as_entries_without_following_links(tmp_path):
    """What a killed atomic_write leaves (".<name>.<12 hex>.tmp") goes before a job resumes in its
    directory; a link so named goes as a link (its target stays); other names and directories stay."""
    from numgpt import safe_write
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    store = tmp_path / "store"
    store.mkdir()
    (store / ".manifest.json.0123456789ab.tmp").write_text("half")
    (store / ".train-00000.bin.abcdef012345.tmp").symlink_to(victim)
    (store / ".shard.bin.fedcba987654.tmp").mkdir()
    for kept in ("train-00000.bin", ".manifest.json.tmp", ".x.0123456789ab.tmp.old", ".x.XYZ456789abc.tmp"):
        (store / kept).write_text("data")
    removed = safe_write.remove_stale_temporaries(store)
    assert removed == [".manifest.json.0123456789ab.tmp", ".train-00000.bin.abcdef012345.tmp"]
    assert victim.read_text() == "keep me"
    assert sorted(p.name for p in store.iterdir()) == [".manifest.json.tmp", ".shard.bin.fedcba987654.tmp",
                                                      ".x.0123456789ab.tmp.old", ".x.XYZ456789abc.tmp",
                                                      "train-00000.bin"]
