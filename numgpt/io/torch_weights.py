"""What numgpt does with PyTorch files (read by numgpt.io.torch_format, nothing in them run):

- the seed's checkpoint, ``torch.save({"model_state_dict": ..., "optimizer_state_dict": ...},
  "model_and_optimizer.pth")``, and the book's ``torch.save(model.state_dict(), "model.pth")``:
  a GPTModel (``seed_model``) and the optimizer's moments (``optimizer_state``), for
  ``numgpt train --init``;
- ``numgpt convert FILE --out DIR``: the weights as safetensors, in the Hugging Face GPT-2
  layout (model.safetensors and config.json) for a GPT-shaped state dict.

A seed-layout state dict says every size but the number of heads: it comes from GPT-2's
sizes by emb_dim (768: 12, 1024: 16, 1280: 20, 1600: 25), else from a ``config.json``
beside the file holding the seed's config dict (``GPT_CONFIG_124M``'s keys).
"""
import re
from pathlib import Path

import numpy

from numgpt.io.pretrained import HEADS_BY_EMB_DIM, WeightsError, export_hf
from numgpt.io.safe_io import UnsafeFileError, parse_json, read_json, read_limited, write_safetensors
from numgpt.io.torch_format import TORCH_SUFFIXES, load_torch
from numgpt.models.gpt import CONFIG_KEYS, GPTModel, check_config
from numgpt.safe_write import atomic_write
from numgpt.schema import MAX_LAYERS, SchemaError

MAX_CONFIG_BYTES = 2**20
SEED_BLOCK = re.compile(r"^trf_blocks\.(\d+)\.")


def is_torch_file(path):
    """Whether ``path`` is a file numgpt reads as PyTorch's (.pth, .pt, .bin)."""
    path = Path(path).expanduser()
    return path.suffix in TORCH_SUFFIXES and path.is_file()


def model_state(obj, path):
    """The state dict in a loaded PyTorch file: the seed's ``model_state_dict`` or the whole object."""
    if isinstance(obj, dict) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if not (isinstance(obj, dict) and obj and all(isinstance(key, str) and isinstance(value, numpy.ndarray)
                                                  for key, value in obj.items())):
        raise WeightsError(f"{path}: expected a state dict (names -> tensors) or the seed's checkpoint "
                           f"({{'model_state_dict': ..., 'optimizer_state_dict': ...}})")
    return obj


def is_seed_layout(state):
    return "tok_emb.weight" in state and "pos_emb.weight" in state


def seed_config(state, path):
    """The GPTModel config of a seed-layout state dict: sizes from the shapes, heads as the module says."""
    shapes = {key: state[key].shape for key in ("tok_emb.weight", "pos_emb.weight")}
    if any(len(shape) != 2 for shape in shapes.values()):
        raise WeightsError(f"{path}: tok_emb.weight and pos_emb.weight must be matrices; found {shapes}")
    (vocab, width), (context, _) = shapes.values()
    blocks = {int(match.group(1)) for match in map(SEED_BLOCK.match, state) if match}
    if not blocks or max(blocks) >= MAX_LAYERS or len(blocks) != max(blocks) + 1:
        raise WeightsError(f"{path}: the trf_blocks.N tensors must number blocks 0 to N without a gap "
                           f"(at most {MAX_LAYERS}); found {sorted(blocks)[:8]}")
    beside = Path(path).expanduser().parent / "config.json"
    if beside.is_file():
        cfg = _seed_config_file(beside)
    elif width in HEADS_BY_EMB_DIM:
        cfg = {"n_heads": HEADS_BY_EMB_DIM[width]}
    else:
        raise WeightsError(f"{path}: emb_dim {width} is not one of GPT-2's sizes, so the number of heads is "
                           f"unknown: put a config.json with the seed's config dict ({', '.join(CONFIG_KEYS)}) "
                           f"beside the file")
    cfg = {**cfg, "vocab_size": vocab, "context_length": context, "emb_dim": width, "n_layers": max(blocks) + 1,
           "qkv_bias": "trf_blocks.0.att.W_query.bias" in state, "drop_rate": cfg.get("drop_rate", 0.0),
           "tie_weights": False}
    try:
        check_config(cfg, f"{path} (with {beside})" if beside.is_file() else str(path))
    except SchemaError as error:
        raise WeightsError(str(error)) from None
    return cfg


def _seed_config_file(path):
    try:
        cfg = read_json(path)
    except UnsafeFileError as error:
        raise WeightsError(str(error)) from None
    if not isinstance(cfg, dict) or "n_heads" not in cfg:
        raise WeightsError(f"{path}: expected the seed's config dict with n_heads ({', '.join(CONFIG_KEYS)})")
    return {key: cfg[key] for key in ("n_heads", "drop_rate") if key in cfg}


def seed_model(path):
    """A GPTModel (eval mode) holding the weights of the seed's checkpoint or the book's model.pth."""
    state = model_state(load_torch(path), path)
    if not is_seed_layout(state):
        raise WeightsError(f"{path}: not the seed's GPTModel state dict (no tok_emb.weight and pos_emb.weight)")
    model = GPTModel(seed_config(state, path))
    model.load_state_dict(state)
    return model.eval()


def optimizer_state(path):
    """The seed's ``optimizer_state_dict`` in the file at ``path``, or None when it holds none."""
    obj = load_torch(path)
    return obj.get("optimizer_state_dict") if isinstance(obj, dict) else None


# ---------------------------------------------------------------- numgpt convert

def convert(path, out):
    """Write the weights of the PyTorch file ``path`` as safetensors in the directory ``out``:
    the seed's GPTModel as a Hugging Face GPT-2 (config.json, model.safetensors), a Hugging Face
    state dict as model.safetensors under its own names (with the config.json beside the file),
    any other state dict as model.safetensors. Returns the list of files written."""
    path, out = Path(path), Path(out)
    state = model_state(load_torch(path), path)
    if is_seed_layout(state):
        model = GPTModel(seed_config(state, path))
        model.load_state_dict(state)
        export_hf(model, out)
        return [out / "model.safetensors", out / "config.json"]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WeightsError(f"cannot write to {out}: {error.strerror or error}") from None
    arrays, storages, seen = {}, set(), set()
    for key, value in state.items():
        identity = (value.__array_interface__["data"][0], value.shape, value.strides, value.dtype)
        if identity in seen:                      # a tied weight is written once, as safetensors asks
            continue
        seen.add(identity)
        root = _root(value)
        arrays[key] = numpy.array(value) if id(root) in storages else numpy.ascontiguousarray(value)
        storages.add(id(root))                    # a second view of one storage is written as a copy
    write_safetensors(out / "model.safetensors", arrays, metadata={"format": "pt"})
    written = [out / "model.safetensors"]
    config = path.parent / "config.json"
    if config.is_file():
        try:
            text = read_limited(config, MAX_CONFIG_BYTES, "config.json")
            parse_json(text, config)
        except UnsafeFileError as error:
            raise WeightsError(str(error)) from None
        atomic_write(out / "config.json", lambda fh: fh.write(text))
        written.append(out / "config.json")
    return written


def _root(array):
    """The array owning the memory of ``array`` (a storage, for a tensor of load_torch)."""
    while getattr(array, "base", None) is not None:
        array = array.base
    return array
