"""What a run means across its starts (issue 21's walk): --grad-clip 0 clips
nothing, a resume that changes the run's length keeps the learning rate
continuous, data matched by sha256, checkpoints named by the seed's 0-based
step, one save per step, a finished run that says so, failed starts that
leave no directory, and a failure that names the checkpoint to resume from.

The CLI runs in this process (``numgpt.cli.main``) on the tiny preset with
16-token windows in batches of 2 (the bundled corpus gives 144 steps per
epoch); the loss plot, redrawn at every evaluation, is not what these tests
look at and is skipped where it would cost most of the time."""
import gc
import hashlib
import io
import json
import math
import shutil

import numpy as np
import pytest

import numgpt
from numgpt import cli
from numgpt.cli import parser as cli_parser, train as cli_train
from numgpt.errors import UsageError
from numgpt.io.checkpoint import CheckpointManager, load_checkpoint
from numgpt.io.hf_weights import tensor_index
from numgpt.models.gpt import PRESETS
from numgpt.training.run import RunDirectory
from numgpt.training.train import LRSchedule, train_model_simple

FAST = ["--preset", "tiny", "--context-length", "16", "--batch-size", "2", "--eval-iter", "1"]
# two rates computed by the same formula from the same floats: equal but for the last bit
RATE_RTOL = 1e-12


@pytest.fixture
def train(capsys):
    """Run ``numgpt train ARGS`` in this process: (exit status, stdout, stderr)."""
    def run(*args):
        code = cli.main(["train", *map(str, args)])
        gc.collect()                                        # the run directory's lock goes with its handle
        captured = capsys.readouterr()
        return code, captured.out, captured.err
    return run


@pytest.fixture
def no_plot(monkeypatch):
    monkeypatch.setattr(RunDirectory, "draw_plot", lambda self, records, path=None: path)


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def one_line_error(code, err, *fragments):
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# ---------------------------------------------------------------- --grad-clip 0

def _one_step(grad_clip):
    numgpt.manual_seed(5)
    model = numgpt.GPTModel(dict(PRESETS["tiny"], context_length=16, drop_rate=0.0))
    optimizer = numgpt.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    ids = np.arange(2 * 17).reshape(2, 17) * 97 % 50257
    batches = [(ids[:, :-1], ids[:, 1:])] * 2              # max_steps=1 stops at the second: no epoch end
    train_model_simple(model, batches, batches, optimizer, "cpu", num_epochs=1, eval_freq=100, eval_iter=1,
                       start_context="x", tokenizer=None, max_steps=1, grad_clip=grad_clip, file=io.StringIO())
    return model.state_dict()


@pytest.mark.filterwarnings("ignore:train_loader's batches offer no state_dict")
def test_grad_clip_zero_means_no_clipping_as_in_nanogpt_and_the_trainer():
    unclipped, zero = _one_step(None), _one_step(0.0)
    numgpt.manual_seed(5)
    initial = numgpt.GPTModel(dict(PRESETS["tiny"], context_length=16, drop_rate=0.0)).state_dict()
    for name, array in unclipped.items():
        assert np.array_equal(zero[name], array), name      # PyTorch's clip_grad_norm_(p, 0) would zero them
    moved = max(float(np.abs(unclipped[n] - initial[n]).max()) for n in initial)
    print(f"largest weight change of the step: {moved:.3e}")
    assert moved > 1e-4                                     # the step did train
    with pytest.raises(UsageError, match="grad_clip must be >= 0"):
        _one_step(-1.0)
    help_text = cli_parser.build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "0: no clipping" in " ".join(help_text.split())


# ---------------------------------------------------------------- the schedule over a resume

