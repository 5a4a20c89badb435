"""numgpt against PyTorch, through the fixtures that tests/reference/make_reference.py writes.

NumPy and numgpt only: the fixtures are safetensors files, so torch is needed to write
them, never to read them. Each fixture carries a fixture_version; one that differs from
FIXTURE_VERSION below fails with "stale fixture: re-run tests/reference/make_reference.py".

Every comparison prints its worst error (run `pytest -s` to see them). Errors are relative:
    max |numgpt - reference| / max |reference|
over the whole tensor (for the scalar losses, |numgpt - reference| / |reference|).
"""
import functools
import json
from pathlib import Path
from typing import NamedTuple

import numpy
import pytest
from safetensors.numpy import save_file

import numgpt
from versioned_fixture import load_versioned

FIXTURE_VERSION = 1
REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
GPT_FIXTURES = ("gpt_tiny_qkv_bias.safetensors", "gpt_tiny_no_qkv_bias.safetensors")
STALE = "re-run tests/reference/make_reference.py"

# float32 tolerances (the fixtures are float32), relative as described above.
LOGITS_RTOL = 1e-5
LOSS_RTOL = 1e-5
GRAD_TOL = 1e-4     # of each gradient's largest magnitude
ADAMW_RTOL = 1e-5   # on the loss before each step and the weights after the last one

# The AdamW run of make_reference.py.
LR = 4e-4
WEIGHT_DECAY = 0.1
ADAMW_STEPS = 5
# A parameter whose exact gradient is zero (the fixture's "zero_grad" list: the key bias,
# since softmax ignores a shift shared by a whole row of scores) holds float32 round-off
# on both sides, which Adam normalises into steps of up to about LR in either direction.
# Its gradient is checked against the model's largest gradient magnitude instead, and its
# weights after AdamW may differ by at most those steps, taken in opposite directions.
ZERO_GRAD_ADAMW_BOUND = 2 * ADAMW_STEPS * LR


class GPTReference(NamedTuple):
    name: str
    config: dict
    tensors: dict       # the whole fixture, name -> array
    zero_grad: tuple    # parameter names whose exact gradient is zero


def load_fixture(path):
    return load_versioned(path, FIXTURE_VERSION, "tests/reference/make_reference.py")


@functools.lru_cache(maxsize=None)
def gpt_reference(filename):
    tensors, metadata = load_fixture(REFERENCE_DIR / filename)
    return GPTReference(filename.removesuffix(".safetensors"), json.loads(metadata["config"]),
                        tensors, tuple(json.loads(metadata.get("zero_grad", "[]"))))


def with_prefix(tensors, prefix):
    """The tensors whose names start with ``prefix``, under the rest of the name."""
    return {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}


def reference_model(ref):
    """numgpt's GPTModel holding the fixture's initial weights, in eval mode."""
    model = numgpt.GPTModel(ref.config)
    model.load_state_dict(with_prefix(ref.tensors, "param."))
    model.eval()
    return model


def relative_error(actual, expected, scale=None):
    """max |actual - expected| / scale, scale defaulting to max |expected|."""
    expected = numpy.asarray(expected, dtype=numpy.float64)
    diff = numpy.max(numpy.abs(numpy.asarray(actual, dtype=numpy.float64) - expected))
    if scale is None:
        scale = numpy.max(numpy.abs(expected))
    return float(diff / max(scale, numpy.finfo(numpy.float64).tiny))


class Comparison:
    """Collects named comparisons, prints each worst error, then fails on all that exceed."""

    def __init__(self, label):
        self.label, self.failures = label, []

    def check(self, name, error, tol, unit="rel"):
        verdict = "ok" if error <= tol else "FAIL"
        print(f"{self.label:22s} {name:52s} worst {unit} err {error:.2e} (tol {tol:.0e}) {verdict}")
        if not error <= tol:
            self.failures.append(f"{name}: {error:.3e} > {tol:.0e}")

    def assert_all(self):
        assert not self.failures, f"{self.label}: numgpt disagrees with PyTorch on " + "; ".join(self.failures)


def forward_loss(model, ref):
    logits = model(ref.tensors["input_ids"])                          # (B, T) -> (B, T, V)
    loss = numgpt.cross_entropy(logits.flatten(0, 1), ref.tensors["target_ids"].flatten())
    return logits, loss


def test_stale_fixture_fails(tmp_path):
    path = tmp_path / "old.safetensors"
    save_file({"loss": numpy.zeros((), numpy.float32)}, str(path),
              metadata={"fixture_version": str(FIXTURE_VERSION - 1)})
    with pytest.raises(pytest.fail.Exception, match=f"stale fixture: {STALE}"):
        load_fixture(path)


