"""The Llama/Qwen reference fixtures themselves: tests/reference/hf_llama/<name>/ holds the files
and keys tests/reference/README.md documents, with their dtypes and shapes, and the properties
each fixture was built to have (tying, biases, q/k norms, head_dim, the llama3 rope bands,
bfloat16 shards). Safetensors headers are read with json, bfloat16 with NumPy: no torch, no
transformers and none of numgpt's model code.
"""
import functools
import json
import math
from pathlib import Path

import numpy
import pytest
from safetensors.numpy import load_file
from versioned_fixture import load_versioned

FIXTURE_VERSION = 1
FIXTURE_ROOT = Path(__file__).resolve().parent / "reference" / "hf_llama"
SCRIPT = "tests/reference/make_hf_llama_reference.py"
NAMES = ("llama_tiny", "smollm2_tiny", "qwen3_tiny", "qwen2_tiny")
MODEL_CLASS = {"llama_tiny": "LlamaForCausalLM", "smollm2_tiny": "LlamaForCausalLM",
               "qwen3_tiny": "Qwen3ForCausalLM", "qwen2_tiny": "Qwen2ForCausalLM"}
WITH_TOKENIZER = ("llama_tiny", "smollm2_tiny")
B, T, PROMPT_T, NEW_TOKENS = 2, 9, 5, 8
IGNORE_INDEX = -100
MAX_TOTAL_BYTES = 2 * 1024 * 1024
LOSS_ATOL = 1e-5   # the fixture's loss against a float64 cross-entropy of its own logits


def header(path):
    """(tensor entries {key: {"dtype", "shape", "data_offsets"}}, __metadata__, data offset) of a
    safetensors file: an 8-byte little-endian length, then that much JSON."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        entries = json.loads(f.read(n))
    metadata = entries.pop("__metadata__", {})
    return entries, metadata, 8 + n


def read_tensor(path, key):
    """One tensor as float32 (F32, or BF16 widened exactly: its 16 bits are float32's high half)."""
    entries, _, start = header(path)
    entry = entries[key]
    begin, end = entry["data_offsets"]
    with open(path, "rb") as f:
        f.seek(start + begin)
        raw = f.read(end - begin)
    if entry["dtype"] == "BF16":
        return (numpy.frombuffer(raw, "<u2").astype(numpy.uint32) << 16).view(numpy.float32).reshape(entry["shape"])
    assert entry["dtype"] == "F32", entry["dtype"]
    return numpy.frombuffer(raw, "<f4").reshape(entry["shape"])


def config(name):
    return json.loads((FIXTURE_ROOT / name / "config.json").read_text(encoding="utf-8"))


@functools.cache
def weight_files(name):
    """{key: (file, dtype, shape)} over model.safetensors or the index's shards."""
    directory = FIXTURE_ROOT / name
    index = directory / "model.safetensors.index.json"
    files = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file()
             else ["model.safetensors"])
    out = {}
    for file in files:
        entries, metadata, _ = header(directory / file)
        assert metadata == {"format": "pt"}, f"{file}: {metadata}"
        for key, entry in entries.items():
            assert key not in out, f"{key} in two files"
            out[key] = (directory / file, entry["dtype"], tuple(entry["shape"]))
    return out


@functools.cache
def reference(name):
    return load_versioned(FIXTURE_ROOT / name / "reference.safetensors", FIXTURE_VERSION, SCRIPT)


@pytest.mark.parametrize("name", NAMES)
def test_files(name):
    directory = FIXTURE_ROOT / name
    files = {p.name for p in directory.iterdir()}
    expected = {"config.json", "generation_config.json", "reference.safetensors"}
    if name == "qwen2_tiny":
        expected |= {"model.safetensors.index.json"} | {f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)}
    else:
        expected |= {"model.safetensors"}
    if name in WITH_TOKENIZER:
        expected |= {"tokenizer.json", "tokenizer_config.json", "tokenizer_reference.json"}
    assert files == expected


def test_total_size():
    size = sum(p.stat().st_size for p in FIXTURE_ROOT.rglob("*") if p.is_file())
    assert size < MAX_TOTAL_BYTES, f"{size} bytes"


