"""The Llama family model (numgpt/models/llama.py) on its own: every parameter's gradient
against float64 central differences for each family's features, the KV cache
against recomputation, config.json reading, and the published parameter counts.
The comparison with transformers itself is tests/test_llama_reference.py."""
import numpy
import pytest

from numgpt import backend
from numgpt.autograd import no_grad
from numgpt.gradcheck import gradcheck
from numgpt.models.llama import LlamaForCausalLM
from numgpt.models.llama_config import PRESETS, ConfigError, count_parameters, from_hf_config, to_hf_config

LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 16}
TINY = {"vocab_size": 11, "hidden_size": 8, "intermediate_size": 10, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "max_position_embeddings": 16,
        "initializer_range": 0.3}
FAMILIES = {   # one tiny config.json per feature: llama3 rope + untied, qk-norm + own head_dim, biases
    "llama": dict(TINY, model_type="llama", rope_parameters=dict(LLAMA3_SCALING, rope_theta=500000.0),
                  tie_word_embeddings=False, mlp_bias=True, attention_bias=True),
    "qwen3": dict(TINY, model_type="qwen3", head_dim=6, rope_theta=1e6, tie_word_embeddings=True),
    "qwen2": dict(TINY, model_type="qwen2", rope_theta=1e6, tie_word_embeddings=False),
}
GRAD_ATOL, GRAD_RTOL = 1e-7, 1e-5           # float64 central differences
KV_CACHE_ATOL = 1e-12                       # float64: the same sums in another grouping


def tiny_model(family, dtype=numpy.float64):
    backend.manual_seed(1)
    return LlamaForCausalLM(from_hf_config(FAMILIES[family])).to(dtype=dtype).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_parameter_gradient_matches_central_differences(family):
    model = tiny_model(family)
    idx = numpy.random.default_rng(0).integers(0, TINY["vocab_size"], size=(2, 6))
    names = [name for name, _ in model.named_parameters()]
    result = gradcheck(lambda *_: model(idx), model.parameters(), raise_exception=False, names=names,
                       atol=GRAD_ATOL, rtol=GRAD_RTOL)
    print(family, result.describe())
    assert result.ok, result.describe()


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_cache_logits_equal_recomputation(family):
    model = tiny_model(family)
    idx = numpy.random.default_rng(1).integers(0, TINY["vocab_size"], size=(2, 7))
    with no_grad():
        full = model(idx).data
        cache = model.new_kv_cache(2, 16)
        pieces = [model(idx[:, :4], kv_cache=cache).data] + [model(idx[:, t:t + 1], kv_cache=cache).data
                                                             for t in range(4, 7)]
    assert cache[0].keys.shape == (2, TINY["num_key_value_heads"], 16, model.cfg["head_dim"])   # NKV heads only
    worst = numpy.abs(numpy.concatenate(pieces, axis=1) - full).max()
    print(f"{family}: worst |cached - recomputed| {worst:.2e}")
    assert worst <= KV_CACHE_ATOL


def test_float32_by_default():
    backend.manual_seed(0)
    model = LlamaForCausalLM(from_hf_config(FAMILIES["qwen3"]))
    assert {p.dtype for p in model.parameters()} == {numpy.dtype(numpy.float32)}
    assert model(numpy.zeros((1, 3), dtype=numpy.int64)).dtype == numpy.float32


def test_family_features_show_in_the_parameter_names():
    names = {family: {name for name, _ in tiny_model(family).named_parameters()} for family in FAMILIES}
    assert "model.layers.0.self_attn.q_norm.weight" in names["qwen3"]
    assert "model.layers.0.self_attn.q_norm.weight" not in names["qwen2"]
    assert "model.layers.1.self_attn.k_proj.bias" in names["qwen2"]
    assert "model.layers.1.self_attn.o_proj.bias" not in names["qwen2"]       # Qwen2: q, k, v only
    assert "model.layers.1.self_attn.o_proj.bias" in names["llama"]           # Llama's attention_bias: all four
    assert "model.layers.0.mlp.gate_proj.bias" in names["llama"]
    assert "lm_head.weight" in names["llama"] and "lm_head.weight" not in names["qwen3"]   # tied: listed once


# The published parameter counts (the model cards and transformers' num_parameters()).
PUBLISHED = {"smollm2-135m": 134_515_008, "smollm2-360m": 361_821_120, "qwen3-0.6b": 596_049_920,
             "qwen2.5-0.5b": 494_032_768, "llama-3.2-1b": 1_235_814_400}


@pytest.mark.parametrize("preset", PUBLISHED)
def test_presets_have_the_published_sizes(preset):
    assert count_parameters(PRESETS[preset]) == PUBLISHED[preset]


def test_config_round_trips_through_hf_config():
    for family in FAMILIES:
        cfg = from_hf_config(FAMILIES[family])
        assert from_hf_config(to_hf_config(cfg)) == cfg


@pytest.mark.parametrize("change, words", [
    ({"model_type": "mistral"}, "model_type 'mistral' is not supported"),
    ({"num_key_value_heads": 3}, "not a multiple of num_key_value_heads 3"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "rope type 'yarn'"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 4.0}}, "lacks low_freq_factor"),
    ({"use_sliding_window": True}, "use_sliding_window"),
])
def test_unsupported_configs_are_named(change, words):
    with pytest.raises(ConfigError, match=words) as error:
        from_hf_config(dict(FAMILIES["qwen2"], **change), where="some/config.json")
    assert "some/config.json" in str(error.value)
