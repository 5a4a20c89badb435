"""bf16-true inference (numgpt/nn/inference_bf16.py, kernels/bf16_weights.py):
the weights stored as bf16 bits give the logits and the greedy tokens of the
float32 model whose weights were rounded to bf16, in both kernel modes, with
half the weights' bytes."""
import numpy as np
import pytest

import numgpt
from numgpt import backend, cli
from numgpt.bf16 import from_bf16_bits, round_to_bf16, to_bf16_bits
from numgpt.io.pretrained import export_hf
from numgpt.models.generate import generate, next_token_logits
from numgpt.models.llama import LlamaForCausalLM
from numgpt.models.llama_config import from_hf_config
from numgpt.nn.inference_bf16 import (BF16Embedding, BF16Linear, bf16_weight_arrays, linear_bf16, linear_bf16_reference,
                                      to_bf16_true, weight_nbytes)
from numgpt.nn.layers import Embedding, Linear

CFG = {"vocab_size": 97, "context_length": 16, "emb_dim": 32, "n_heads": 4, "n_layers": 2,
       "drop_rate": 0.0, "qkv_bias": True}
LLAMA_TINY = {"vocab_size": 97, "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
              "max_position_embeddings": 16, "initializer_range": 0.3}
MODELS = {   # GPT-2 untied and tied; Qwen3 (tied, qk-norm, its own head_dim); Llama with biases
    "gpt2": lambda: numgpt.GPTModel(dict(CFG, tie_weights=False)),
    "gpt2-tied": lambda: numgpt.GPTModel(dict(CFG, tie_weights=True)),
    "qwen3": lambda: LlamaForCausalLM(from_hf_config(dict(LLAMA_TINY, model_type="qwen3", head_dim=6,
                                                          rope_theta=1e6, tie_word_embeddings=True))),
    "llama": lambda: LlamaForCausalLM(from_hf_config(dict(LLAMA_TINY, model_type="llama", rope_theta=5e5,
                                                          tie_word_embeddings=False, mlp_bias=True,
                                                          attention_bias=True))),
}
# float32 logits of the bf16-true model against the float32 model with rounded weights: the same
# numbers, summed in another order (the decode kernel's vector lanes, the BLAS)
LOGITS_ATOL = 2e-5
# x @ W^T: |error| <= PRODUCT_ULPS * IN * 2^-24 * (|x| @ |W|^T), float32 sums in two orders
PRODUCT_ULPS = 2.0
KERNEL_MODES = ["numba", "numpy"]
PRINTED_LOSS_ATOL = 2e-4     # eval prints 4 decimals: the two losses may fall either side of a last digit


@pytest.fixture(params=KERNEL_MODES)
def kernel_mode(request):
    previous = backend.get_kernel_mode()
    backend.set_kernel_mode(request.param)
    yield request.param
    backend.set_kernel_mode(previous)


def _model(name):
    numgpt.manual_seed(5)
    return MODELS[name]().eval()


def _rounded_float32_copy(model):
    """The float32 model with every Linear and Embedding weight rounded to bf16 (the reference)."""
    copy = type(model)(model.cfg).eval()
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


@pytest.mark.parametrize("name", MODELS)
def test_bf16_true_generates_what_the_rounded_float32_model_generates(kernel_mode, name):
    model = _model(name)
    float32_bytes = weight_nbytes(model)
    reference = _rounded_float32_copy(model)
    converted = to_bf16_true(model)
    assert converted is model
    modules = [module for _, module in model.named_modules()]
    assert not any(isinstance(module, (Linear, Embedding)) for module in modules)
    assert all(module.weight_bf16.bits.dtype == np.uint16 for module in modules
               if isinstance(module, (BF16Linear, BF16Embedding)))
    assert all(parameter.data.dtype == np.float32 for _, parameter in model.named_parameters())   # norms, biases
    head, embedding = ((model.out_head, model.tok_emb) if name.startswith("gpt2")
                       else (model.lm_head, model.model.embed_tokens))
    assert (head.weight_bf16 is embedding.weight_bf16) == (name in ("gpt2-tied", "qwen3"))
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
    print(f"{kernel_mode}, {name}: worst |logit difference| {worst:.3g}")
    assert worst <= LOGITS_ATOL
    tokens = generate(model, idx, 8, 16)
    np.testing.assert_array_equal(tokens, generate(reference, idx, 8, 16))