@pytest.mark.parametrize("name", NAMES)
def test_reference_keys_dtypes_and_shapes(name):
    tensors, metadata = reference(name)
    cfg = config(name)
    V = cfg["vocab_size"]
    assert metadata["model_class"] == MODEL_CLASS[name] == cfg["architectures"][0]
    assert {"transformers", "torch"} <= set(metadata)
    weights = weight_files(name)
    grads = {key.removeprefix("grad.") for key in tensors if key.startswith("grad.")}
    assert grads == set(weights), "one gradient per weight in the files"
    for key, (_, _, shape) in weights.items():
        assert tensors[f"grad.{key}"].dtype == numpy.float32 and tensors[f"grad.{key}"].shape == shape, key
        assert numpy.all(numpy.isfinite(tensors[f"grad.{key}"])) and numpy.any(tensors[f"grad.{key}"] != 0), key
    others = {"input_ids": ((B, T), numpy.int64), "target_ids": ((B, T), numpy.int64),
              "logits": ((B, T, V), numpy.float32), "loss": ((), numpy.float32),
              "generate_prompt": ((1, PROMPT_T), numpy.int64),
              "generate_ids": ((1, PROMPT_T + NEW_TOKENS), numpy.int64),
              "generate_prompt_batch": ((B, PROMPT_T), numpy.int64),
              "generate_ids_batch": ((B, PROMPT_T + NEW_TOKENS), numpy.int64)}
    assert set(tensors) == set(others) | {f"grad.{g}" for g in grads}
    for key, (shape, dtype) in others.items():
        got = tensors[key]
        assert got.dtype == dtype and got.shape == shape, (key, got.dtype, got.shape)


@pytest.mark.parametrize("name", NAMES)
def test_batch_targets_and_loss(name):
    tensors, _ = reference(name)
    input_ids, target_ids, logits = tensors["input_ids"], tensors["target_ids"], tensors["logits"]
    V = logits.shape[-1]
    assert 0 <= input_ids.min() and input_ids.max() < V
    assert input_ids[1, 6] == input_ids[0, 2], "a repeated token"
    ignored = target_ids == IGNORE_INDEX
    assert ignored.sum() == 1
    assert numpy.array_equal(target_ids[:, :-1][~ignored[:, :-1]], input_ids[:, 1:][~ignored[:, :-1]]), "next tokens"
    # the loss is the mean cross-entropy of the fixture's own logits over the kept targets
    z = logits.astype(numpy.float64)[~ignored]                        # (N, V)
    log_probs = z - z.max(axis=1, keepdims=True)
    log_probs -= numpy.log(numpy.exp(log_probs).sum(axis=1, keepdims=True))
    loss = -log_probs[numpy.arange(len(z)), target_ids[~ignored]].mean()
    assert abs(loss - float(tensors["loss"])) < LOSS_ATOL


@pytest.mark.parametrize("name", NAMES)
def test_generation(name):
    tensors, _ = reference(name)
    for suffix in ("", "_batch"):
        prompt, ids = tensors[f"generate_prompt{suffix}"], tensors[f"generate_ids{suffix}"]
        assert numpy.array_equal(ids[:, :PROMPT_T], prompt)
        assert 0 <= ids.min() and ids.max() < config(name)["vocab_size"]
    assert numpy.array_equal(tensors["generate_ids_batch"][:1], tensors["generate_ids"]), \
        "the batch's first row is the single prompt"


@pytest.mark.parametrize("name", NAMES)
def test_tying(name):
    tied = name in ("smollm2_tiny", "qwen3_tiny")
    assert config(name)["tie_word_embeddings"] is tied
    assert ("lm_head.weight" in weight_files(name)) is not tied
    assert ("grad.lm_head.weight" in reference(name)[0]) is not tied


@pytest.mark.parametrize("name", NAMES)
def test_norms_off_one_and_biases_off_zero(name):
    # so that a swapped or missing parameter shows in the logits
    weights = weight_files(name)
    norms = [k for k in weights if k.endswith("norm.weight")]
    biases = [k for k in weights if k.endswith(".bias")]
    assert len(norms) == 2 * 2 + 1 + (2 * 2 if name == "qwen3_tiny" else 0)
    assert len(biases) == (2 * 3 if name == "qwen2_tiny" else 0)
    for key in norms:
        assert numpy.abs(read_tensor(weights[key][0], key) - 1).max() > 0.1, key
    for key in biases:
        assert numpy.abs(read_tensor(weights[key][0], key)).max() > 0.1, key