def test_lr_schedule_reanchored_goes_on_from_the_last_rate():
    cosine = LRSchedule(peak_lr=1e-3, total_steps=20, warmup_steps=4, kind="cosine", min_lr=1e-5, initial_lr=1e-4)
    longer = cosine.reanchored(10, 40)
    assert (longer.anchor_step, longer.total_steps) == (10, 40)
    assert [longer(k) for k in range(4)] == [cosine(k) for k in range(4)]        # the warmup knows no end
    assert longer(10) == cosine(9)                                                 # no jump
    rates = [longer(k) for k in range(10, 41)]
    assert all(a > b for a, b in zip(rates, rates[1:])) and rates[-1] == 1e-5      # down to min_lr at total
    shorter = cosine.reanchored(10, 14)
    assert shorter(10) == cosine(9) and shorter(14) == 1e-5
    again = longer.reanchored(30, 50)                                              # a second resume
    assert again(30) == longer(29) and again(50) == 1e-5
    assert longer.reanchored(10, 40) is longer                                     # the same length: unchanged
    in_warmup = cosine.reanchored(3, 40)                                           # the warmup knows no end
    assert in_warmup.anchor_step is None and in_warmup == LRSchedule(1e-3, 40, 4, "cosine", 1e-5, 1e-4)
    constant = LRSchedule(peak_lr=1e-3, total_steps=20, warmup_steps=4).reanchored(10, 40)
    assert constant.anchor_step is None and constant(10) == 1e-3


def test_a_malformed_reanchoring_record_is_named(tmp_path):
    from numgpt.training.run import RunError
    schedule = LRSchedule(peak_lr=1e-3, total_steps=20, kind="cosine")
    saved = {"schedule": {"total_steps": 10, "reanchored": [{"step": "5", "lr": 1e-4, "total_steps": 10}]}}
    with pytest.raises(RunError, match=r"settings.json: schedule.reanchored must be a list"):
        cli_train._resumed_schedule(saved, tmp_path / "settings.json", schedule, 8, say=False)


def test_a_resume_that_lengthens_a_cosine_run_keeps_the_rate_continuous(tmp_path, train, no_plot):
    """The issue's walk: a cosine run resumed with a larger --max-steps jumped from 1.3e-4 to 4.5e-4."""
    out = tmp_path / "run"
    code, _, _ = train("--out", out, *FAST, "--max-steps", 4, "--eval-freq", 1, "--lr-schedule", "cosine",
                       "--warmup-steps", 1, "--min-lr", "1e-5")
    assert code == 0
    code, stdout, stderr = train("--resume", "--out", out, "--max-steps", 8)
    rates = {r["step"]: r["lr"] for r in metrics(out)}
    print(f"step 3 (before the resume) {rates[3]:.6e}, step 4 (after) {rates[4]:.6e}")
    assert rates[4] == pytest.approx(rates[3], rel=RATE_RTOL)
    assert code == 0 and "cosine goes on from the rate of step 3" in stderr
    after = [rates[k] for k in range(4, 8)]
    assert all(a > b for a, b in zip(after, after[1:])) and after[-1] > 1e-5
    schedule = json.loads((out / "settings.json").read_text())["schedule"]
    assert schedule["total_steps"] == 8
    assert schedule["reanchored"] == [{"step": 4, "lr": pytest.approx(rates[3], rel=RATE_RTOL), "total_steps": 8}]


# ---------------------------------------------------------------- data matched by sha256

def test_data_is_matched_by_sha256_not_by_path(tmp_path, train, no_plot, verdict_path):
    first = tmp_path / "corpus.txt"
    shutil.copyfile(verdict_path, first)
    out = tmp_path / "run"
    assert train("--out", out, *FAST, "--data", first, "--max-steps", 2, "--eval-freq", 10)[0] == 0
    moved = tmp_path / "elsewhere" / "corpus.txt"
    moved.parent.mkdir()
    first.rename(moved)
    code, _, err = train("--resume", "--out", out, "--max-steps", 3)
    one_line_error(code, err, "is gone", str(first), "--data")
    code, stdout, _ = train("--resume", "--out", out, "--max-steps", 3, "--data", moved)
    assert code == 0 and "Resuming from" in stdout
    assert json.loads((out / "settings.json").read_text())["train"]["data"] == str(moved)   # where it is now
    other = tmp_path / "other.txt"
    other.write_bytes(moved.read_bytes().replace(b"Gisburn", b"Gisborn"))
    code, _, err = train("--resume", "--out", out, "--max-steps", 4, "--data", other)
    one_line_error(code, err, hashlib.sha256(other.read_bytes()).hexdigest(),
                   hashlib.sha256(moved.read_bytes()).hexdigest(), str(other))


