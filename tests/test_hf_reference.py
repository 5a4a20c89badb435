"""numgpt's load_gpt2 / export_hf against Hugging Face transformers' own GPT-2 files.

tests/reference/hf_gpt2_tiny/ is what GPT2LMHeadModel.save_pretrained wrote (model.safetensors,
config.json) plus reference.safetensors (input_ids and transformers' eval-mode logits), made by
tests/reference/make_hf_reference.py. NumPy and numgpt only: torch and transformers are needed
to write the fixture, never to read it. A fixture whose fixture_version differs from
FIXTURE_VERSION below fails with "stale fixture: re-run tests/reference/make_hf_reference.py".

The worst error is printed (run `pytest -s` to see it).
"""
import functools
import json
import re
from pathlib import Path

import numpy
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import numgpt
from versioned_fixture import load_versioned

FIXTURE_VERSION = 1
FIXTURE_DIR = Path(__file__).resolve().parent / "reference" / "hf_gpt2_tiny"
STALE = "re-run tests/reference/make_hf_reference.py"

LOGITS_ATOL = 1e-5   # float32, absolute: the fixture's logits are within +-3

# transformers' causal-mask buffers: older versions saved them, numgpt never writes them
HF_BUFFERS = re.compile(r"^transformer\.h\.\d+\.attn\.(bias|masked_bias)$")
# config.json fields that numgpt's load_gpt2 reads
NUMGPT_CONFIG_FIELDS = ("vocab_size", "n_embd", "n_layer", "n_head", "n_positions", "activation_function",
                        "n_inner", "layer_norm_epsilon", "tie_word_embeddings")


def load_reference(path):
    return load_versioned(path, FIXTURE_VERSION, "tests/reference/make_hf_reference.py")


@functools.lru_cache(maxsize=None)
def reference():
    tensors, metadata = load_reference(FIXTURE_DIR / "reference.safetensors")
    for name in ("model.safetensors", "config.json"):
        if not (FIXTURE_DIR / name).is_file():
            pytest.fail(f"missing fixture {FIXTURE_DIR / name}: {STALE}")
    return tensors, metadata


def header(path):
    """{key: (shape, dtype)} and the __metadata__ of a safetensors file, tensors not read."""
    with safe_open(str(path), framework="numpy") as f:
        entries = {key: (tuple(f.get_slice(key).get_shape()), f.get_slice(key).get_dtype()) for key in f.keys()}
        return entries, f.metadata()


def read_config(directory):
    return json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))


def test_stale_fixture_fails(tmp_path):
    path = tmp_path / "reference.safetensors"
    save_file({"logits": numpy.zeros((1,), numpy.float32)}, str(path),
              metadata={"fixture_version": str(FIXTURE_VERSION + 1)})
    with pytest.raises(pytest.fail.Exception, match=f"stale fixture: {STALE}"):
        load_reference(path)


def test_fixture_is_what_transformers_ships():
    tensors, metadata = reference()
    assert {"transformers", "torch"} <= set(metadata)
    assert tensors["input_ids"].dtype == numpy.int64 and tensors["input_ids"].shape == (2, 9)
    assert tensors["logits"].dtype == numpy.float32 and tensors["logits"].shape == (2, 9, 50)
    entries, _ = header(FIXTURE_DIR / "model.safetensors")
    assert "lm_head.weight" not in entries, "GPT-2 ships a tied head: save_pretrained writes no lm_head.weight"
    assert read_config(FIXTURE_DIR).get("tie_word_embeddings", True) is True


def test_load_gpt2_matches_transformers_logits():
    tensors, metadata = reference()
    model = numgpt.load_gpt2(FIXTURE_DIR)
    assert model.out_head.weight is model.tok_emb.weight, "the head should be tied to wte"
    assert model.cfg["tie_weights"] is True
    with numgpt.no_grad():
        logits = model(tensors["input_ids"]).data                            # (B, T) -> (B, T, V)
    assert logits.dtype == numpy.float32 and logits.shape == tensors["logits"].shape
    worst = float(numpy.max(numpy.abs(logits.astype(numpy.float64) - tensors["logits"])))
    print(f"hf_gpt2_tiny (transformers {metadata['transformers']}): logits worst abs err {worst:.2e} "
          f"(tol {LOGITS_ATOL:.0e})")
    assert worst <= LOGITS_ATOL, f"numgpt's logits differ from transformers' by {worst:.3e} > {LOGITS_ATOL:.0e}"


def test_export_hf_writes_what_save_pretrained_wrote(tmp_path):
    reference()
    model = numgpt.load_gpt2(FIXTURE_DIR)
    numgpt.export_hf(model, tmp_path)
    ours, our_meta = header(tmp_path / "model.safetensors")
    theirs, their_meta = header(FIXTURE_DIR / "model.safetensors")
    theirs = {key: value for key, value in theirs.items() if not HF_BUFFERS.match(key)}
    assert sorted(ours) == sorted(theirs), (f"only numgpt: {sorted(set(ours) - set(theirs))}; "
                                            f"only transformers: {sorted(set(theirs) - set(ours))}")
    wrong = {key: (ours[key], theirs[key]) for key in theirs if ours[key] != theirs[key]}
    assert not wrong, f"(shape, dtype) numgpt vs transformers: {wrong}"
    assert our_meta == their_meta
    exported = load_file(str(tmp_path / "model.safetensors"))
    fixture = load_file(str(FIXTURE_DIR / "model.safetensors"))
    differ = [key for key in theirs if not numpy.array_equal(exported[key], fixture[key])]
    assert not differ, f"exported tensors differ from the fixture's: {differ}"


def test_export_hf_config_agrees_with_transformers(tmp_path):
    reference()
    numgpt.export_hf(numgpt.load_gpt2(FIXTURE_DIR), tmp_path)
    ours, theirs = read_config(tmp_path), read_config(FIXTURE_DIR)
    differ = {key: (ours.get(key, "<absent>"), theirs.get(key, "<absent>"))
              for key in NUMGPT_CONFIG_FIELDS if ours.get(key, "<absent>") != theirs.get(key, "<absent>")}
    assert not differ, f"config.json fields (numgpt, transformers): {differ}"
    assert ours["model_type"] == theirs["model_type"] == "gpt2"
    assert ours["architectures"] == theirs["architectures"]
