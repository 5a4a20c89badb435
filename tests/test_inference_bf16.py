"""bf16-true inference (numgpt/inference_bf16.py, kernels/bf16_weights.py):
the weights stored as bf16 bits give the logits and the greedy tokens of the
float32 model whose weights were rounded to bf16, in both kernel modes, with
half the weights' bytes."""
import numpy as np
import pytest

import numgpt
from numgpt import backend
from numgpt.bf16 import from_bf16_bits, round_to_bf16, to_bf16_bits
from numgpt.generate import generate, next_token_logits
from numgpt.inference_bf16 import (BF16Embedding, BF16Linear, linear_bf16, linear_bf16_reference, to_bf16_true,
                                   weight_nbytes)
from numgpt.nn import Embedding, Linear

CFG = {"vocab_size": 97, "context_length": 16, "emb_dim": 32, "n_heads": 4, "n_layers": 2,
       "drop_rate": 0.0, "qkv_bias": True}
# float32 logits of the bf16-true model against the float32 model with rounded weights: the same
# numbers, summed in another order (the decode kernel's vector lanes, the BLAS)
LOGITS_ATOL = 2e-5
# x @ W^T: |error| <= PRODUCT_ULPS * IN * 2^-24 * (|x| @ |W|^T), float32 sums in two orders
PRODUCT_ULPS = 2.0
KERNEL_MODES = ["numba", "numpy"]


@pytest.fixture(params=KERNEL_MODES)
def kernel_mode(request):
    previous = backend.get_kernel_mode()
    backend.set_kernel_mode(request.param)
    yield request.param
    backend.set_kernel_mode(previous)


def _model(tied):
    numgpt.manual_seed(5)
    return numgpt.GPTModel(dict(CFG, tie_weights=tied)).eval()


def _rounded_float32_copy(model):
    """The float32 model with every Linear and Embedding weight rounded to bf16 (the reference)."""
    copy = numgpt.GPTModel(model.cfg).eval()
    copy.load_state_dict(model.state_dict())
    for _, module in copy.named_modules():
        if isinstance(module, (Linear, Embedding)):
            module.weight.data[...] = round_to_bf16(module.weight.data)
    return copy


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 37])
def test_linear_bf16_is_the_product_with_the_widened_weight(kernel_mode, rows):
    """Both regimes of the kernel (decode rows <= 4, prefill above) and the reference."""
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, 70)).astype(np.float32)
    w_bits = to_bf16_bits(rng.standard_normal((45, 70)))
    bias = rng.standard_normal(45).astype(np.float32)
    widened = from_bf16_bits(w_bits).astype(np.float64)
    exact = x.astype(np.float64) @ widened.T + bias
    bound = PRODUCT_ULPS * 70 * 2.0 ** -24 * (np.abs(x) @ np.abs(widened).T + np.abs(bias))
    for name, got in (("linear_bf16", linear_bf16(x, w_bits, bias)),
                      ("reference", linear_bf16_reference(x, w_bits, bias)),
                      ("no bias, 3-D", linear_bf16(x[None], w_bits)[0] + bias)):
        worst = np.abs(got - exact)
        print(f"{kernel_mode} {name} rows={rows}: worst |error| {worst.max():.3g}")
        assert got.dtype == np.float32 and np.all(worst <= bound), name


@pytest.mark.parametrize("tied", [False, True])
def test_bf16_true_generates_what_the_rounded_float32_model_generates(kernel_mode, tied):
    model = _model(tied)
    float32_bytes = weight_nbytes(model)
    reference = _rounded_float32_copy(model)
    converted = to_bf16_true(model)
    assert converted is model
    assert isinstance(model.out_head, BF16Linear) and isinstance(model.tok_emb, BF16Embedding)
    assert model.trf_blocks[0].att.W_query.weight_bf16.bits.dtype == np.uint16
    assert model.trf_blocks[0].att.W_query.bias.data.dtype == np.float32          # biases stay float32
    assert model.final_norm.scale.data.dtype == np.float32                           # norms stay float32
    assert (model.out_head.weight_bf16 is model.tok_emb.weight_bf16) == tied
    norm_bytes = sum(p.data.nbytes for name, p in model.named_parameters())      # float32 left: norms, biases
    print(f"weights: {float32_bytes} bytes float32, {weight_nbytes(model)} bf16-true "
          f"({norm_bytes} of them float32 norms and biases)")
    assert weight_nbytes(model) - norm_bytes == (float32_bytes - norm_bytes) // 2

    idx = np.random.default_rng(1).integers(0, CFG["vocab_size"], size=(2, 5))
    got, want = next_token_logits(model, idx, 16), next_token_logits(reference, idx, 16)
    a, b = next(got), next(want)                                # the prompt at once (prefill)
    worst = float(np.abs(a - b).max())
    for _ in range(5):                                          # cached one-token steps (decode)
        ids = b.argmax(axis=-1)[:, None]
        a, b = got.send(ids), want.send(ids)
        assert a.dtype == np.float32
        worst = max(worst, float(np.abs(a - b).max()))
    print(f"{kernel_mode}, tied={tied}: worst |logit difference| {worst:.3g}")
    assert worst <= LOGITS_ATOL
    tokens = generate(model, idx, 8, 16)
    np.testing.assert_array_equal(tokens, generate(reference, idx, 8, 16))