# ---------------------------------------------------------------- step numbers, saves, a finished run

def test_one_step_numbering_one_save_per_step_and_a_finished_run_says_so(tmp_path, train, no_plot):
    out = tmp_path / "run"
    code, stdout, _ = train("--out", out, *FAST, "--max-steps", 4, "--checkpoint-every", 2, "--eval-freq", 2)
    assert code == 0
    lines = stdout.splitlines()
    saves = [line.split()[-1] for line in lines if line.startswith("Saved checkpoint")]
    assert [s.rsplit("/", 1)[1] for s in saves] == ["step-00000001", "step-00000003"]     # each once
    order = [line.split(":")[0] if line.startswith("Ep") else line.rsplit("/", 1)[-1] for line in lines
             if line.startswith(("Ep", "Saved"))]
    assert order == ["Ep 1 (Step 000000)", "step-00000001", "Ep 1 (Step 000002)", "step-00000003"]
    assert [r["step"] for r in metrics(out)] == [0, 2]
    manager = CheckpointManager(out / "checkpoints")
    assert [p.name for p in manager.checkpoints()] == ["step-00000001", "step-00000003"]
    for path in manager.checkpoints():                      # the name is the step the checkpoint holds
        state = load_checkpoint(path).state
        assert state["step"] == state["train_state"]["global_step"] == int(path.name[5:])

    marker = out / "checkpoints" / "step-00000003" / "COMMITTED"
    before = (marker.stat().st_mtime_ns, (out / "settings.json").read_bytes(), (out / "metrics.jsonl").read_bytes())
    code, stdout, stderr = train("--resume", "--out", out)
    assert code == 0 and stderr == ""
    assert stdout.startswith("Nothing left to do") and "step-00000003 holds step 3" in stdout
    assert "Training completed" not in stdout and "Saved" not in stdout
    assert (marker.stat().st_mtime_ns, (out / "settings.json").read_bytes(),
            (out / "metrics.jsonl").read_bytes()) == before

    # a run directory of an earlier numgpt named its checkpoints by the steps completed: it still resumes,
    # and the first new checkpoint takes the old name of the step before it
    (out / "checkpoints" / "step-00000003").rename(out / "checkpoints" / "step-00000004")
    code, stdout, _ = train("--resume", "--out", out, "--max-steps", 5)
    assert code == 0 and "step-00000004 (step 3 done, step 4 next)" in stdout
    assert [p.name for p in manager.checkpoints()] == ["step-00000001", "step-00000004"]
    assert load_checkpoint(manager.latest()).state["train_state"]["global_step"] == 4


# ---------------------------------------------------------------- a start that fails leaves nothing

def _bad_starts(tmp_path, verdict_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 500)
    (tmp_path / "short.txt").write_text("Every effort moves you. " * 4)
    (tmp_path / "a-directory").mkdir()
    data = ["--data", verdict_path]
    return {
        "missing data": ["--data", tmp_path / "no-such.txt"],
        "empty data": ["--data", tmp_path / "empty.txt"],
        "non-UTF-8 data": ["--data", tmp_path / "latin1.txt"],
        "too-short data": ["--data", tmp_path / "short.txt"],
        "a directory with no corpus": ["--data", tmp_path / "a-directory"],
        "--device cuda without CuPy": [*data, "--device", "cuda"],
        "a bad --backward": [*data, "--backward", "layer_norm=no_such_module_here:backward"],
        "--batch-size 100": [*data, "--batch-size", "100"],
    }


