"""load_gpt2 / export_hf on GPT-2-shaped safetensors files made here, with the
exact Hugging Face key names and Conv1D layout, checked against a NumPy forward
written straight from that layout (no numgpt code in it). No network, no torch.
Every test runs with HF_HOME in its own temporary directory."""
import json
import os
import socket
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hub_cache import place_in_hf_cache
from safetensors import safe_open
from safetensors.numpy import save_file

import numgpt
from numgpt.io import pretrained
from numgpt.io.pretrained import WeightsError, export_hf, load_gpt2
from numgpt.nn.layers import Parameter

GPT2_VOCAB = 50257
LOGITS_ATOL, LOGITS_RTOL = 1e-4, 1e-4     # float32 model vs float64 reference
TINY_GPT2 = Path(__file__).parent / "reference" / "hf_gpt2_tiny"       # a transformers-written GPT-2 directory


@pytest.fixture(autouse=True)
def hf_home(tmp_path, monkeypatch):
    """An empty Hugging Face home of the test's own; no HF_* setting from outside."""
    for name in ("HF_HUB_CACHE", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_TOKEN", "NUMGPT_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    return tmp_path / "hf_home"


# ---------------------------------------------------------------- GPT-2 files, by hand

def hf_tensors(V=37, C=8, L=2, ctx=16, lm_head=False, buffers=True, seed=0):
    """HF GPT-2 tensors (names without the transformer. prefix), Conv1D weights (in, out)."""
    rng = np.random.default_rng(seed)

    def w(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    t = {"wte.weight": w(V, C, scale=0.5), "wpe.weight": w(ctx, C, scale=0.1),
         "ln_f.weight": 1 + w(C, scale=0.1), "ln_f.bias": w(C, scale=0.1)}
    for i in range(L):
        h = f"h.{i}."
        t.update({h + "ln_1.weight": 1 + w(C, scale=0.1), h + "ln_1.bias": w(C, scale=0.1),
                  h + "attn.c_attn.weight": w(C, 3 * C), h + "attn.c_attn.bias": w(3 * C),
                  h + "attn.c_proj.weight": w(C, C), h + "attn.c_proj.bias": w(C),
                  h + "ln_2.weight": 1 + w(C, scale=0.1), h + "ln_2.bias": w(C, scale=0.1),
                  h + "mlp.c_fc.weight": w(C, 4 * C), h + "mlp.c_fc.bias": w(4 * C),
                  h + "mlp.c_proj.weight": w(4 * C, C), h + "mlp.c_proj.bias": w(C)})
        if buffers:                                   # as older transformers saved them
            t[h + "attn.bias"] = np.tril(np.ones((ctx, ctx), np.float32))[None, None]
            t[h + "attn.masked_bias"] = np.array(-1e4, np.float32)
    if lm_head:
        t["lm_head.weight"] = w(V, C, scale=0.5)
    return t


def write_safetensors(path, tensors, prefix=""):
    """Save with the transformer. prefix on every key but lm_head, as GPT2LMHeadModel does."""
    save_file({(k if k == "lm_head.weight" else prefix + k): v for k, v in tensors.items()}, str(path))
    return path


def hf_config(V=37, C=8, L=2, ctx=16, n_head=2, **extra):
    return dict({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
                 "n_embd": C, "n_layer": L, "n_head": n_head, "n_positions": ctx, "n_ctx": ctx, "vocab_size": V,
                 "layer_norm_epsilon": 1e-5, "n_inner": None}, **extra)


def write_model_dir(directory, tensors, config=None, prefix=""):
    directory.mkdir(parents=True, exist_ok=True)
    write_safetensors(directory / "model.safetensors", tensors, prefix)
    if config is not None:
        (directory / "config.json").write_text(json.dumps(config))
    return directory


def reference_logits(t, idx, n_head, eps=1e-5):
    """GPT-2's forward in float64 from the HF tensors: x @ W + b (Conv1D), causal softmax, tanh GELU."""
    t = {k: v.astype(np.float64) for k, v in t.items()}
    B, T = idx.shape
    V, C = t["wte.weight"].shape
    HS = C // n_head
    L = len({k.split(".")[1] for k in t if k.startswith("h.")})

    def layer_norm(x, w, b):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w + b

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

    def heads(a):                                                       # (B, T, C) -> (B, NH, T, HS)
        return a.reshape(B, T, n_head, HS).transpose(0, 2, 1, 3)

    x = t["wte.weight"][idx] + t["wpe.weight"][:T]                      # (B, T, C)
    for i in range(L):
        p = {k[len(f"h.{i}."):]: v for k, v in t.items() if k.startswith(f"h.{i}.")}
        a = layer_norm(x, p["ln_1.weight"], p["ln_1.bias"])
        qkv = a @ p["attn.c_attn.weight"] + p["attn.c_attn.bias"]       # (B, T, C) -> (B, T, 3C)
        q, k, v = map(heads, np.split(qkv, 3, axis=-1))
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(HS)              # (B, NH, T, T)
        scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        y = (weights @ v).transpose(0, 2, 1, 3).reshape(B, T, C)        # (B, NH, T, HS) -> (B, T, C)
        x = x + y @ p["attn.c_proj.weight"] + p["attn.c_proj.bias"]
        m = layer_norm(x, p["ln_2.weight"], p["ln_2.bias"])
        x = x + gelu(m @ p["mlp.c_fc.weight"] + p["mlp.c_fc.bias"]) @ p["mlp.c_proj.weight"] + p["mlp.c_proj.bias"]
    x = layer_norm(x, t["ln_f.weight"], t["ln_f.bias"])
    return x @ t.get("lm_head.weight", t["wte.weight"]).T               # (B, T, C) -> (B, T, V)


def assert_logits_close(actual, expected):
    worst = np.abs(actual - expected).max()
    assert np.allclose(actual, expected, atol=LOGITS_ATOL, rtol=LOGITS_RTOL), f"worst logit error {worst:.3e}"


def token_ids(V, B=2, T=7, seed=1):
    return np.random.default_rng(seed).integers(0, V, size=(B, T))


# ---------------------------------------------------------------- loading

@pytest.mark.parametrize("prefix", ["", "transformer."])
@pytest.mark.parametrize("lm_head", [False, True])
def test_load_matches_the_reference_forward(tmp_path, prefix, lm_head):
    t = hf_tensors(lm_head=lm_head, buffers=True)
    model = load_gpt2(write_model_dir(tmp_path / "m", t, hf_config(), prefix))
    assert model.cfg["qkv_bias"] is True and model.cfg["drop_rate"] == 0.0
    assert (model.out_head.weight is model.tok_emb.weight) is (not lm_head)
    idx = token_ids(37)
    assert_logits_close(model(idx).data, reference_logits(t, idx, n_head=2))


def test_load_with_the_real_vocabulary(tmp_path):
    t = hf_tensors(V=GPT2_VOCAB, C=8, L=2, ctx=16)
    model = load_gpt2(write_model_dir(tmp_path / "m", t, hf_config(V=GPT2_VOCAB), prefix="transformer."))
    assert model.cfg["vocab_size"] == GPT2_VOCAB and model.tok_emb.weight.shape == (GPT2_VOCAB, 8)
    idx = token_ids(GPT2_VOCAB, T=16)
    assert_logits_close(model(idx).data, reference_logits(t, idx, n_head=2))


def test_bare_file_infers_the_config_from_shapes(tmp_path):
    # emb_dim 768 is GPT-2 124M's: 12 heads, from the size table
    t = hf_tensors(V=23, C=768, L=1, ctx=8, seed=2)
    model = load_gpt2(write_safetensors(tmp_path / "gpt2.safetensors", t))
    assert {k: model.cfg[k] for k in ("vocab_size", "emb_dim", "n_layers", "n_heads", "context_length")} == \
        {"vocab_size": 23, "emb_dim": 768, "n_layers": 1, "n_heads": 12, "context_length": 8}
    assert model.cfg["tie_weights"] is True
    idx = token_ids(23, T=8)
    assert_logits_close(model(idx).data, reference_logits(t, idx, n_head=12))


def test_unknown_emb_dim_without_config_asks_for_config_json(tmp_path):
    path = write_safetensors(tmp_path / "model.safetensors", hf_tensors(C=8))
    with pytest.raises(WeightsError, match="config.json") as error:
        load_gpt2(path)
    assert str(path) in str(error.value)


def test_config_json_sets_heads_context_and_eps(tmp_path):
    t = hf_tensors(C=8, ctx=16)
    model = load_gpt2(write_model_dir(tmp_path / "m", t, hf_config(n_head=4, layer_norm_epsilon=1e-3)))
    assert model.cfg["n_heads"] == 4 and model.cfg["context_length"] == 16
    assert model.final_norm.eps == 1e-3 and model.trf_blocks[1].norm2.eps == 1e-3
    idx = token_ids(37)
    assert_logits_close(model(idx).data, reference_logits(t, idx, n_head=4, eps=1e-3))


def test_config_json_that_numgpt_cannot_build_is_refused(tmp_path):
    directory = write_model_dir(tmp_path / "m", hf_tensors(), hf_config(activation_function="relu", n_inner=7))
    with pytest.raises(WeightsError) as error:
        load_gpt2(directory)
    assert "activation_function 'relu'" in str(error.value) and "n_inner 7" in str(error.value)


def test_every_problem_is_reported_in_one_error(tmp_path):
    t = hf_tensors()
    del t["h.1.ln_2.bias"]                                              # missing
    t["h.0.attn.c_attn.weight"] = t["h.0.attn.c_attn.weight"].T.copy()   # misshapen: (3C, C) for (C, 3C)
    t["h.0.attn.extra"] = np.zeros(3, np.float32)                       # extra
    t["ln_f.weight"][2] = np.nan                                        # NaN
    t["wpe.weight"][0, 1] = np.inf                                      # Inf
    directory = write_model_dir(tmp_path / "m", t, hf_config(), prefix="transformer.")
    with pytest.raises(WeightsError) as error:
        load_gpt2(directory)
    message = str(error.value)
    assert isinstance(error.value, ValueError)
    assert str(directory / "model.safetensors") in message and "5 problems" in message
    for expected in ("missing: h.1.ln_2.bias", "misshapen: transformer.h.0.attn.c_attn.weight: expected (8, 24), "
                     "got (24, 8)", "unexpected: transformer.h.0.attn.extra", "not finite: transformer.ln_f.weight "
                     "holds 1 NaN", "not finite: transformer.wpe.weight holds 0 NaN and 1 Inf"):
        assert expected in message, message


def test_untied_config_without_lm_head_reports_it_missing(tmp_path):
    directory = write_model_dir(tmp_path / "m", hf_tensors(), hf_config(tie_word_embeddings=False))
    with pytest.raises(WeightsError, match=r"missing: lm_head\.weight \(expected shape \(37, 8\)\)"):
        load_gpt2(directory)


def test_size_name_loads_from_the_cache_without_network(tmp_path, monkeypatch):
    t = hf_tensors()
    write_model_dir(tmp_path / "cache" / "gpt2", t, hf_config())
    idx = token_ids(37)
    model = load_gpt2("124m", cache_dir=tmp_path / "cache")
    assert_logits_close(model(idx).data, reference_logits(t, idx, n_head=2))
    write_model_dir(tmp_path / "home" / "gpt2-medium", t, hf_config())
    monkeypatch.setenv("NUMGPT_HOME", str(tmp_path / "home"))
    assert_logits_close(load_gpt2("gpt2-355m")(idx).data, reference_logits(t, idx, n_head=2))


def test_a_size_name_is_found_in_the_hf_cache_with_no_network(hf_home, monkeypatch):
    place_in_hf_cache(hf_home / "hub", "gpt2", TINY_GPT2)                        # the older id
    place_in_hf_cache(hf_home / "hub", "openai-community/gpt2-large", TINY_GPT2, symlinks=False)

    def refuse(*args, **kwargs):
        raise AssertionError("load_gpt2 tried the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    reference = load_gpt2(TINY_GPT2)
    idx = token_ids(reference.cfg["vocab_size"])
    for size in ("124m", "gpt2-774m"):
        model = load_gpt2(size)
        # a size name says where to look; the config.json found there decides the shape
        assert model.cfg == reference.cfg and model.cfg["emb_dim"] == 16
        np.testing.assert_array_equal(model(idx).data, reference(idx).data)


def test_the_command_generates_from_the_hf_cache_with_no_network(hf_home, tmp_path):
    place_in_hf_cache(hf_home / "hub", "openai-community/gpt2", TINY_GPT2)
    guard = tmp_path / "guard"                            # every process of the test: no socket may connect
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(
        "import socket\n"
        "def refuse(*args, **kwargs):\n"
        "    raise OSError('the test forbids network access')\n"
        "socket.socket.connect = socket.socket.connect_ex = refuse\n")
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9",
               NUMGPT_HOME=str(tmp_path / "numgpt"), PYTHONPATH=os.pathsep.join(
                   [str(guard)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))

    def generate(source):       # "A" is token 32, inside the tiny vocabulary of 50
        return subprocess.run([sys.executable, "-m", "numgpt", "generate", "--gpt2", str(source), "--prompt", "A",
                               "--max-new-tokens", "3"], capture_output=True, text=True, env=env, timeout=300)

    from_cache, from_directory = generate("124m"), generate(TINY_GPT2)
    assert from_cache.returncode == 0, from_cache.stderr
    assert from_cache.stdout == from_directory.stdout and from_cache.stdout.startswith("A")
    missing = generate("355m")                             # the negative control: not in any cache
    assert missing.returncode == 2 and "HF_HUB_OFFLINE is set" in missing.stderr, missing.stderr


def test_unknown_source_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a GPT-2 size"):
        load_gpt2("gpt2-13b")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="not a .safetensors file"):
        load_gpt2(tmp_path / "weights.bin")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_gpt2(tmp_path)


# ---------------------------------------------------------------- weight tying

def test_tied_head_is_one_parameter_whose_gradient_sums_both_uses(tmp_path):
    t = hf_tensors(V=11, C=8, L=1, ctx=8)
    tied = load_gpt2(write_model_dir(tmp_path / "tied", t, hf_config(V=11, L=1, ctx=8))).to(dtype=np.float64)
    assert tied.out_head.weight is tied.tok_emb.weight
    # embeddings, one block of 16, the final norm: no head of its own
    assert len(tied.parameters()) == len(dict(tied.named_parameters())) == 2 + 16 + 2
    idx = token_ids(11, T=8)
    # numeric differences move the one array both uses read, so they see both uses
    result = numgpt.gradcheck(lambda w: tied(idx), [tied.tok_emb.weight])
    assert result.ok and result.checked == 11 * 8

    untied = load_gpt2(write_model_dir(tmp_path / "untied", dict(t, **{"lm_head.weight": t["wte.weight"]}),
                                       hf_config(V=11, L=1, ctx=8))).to(dtype=np.float64)
    assert untied.out_head.weight is not untied.tok_emb.weight
    dout = np.random.default_rng(3).standard_normal((2, 8, 11))
    for model in (tied, untied):
        model.zero_grad()
        model(idx).backward(dout)
    np.testing.assert_allclose(tied.tok_emb.weight.grad,
                               untied.tok_emb.weight.grad + untied.out_head.weight.grad, rtol=1e-10, atol=1e-12)


def test_gradcheck_rejects_a_head_that_shares_the_array_but_not_the_parameter(tmp_path):
    # the negative control: two Parameters over one array, so backward counts one use only
    t = hf_tensors(V=11, C=8, L=1, ctx=8)
    model = load_gpt2(write_model_dir(tmp_path / "m", t, hf_config(V=11, L=1, ctx=8))).to(dtype=np.float64)
    model.out_head.weight = Parameter(model.tok_emb.weight.data)
    idx = token_ids(11, T=8)
    assert not numgpt.gradcheck(lambda w: model(idx), [model.tok_emb.weight], raise_exception=False).ok


# ---------------------------------------------------------------- memory

def test_loading_peaks_under_one_and_a_half_times_the_model(tmp_path):
    # GPT-2 124M's proportions: wte about 31% of the parameters (here 2800 x 128 of 1.16M)
    t = hf_tensors(V=2800, C=128, L=4, ctx=64, buffers=False)
    path = write_model_dir(tmp_path / "m", t, hf_config(V=2800, C=128, L=4, ctx=64, n_head=4), "transformer.")
    model_bytes = sum(v.nbytes for v in t.values())
    del t
    tracemalloc.start()
    try:
        model = load_gpt2(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(p.data.nbytes for p in model.parameters()) == model_bytes
    assert 1.0 < peak / model_bytes < 1.5, f"peak {peak / model_bytes:.2f} x the model's {model_bytes} bytes"


# ---------------------------------------------------------------- export

def tiny_model(tie_weights, qkv_bias=True, seed=0):
    numgpt.manual_seed(seed)
    return numgpt.GPTModel({"vocab_size": 37, "context_length": 16, "emb_dim": 8, "n_heads": 2, "n_layers": 2,
                            "drop_rate": 0.0, "qkv_bias": qkv_bias, "tie_weights": tie_weights}).eval()


@pytest.mark.parametrize("tie_weights", [True, False])
def test_export_then_load_is_exact(tmp_path, tie_weights):
    model = tiny_model(tie_weights)
    export_hf(model, tmp_path / "hf")
    loaded = load_gpt2(tmp_path / "hf")
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert np.array_equal(before[key], after[key]), key
    assert (loaded.out_head.weight is loaded.tok_emb.weight) is tie_weights
    assert sorted(os.listdir(tmp_path / "hf")) == ["config.json", "model.safetensors"]   # no temporary left


@pytest.mark.parametrize("tie_weights", [True, False])
def test_export_writes_the_hf_layout(tmp_path, tie_weights):
    model = tiny_model(tie_weights)
    export_hf(model, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="numpy") as f:
        assert f.metadata() == {"format": "pt"}                         # transformers refuses files without it
        keys = set(f.keys())
        c_attn = f.get_tensor("transformer.h.1.attn.c_attn.weight")
        c_fc = f.get_tensor("transformer.h.0.mlp.c_fc.weight")
        c_attn_bias = f.get_tensor("transformer.h.0.attn.c_attn.bias")
    assert ("lm_head.weight" in keys) is not tie_weights
    assert len(keys) == 4 + 12 * 2 + (not tie_weights)
    assert not any(k.endswith((".attn.bias", "masked_bias")) for k in keys)
    att = model.trf_blocks[1].att
    np.testing.assert_array_equal(c_attn, np.concatenate([att.W_query.weight.data, att.W_key.weight.data,
                                                          att.W_value.weight.data]).T)      # (C, 3C)
    np.testing.assert_array_equal(c_fc, model.trf_blocks[0].ff.layers[0].weight.data.T)    # (C, 4C)
    assert c_attn_bias.shape == (24,)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["model_type"] == "gpt2"
    assert config["activation_function"] == "gelu_new" and config["n_inner"] is None
    assert config["layer_norm_epsilon"] == 1e-5 and config["tie_word_embeddings"] is tie_weights
    assert {k: config[k] for k in ("vocab_size", "n_positions", "n_ctx", "n_embd", "n_layer", "n_head")} == \
        {"vocab_size": 37, "n_positions": 16, "n_ctx": 16, "n_embd": 8, "n_layer": 2, "n_head": 2}


def test_export_is_read_by_the_reference_forward(tmp_path):
    # the exported file, read as HF would, computes the model's logits
    model = tiny_model(tie_weights=False)
    export_hf(model, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="numpy") as f:
        t = {k.removeprefix("transformer."): f.get_tensor(k) for k in f.keys()}
    idx = token_ids(37)
    assert_logits_close(model(idx).data, reference_logits(t, idx, n_head=2))


def test_export_without_qkv_bias_writes_zero_biases(tmp_path):
    model = tiny_model(tie_weights=True, qkv_bias=False)
    export_hf(model, tmp_path)
    loaded = load_gpt2(tmp_path)
    assert loaded.cfg["qkv_bias"] is True
    np.testing.assert_array_equal(loaded.trf_blocks[0].att.W_key.bias.data, 0.0)
    idx = token_ids(37)
    np.testing.assert_array_equal(loaded(idx).data, model(idx).data)


def test_export_is_atomic(tmp_path, monkeypatch):
    export_hf(tiny_model(True, seed=0), tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    def fail(fh, *args, **kwargs):
        fh.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pretrained, "stream_safetensors", fail)
    with pytest.raises(OSError, match="disk full"):
        export_hf(tiny_model(True, seed=1), tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]


def _short_file(path):
    """A valid-looking header whose tensor runs past the end of the file."""
    header = json.dumps({"wte.weight": {"dtype": "F32", "shape": [10, 4], "data_offsets": [0, 160]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(10))
    return path


def _bytes_file(content):
    def make(path):
        path.write_bytes(content)
        return path
    return make


@pytest.mark.parametrize("make, reason", [
    (_bytes_file(b"garbage-garbage-garbage"), "header-too-large"),
    (_short_file, "bad-offsets"),
    (_bytes_file(b"\x80\x04junk-junk-junk"), "pickle"),
])
def test_hostile_weight_files_are_refused_before_any_tensor_is_read(tmp_path, make, reason):
    from numgpt.io.safe_io import UnsafeFileError
    path = make(tmp_path / "model.safetensors")
    with pytest.raises(UnsafeFileError) as err:
        load_gpt2(path)
    print(err.value)
    assert str(path) in str(err.value) and (err.value.reason == reason or reason in str(err.value))