@pytest.mark.parametrize("filename", GPT_FIXTURES)
def test_fixture_holds_what_the_tests_need(filename):
    ref = gpt_reference(filename)
    params = with_prefix(ref.tensors, "param.")
    assert params and not any(key.endswith("att.mask") for key in params)
    assert set(with_prefix(ref.tensors, "grad.")) == set(params)
    assert set(with_prefix(ref.tensors, "adamw.param.")) == set(params)
    assert len(with_prefix(ref.tensors, "adamw.loss.")) == ADAMW_STEPS
    assert ref.tensors["input_ids"].dtype == numpy.int64
    assert (ref.tensors["target_ids"] == -100).sum() == 1


@pytest.mark.parametrize("filename", GPT_FIXTURES)
def test_logits_and_loss_match_pytorch(filename):
    ref = gpt_reference(filename)
    logits, loss = forward_loss(reference_model(ref), ref)
    assert isinstance(logits, numgpt.Tensor)
    assert logits.data.dtype == numpy.float32
    assert logits.data.shape == ref.tensors["logits"].shape
    result = Comparison(ref.name)
    result.check("logits", relative_error(logits.data, ref.tensors["logits"]), LOGITS_RTOL)
    result.check("loss", relative_error(loss.item(), ref.tensors["loss"]), LOSS_RTOL)
    result.assert_all()


@pytest.mark.parametrize("filename", GPT_FIXTURES)
def test_gradients_match_pytorch(filename):
    ref = gpt_reference(filename)
    model = reference_model(ref)
    _, loss = forward_loss(model, ref)
    loss.backward()
    expected = with_prefix(ref.tensors, "grad.")
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert sorted(grads) == sorted(expected)
    largest = max(numpy.max(numpy.abs(g)) for g in expected.values())
    result = Comparison(ref.name)
    for name, grad in grads.items():
        assert grad is not None, f"{name} has no gradient"
        assert grad.dtype == numpy.float32, f"{name}.grad is {grad.dtype}"
        assert grad.shape == expected[name].shape
        if name in ref.zero_grad:  # exact gradient 0: round-off, on the model's scale
            result.check(f"grad.{name} (zero)", relative_error(grad, expected[name], largest), GRAD_TOL)
        else:
            result.check(f"grad.{name}", relative_error(grad, expected[name]), GRAD_TOL)
    result.assert_all()


@pytest.mark.parametrize("filename", GPT_FIXTURES)
def test_adamw_steps_match_pytorch(filename):
    ref = gpt_reference(filename)
    model = reference_model(ref)
    optimizer = numgpt.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    result = Comparison(ref.name)
    for step in range(ADAMW_STEPS):
        optimizer.zero_grad()
        _, loss = forward_loss(model, ref)
        loss.backward()
        result.check(f"adamw.loss.{step}", relative_error(loss.item(), ref.tensors[f"adamw.loss.{step}"]),
                     ADAMW_RTOL)
        optimizer.step()
    expected = with_prefix(ref.tensors, "adamw.param.")
    state = model.state_dict()
    assert sorted(state) == sorted(expected)
    for name, weights in state.items():
        assert weights.dtype == numpy.float32, f"{name} is {weights.dtype}"
        if name in ref.zero_grad:
            result.check(f"adamw.param.{name} (zero grad)", relative_error(weights, expected[name], 1.0),
                         ZERO_GRAD_ADAMW_BOUND, unit="abs")
        else:
            result.check(f"adamw.param.{name}", relative_error(weights, expected[name]), ADAMW_RTOL)
    result.assert_all()


def test_cross_entropy_matches_pytorch():
    tensors, _ = load_fixture(REFERENCE_DIR / "cross_entropy.safetensors")
    logits = numgpt.Tensor(tensors["logits"].copy(), requires_grad=True)  # (N, V)
    loss = numgpt.cross_entropy(logits, tensors["target_ids"])            # (N, V), (N,) -> ()
    loss.backward()
    assert logits.grad.dtype == numpy.float32
    ignored = tensors["target_ids"] == -100
    assert ignored.any() and not logits.grad[ignored].any(), "an ignored row has a gradient"
    result = Comparison("cross_entropy")
    result.check("loss", relative_error(loss.item(), tensors["loss"]), LOSS_RTOL)
    result.check("dlogits", relative_error(logits.grad, tensors["dlogits"]), GRAD_TOL)
    result.assert_all()
