"""The numgpt command, run as a real subprocess: training, generation,
evaluation, exact resume across processes, signals, and bad input (exit 2,
one line on stderr, no traceback)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from cli_process import ENV, assert_usage_error, numgpt_cli, start_numgpt, wait_for_line

from numgpt.gradcheck import op_cases
from numgpt.io.checkpoint import CheckpointManager, load_checkpoint

# The tiny preset on the seed's corpus in windows of 64 tokens, batches of 8: 9 steps per epoch.
TINY_RUN = ["--preset", "tiny", "--context-length", "64", "--batch-size", "8", "--eval-freq", "4", "--eval-iter", "1"]
STEPS_PER_EPOCH = 9


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, verdict_path):
    """One short training run shared by the generate/eval tests."""
    out = tmp_path_factory.mktemp("run")
    result = numgpt_cli("train", "--data", verdict_path, "--out", out, *TINY_RUN, "--max-steps", "4", check=0)
    return out, result


def test_train_writes_log_lines_checkpoint_plot_and_losses(tiny_run):
    out, result = tiny_run
    print(result.stdout)
    assert "Ep 1 (Step 000000): Train loss" in result.stdout and "Ep 1 (Step 000004)" not in result.stdout
    assert "Training completed in" in result.stdout
    assert (out / "loss-plot.pdf").read_bytes().startswith(b"%PDF")
    losses = json.loads((out / "losses.json").read_text())
    assert len(losses["train_losses"]) == 1 and losses["total_tokens"] == 4 * 8 * 64
    assert CheckpointManager(out / "checkpoints").latest().name == "step-00000003"   # holds step 3


def test_generate_eval_and_export_from_the_run(tiny_run, verdict_path, tmp_path):
    out, _ = tiny_run
    gen = numgpt_cli("generate", "--checkpoint", out, "--prompt", "Every effort moves you", "--temperature", "1.4",
                     "--top-k", "25", "--max-new-tokens", "5", check=0)
    assert gen.stdout.startswith("Every effort moves you")
    again = numgpt_cli("generate", "--checkpoint", out, "--prompt", "Every effort moves you", "--temperature",
                       "1.4", "--top-k", "25", "--max-new-tokens", "5", check=0)
    assert again.stdout == gen.stdout                                     # --seed 123 by default
    ev = numgpt_cli("eval", "--checkpoint", out, "--data", verdict_path, check=0)
    loss, ppl = (float(x) for x in ev.stdout.replace(",", "").split()[1:4:2])
    assert 5 < loss < 11.5 and abs(ppl - np.exp(loss)) / ppl < 1e-3
    numgpt_cli("export", "--checkpoint", out, "--out", tmp_path / "hf", check=0)
    (tmp_path / "a-file").write_text("")
    assert_usage_error(numgpt_cli("export", "--checkpoint", out, "--out", tmp_path / "a-file" / "hf"),
                       "a-file", "is a file")
    from_hf = numgpt_cli("generate", "--gpt2", tmp_path / "hf", "--prompt", "Every effort moves you",
                         "--max-new-tokens", "5", check=0)
    greedy = numgpt_cli("generate", "--checkpoint", out, "--prompt", "Every effort moves you",
                        "--max-new-tokens", "5", check=0)
    assert from_hf.stdout == greedy.stdout                                # the exported weights, exactly


def test_console_script_and_gradcheck():
    script = shutil.which("numgpt")
    assert script is not None, "the numgpt console script is not installed (pip install -e .)"
    result = subprocess.run([script, "gradcheck"], capture_output=True, text=True, timeout=300)
    print(result.stdout)
    assert result.returncode == 0
    header, *lines = result.stdout.strip().splitlines()
    assert "reference pairs" in header and "numba" not in header
    assert len(lines) == len(op_cases()) + 1 and lines[-1].startswith("model")
    assert all(line.split()[1:3] == ["reference", "ok"] for line in lines)
    listed = numgpt_cli("gradcheck", "--list", check=0).stdout.splitlines()
    assert [line.split()[0] for line in listed] == [*op_cases(), "model"]
    assert "numgpt.ops.layer_norm: layer_norm_forward / layer_norm_backward" in listed[3]
    one = numgpt_cli("gradcheck", "layer_norm", check=0).stdout.splitlines()
    print("\n".join(one))
    assert one[1].startswith("layer_norm") and [line.split()[0] for line in one[2:]] == ["x", "weight", "bias"]
    assert all("worst abs" in line and "worst rel" in line and ", at (" in line for line in one[2:])
    twins = numgpt_cli("gradcheck", "attention", "--kernels", "numba", check=0).stdout
    print(twins)
    assert "numba twin  ok" in twins and "within" in twins and "of the reference" in twins
    assert_usage_error(numgpt_cli("gradcheck", "softmaxx"), "unknown op 'softmaxx'")


def final_checkpoint(out):
    return load_checkpoint(CheckpointManager(out / "checkpoints").latest())


@pytest.mark.parametrize("stop_after", [5, STEPS_PER_EPOCH + 1])   # before and after the epoch boundary
def test_resume_in_a_new_process_is_bit_exact(verdict_path, tmp_path, stop_after):
    total = STEPS_PER_EPOCH + 3
    numgpt_cli("train", "--data", verdict_path, "--out", tmp_path / "full", *TINY_RUN, "--max-steps", total, check=0)
    numgpt_cli("train", "--data", verdict_path, "--out", tmp_path / "cut", *TINY_RUN, "--max-steps", stop_after,
               check=0)
    resumed = numgpt_cli("train", "--data", verdict_path, "--out", tmp_path / "cut", *TINY_RUN, "--max-steps",
                         total, "--resume", check=0)
    assert "Resuming from" in resumed.stdout
    full, cut = final_checkpoint(tmp_path / "full"), final_checkpoint(tmp_path / "cut")
    for name, array in full.model_state.items():
        assert np.array_equal(array, cut.model_state[name]), name
    for index, moments in full.optimizer_state["state"].items():
        other = cut.optimizer_state["state"][index]
        assert moments["step"] == other["step"] == total
        assert np.array_equal(moments["exp_avg"], other["exp_avg"])
        assert np.array_equal(moments["exp_avg_sq"], other["exp_avg_sq"])
    a, b = full.state["train_state"], cut.state["train_state"]
    for field in ("global_step", "tokens_seen", "train_losses", "val_losses", "batches_digest", "loader_state"):
        assert a[field] == b[field], field
    assert a["global_step"] == total - 1


def start_training(verdict_path, out, *extra):
    return start_numgpt("train", "--data", verdict_path, "--out", out, *TINY_RUN, "--epochs", "50", *extra)


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_finishes_the_step_saves_and_exits(verdict_path, tmp_path, signum, status):
    process = start_training(verdict_path, tmp_path)
    wait_for_line(process, "Ep 1 (Step 000004)")
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    print(stdout, stderr)
    assert process.returncode == status
    assert "Saved checkpoint" in stdout
    checkpoint = final_checkpoint(tmp_path)
    assert checkpoint.state["train_state"]["global_step"] >= 4
    resumed = numgpt_cli("train", "--data", verdict_path, "--out", tmp_path, *TINY_RUN, "--epochs", "50",
                         "--max-steps", checkpoint.state["train_state"]["global_step"] + 2, "--resume", check=0)
    assert "Resuming from" in resumed.stdout


def test_a_second_sigint_exits_at_once_and_keeps_the_last_checkpoint(verdict_path, tmp_path):
    process = start_training(verdict_path, tmp_path, "--checkpoint-every", "2")
    wait_for_line(process, "Saved checkpoint")
    process.send_signal(signal.SIGINT)
    time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=30)
    assert process.returncode == 130
    CheckpointManager(tmp_path / "checkpoints").clean_stale()
    assert final_checkpoint(tmp_path).state["train_state"]["global_step"] >= 1


def test_bad_input_exits_2_with_one_line(verdict_path, tmp_path):
    run = ["train", "--out", tmp_path / "run", *TINY_RUN]
    assert_usage_error(numgpt_cli(*run, "--data", tmp_path / "missing.txt"), "missing.txt", "does not exist")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Caf\u00e9 ok".encode("utf-8") + b" na\xefve")
    assert_usage_error(numgpt_cli(*run, "--data", bad), "latin1.txt", "byte offset 11")
    short = tmp_path / "short.txt"
    short.write_text("Every effort moves you. " * 20)
    assert_usage_error(numgpt_cli(*run, "--data", short), "tokens", "65")
    assert_usage_error(numgpt_cli(*run, "--data", verdict_path, "--batch-size", "0"), "--batch-size")
    assert_usage_error(numgpt_cli("train", "--out", tmp_path / "big", "--data", verdict_path, "--batch-size",
                                  "100000"), "GiB", "smaller --batch-size")
    prompt = ["generate", "--checkpoint", tmp_path, "--prompt", "x"]
    assert_usage_error(numgpt_cli(*prompt, "--temperature", "-1"), "--temperature")
    assert_usage_error(numgpt_cli(*prompt, "--top-k", "0"), "--top-k")
    assert_usage_error(numgpt_cli(*prompt), "no committed checkpoint")
    torch_file = tmp_path / "model.pt"
    torch_file.write_bytes(b"PK\x03\x04" + bytes(60))
    assert_usage_error(numgpt_cli("generate", "--checkpoint", torch_file, "--prompt", "x"), "model.pt", "pickle")
    assert_usage_error(numgpt_cli("download", "gpt2-9b"), "unknown GPT-2 size 'gpt2-9b'")
    assert_usage_error(numgpt_cli("generate", "--gpt2", tmp_path / "nowhere", "--prompt", "x"), "nowhere",
                       "neither a GPT-2 size")
    assert_usage_error(numgpt_cli("train", "--out", torch_file, "--preset", "tiny"), "model.pt", "run directory")
    garbage = tmp_path / "model.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    assert_usage_error(numgpt_cli("generate", "--gpt2", garbage, "--prompt", "x"), "model.safetensors", "header")


def test_resuming_with_another_architecture_names_both_values(tiny_run, verdict_path, tmp_path):
    out, _ = tiny_run
    shutil.copytree(out, tmp_path / "run")
    result = numgpt_cli("train", "--data", verdict_path, "--out", tmp_path / "run", *TINY_RUN, "--preset", "small",
                        "--resume")
    assert_usage_error(result, "--preset small", "'tiny'", "settings.json")


def test_the_seed_port_runs(verdict_path, tmp_path):
    """examples/seed_port.py: the seed's code with mechanical changes only, at a smoke-test size."""
    shutil.copyfile(verdict_path, tmp_path / "the-verdict.txt")     # the seed reads it from the working directory
    script = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "seed_port.py")
    result = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env=dict(ENV, SEED_PORT_SMOKE="1"))
    print(result.stdout[-3000:], result.stderr[-3000:])
    assert result.returncode == 0
    for expected in ("Output text:", "Training tokens: 4608", "Validation tokens: 512", "Ep 1 (Step 000000)",
                     "Training completed in"):
        assert expected in result.stdout
    assert (tmp_path / "loss-plot.pdf").is_file() and (tmp_path / "model_and_optimizer").is_dir()