def test_llama_tiny_config_and_rope_bands():
    cfg = config("llama_tiny")
    assert cfg["num_attention_heads"] == cfg["num_key_value_heads"] == 4 and cfg["head_dim"] == 8
    assert cfg["intermediate_size"] == 80 and cfg["rms_norm_eps"] == 1e-5
    rope = cfg["rope_parameters"]   # transformers 5's spelling; no rope_scaling / rope_theta at the top
    assert "rope_scaling" not in cfg and "rope_theta" not in cfg
    assert rope == {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": 256}
    assert rope["original_max_position_embeddings"] < cfg["max_position_embeddings"]
    wavelengths = 2 * math.pi * rope["rope_theta"] ** (numpy.arange(0, 8, 2) / 8)
    high = rope["original_max_position_embeddings"] / rope["high_freq_factor"]
    low = rope["original_max_position_embeddings"] / rope["low_freq_factor"]
    assert (wavelengths < high).sum() == 1 and ((wavelengths >= high) & (wavelengths <= low)).sum() == 1
    assert (wavelengths > low).sum() == 2


def test_smollm2_tiny_config():
    cfg = config("smollm2_tiny")
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (4, 2, 8)
    assert cfg["rope_parameters"] == {"rope_type": "default", "rope_theta": 100000.0}
    weights = weight_files("smollm2_tiny")
    assert weights["model.layers.0.self_attn.k_proj.weight"][2] == (2 * 8, 32)
    tokenizer_config = json.loads((FIXTURE_ROOT / "smollm2_tiny" / "tokenizer_config.json").read_text())
    assert tokenizer_config["bos_token"] == tokenizer_config["eos_token"] == "<|endoftext|>"
    vocab = json.loads((FIXTURE_ROOT / "smollm2_tiny" / "tokenizer.json").read_text())["model"]["vocab"]
    assert vocab["<|endoftext|>"] == 0 == cfg["bos_token_id"] == cfg["eos_token_id"]


def test_qwen3_tiny_config_head_dim_and_qk_norm():
    cfg = config("qwen3_tiny")
    assert cfg["head_dim"] == 16 and cfg["num_attention_heads"] * cfg["head_dim"] == 64 != cfg["hidden_size"]
    assert cfg["attention_bias"] is False
    weights = weight_files("qwen3_tiny")
    assert weights["model.layers.0.self_attn.q_proj.weight"][2] == (64, 32)
    assert weights["model.layers.0.self_attn.k_proj.weight"][2] == (32, 32)
    assert weights["model.layers.0.self_attn.o_proj.weight"][2] == (32, 64)
    assert weights["model.layers.0.self_attn.q_norm.weight"][2] == (16,)
    assert weights["model.layers.0.self_attn.k_norm.weight"][2] == (16,)


def test_qwen2_tiny_is_bfloat16_and_sharded():
    directory = FIXTURE_ROOT / "qwen2_tiny"
    cfg = config("qwen2_tiny")
    assert cfg["dtype"] == "bfloat16" and "attention_bias" not in cfg   # Qwen2's q/k/v biases are implicit
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    weights = weight_files("qwen2_tiny")
    assert len({file for file, _, _ in weights.values()}) >= 3
    assert index["weight_map"] == {key: file.name for key, (file, _, _) in weights.items()}
    assert {dtype for _, dtype, _ in weights.values()} == {"BF16"}
    assert index["metadata"]["total_size"] == 2 * sum(math.prod(shape) for _, _, shape in weights.values())
    assert weights["model.layers.0.self_attn.k_proj.bias"][2] == (16,)
    assert "model.layers.0.self_attn.o_proj.bias" not in weights
    # The references come from these bfloat16 weights widened to float32: the gradient files hold
    # float32, the weights only bfloat16 values.
    embed = read_tensor(*weights["model.embed_tokens.weight"][:1], "model.embed_tokens.weight")
    assert embed.dtype == numpy.float32 and numpy.all(embed.view(numpy.uint32) & 0xFFFF == 0)


@pytest.mark.parametrize("name", ("llama_tiny", "smollm2_tiny", "qwen3_tiny"))
def test_float32_weights_read_the_same_with_safetensors(name):
    weights = weight_files(name)
    arrays = load_file(str(FIXTURE_ROOT / name / "model.safetensors"))
    assert set(arrays) == set(weights)
    for key, (file, dtype, shape) in weights.items():
        assert dtype == "F32" and arrays[key].dtype == numpy.float32 and arrays[key].shape == shape
        assert numpy.array_equal(arrays[key], read_tensor(file, key))
