"""A learner's session: write (or break) a backward, check it with numgpt
gradcheck, train the GPT with it; and what a learner reads is what is
checked (the registry's one answer), the graph can be seen, and any
forward/backward pair can be checked from scratch."""
import contextlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import numgpt
from cli_process import assert_usage_error, numgpt_cli
from numgpt import registry
from numgpt.gradcheck import check_case, kernel_mode

LAYER_NORM_SOURCE = Path(sys.modules["numgpt.ops.layer_norm"].__file__)
# the closed form's last term, with its sign flipped: a plausible slip when deriving it by hand
CORRECT_LINE = "- xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))"
BROKEN_LINE = "+ xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))"


def learner_copy(directory, broken):
    source = LAYER_NORM_SOURCE.read_text()
    assert CORRECT_LINE in source, "the line this test breaks moved: update CORRECT_LINE"
    path = directory / "my_layer_norm.py"
    path.write_text(source.replace(CORRECT_LINE, BROKEN_LINE) if broken else source)
    return path


def test_a_broken_backward_fails_naming_input_and_index_then_passes_fixed(tmp_path):
    learner_copy(tmp_path, broken=True)
    def run():
        return subprocess.run([sys.executable, "-m", "numgpt", "gradcheck", "layer_norm", "--backward",
                               "my_layer_norm:layer_norm_backward"], capture_output=True, text=True,
                              cwd=tmp_path, timeout=300)
    broken = run()
    print(broken.stdout, broken.stderr)
    assert broken.returncode == 1 and broken.stdout.strip().endswith("FAILED")
    x_line = next(line for line in broken.stdout.splitlines() if line.strip().startswith("x "))
    assert "FAILED" in x_line and ", at (" in x_line                     # the input and its worst index
    assert "first differs from numgpt's layer_norm_backward at x[" in broken.stdout
    weight_line = next(line for line in broken.stdout.splitlines() if line.strip().startswith("weight "))
    assert " ok " in weight_line                                         # the slip touches dx only

    learner_copy(tmp_path, broken=False)
    fixed = run()
    print(fixed.stdout)
    assert fixed.returncode == 0 and fixed.stdout.strip().endswith("ok")
    assert "equal to numgpt's layer_norm_backward on every element" in fixed.stdout


def test_a_file_path_names_the_function_too(tmp_path):
    path = learner_copy(tmp_path, broken=False)
    result = numgpt_cli("gradcheck", "layer_norm", "--backward", f"{path}:layer_norm_backward", check=0)
    assert result.stdout.strip().endswith("ok")
    assert_usage_error(numgpt_cli("gradcheck", "layer_norm", "--backward", f"{path}:nothing_here"),
                       "has no function nothing_here")
    assert_usage_error(numgpt_cli("gradcheck", "--backward", f"{path}:layer_norm_backward"), "needs the op")


def load(path):
    import importlib.util
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def two_steps(backward=None):
    """Two AdamW steps of a small GPT on the bundled corpus; the losses."""
    numgpt.manual_seed(123)
    model = numgpt.GPTModel(dict(numgpt.PRESETS["tiny"], drop_rate=0.0))
    optimizer = numgpt.AdamW(model.parameters(), lr=4e-3, weight_decay=0.1)
    loader = numgpt.create_dataloader_v1(numgpt.load_the_verdict()[:4000], batch_size=2, max_length=32,
                                         stride=32, shuffle=False)
    losses = []
    with numgpt.use_backward("layer_norm", backward) if backward else contextlib.nullcontext():
        for (inputs, targets), _ in zip(loader, range(3)):
            optimizer.zero_grad()
            loss = numgpt.calc_loss_batch(inputs, targets, model)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses


def test_training_with_your_backward_gives_numgpts_losses(tmp_path):
    mine = load(learner_copy(tmp_path, broken=False)).layer_norm_backward
    with kernel_mode("numpy"):
        theirs, ours = two_steps(mine), two_steps()
    print(f"losses with your layer_norm_backward {theirs}, with numgpt's {ours}")
    assert theirs == ours                                # the same arithmetic: the same bits
    broken = load(learner_copy(tmp_path, broken=True))
    with kernel_mode("numpy"):
        wrong = two_steps(broken.layer_norm_backward)
    assert wrong[0] == ours[0] and wrong[2] != ours[2]   # the first loss precedes any update


