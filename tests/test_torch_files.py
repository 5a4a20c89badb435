"""PyTorch's own files read by numgpt.io.torch_format (no PyTorch, no unpickler): the fixtures that
PyTorch 2.13 wrote (tests/reference/torch_files/make_torch_files.py) equal what torch.load returned,
tensor for tensor; the seed's checkpoint continues in numgpt as it would in PyTorch; convert, --init
and pytorch_model.bin directories."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from versioned_fixture import load_versioned

import numgpt
from numgpt import cli
from numgpt.bf16 import from_bf16_bits
from numgpt.io.safe_io import read_safetensors
from numgpt.io.torch_format import TorchWeights
from numgpt.io.torch_weights import seed_model
from numgpt.optim import OptimizerStateError

FIXTURE_VERSION = 1
FIXTURES = Path(__file__).resolve().parent / "reference" / "torch_files"
SCRIPT = "tests/reference/torch_files/make_torch_files.py"
# the seed's tiny model in make_torch_files.py (n_heads is not in a state dict: config.json says it)
SEED_CONFIG = {"vocab_size": 50, "context_length": 8, "emb_dim": 16, "n_heads": 4, "n_layers": 2,
               "drop_rate": 0.0, "qkv_bias": False}
SEED_LR, SEED_WEIGHT_DECAY, SEED_STEPS = 0.0005, 0.1, 3
NEXT_STEP_RTOL = 1e-5     # of each tensor's largest magnitude: float32 round-off of one forward, backward, step


def expected(name):
    tensors, _ = load_versioned(FIXTURES / f"{name}.expected.safetensors", FIXTURE_VERSION, SCRIPT)
    return tensors


def flat(value, prefix=""):
    """{path: array} of every array in a nested dict/list/tuple, keys joined by '/' as the script does."""
    if isinstance(value, np.ndarray):
        return {prefix: value}
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) \
        else []
    out = {}
    for key, item in items:
        out.update(flat(item, f"{prefix}/{key}" if prefix else str(key)))
    return out


# ---------------------------------------------------------------- equal to torch.load

@pytest.mark.parametrize("name", ["model", "model_and_optimizer", "views"])
def test_every_tensor_equals_torch_load(name):
    want = expected(name)
    bits = flat(numgpt.load_torch(FIXTURES / f"{name}.pth", keep_bf16=True))
    widened = flat(numgpt.load_torch(FIXTURES / f"{name}.pth"))
    saved = {key for key in want if not key.startswith("next/") and key not in ("input_ids", "target_ids")}
    assert set(bits) == saved and set(widened) == saved
    for key in sorted(saved):
        value = want[key]
        if bits[key].dtype == np.uint16:                       # bf16: the script stored its int16 bits
            assert value.dtype == np.int16, key
            np.testing.assert_array_equal(bits[key], value.view(np.uint16))
            assert widened[key].dtype == np.float32
            np.testing.assert_array_equal(widened[key], from_bf16_bits(value.view(np.uint16)))
            continue
        assert bits[key].dtype == value.dtype and bits[key].shape == value.shape, key
        np.testing.assert_array_equal(bits[key], value, err_msg=key)
    print(f"{name}: {len(saved)} tensors equal")


def test_views_of_one_storage_stay_views():
    views = numgpt.load_torch(FIXTURES / "views.pth")
    assert np.shares_memory(views["tied"], views["tied_t"]) and np.shares_memory(views["tied"], views["rows"])
    np.testing.assert_array_equal(views["tied_t"], views["tied"].T)
    np.testing.assert_array_equal(views["rows"], views["tied"][2:5])
    np.testing.assert_array_equal(views["stepped"], np.arange(24, dtype=np.float32).reshape(4, 6)[::2, ::3])
    assert views["tied"].flags.writeable and not views["tied_t"].flags.writeable   # strided views are read-only
    assert views["scalar"].shape == () and views["empty"].shape == (0, 3)
    assert views["bool"].dtype == np.bool_ and views["i32"].dtype == np.int32


def test_other_values_are_plain_python():
    views = numgpt.load_torch(FIXTURES / "views.pth")
    nested = views["nested"]
    assert nested[:6] == [1, -2**40, 3.25, "text", None, True]
    assert nested[6][:2] == (4, "five") and isinstance(nested[6][2], list)
    groups = numgpt.load_torch(FIXTURES / "model_and_optimizer.pth")["optimizer_state_dict"]["param_groups"]
    assert groups[0]["lr"] == SEED_LR and groups[0]["betas"] == (0.9, 0.999) and groups[0]["amsgrad"] is False
    assert groups[0]["params"] == list(range(31))


# ---------------------------------------------------------------- the seed's run continues

def seed_files(tmp_path):
    """The seed's checkpoint with a config.json beside it (its n_heads)."""
    shutil.copy(FIXTURES / "model_and_optimizer.pth", tmp_path / "model_and_optimizer.pth")
    (tmp_path / "config.json").write_text(json.dumps(SEED_CONFIG))
    return tmp_path / "model_and_optimizer.pth"