def test_generate_and_eval_with_precision_bf16_true(tmp_path, capsys, verdict_path):
    """The CLI in-process: bf16-true generation prints what 32-true prints for the export of the
    rounded model; eval runs; bf16-true on a GPU device is refused before any work."""
    numgpt.manual_seed(3)
    model = numgpt.GPTModel(dict(CFG, vocab_size=50257, tie_weights=True)).eval()
    export_hf(model, tmp_path / "model")
    export_hf(_rounded_float32_copy(model), tmp_path / "rounded")
    prompt = ["--prompt", "Every effort moves you", "--max-new-tokens", "6"]

    def run(*argv):
        assert cli.main(list(argv)) == 0
        return capsys.readouterr().out

    bf16_text = run("generate", "--gpt2", str(tmp_path / "model"), "--precision", "bf16-true", *prompt)
    assert bf16_text == run("generate", "--gpt2", str(tmp_path / "rounded"), *prompt)
    text = tmp_path / "text.txt"
    text.write_text(verdict_path.read_text(encoding="utf-8")[:2000], encoding="utf-8")
    data = ["--data", str(text), "--context-length", "16", "--batch-size", "8"]
    evaluated = run("eval", "--gpt2", str(tmp_path / "model"), "--precision", "bf16-true", *data)
    rounded = run("eval", "--gpt2", str(tmp_path / "rounded"), *data)
    print(bf16_text, evaluated, rounded)
    loss, rounded_loss = (float(line.split()[1].rstrip(",")) for line in (evaluated, rounded))
    assert abs(loss - rounded_loss) <= PRINTED_LOSS_ATOL
    assert cli.main(["generate", "--gpt2", str(tmp_path / "model"), "--precision", "bf16-true", "--device",
                     "cuda", *prompt]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [("numgpt generate: error: --precision bf16-true runs on the CPU: got --device cuda, "
                      "expected cpu or auto")]


def test_a_bf16_llama_directory_loads_as_bf16_bits_without_widening(tmp_path, monkeypatch):
    """A Qwen3-shaped model saved in bf16 (as Hugging Face ships SmolLM2 and Qwen3): bf16-true
    receives the files' bits (the widening function is not called), equal to the saved weights'
    rounding, and computes the logits of the 32-true load (which widens the same bits)."""
    from numgpt.io import hf_weights
    from numgpt.io.families import export_pretrained, load_pretrained
    model = _model("qwen3")
    export_pretrained(model, tmp_path / "qwen3")
    state = {name: param.data for name, param in model.named_parameters()}
    hf_weights.save_weights(state, tmp_path / "qwen3", dtype="bfloat16")      # the weights in BF16
    widened = load_pretrained(tmp_path / "qwen3")

    widen = hf_weights._widen

    def widen_vectors_only(raw, dtype):             # the norms' weights stay float32: they are widened
        assert raw.ndim == 1, f"a {dtype} matrix {raw.shape} was widened in bf16-true"
        return widen(raw, dtype)
    monkeypatch.setattr(hf_weights, "_widen", widen_vectors_only)
    loaded = load_pretrained(tmp_path / "qwen3", precision="bf16-true")
    bits = dict(bf16_weight_arrays(loaded))
    assert set(bits) == {name for name, module in _named_matrices(model)}
    for name, array in bits.items():
        np.testing.assert_array_equal(array, to_bf16_bits(state[name]), err_msg=name)
    assert loaded.lm_head.weight_bf16 is loaded.model.embed_tokens.weight_bf16                  # still tied
    idx = np.random.default_rng(2).integers(0, 97, size=(2, 6))
    with numgpt.no_grad():
        worst = float(np.abs(loaded(idx).data - widened(idx).data).max())
    print(f"bf16-true against the widened load: worst |logit difference| {worst:.3g}")
    assert worst <= LOGITS_ATOL


def _named_matrices(model):
    """(parameter name, module) of the Linear and Embedding weights, a tied one once."""
    names = {id(param): name for name, param in model.named_parameters()}
    return [(names[id(module.weight)], module) for _, module in model.named_modules()
            if isinstance(module, (Linear, Embedding)) and id(module.weight) in names
            and names[id(module.weight)].endswith("weight")]
