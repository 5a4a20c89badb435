"""GPTModel: the reference's keys and shapes, the book's parameter count,
PyTorch's init distributions, clear errors, float64 gradcheck of every
parameter, and a few SGD steps that lower the loss."""
import sys

import numpy as np
import pytest

import numgpt
from numgpt.autograd import Tensor
from numgpt.gradcheck import TINY_MODEL, check_model

TINY = {"vocab_size": 11, "context_length": 6, "emb_dim": 8, "n_heads": 2, "n_layers": 2,
        "drop_rate": 0.0, "qkv_bias": True}


def reference_keys(cfg):
    """The state_dict keys of llms_from_scratch.ch04.GPTModel, spelled out by hand."""
    keys = {"tok_emb.weight": (cfg["vocab_size"], cfg["emb_dim"]),
            "pos_emb.weight": (cfg["context_length"], cfg["emb_dim"]),
            "final_norm.scale": (cfg["emb_dim"],), "final_norm.shift": (cfg["emb_dim"],),
            "out_head.weight": (cfg["vocab_size"], cfg["emb_dim"])}
    C = cfg["emb_dim"]
    for i in range(cfg["n_layers"]):
        b = f"trf_blocks.{i}."
        for proj in ("W_query", "W_key", "W_value"):
            keys[b + f"att.{proj}.weight"] = (C, C)
            if cfg["qkv_bias"]:
                keys[b + f"att.{proj}.bias"] = (C,)
        keys.update({b + "att.out_proj.weight": (C, C), b + "att.out_proj.bias": (C,),
                     b + "ff.layers.0.weight": (4 * C, C), b + "ff.layers.0.bias": (4 * C,),
                     b + "ff.layers.2.weight": (C, 4 * C), b + "ff.layers.2.bias": (C,),
                     b + "norm1.scale": (C,), b + "norm1.shift": (C,),
                     b + "norm2.scale": (C,), b + "norm2.shift": (C,)})
    return keys


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_state_dict_has_the_reference_keys_and_shapes(qkv_bias):
    cfg = dict(TINY, qkv_bias=qkv_bias)
    state = numgpt.GPTModel(cfg).state_dict()
    assert {k: v.shape for k, v in state.items()} == reference_keys(cfg)
    assert all(v.dtype == np.float32 for v in state.values())


def test_parameter_count_matches_the_book():
    # "Total number of parameters: 163,009,536" for GPT-2 small with context 1024 and an untied head
    model = numgpt.GPTModel(dict(numgpt.GPT_CONFIG_124M, context_length=1024))
    assert sum(p.numel() for p in model.parameters()) == 163_009_536


def test_init_follows_pytorch_defaults():
    numgpt.manual_seed(0)
    model = numgpt.GPTModel(dict(TINY, vocab_size=4000, emb_dim=64, n_heads=4))
    emb = model.tok_emb.weight.data
    assert abs(emb.mean()) < 0.01 and abs(emb.std() - 1.0) < 0.01            # N(0, 1)
    w = model.trf_blocks[0].ff.layers[2].weight.data                          # fan_in 256
    bound = 1 / np.sqrt(256)
    assert w.min() >= -bound and w.max() <= bound and w.max() > 0.95 * bound
    assert abs(w.std() - bound / np.sqrt(3)) < 0.05 * bound                   # uniform's std
    np.testing.assert_array_equal(model.final_norm.scale.data, 1.0)


def test_manual_seed_makes_init_repeatable():
    numgpt.manual_seed(123)
    a = numgpt.GPTModel(TINY).state_dict()
    numgpt.manual_seed(123)
    b = numgpt.GPTModel(TINY).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_logits_shape_and_dtype():
    model = numgpt.GPTModel(TINY)
    logits = model(np.array([[1, 2, 3], [4, 5, 6]]))
    assert isinstance(logits, Tensor) and logits.shape == (2, 3, 11) and logits.dtype == np.float32


def test_load_state_dict_round_trip_and_ignores_the_reference_mask_buffers():
    numgpt.manual_seed(1)
    source = numgpt.GPTModel(TINY)
    state = {k: v.copy() for k, v in source.state_dict().items()}
    state["trf_blocks.0.att.mask"] = np.triu(np.ones((6, 6)), k=1)
    state["trf_blocks.1.att.mask"] = np.triu(np.ones((6, 6)), k=1)
    numgpt.manual_seed(2)
    target = numgpt.GPTModel(TINY)
    target.load_state_dict(state)
    idx = np.array([[3, 1, 4, 1, 5]])
    np.testing.assert_array_equal(source(idx).data, target(idx).data)