def test_numgpt_train_takes_your_backward(tmp_path):
    learner_copy(tmp_path, broken=False)
    result = subprocess.run([sys.executable, "-m", "numgpt", "train", "--out", "run", "--preset", "tiny",
                             "--max-steps", "2", "--eval-iter", "1", "--backward",
                             "layer_norm=my_layer_norm:layer_norm_backward"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    print(result.stdout, result.stderr)
    assert result.returncode == 0
    assert "layer_norm trains with your backward my_layer_norm:layer_norm_backward" in result.stdout
    assert_usage_error(numgpt_cli("train", "--out", tmp_path / "r2", "--backward", "softmaxx=a:b"),
                       "unknown op 'softmaxx'")


# ---------------------------------------------------------------- the registry: one answer

def test_what_runs_is_decided_by_the_registry_alone():
    pair = registry.op_pair("layer_norm")
    with kernel_mode("numpy"):
        assert registry.resolve(*pair) == tuple(pair) and registry.which("layer_norm") == ("reference", "reference")
    with kernel_mode("numba"):
        assert registry.which("layer_norm") == ("numba twin", "numba twin")
        assert registry.which("dropout") == ("reference", "reference")       # no twin registered
        def mine(dout, cache):
            return pair.backward(dout, cache)
        with numgpt.use_backward("layer_norm", mine):
            assert registry.resolve(*pair) == (pair.forward, mine)           # the reference forward beside it
            assert registry.which("layer_norm") == ("reference", "yours")
        assert registry.which("layer_norm") == ("numba twin", "numba twin")
    with pytest.raises(numgpt.UsageError, match="unknown op 'softmax'"):
        numgpt.use_backward("softmax", mine).__enter__()


def test_gradcheck_checks_the_reference_by_default_even_in_numba_mode():
    """The issue's first complaint: gradcheck in numba mode checked the kernel, not the file a learner reads."""
    def broken(dout, cache):
        return tuple(2 * g for g in registry.op_pair("layer_norm").backward(dout, cache))
    numba_twin = registry.numba_twins()[registry.op_pair("layer_norm").backward]
    with kernel_mode("numba"):
        registry.numba_twins()[registry.op_pair("layer_norm").backward] = broken    # a broken twin...
        try:
            assert check_case("layer_norm").ok                                      # ...leaves the reference ok
            assert not check_case("layer_norm", "numba").ok                         # and is caught as a twin
        finally:
            registry.numba_twins()[registry.op_pair("layer_norm").backward] = numba_twin


def test_reference_ops_hold_no_speed_machinery():
    source = "".join(p.read_text() for p in Path(numgpt.ops.__file__).parent.glob("*.py"))
    source += Path(numgpt.autograd.__file__).read_text()
    for machinery in ("dispatch", "reusable", "__array_interface__", "getrefcount", "share_buffer",
                      "numgpt.kernels", "may_share_memory"):
        assert machinery not in source, machinery


# ---------------------------------------------------------------- your pair from scratch

def test_gradcheck_pair_checks_a_pair_written_from_scratch():
    def square_forward(x):
        return x * x, x

    def square_backward(dout, x):
        return 2 * x * dout

    result = numgpt.gradcheck_pair(square_forward, square_backward, (3, 4))
    assert result.ok and result.inputs[0].shape == (3, 4)

    def softmax_forward(x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        s = e / e.sum(axis=-1, keepdims=True)
        return s, s

    def softmax_backward_missing_the_sum(dout, s):
        return s * dout                                   # forgets - s * rowsum(dout * s)

    with pytest.raises(numgpt.GradcheckError, match="FAILED"):
        numgpt.gradcheck_pair(softmax_forward, softmax_backward_missing_the_sum, (2, 5))
    assert numgpt.gradcheck_pair(softmax_forward,
                                 lambda dout, s: s * (dout - (dout * s).sum(axis=-1, keepdims=True)), (2, 5)).ok


# ---------------------------------------------------------------- the graph

def test_draw_graph_writes_files_and_explain_collapses_the_blocks(tmp_path):
    numgpt.manual_seed(0)
    model = numgpt.GPTModel(dict(numgpt.PRESETS["tiny"], n_layers=3))
    idx = np.random.default_rng(0).integers(0, 50257, (2, 8))
    with kernel_mode("numba"):                  # the fused epilogues: one node each
        fused = numgpt.explain(numgpt.calc_loss_batch(idx, idx, model), model)
    print(fused)
    assert "trf_blocks.1 .. trf_blocks.2: 2 more blocks, each the same 12 ops as trf_blocks.0" in fused
    assert "dropout_add_layer_norm[1]" in fused and "linear_gelu" in fused
    with kernel_mode("numpy"):                  # the reference: op by op
        loss = numgpt.calc_loss_batch(idx, idx, model)
    text = numgpt.explain(loss, model)
    print(text)
    assert "trf_blocks.1 .. trf_blocks.2: 2 more blocks, each the same 14 ops as trf_blocks.0" in text
    assert "trf_blocks.0.att.W_query.weight" in text and "trf_blocks.1.att" not in text
    assert text.splitlines()[-1].split()[1:3] == ["cross_entropy", "()"]
    for name, magic in (("graph.svg", b"<?xml"), ("graph.png", b"\x89PNG"), ("graph.pdf", b"%PDF")):
        path = numgpt.draw_graph(loss, tmp_path / name, model)
        assert path.read_bytes().startswith(magic), name
    import matplotlib.image
    height, width = matplotlib.image.imread(tmp_path / "graph.png").shape[:2]
    assert height > width                                 # one column of ops, top to bottom
    dot = numgpt.draw_graph(loss, tmp_path / "graph.dot", model).read_text()
    assert dot.startswith("digraph") and "attention" in dot
    loss.backward()
    with pytest.raises(numgpt.UsageError, match="freed by backward"):
        numgpt.explain(loss)