def test_a_start_that_fails_leaves_no_run_directory(tmp_path, train, verdict_path):
    try:
        import cupy  # noqa: F401
        has_cupy = True
    except ImportError:
        has_cupy = False
    for case, flags in _bad_starts(tmp_path, verdict_path).items():
        if case.startswith("--device") and has_cupy:
            continue
        top = tmp_path / case.replace(" ", "_")
        code, _, err = train("--out", top / "runs" / "run", "--preset", "tiny", "--max-steps", "1", *flags)
        assert code == 2 and len(err.strip().splitlines()) == 1, (case, err)
        assert not top.exists(), f"{case}: left {sorted(p.name for p in top.rglob('*'))}"
    code, _, err = train("--resume", "--out", tmp_path / "nothing" / "run")
    assert code == 2 and "no run to continue" in err and not (tmp_path / "nothing").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    code, _, _ = train("--out", existing, "--data", tmp_path / "empty.txt", "--preset", "tiny")
    assert code == 2 and (existing / "notes.txt").read_text() == "mine"   # a directory that was there stays


def test_a_failure_after_the_directory_is_made_removes_what_this_start_made(tmp_path, train, monkeypatch):
    def disk_trouble(self, document):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(RunDirectory, "write_settings", disk_trouble)
    with pytest.raises(OSError, match="No space"):
        train("--out", tmp_path / "new" / "run", *FAST, "--max-steps", 1)
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------- a failure during training

def test_a_failure_during_training_keeps_its_checkpoint_and_says_which(tmp_path, train, capsys, monkeypatch):
    out = tmp_path / "run"
    drawn = []

    def plot_that_fails_the_second_time(self, records, path=None):
        drawn.append(records[-1]["step"])
        if len(drawn) == 2:
            raise RuntimeError("injected: the plot failed")
    monkeypatch.setattr(RunDirectory, "draw_plot", plot_that_fails_the_second_time)
    with pytest.raises(RuntimeError, match="injected") as raised:
        cli.main(["train", "--out", str(out), *FAST, "--max-steps", "20", "--eval-freq", "4",
                  "--checkpoint-every", "3"])
    del raised
    gc.collect()
    err = capsys.readouterr().err
    print(err)
    kept = out / "checkpoints" / "step-00000002"
    assert drawn == [0, 4] and f"the last committed checkpoint is {kept}" in err and f"--resume --out {out}" in err
    assert CheckpointManager(out / "checkpoints").latest() == kept

    def plot_with_bad_input(self, records, path=None):      # a NumgptError: one line, naming the checkpoint too
        raise UsageError("injected: a plot path that cannot be used")
    monkeypatch.setattr(RunDirectory, "draw_plot", plot_with_bad_input)
    code, _, err = train("--resume", "--out", out)
    one_line_error(code, err, "injected: a plot path", f"the last committed checkpoint is {kept}")
    monkeypatch.setattr(RunDirectory, "draw_plot", lambda self, records, path=None: path)
    code, stdout, _ = train("--resume", "--out", out, "--max-steps", 5)
    assert code == 0 and f"Resuming from {kept} (step 2 done, step 3 next)" in stdout


# ---------------------------------------------------------------- export: GPT-2 sharded, with its tokenizer

# the seed's corpus with what byte-level BPE finds hard: the special token, accents, runs of spaces, digits
TOKENIZER_TEXT_TAIL = " <|endoftext|> caf\u00e9  na\u00efve\n\n   12345 don't  \u4e16\u754c "