def test_the_next_adamw_step_equals_pytorchs(tmp_path):
    """The seed's torch.load / load_state_dict / one more step, in numgpt, against PyTorch's step."""
    checkpoint = numgpt.load_torch(FIXTURES / "model_and_optimizer.pth")
    want = expected("model_and_optimizer")
    model = numgpt.GPTModel(SEED_CONFIG)
    model.load_state_dict(checkpoint["model_state_dict"])
    optimizer = numgpt.AdamW(model.parameters(), lr=SEED_LR, weight_decay=SEED_WEIGHT_DECAY)
    optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
    assert {state["step"] for state in optimizer.state.values()} == {SEED_STEPS}
    model.train()                                                          # drop_rate 0: no dropout
    optimizer.zero_grad()
    logits = model(want["input_ids"])
    numgpt.cross_entropy(logits.flatten(0, 1), want["target_ids"].flatten()).backward()
    optimizer.step()
    worst = 0.0
    for key, value in model.state_dict().items():
        target = want[f"next/{key}"]
        error = float(np.max(np.abs(value - target)) / np.max(np.abs(target)))
        worst = max(worst, error)
        assert error <= NEXT_STEP_RTOL, f"{key}: {error:.2e}"
    print(f"worst relative error after the next step: {worst:.2e} (tol {NEXT_STEP_RTOL:.0e})")
    assert seed_model(seed_files(tmp_path)).cfg == {**SEED_CONFIG, "tie_weights": False}


@pytest.mark.parametrize("change, words", [
    ({"amsgrad": True}, "amsgrad is True; numgpt's AdamW runs only with amsgrad=False"),
    ({"maximize": True}, "maximize is True"),
    ({"decoupled_weight_decay": False}, "decoupled_weight_decay is False"),
    ({"nesterov": True}, "unknown settings ['nesterov']"),
    ({"lr": float("nan")}, "expected finite numbers"),
    ({"betas": (0.9, 1.5)}, "invalid betas[1]"),
])
def test_settings_numgpt_cannot_honour_are_refused(change, words):
    state = numgpt.load_torch(FIXTURES / "model_and_optimizer.pth")["optimizer_state_dict"]
    state["param_groups"][0].update(change)
    optimizer = numgpt.AdamW(numgpt.GPTModel(SEED_CONFIG).parameters())
    with pytest.raises(OptimizerStateError, match=words.replace("[", r"\[").replace("(", r"\(")):
        optimizer.load_state_dict(state)


@pytest.mark.parametrize("step, words", [(np.float32(2.5), "2.5"), (-1, "-1"), (None, "None"),
                                         (np.ones(2), "expected a whole number")])
def test_a_step_count_that_is_not_a_count_is_refused(step, words):
    state = numgpt.load_torch(FIXTURES / "model_and_optimizer.pth")["optimizer_state_dict"]
    state["state"][0]["step"] = step
    with pytest.raises(OptimizerStateError, match=words):
        numgpt.AdamW(numgpt.GPTModel(SEED_CONFIG).parameters()).load_state_dict(state)


def test_train_init_continues_the_seeds_moments(tmp_path, capsys):
    pth = seed_files(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)                         # nanoGPT token files with ids inside the tiny vocabulary
    rng.integers(0, SEED_CONFIG["vocab_size"], 2000).astype(np.uint16).tofile(data / "train.bin")
    rng.integers(0, SEED_CONFIG["vocab_size"], 500).astype(np.uint16).tofile(data / "val.bin")
    assert cli.main(["train", "--init", str(pth), "--data", str(data), "--out", str(tmp_path / "run"),
                     "--max-steps", "2", "--batch-size", "2"]) == 0
    assert f"Continuing the optimizer state of {pth} (AdamW moments after {SEED_STEPS} steps)" in \
        capsys.readouterr().out
    last = numgpt.load_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000001")
    assert {entry["step"] for entry in last.optimizer_state["state"].values()} == {SEED_STEPS + 2}