def test_a_gpt2_layout_directory_generates_and_continues_pretraining(verdict_path, tmp_path):
    from test_pretrained import hf_config, hf_tensors, write_model_dir
    dims = dict(V=50257, C=8, L=2, ctx=64)
    weights = write_model_dir(tmp_path / "gpt2", hf_tensors(**dims), hf_config(**dims), prefix="transformer.")
    gen = numgpt_cli("generate", "--gpt2", weights, "--prompt", "Every effort moves you", "--max-new-tokens", "5",
                     check=0)
    assert gen.stdout.startswith("Every effort moves you")
    numgpt_cli("train", "--init", weights, "--data", verdict_path, "--out", tmp_path / "run", "--batch-size", "8",
               "--context-length", "64", "--max-steps", "3", "--eval-freq", "2", "--eval-iter", "1", check=0)
    checkpoint = final_checkpoint(tmp_path / "run")
    assert checkpoint.config["tie_weights"] is True and checkpoint.config["emb_dim"] == 8
    assert checkpoint.state["train_state"]["global_step"] == 2


def test_train_init_refuses_data_whose_ids_the_models_vocabulary_lacks(verdict_path, tmp_path):
    """A model of 300 ids with GPT-2's tokenizer: the-verdict's text, and nanoGPT token files holding id
    300, are refused in one line before a run directory exists; token files inside 300 ids train."""
    from test_pretrained import hf_config, hf_tensors, write_model_dir
    dims = dict(V=300, C=8, L=1, ctx=16)
    weights = write_model_dir(tmp_path / "small", hf_tensors(**dims), hf_config(**dims), prefix="transformer.")
    flags = ("--context-length", "8", "--batch-size", "2", "--max-steps", "1", "--eval-iter", "1")
    text = numgpt_cli("train", "--init", weights, "--data", verdict_path, "--out", tmp_path / "run", *flags)
    assert_usage_error(text, str(verdict_path), "gives token id", "outside the model's vocab_size 300")
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    ids = np.random.default_rng(0).integers(0, 300, 400).astype(np.uint16)
    ids.tofile(tokens / "val.bin")
    np.concatenate([ids, [300]]).astype(np.uint16).tofile(tokens / "train.bin")
    files = numgpt_cli("train", "--init", weights, "--data", tokens, "--out", tmp_path / "run", *flags)
    assert_usage_error(files, "train.bin", "300")
    numgpt_cli("prepare", verdict_path, "--out", tmp_path / "store", check=0)
    store = numgpt_cli("train", "--init", weights, "--data", tmp_path / "store", "--out", tmp_path / "run", *flags)
    assert_usage_error(store, "manifest", "50257 ids", "more than the model's vocab_size 300")
    assert not (tmp_path / "run").exists()
    ids.tofile(tokens / "train.bin")
    numgpt_cli("train", "--init", weights, "--data", tokens, "--out", tmp_path / "run", *flags, check=0)