@pytest.fixture(scope="module")
def gpt2_export(tmp_path_factory):
    """A tiny GPT-2 (GPT-2's vocabulary) saved as a checkpoint, exported by the CLI in 10 MiB shards."""
    root = tmp_path_factory.mktemp("export")
    numgpt.manual_seed(3)
    model = numgpt.GPTModel(dict(PRESETS["tiny"], context_length=16))
    numgpt.save_checkpoint(root / "checkpoint", model)
    assert cli.main(["export", "--checkpoint", str(root / "checkpoint"), "--out", str(root / "hf"),
                     "--max-shard-size", "10"]) == 0
    return model, root


def test_export_shards_gpt2_as_transformers_does(gpt2_export):
    model, root = gpt2_export
    out = root / "hf"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (out / "model.safetensors").exists()
    held = {}                                               # shard -> [bytes of each tensor]
    for name, info in tensor_index(out).items():
        assert info.path.name == index["weight_map"][name] and info.dtype == "F32"
        held.setdefault(info.path.name, []).append(4 * math.prod(info.shape))
    print(f"{len(shards)} shards, tensor bytes: {[sum(held[name]) for name in shards]}")
    assert sorted(held) == shards
    assert all(len(sizes) == 1 or sum(sizes) <= 10 * 2**20 for sizes in held.values())   # or one larger tensor
    loaded = numgpt.load_gpt2(out)                          # numgpt reads its shards back, exactly
    for name, array in model.state_dict().items():
        assert np.array_equal(loaded.state_dict()[name], array), name
    again = root / "hf-again"
    shutil.copytree(out, again)
    assert cli.main(["export", "--checkpoint", str(root / "checkpoint"), "--out", str(again)]) == 0
    assert sorted(p.name for p in again.glob("model*")) == ["model.safetensors"]   # the old shards are gone
    assert np.array_equal(numgpt.load_gpt2(again).out_head.weight.data, model.out_head.weight.data)


def test_export_writes_gpt2s_tokenizer_files_that_tokenizers_reads(gpt2_export, verdict_text, tokenizer):
    from tokenizers import Tokenizer

    from numgpt.io.tokenizer import HF_TOKENIZER_FILES
    _, root = gpt2_export
    out = root / "hf"
    assert {"vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"} <= set(HF_TOKENIZER_FILES)
    assert all((out / name).is_file() for name in HF_TOKENIZER_FILES)
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 16
    text = verdict_text + TOKENIZER_TEXT_TAIL
    expected = tokenizer.encode(text, allowed_special="all")
    theirs = Tokenizer.from_file(str(out / "tokenizer.json")).encode(text)
    first = next((i for i, (a, b) in enumerate(zip(theirs.ids, expected)) if a != b), None)
    print(f"{len(expected)} tokens; tokenizer.json first differs at {first}")
    assert theirs.ids == expected
    assert Tokenizer.from_file(str(out / "tokenizer.json")).decode(expected, skip_special_tokens=False) == text
    pipeline = json.loads((out / "tokenizer.json").read_text())["model"]  # what GPT2Tokenizer's files must hold
    assert json.loads((out / "vocab.json").read_text()) == pipeline["vocab"] and len(pipeline["vocab"]) == 50257
    merges = (out / "merges.txt").read_text().splitlines()
    assert merges[0] == "#version: 0.2" and [m.split(" ") for m in merges[1:]] == [list(m) for m in
                                                                                    pipeline["merges"]]


def test_transformers_autotokenizer_loads_the_export(gpt2_export, verdict_text, tokenizer):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (not in numgpt's "
                                                              "test extra): its AutoTokenizer is not tried")
    _, root = gpt2_export
    loaded = transformers.AutoTokenizer.from_pretrained(str(root / "hf"))
    text = verdict_text[:2000] + TOKENIZER_TEXT_TAIL
    assert loaded(text)["input_ids"] == tokenizer.encode(text, allowed_special="all")
    assert loaded.eos_token == "<|endoftext|>" and loaded.eos_token_id == 50256
    assert loaded.decode(tokenizer.encode(text, allowed_special="all")) == text
