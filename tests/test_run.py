"""Run directories: the settings a run remembers, resume with no flags,
metrics as they go (metrics.jsonl, losses.json, the plot) that survive an
interrupt, one training process per directory, and the plot drawn without
touching matplotlib's backend. The CLI runs as real subprocesses."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from cli_process import assert_usage_error, numgpt_cli, start_numgpt, wait_for_line

from numgpt.io.checkpoint import CheckpointManager, load_checkpoint
from numgpt.training.run import SAFE_TO_CHANGE, RunDirectory, RunError, resolve_settings

# The tiny preset, 32-token windows of the bundled corpus in batches of 8: 4,612 training tokens give
# 144 windows, 18 steps per epoch.
TINY = ["--preset", "tiny", "--context-length", "32", "--batch-size", "8", "--eval-freq", "10", "--eval-iter", "1"]
STEPS = 60
METRIC_FIELDS = {"step", "epoch", "tokens_seen", "train_loss", "val_loss", "train_perplexity", "val_perplexity",
                 "lr", "grad_norm", "tokens_per_s", "elapsed_s"}


def start_training(out, *extra):
    return start_numgpt("train", "--out", out, *extra)


def final_state(out):
    return load_checkpoint(CheckpointManager(out / "checkpoints").latest())


# ---------------------------------------------------------------- settings

def test_resolve_settings_takes_safe_flags_and_names_both_values_of_a_contradiction(tmp_path):
    defaults = {"lr": 4e-4, "epochs": 10, "seed": 123, "max_steps": None}
    assert resolve_settings({"lr": 1e-3}, defaults) == {"lr": 1e-3, "epochs": 10, "seed": 123, "max_steps": None}
    saved = {"lr": 1e-3, "epochs": 10, "seed": 7, "max_steps": None}
    assert "epochs" in SAFE_TO_CHANGE and "max_steps" in SAFE_TO_CHANGE and "lr" not in SAFE_TO_CHANGE
    resumed = resolve_settings({"epochs": 20, "max_steps": 5, "seed": 7}, defaults, saved, tmp_path / "s.json")
    assert resumed == {"lr": 1e-3, "epochs": 20, "seed": 7, "max_steps": 5}   # seed 7 agrees: accepted
    with pytest.raises(RunError) as raised:
        resolve_settings({"lr": 4e-4}, defaults, saved, tmp_path / "s.json")     # the default, typed, still differs
    assert "--lr 0.0004" in str(raised.value) and "0.001" in str(raised.value) and "s.json" in str(raised.value)


def test_settings_json_records_the_resolved_run(tmp_path):
    out = tmp_path / "run"
    numgpt_cli("train", "--out", out, *TINY, "--max-steps", "2", "--lr-schedule", "cosine", "--warmup-steps", "1",
               check=0)
    settings = json.loads((out / "settings.json").read_text())
    print(json.dumps(settings, indent=1))
    train = settings["train"]
    assert train["preset"] == "tiny" and train["context_length"] == 32 and train["drop_rate"] == 0.1
    assert train["lr"] == 4e-4 and train["seed"] == 123 and train["epochs"] == 10 and train["data"] is None
    assert settings["model"]["emb_dim"] == 64 and settings["model"]["context_length"] == 32
    assert settings["data_sha256"] == "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f"
    assert settings["optimizer"] == {"name": "AdamW", "lr": 4e-4, "weight_decay": 0.1, "betas": [0.9, 0.999],
                                     "eps": 1e-8}
    assert settings["schedule"]["kind"] == "cosine" and settings["schedule"]["total_steps"] == 2
    import numba
    assert settings["environment"]["numpy"] == np.__version__ and settings["environment"]["numba"] == numba.__version__
    assert settings["environment"]["kernel_mode"] in ("numba", "numpy")


# ---------------------------------------------------------------- interrupt, resume with no flags

def test_an_interrupted_run_keeps_its_metrics_and_resumes_with_no_flags(tmp_path):
    """The issue's "done when": SIGINT leaves metrics.jsonl, losses.json and the plot; --resume --out alone
    finishes the run, bit for bit as an uninterrupted run of the same flags."""
    flags = [*TINY, "--max-steps", STEPS, "--lr-schedule", "cosine", "--warmup-steps", "5", "--min-lr", "1e-4"]
    numgpt_cli("train", "--out", tmp_path / "whole", *flags, check=0)

    cut = tmp_path / "cut"
    process = start_training(cut, *map(str, flags))
    wait_for_line(process, "(Step 000010)")
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    print(stdout, stderr)
    assert process.returncode == 130
    records = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records][:2] == [0, 10]
    losses = json.loads((cut / "losses.json").read_text())
    assert losses["train_losses"] == [r["train_loss"] for r in records]
    assert (cut / "loss-plot.pdf").read_bytes().startswith(b"%PDF")
    stopped_at = final_state(cut).state["train_state"]["global_step"]
    assert stopped_at < STEPS - 1

    resumed = numgpt_cli("train", "--resume", "--out", cut, check=0)
    assert "Resuming from" in resumed.stdout and "Training completed" in resumed.stdout
    whole, again = final_state(tmp_path / "whole"), final_state(cut)
    assert again.state["train_state"]["global_step"] == STEPS - 1
    for name, array in whole.model_state.items():
        assert np.array_equal(array, again.model_state[name]), name
    for field in ("train_losses", "val_losses", "tokens_seen", "batches_digest"):
        assert whole.state["train_state"][field] == again.state["train_state"][field], field
    whole_records = (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    cut_records = (cut / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in cut_records] == [json.loads(r)["step"] for r in whole_records]
    for mine, theirs in zip(cut_records, whole_records):
        mine, theirs = json.loads(mine), json.loads(theirs)
        for field in ("step", "epoch", "tokens_seen", "train_loss", "val_loss", "lr", "grad_norm"):
            assert mine[field] == theirs[field], field


def test_safe_flags_are_taken_on_resume_and_others_must_agree(tmp_path):
    out = tmp_path / "run"
    numgpt_cli("train", "--out", out, *TINY, "--max-steps", "3", check=0)
    more = numgpt_cli("train", "--resume", "--out", out, "--max-steps", "5", "--preset", "tiny", check=0)
    assert "Resuming from" in more.stdout and final_state(out).state["train_state"]["global_step"] == 4
    assert json.loads((out / "settings.json").read_text())["train"]["max_steps"] == 5   # remembered
    assert_usage_error(numgpt_cli("train", "--resume", "--out", out, "--batch-size", "4"),
                   "--batch-size 4", "batch_size = 8", "settings.json")
    assert_usage_error(numgpt_cli("train", "--out", out, *TINY), "already holds a run", "--resume")
    assert_usage_error(numgpt_cli("train", "--resume", "--out", tmp_path / "nothing"), "no run to continue")
    changed = tmp_path / "changed.txt"
    changed.write_text("a different corpus " * 400)
    assert_usage_error(numgpt_cli("train", "--resume", "--out", out, "--data", changed), str(changed), "sha256",
                       "the bundled the-verdict.txt")


def test_a_second_process_on_the_same_run_stops_at_once_and_harms_nothing(tmp_path):
    out = tmp_path / "run"
    first = start_training(out, *TINY, "--max-steps", "40")
    wait_for_line(first, "(Step 000000)")
    settings_before = (out / "settings.json").read_bytes()
    started = time.time()
    second = numgpt_cli("train", "--resume", "--out", out)
    assert_usage_error(second, "in use by another numgpt train", f"pid {first.pid}")
    assert time.time() - started < 30
    assert (out / "settings.json").read_bytes() == settings_before
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert final_state(out).state["train_state"]["global_step"] == 39
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 10, 20, 30]


# ---------------------------------------------------------------- metrics

def test_metrics_lines_hold_every_field_consistently(tmp_path):
    out = tmp_path / "run"
    numgpt_cli("train", "--out", out, *TINY, "--max-steps", "21", "--warmup-steps", "10", "--initial-lr", "1e-5",
               check=0)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    print(records)
    assert [r["step"] for r in records] == [0, 10, 20] and all(set(r) == METRIC_FIELDS for r in records)
    for r in records:
        assert math.isclose(r["train_perplexity"], math.exp(r["train_loss"]), rel_tol=1e-12)
        assert math.isclose(r["val_perplexity"], math.exp(r["val_loss"]), rel_tol=1e-12)
        assert r["tokens_seen"] == (r["step"] + 1) * 8 * 32
        assert math.isclose(r["epoch"], (r["step"] + 1) / 18) and r["grad_norm"] > 0 and r["tokens_per_s"] > 0
    assert [r["lr"] for r in records] == [1e-5, 4e-4, 4e-4]          # warmup from --initial-lr, then the peak
    assert records[0]["elapsed_s"] < records[1]["elapsed_s"] < records[2]["elapsed_s"]


def test_read_metrics_skips_a_torn_last_line_and_names_a_bad_one(tmp_path):
    run = RunDirectory(tmp_path)
    run.append_metrics({"step": 0, "epoch": 0.1, "tokens_seen": 8, "train_loss": float("nan"),
                        "val_loss": float("inf")})
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 0, "epoch": 0.1, "tokens_seen": 8,
                                                                    "train_loss": None, "val_loss": None}
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 5, "epo')                                 # what a kill mid-write leaves
    assert [r["step"] for r in run.read_metrics()] == [0]
    assert [r["step"] for r in run.start_metrics(keep_through_step=-1)] == []
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "epoch": 0.1, "tokens_seen": 8}\nnot json\n{"step": 2}\n')
    with pytest.raises(RunError, match=r"metrics.jsonl:2"):
        run.read_metrics()


def test_numgpt_plot_redraws_the_plot_from_metrics(tmp_path):
    out = tmp_path / "run"
    numgpt_cli("train", "--out", out, *TINY, "--max-steps", "21", check=0)
    (out / "loss-plot.pdf").unlink()
    numgpt_cli("plot", out, check=0)
    assert (out / "loss-plot.pdf").read_bytes().startswith(b"%PDF")
    numgpt_cli("plot", out, "--output", tmp_path / "loss.png", check=0)
    import matplotlib.image
    assert matplotlib.image.imread(tmp_path / "loss.png").shape[:2] == (300, 500)
    (tmp_path / "empty").mkdir()
    assert_usage_error(numgpt_cli("plot", tmp_path / "empty"), "metrics.jsonl", "no evaluation")


def test_plotting_leaves_the_matplotlib_backend_alone():
    """Jupyter's inline backend must survive numgpt: no matplotlib on import, no pyplot, no use()."""
    script = """
import sys
import numgpt
assert "matplotlib" not in sys.modules, "importing numgpt imported matplotlib"
import matplotlib
matplotlib.use("svg")
numgpt.plot_losses([0, 1], [0, 10], [2.0, 1.0], [2.5, 1.5], sys.argv[1])
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert "matplotlib.pyplot" not in sys.modules, "numgpt imported pyplot"
"""
    import tempfile
    with tempfile.TemporaryDirectory() as directory:
        result = subprocess.run([sys.executable, "-c", script, os.path.join(directory, "p.png")],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert open(os.path.join(directory, "p.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
