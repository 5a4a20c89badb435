"""The Llama family's config (numgpt.models.llama builds the model from it): Hugging Face's
``config.json`` read and checked (from_hf_config, check_config) and written (to_hf_config), the
presets, and the parameter count of a config (count_parameters), which numgpt.models.memory
reads before a model is built.

``cfg`` is a plain dict (saved in checkpoints and settings.json): the Hugging Face fields under
their Hugging Face names, plus numgpt's ``model_type``, ``context_length``
(= max_position_embeddings) and ``drop_rate`` (0: these models train without dropout).
"""
import copy

import numpy

from numgpt import schema
from numgpt.errors import NumgptError
from numgpt.schema import MAX_CONTEXT, MAX_HEADS, MAX_LAYERS, MAX_VOCAB, MAX_WIDTH

# model_type -> the Hugging Face class whose checkpoints it reads
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
ROPE_TYPES = ("default", "llama3")


class ConfigError(NumgptError, ValueError):
    """A config.json numgpt cannot build a model from; the message names the file and the field."""


def _preset(model_type, **fields):
    cfg = {"model_type": model_type, "architectures": [ARCHITECTURES[model_type]], "hidden_act": "silu",
           "rope_scaling": None, "attention_bias": model_type == "qwen2", "o_proj_bias": False, "mlp_bias": False,
           "qk_norm": model_type == "qwen3", "initializer_range": 0.02, "drop_rate": 0.0, **fields}
    cfg.setdefault("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    cfg["context_length"] = cfg["max_position_embeddings"]
    return cfg


# The shapes of the published models (their config.json files), for a run from
# scratch with --preset and for the memory estimate; pretrained weights bring their own.
PRESETS = {
    "smollm2-135m": _preset("llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                            num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                            rms_norm_eps=1e-5, rope_theta=100000.0, max_position_embeddings=8192,
                            tie_word_embeddings=True, bos_token_id=0, eos_token_id=0),
    "smollm2-360m": _preset("llama", vocab_size=49152, hidden_size=960, intermediate_size=2560,
                            num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5,
                            rms_norm_eps=1e-5, rope_theta=100000.0, max_position_embeddings=8192,
                            tie_word_embeddings=True, bos_token_id=0, eos_token_id=0),
    "qwen3-0.6b": _preset("qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                          num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                          rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=40960,
                          tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645),
    "qwen2.5-0.5b": _preset("qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                            num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                            rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=32768,
                            tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151643),
    "llama-3.2-1b": _preset("llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                            num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                            rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=131072,
                            rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                            tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001),
}

# every size of a config, with numgpt's limit (numgpt.schema); the two optional ones follow from the others
SIZE_LIMITS = {"vocab_size": MAX_VOCAB, "hidden_size": MAX_WIDTH, "intermediate_size": MAX_WIDTH,
               "num_hidden_layers": MAX_LAYERS, "num_attention_heads": MAX_HEADS, "num_key_value_heads": MAX_HEADS,
               "head_dim": MAX_WIDTH, "max_position_embeddings": MAX_CONTEXT}
OPTIONAL_SIZES = ("num_key_value_heads", "head_dim", "max_position_embeddings")


def is_llama_config(cfg):
    """Whether ``cfg`` (a numgpt model config) is of this family (GPT-2's has no model_type)."""
    model_type = cfg.get("model_type")
    return isinstance(model_type, str) and model_type in ARCHITECTURES


def from_hf_config(hf, where="config.json"):
    """numgpt's cfg from the dict of a Hugging Face config.json (transformers 4's
    ``rope_theta`` / ``rope_scaling`` or 5's ``rope_parameters``); a ConfigError
    names the file, the field and its value, and what numgpt expects there."""
    if not isinstance(hf, dict):
        raise ConfigError(f"{where} is a JSON {type(hf).__name__}, not an object (expected a Hugging Face config)")
    model_type = schema.string(hf, "model_type", where, error=ConfigError, required=False)
    if model_type not in ARCHITECTURES:
        raise ConfigError(f"{where}: model_type {model_type!r} is not supported: numgpt reads "
                          f"{', '.join(ARCHITECTURES)} (and gpt2) checkpoints")
    missing = [key for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if key not in hf]
    if missing:
        raise ConfigError(f"{where}: lacks {', '.join(missing)} (expected a {ARCHITECTURES[model_type]} config)")
    hidden_act = schema.string(hf, "hidden_act", where, error=ConfigError, required=False, default="silu")
    if hidden_act != "silu":
        raise ConfigError(f"{where}: hidden_act {hidden_act!r} is not supported (expected 'silu')")
    if schema.boolean(hf, "use_sliding_window", where, error=ConfigError, required=False):
        raise ConfigError(f"{where}: use_sliding_window is true; numgpt attends over the whole context only")
    sizes = {key: schema.integer(hf, key, where, low=1, high=high, error=ConfigError)
             for key, high in SIZE_LIMITS.items() if hf.get(key) is not None or key not in OPTIONAL_SIZES}
    n_heads = sizes["num_attention_heads"]
    theta, scaling = _rope(hf, where)
    attention_bias = schema.boolean(hf, "attention_bias", where, error=ConfigError, required=False, default=False)
    cfg = {
        "model_type": model_type,
        "architectures": [ARCHITECTURES[model_type]],
        "hidden_act": "silu",
        "vocab_size": sizes["vocab_size"],
        "hidden_size": sizes["hidden_size"],
        "intermediate_size": sizes["intermediate_size"],
        "num_hidden_layers": sizes["num_hidden_layers"],
        "num_attention_heads": n_heads,
        "num_key_value_heads": sizes.get("num_key_value_heads") or n_heads,
        "head_dim": sizes.get("head_dim") or sizes["hidden_size"] // n_heads,
        "rms_norm_eps": float(schema.number(hf, "rms_norm_eps", where, above=0, error=ConfigError, required=False,
                                            default=1e-6)),
        "rope_theta": theta,
        "rope_scaling": scaling,
        "max_position_embeddings": sizes.get("max_position_embeddings", 2048),
        "tie_word_embeddings": schema.boolean(hf, "tie_word_embeddings", where, error=ConfigError, required=False,
                                              default=False),
        # Qwen2 always biases q, k, v (never o); Llama's attention_bias is all four; Qwen3's q, k, v and o
        "attention_bias": True if model_type == "qwen2" else attention_bias,
        "o_proj_bias": attention_bias and model_type != "qwen2",
        "mlp_bias": (schema.boolean(hf, "mlp_bias", where, error=ConfigError, required=False, default=False)
                     if model_type == "llama" else False),
        "qk_norm": model_type == "qwen3",
        "initializer_range": float(schema.number(hf, "initializer_range", where, low=0, error=ConfigError,
                                                 required=False, default=0.02)),
        "bos_token_id": _token_ids(hf, "bos_token_id", where),
        "eos_token_id": _token_ids(hf, "eos_token_id", where),
        "drop_rate": 0.0,
    }
    cfg["context_length"] = cfg["max_position_embeddings"]
    check_config(cfg, where)
    return cfg


def _rope(hf, where):
    """(rope_theta, rope_scaling or None) of a config.json: transformers 5's ``rope_parameters``, or 4's
    ``rope_theta`` and ``rope_scaling``."""
    field = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
    rope = dict(schema.mapping(hf, field, where, error=ConfigError, required=False, nullable=True) or {})
    type_field = "rope_type" if "rope_type" in rope else "type"
    rope_type = schema.string(rope, type_field, f"{where}: {field}", error=ConfigError, required=False,
                              default="default")
    rope.pop("rope_type", None), rope.pop("type", None)
    if rope_type not in ROPE_TYPES:
        raise ConfigError(f"{where}: rope type {rope_type!r} is not supported (expected one of "
                          f"{', '.join(ROPE_TYPES)})")
    if "rope_theta" in rope:
        theta = schema.number(rope, "rope_theta", f"{where}: {field}", above=0, error=ConfigError)
    else:
        theta = schema.number(hf, "rope_theta", where, above=0, error=ConfigError, required=False, default=10000.0)
    if rope_type != "llama3":
        return float(theta), None
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    absent = [key for key in keys if key not in rope]
    if absent:
        raise ConfigError(f"{where}: llama3 rope scaling lacks {', '.join(absent)}")
    scaling = {"rope_type": "llama3", **{key: rope[key] for key in keys}}
    _check_llama3_scaling(scaling, f"{where}: {field}")
    return float(theta), scaling


def _check_llama3_scaling(scaling, where):
    for key in ("factor", "low_freq_factor", "high_freq_factor"):
        schema.number(scaling, key, where, above=0, error=ConfigError)
    schema.integer(scaling, "original_max_position_embeddings", where, low=1, high=MAX_CONTEXT, error=ConfigError)
    if scaling["high_freq_factor"] <= scaling["low_freq_factor"]:
        schema.fail(where, "high_freq_factor", scaling["high_freq_factor"],
                    f"a number above low_freq_factor {scaling['low_freq_factor']}", ConfigError)


def _token_ids(hf, field, where):
    """bos_token_id / eos_token_id: null, a token id or a list of them."""
    value = hf.get(field)
    ids = value if isinstance(value, list) else [value]
    if value is not None and not (ids and all(schema.is_int(i) and 0 <= i < MAX_VOCAB for i in ids)):
        schema.fail(where, field, value, "null, a token id or a list of token ids", ConfigError)
    return value


def check_config(cfg, where="model config"):
    """Raise a ConfigError naming the first impossible field: every size an integer from 1 to
    numgpt's limit (numgpt.schema), every flag a bool, the rotary settings usable."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where} is a {type(cfg).__name__}, not a JSON object")
    for key, high in SIZE_LIMITS.items():
        value = cfg.get(key)
        schema.integer({key: int(value) if isinstance(value, numpy.integer) else value}, key, where, low=1,
                       high=high, error=ConfigError)
    if cfg["num_attention_heads"] % cfg["num_key_value_heads"]:
        raise ConfigError(f"{where}: num_attention_heads {cfg['num_attention_heads']} is not a multiple of "
                          f"num_key_value_heads {cfg['num_key_value_heads']}")
    if cfg["head_dim"] % 2:
        raise ConfigError(f"{where}: head_dim {cfg['head_dim']} must be even for rotary positions")
    if cfg.get("context_length") != cfg["max_position_embeddings"]:
        schema.fail(where, "context_length", cfg.get("context_length"),
                    f"max_position_embeddings {cfg['max_position_embeddings']}", ConfigError)
    for key in ("attention_bias", "o_proj_bias", "mlp_bias", "qk_norm", "tie_word_embeddings"):
        schema.boolean(cfg, key, where, error=ConfigError)
    schema.number(cfg, "rms_norm_eps", where, above=0, error=ConfigError)
    schema.number(cfg, "rope_theta", where, above=0, error=ConfigError)
    schema.number(cfg, "initializer_range", where, low=0, error=ConfigError)
    schema.number(cfg, "drop_rate", where, low=0, below=1, error=ConfigError)
    scaling = schema.mapping(cfg, "rope_scaling", where, error=ConfigError, nullable=True)
    if scaling is not None:
        if scaling.get("rope_type") != "llama3":
            schema.fail(where, "rope_scaling", scaling, "null or llama3 scaling", ConfigError)
        _check_llama3_scaling(scaling, f"{where}: rope_scaling")


def to_hf_config(cfg):
    """The config.json of a numgpt Llama-family model, as transformers writes it (transformers 5's
    ``rope_parameters``, with transformers 4's ``rope_theta`` / ``rope_scaling`` beside it)."""
    rope = {"rope_type": "default", "rope_theta": cfg["rope_theta"]}
    if cfg["rope_scaling"]:
        rope = dict(cfg["rope_scaling"], rope_theta=cfg["rope_theta"])
    hf = {
        "architectures": [ARCHITECTURES[cfg["model_type"]]],
        "model_type": cfg["model_type"],
        "hidden_act": "silu",
        **{key: cfg[key] for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                     "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
                                     "max_position_embeddings", "tie_word_embeddings", "initializer_range",
                                     "bos_token_id", "eos_token_id")},
        "rope_parameters": rope,
        "rope_theta": cfg["rope_theta"],
        "rope_scaling": copy.deepcopy(cfg["rope_scaling"]),
        "attention_dropout": 0.0,
        "dtype": "float32",
    }
    if cfg["model_type"] != "qwen2":
        hf["attention_bias"] = cfg["attention_bias"]
    if cfg["model_type"] == "llama":
        hf["mlp_bias"] = cfg["mlp_bias"]
    if cfg["model_type"] in ("qwen2", "qwen3"):
        hf["use_sliding_window"] = False
    return hf


def describe(cfg):
    """One line: the family and the shape."""
    gqa = f", {cfg['num_key_value_heads']} kv heads" if cfg["num_key_value_heads"] != cfg["num_attention_heads"] else ""
    return (f"{ARCHITECTURES[cfg['model_type']]} ({cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, "
            f"{cfg['num_attention_heads']} heads{gqa}, vocab {cfg['vocab_size']})")


def count_parameters(cfg):
    """The number of distinct parameters of the model ``cfg`` describes (a tied head counted once)."""
    C, F, V, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    q, kv = cfg["num_attention_heads"] * cfg["head_dim"], cfg["num_key_value_heads"] * cfg["head_dim"]
    attention = C * q + 2 * C * kv + q * C
    attention += (q + 2 * kv) * cfg["attention_bias"] + C * cfg["o_proj_bias"] + 2 * cfg["head_dim"] * cfg["qk_norm"]
    mlp = 3 * C * F + (2 * F + C) * cfg["mlp_bias"]
    head = 0 if cfg["tie_word_embeddings"] else V * C
    return V * C + L * (attention + mlp + 2 * C) + C + head