# ---------------------------------------------------------------- convert, and pytorch_model.bin

def test_convert_writes_the_seed_model_in_the_hugging_face_layout(tmp_path, capsys):
    pth = seed_files(tmp_path)
    assert cli.main(["convert", str(pth), "--out", str(tmp_path / "hf")]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["n_head"] == SEED_CONFIG["n_heads"]
    converted, original = numgpt.load_pretrained(tmp_path / "hf"), seed_model(pth)
    ids = np.array([[1, 7, 3, 49, 0]])
    np.testing.assert_array_equal(converted(ids).data, original(ids).data)


def test_convert_writes_a_pytorch_model_bin_under_its_names(tmp_path):
    assert cli.main(["convert", str(FIXTURES / "hf_gpt2_tiny_bin" / "pytorch_model.bin"),
                     "--out", str(tmp_path / "out")]) == 0
    written, _ = read_safetensors(tmp_path / "out" / "model.safetensors")
    want = expected("hf_gpt2_tiny")
    assert set(written) == set(want)
    for key in want:
        np.testing.assert_array_equal(written[key], want[key], err_msg=key)
    assert (tmp_path / "out" / "config.json").read_bytes() == \
        (FIXTURES / "hf_gpt2_tiny_bin" / "config.json").read_bytes()


@pytest.mark.parametrize("args, words", [
    (["convert", "missing.pth", "--out", "o"], "convert missing.pth does not exist"),
    (["convert", "{tmp}/notes.txt", "--out", "o"], "expected a PyTorch file ending in .pth, .pt, .bin"),
    (["convert", "{tmp}/legacy.pth", "--out", "o"], "_use_new_zipfile_serialization=True"),
    (["convert", "{fixtures}/views.pth", "--out", "o"], "expected a state dict"),
])
def test_convert_refuses_bad_input_in_one_line(tmp_path, capsys, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("text")
    (tmp_path / "legacy.pth").write_bytes(b"\x80\x02}q\x00.")          # a bare pickle: torch.save before 1.6
    args = [arg.format(tmp=tmp_path, fixtures=FIXTURES) for arg in args]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("directory", ["hf_gpt2_tiny_bin", "hf_gpt2_tiny_sharded"])
def test_a_directory_with_pytorch_model_bin_loads(tmp_path, directory):
    want = expected("hf_gpt2_tiny")
    weights = TorchWeights(FIXTURES / directory / ("pytorch_model.bin" if directory.endswith("bin")
                                                   else "pytorch_model.bin.index.json"))
    assert set(weights.keys()) == set(want)
    for key in want:
        np.testing.assert_array_equal(weights.get_tensor(key), want[key], err_msg=key)
    safetensors_dir = tmp_path / "st"
    safetensors_dir.mkdir()
    shutil.copy(FIXTURES / directory / "config.json", safetensors_dir / "config.json")
    numgpt.io.safe_io.write_safetensors(safetensors_dir / "model.safetensors", want)
    from_bin, from_safetensors = numgpt.load_pretrained(FIXTURES / directory), numgpt.load_pretrained(safetensors_dir)
    for (key, value), (_, other) in zip(from_bin.state_dict().items(), from_safetensors.state_dict().items()):
        np.testing.assert_array_equal(value, other, err_msg=key)


def test_init_with_a_file_numgpt_refuses_stops_before_the_run(tmp_path, capsys):
    bad = tmp_path / "model.pth"
    bad.write_bytes(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R.")       # the legacy format, and hostile
    assert cli.main(["train", "--init", str(bad), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "_use_new_zipfile_serialization=True" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()
    wide = tmp_path / "wide" / "model.pth"                          # no config.json beside: heads unknown
    wide.parent.mkdir()
    shutil.copy(FIXTURES / "model.pth", wide)
    assert cli.main(["generate", "--model", str(wide), "--prompt", "x"]) == 2
    assert "emb_dim 16 is not one of GPT-2's sizes, so the number of heads is unknown" in capsys.readouterr().err
