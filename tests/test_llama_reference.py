"""numgpt's Llama family against Hugging Face transformers itself, on the tiny models
transformers saved in tests/reference/hf_llama/ (made by make_hf_llama_reference.py
in the reference venv; read here with NumPy alone):

- llama_tiny:   Llama 3 rope scaling (all three bands), untied head, MHA
- smollm2_tiny: SmolLM2's shape: grouped-query attention, tied head
- qwen3_tiny:   q/k RMSNorm, head_dim 16 with hidden 32 and 4 heads, GQA, tied
- qwen2_tiny:   q/k/v biases, GQA, untied; saved in bfloat16, in 3 shards

For each: eval logits, the loss and every parameter's gradient on one batch, and
transformers' greedy generate."""
from pathlib import Path

import numpy
import pytest
from safetensors.numpy import load_file

import numgpt
from numgpt import ops
from numgpt.autograd import no_grad

FIXTURES = Path(__file__).parent / "reference" / "hf_llama"
MODELS = ("llama_tiny", "smollm2_tiny", "qwen3_tiny", "qwen2_tiny")
LOGITS_RTOL = 1e-4        # relative to the largest |logit|
LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-4          # per tensor, relative to its largest |gradient|
KV_CACHE_ATOL = 1e-5      # float32 logits, cached against recomputed (sums in another grouping)


def reference(name):
    return load_file(FIXTURES / name / "reference.safetensors")


@pytest.fixture(scope="module", params=MODELS)
def loaded(request):
    return request.param, numgpt.load_pretrained(FIXTURES / request.param), reference(request.param)


def test_logits_equal_transformers(loaded):
    name, model, ref = loaded
    assert {p.dtype for p in model.parameters()} == {numpy.dtype(numpy.float32)}
    with no_grad():
        logits = model(ref["input_ids"]).data
    assert logits.dtype == numpy.float32 and logits.shape == ref["logits"].shape
    worst = numpy.abs(logits - ref["logits"]).max() / numpy.abs(ref["logits"]).max()
    print(f"{name}: worst logits difference {worst:.2e} of the largest logit")
    assert worst <= LOGITS_RTOL


def test_loss_and_every_gradient_equal_pytorch(loaded):
    name, model, ref = loaded
    model.zero_grad()
    logits = model(ref["input_ids"])
    loss = ops.cross_entropy(logits.reshape(-1, logits.shape[-1]), ref["target_ids"].reshape(-1))
    loss.backward()
    assert abs(loss.item() - float(ref["loss"])) <= LOSS_RTOL * abs(float(ref["loss"]))
    expected = {key[len("grad."):]: value for key, value in ref.items() if key.startswith("grad.")}
    params = dict(model.named_parameters())
    assert set(params) == set(expected)
    worst = {}
    for key, grad in expected.items():
        assert params[key].grad.dtype == numpy.float32
        worst[key] = numpy.abs(params[key].grad - grad).max() / numpy.abs(grad).max()
    key = max(worst, key=worst.get)
    print(f"{name}: loss {loss.item():.6f} (transformers {float(ref['loss']):.6f}); worst gradient {key} "
          f"{worst[key]:.2e} of its largest element")
    assert worst[key] <= GRAD_RTOL


def test_greedy_generation_equals_transformers_generate(loaded):
    name, model, ref = loaded
    prompts = [("generate_prompt", "generate_ids")]
    if "generate_prompt_batch" in ref:
        prompts.append(("generate_prompt_batch", "generate_ids_batch"))
    for prompt, expected in prompts:
        for use_cache in (True, False):
            out = numgpt.generate(model, ref[prompt], max_new_tokens=8, context_size=model.cfg["context_length"],
                                  use_cache=use_cache)
            numpy.testing.assert_array_equal(out, ref[expected], err_msg=f"{name} {prompt} use_cache={use_cache}")


def test_kv_cache_logits_equal_recomputation(loaded):
    name, model, ref = loaded
    ids = ref["input_ids"]
    with no_grad():
        full = model(ids).data
        cache = model.new_kv_cache(ids.shape[0], ids.shape[1])
        pieces = [model(ids[:, :5], kv_cache=cache).data] + [model(ids[:, t:t + 1], kv_cache=cache).data
                                                             for t in range(5, ids.shape[1])]
    worst = numpy.abs(numpy.concatenate(pieces, axis=1) - full).max()
    print(f"{name}: worst |cached - recomputed| logit {worst:.2e}")
    assert worst <= KV_CACHE_ATOL