def test_load_state_dict_reports_every_problem_at_once():
    model = numgpt.GPTModel(TINY)
    state = dict(model.state_dict())
    del state["pos_emb.weight"]
    state["tok_emb.weight"] = np.zeros((12, 8), dtype=np.float32)
    state["lm_head.weight"] = np.zeros((11, 8), dtype=np.float32)
    with pytest.raises(numgpt.StateDictError) as err:
        model.load_state_dict(state)
    message = str(err.value)
    print(message)
    for fragment in ("missing: pos_emb.weight", "unexpected: lm_head.weight",
                     "misshapen: tok_emb.weight: expected (11, 8), got (12, 8)"):
        assert fragment in message
    result = model.load_state_dict({k: v for k, v in state.items() if k != "tok_emb.weight"}, strict=False)
    assert result.missing_keys == ["tok_emb.weight", "pos_emb.weight"] and result.unexpected_keys == ["lm_head.weight"]


def test_bad_input_gets_clear_errors():
    model = numgpt.GPTModel(TINY)
    with pytest.raises(ValueError, match="7 tokens, more than context_length 6"):
        model(np.zeros((1, 7), dtype=np.int64))
    with pytest.raises(IndexError, match="token id 11 is outside the vocabulary"):
        model(np.array([[1, 11]]))
    with pytest.raises(IndexError, match="token id -1"):
        model(np.array([[-1, 2]]))
    with pytest.raises(ValueError, match="shape"):
        model(np.array([1, 2]))
    with pytest.raises(ValueError, match="lacks n_heads"):
        numgpt.GPTModel({k: v for k, v in TINY.items() if k != "n_heads"})
    with pytest.raises(ValueError, match="n_heads is 3; expected a divisor of emb_dim 8"):
        numgpt.GPTModel(dict(TINY, n_heads=3))
    with pytest.raises(ValueError, match="device 'tpu'"):
        model.to("tpu")


def test_asking_for_cuda_without_cupy_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)            # as where CuPy is not installed
    model = numgpt.GPTModel(TINY)
    with pytest.raises(numgpt.UsageError, match=r"CuPy is not installed: pip install 'numgpt\[cuda12\]'"):
        model.to("cuda")
    assert model.device == numgpt.device.CPU and not numgpt.cuda.is_available()


def test_eval_disables_dropout_and_train_enables_it():
    model = numgpt.GPTModel(dict(TINY, drop_rate=0.5))
    idx = np.array([[1, 2, 3, 4]])
    model.eval()
    np.testing.assert_array_equal(model(idx).data, model(idx).data)
    model.train()
    assert not np.array_equal(model(idx).data, model(idx).data)


def test_whole_model_passes_gradcheck_for_every_parameter():
    result = check_model()
    print(result.describe())
    assert result.ok and result.checked == sum(p.numel() for p in numgpt.GPTModel(TINY_MODEL).parameters())


def test_tied_head_gets_the_sum_of_both_gradients():
    numgpt.manual_seed(4)
    cfg = dict(TINY, vocab_size=7, emb_dim=4, context_length=4, tie_weights=True)
    model = numgpt.GPTModel(cfg).to(dtype=np.float64)
    assert model.out_head.weight is model.tok_emb.weight
    idx = np.array([[1, 2, 3, 1]])
    assert numgpt.gradcheck(lambda *_: model(idx), model.parameters()).ok
    # the sum, explicitly: untie into two copies and add their gradients
    model.zero_grad()
    dout = np.random.default_rng(0).standard_normal((1, 4, 7))
    model(idx).backward(dout)
    tied_grad = model.tok_emb.weight.grad.copy()
    untied = numgpt.GPTModel(dict(cfg, tie_weights=False)).to(dtype=np.float64)
    untied.load_state_dict(model.state_dict())
    untied(idx).backward(dout)
    np.testing.assert_allclose(tied_grad, untied.tok_emb.weight.grad + untied.out_head.weight.grad, rtol=1e-12)


def test_a_tiny_model_learns_with_a_hand_written_sgd_loop():
    numgpt.manual_seed(5)
    model = numgpt.GPTModel(dict(TINY, vocab_size=20, emb_dim=16, context_length=8))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 20, size=(4, 9))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    losses = []
    for _ in range(30):
        model.zero_grad()
        loss = numgpt.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        loss.backward()
        for p in model.parameters():
            p.data -= np.float32(0.1) * p.grad
        losses.append(loss.item())
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < 0.6 * losses[0]
    assert all(p.dtype == np.float32 for p in model.parameters())
