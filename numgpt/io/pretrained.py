"""GPT-2 weights in the Hugging Face layout: ``load_gpt2`` reads them into a
GPTModel, ``export_hf`` writes a GPTModel out in that layout.

The Hugging Face names meet numgpt's only here, in ``BLOCK_TABLE`` and
``TOP_TABLE``. Hugging Face's GPT-2 stores its linear layers as Conv1D, weight
(in, out), where numgpt's Linear holds (out, in): those entries are
transposed. ``c_attn`` holds query, key and value in one (C, 3C) weight and
(3C,) bias: transposed to (3C, C) it splits into W_query, W_key, W_value along
axis 0, and export concatenates them back.

Loading reads one tensor at a time with ``safetensors.safe_open`` and copies
it into the model's parameter in place, so no second copy of the model is
ever held: the peak is the model plus its largest tensor (wte).
"""
import contextlib
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy
from safetensors import safe_open

from numgpt import schema
from numgpt.io.download import canonical_size, download_gpt2
from numgpt.device import to_host
from numgpt.errors import NumgptError
from numgpt.io.hf_weights import INDEX_FILE, SHARD_PATTERN, SINGLE_FILE, save_weights, tensor_index
from numgpt.io.hf_weights import WeightsError       # defined there; still importable from here
from numgpt.models.memory import check_model_fits
from numgpt.models.gpt import GPT2_SIZES, GPT_CONFIG_124M, GPTModel
from numgpt.nn.layers import LayerNorm
from numgpt.io.safe_io import UnsafeFileError, check_safetensors_header, read_json, stream_safetensors
from numgpt.precision import clear_autocast_cache
from numgpt.safe_write import atomic_write
from numgpt.schema import MAX_CONTEXT, MAX_HEADS, MAX_LAYERS, MAX_VOCAB, MAX_WIDTH
from numgpt.io.torch_format import BIN_FILE, BIN_INDEX, TorchWeights, bin_weights


class WeightsNotFoundError(NumgptError, FileNotFoundError):
    """No weights where a GPT-2 source points: not a size name, a directory or a .safetensors file."""


class Entry(NamedTuple):
    hf: str            # Hugging Face name ({i} = block index)
    numgpt: tuple      # numgpt names; several = the HF tensor is their concatenation along numgpt's axis 0
    conv1d: bool       # stored (in, out): transpose to numgpt's (out, in)


_QKV = ("att.W_query", "att.W_key", "att.W_value")

BLOCK_TABLE = (        # per block: h.{i}.<hf> <-> trf_blocks.{i}.<numgpt>
    Entry("ln_1.weight", ("norm1.scale",), False),
    Entry("ln_1.bias", ("norm1.shift",), False),
    Entry("attn.c_attn.weight", tuple(f"{n}.weight" for n in _QKV), True),     # (C, 3C) -> 3 x (C, C)
    Entry("attn.c_attn.bias", tuple(f"{n}.bias" for n in _QKV), False),        # (3C,) -> 3 x (C,)
    Entry("attn.c_proj.weight", ("att.out_proj.weight",), True),
    Entry("attn.c_proj.bias", ("att.out_proj.bias",), False),
    Entry("ln_2.weight", ("norm2.scale",), False),
    Entry("ln_2.bias", ("norm2.shift",), False),
    Entry("mlp.c_fc.weight", ("ff.layers.0.weight",), True),                  # (C, 4C) -> (4C, C)
    Entry("mlp.c_fc.bias", ("ff.layers.0.bias",), False),
    Entry("mlp.c_proj.weight", ("ff.layers.2.weight",), True),                # (4C, C) -> (C, 4C)
    Entry("mlp.c_proj.bias", ("ff.layers.2.bias",), False),
)
TOP_TABLE = (
    Entry("wte.weight", ("tok_emb.weight",), False),                          # (V, C)
    Entry("wpe.weight", ("pos_emb.weight",), False),                          # (context, C)
    Entry("ln_f.weight", ("final_norm.scale",), False),
    Entry("ln_f.bias", ("final_norm.shift",), False),
)
LM_HEAD = Entry("lm_head.weight", ("out_head.weight",), False)                # (V, C), only when untied

HF_PREFIX = "transformer."
IGNORED = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")   # HF's causal-mask buffers
BLOCK_NAME = re.compile(r"^h\.(\d+)\.")

# emb_dim -> n_heads of OpenAI's four sizes, to infer a config without config.json
HEADS_BY_EMB_DIM = {size["emb_dim"]: size["n_heads"] for size in GPT2_SIZES.values()}
FLOAT_DTYPES = ("F16", "F32", "F64")                                 # copied into float32 or float64 parameters
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
HF_FIELDS = {"n_layers": "n_layer", "context_length": "n_positions", "emb_dim": "n_embd"}   # numgpt's -> GPT2Config's
MAX_CONFIG_BYTES = 2**20                                             # a config.json is a few hundred bytes


def weight_table(n_layers, tied):
    """Every Entry of a model with ``n_layers`` blocks, block names filled in."""
    table = list(TOP_TABLE) if tied else list(TOP_TABLE) + [LM_HEAD]
    for i in range(n_layers):
        table += [Entry(f"h.{i}.{e.hf}", tuple(f"trf_blocks.{i}.{n}" for n in e.numgpt), e.conv1d)
                  for e in BLOCK_TABLE]
    return table


def hf_shape(entry, arrays):
    """The shape of ``entry``'s HF tensor, from the numgpt arrays (or parameters) it holds."""
    shapes = [arrays[name].shape for name in entry.numgpt]
    shape = (sum(s[0] for s in shapes),) + shapes[0][1:]                      # concatenated along axis 0
    return shape[::-1] if entry.conv1d else shape


# ---------------------------------------------------------------- loading

def load_gpt2(source, cache_dir=None):
    """A GPTModel (eval mode) holding GPT-2 weights in the Hugging Face layout.

    ``source`` is a size name ('gpt2-124m', '355m', ... : found in the Hugging
    Face cache or numgpt's, downloaded first when in neither, see
    ``numgpt.io.download``), a directory with model.safetensors or transformers'
    shards and model.safetensors.index.json (and config.json, when present) or
    a .safetensors file; a directory without safetensors may hold PyTorch's
    pytorch_model.bin (or its shards and pytorch_model.bin.index.json), read
    by numgpt.io.torch_format without running it. A size name only says where to look:
    the config.json found there decides the shapes, as it does for a directory.
    The config comes from config.json when there is one, else from the tensor
    shapes: vocab_size and emb_dim from wte, context_length from wpe, n_layers
    from the h.{i} blocks, n_heads from GPT-2's sizes by emb_dim. qkv_bias is
    True, drop_rate 0.0; the head is tied to wte unless the file holds
    lm_head.weight. Every missing, extra, misshapen or non-finite tensor is
    reported in one WeightsError.
    """
    weights_path, config_path = _resolve(source, cache_dir)
    with contextlib.ExitStack() as files:
        f = _open_weights(weights_path, files)
        names = {}                                                # HF name without prefix -> key in the file
        for key in f.keys():
            names[key[len(HF_PREFIX):] if key.startswith(HF_PREFIX) else key] = key
        hf_cfg = _read_json(config_path, weights_path) if config_path is not None else None
        cfg = _gpt_config(hf_cfg, names, f, weights_path, config_path)
        check_model_fits(cfg, config_path or weights_path,                # before anything is allocated
                         spelled=HF_FIELDS if config_path is not None else None)
        model = GPTModel(cfg)
        if hf_cfg is not None and "layer_norm_epsilon" in hf_cfg:
            for module in model.modules():
                if isinstance(module, LayerNorm):
                    module.eps = float(hf_cfg["layer_norm_epsilon"])
        params = dict(model.named_parameters())                   # a tied head is listed once, as tok_emb

        table = weight_table(cfg["n_layers"], cfg["tie_weights"])
        expected = {entry.hf for entry in table}
        problems = [f"missing: {e.hf} (expected shape {hf_shape(e, params)})" for e in table if e.hf not in names]
        problems += [f"unexpected: {names[name]} {tuple(f.get_slice(names[name]).get_shape())}"
                     for name in names if name not in expected and not IGNORED.match(name)]
        for entry in table:
            if entry.hf not in names:
                continue
            problem = _copy_in(f, names[entry.hf], entry, params)
            if problem:
                problems.append(problem)
    if problems:
        raise WeightsError(f"{weights_path} does not hold GPT-2 weights for {_describe(cfg)} "
                           f"({len(problems)} problems):\n  " + schema.listed(problems))
    return model.eval()


class _Shards:
    """``safe_open``'s keys / get_slice / get_tensor over the shards of one model."""

    def __init__(self, handle_of):
        self._handle_of = handle_of                               # tensor name -> the open shard holding it

    def keys(self):
        return list(self._handle_of)

    def get_slice(self, key):
        return self._handle_of[key].get_slice(key)

    def get_tensor(self, key):
        return self._handle_of[key].get_tensor(key)


def _open_weights(weights_path, files):
    """The tensors of model.safetensors, or of the shards a model.safetensors.index.json names (the index
    and every header checked first, hf_weights.tensor_index), opened in the ExitStack ``files``."""
    if weights_path.name in (BIN_FILE, BIN_INDEX):
        return TorchWeights(weights_path)
    if weights_path.name != INDEX_FILE:
        check_safetensors_header(weights_path)                    # a hostile header fails here, clearly
        return files.enter_context(safe_open(str(weights_path), framework="numpy"))
    handles = {}
    handle_of = {}
    for name, info in tensor_index(weights_path.parent).items():
        if info.path not in handles:
            handles[info.path] = files.enter_context(safe_open(str(info.path), framework="numpy"))
        handle_of[name] = handles[info.path]
    return _Shards(handle_of)


def _copy_in(f, key, entry, params):
    """Copy one HF tensor into its numgpt parameter(s) in place; a problem string, or None."""
    expected = hf_shape(entry, params)
    view = f.get_slice(key)
    shape, dtype = tuple(view.get_shape()), view.get_dtype()
    if shape != expected:
        return f"misshapen: {key}: expected {expected}, got {shape}"
    if dtype not in FLOAT_DTYPES:
        return f"unsupported dtype: {key} is {dtype} (expected one of {', '.join(FLOAT_DTYPES)})"
    tensor = f.get_tensor(key)                                      # the one tensor held besides the model
    if tensor.size and not (numpy.isfinite(tensor.min()) and numpy.isfinite(tensor.max())):
        return f"not finite: {key} holds {int(numpy.isnan(tensor).sum())} NaN and {int(numpy.isinf(tensor).sum())} Inf"
    value = tensor.T if entry.conv1d else tensor                   # Conv1D (in, out) -> (out, in), a view
    start = 0
    for name in entry.numgpt:                                       # split along numgpt's axis 0
        param = params[name]
        param.data[...] = value[start:start + param.shape[0]]       # copies and casts in place
        start += param.shape[0]
    clear_autocast_cache()                                          # the weights' bf16 copies are stale now
    return None


def _resolve(source, cache_dir):
    """(model.safetensors path, config.json path or None) for a size name, directory or file."""
    path = Path(source).expanduser() if isinstance(source, (str, os.PathLike)) else None
    if path is None:
        raise TypeError(f"load_gpt2 source must be a size name or a path, got {type(source).__name__}")
    if path.is_dir():
        weights, config = path / SINGLE_FILE, path / "config.json"
        if not weights.is_file() and (path / INDEX_FILE).is_file():
            weights = path / INDEX_FILE                            # sharded, as export writes a large model
        if not weights.is_file():
            weights = bin_weights(path)                            # PyTorch's pytorch_model.bin, read as data
        if weights is None:
            raise WeightsNotFoundError(f"{path} has no model.safetensors nor {INDEX_FILE} (the Hugging Face "
                                       f"GPT-2 layout), nor {BIN_FILE} or {BIN_INDEX}")
        return weights, config if config.exists() else None           # a FIFO or device is refused, not read
    if path.is_file():
        if path.suffix != ".safetensors":
            raise WeightsError(f"{path} is not a .safetensors file")
        return path, None
    size = canonical_size(str(source))
    if size is not None:
        directory = download_gpt2(size, cache_dir=cache_dir)
        return directory / "model.safetensors", directory / "config.json"
    raise WeightsNotFoundError(f"{source!r} is neither a GPT-2 size ({', '.join(GPT2_SIZES)}, or 124m ...) "
                            "nor an existing directory or .safetensors file")


def _read_json(path, weights_path):
    """The config.json beside ``weights_path``, read by safe_io's bounded JSON reader: a JSON object."""
    try:
        config = read_json(path, MAX_CONFIG_BYTES)
    except UnsafeFileError as error:
        raise WeightsError(f"{path} (the config of {weights_path}): {error.words}") from None
    if not isinstance(config, dict):
        raise WeightsError(f"{path} (the config of {weights_path}) is a JSON {type(config).__name__}, not an "
                           f"object (expected a Hugging Face GPT2Config)")
    return config


def _gpt_config(hf_cfg, names, f, weights_path, config_path):
    """numgpt's config dict, from a HF GPT2Config dict or, without one, from the tensor shapes."""
    tied = "lm_head.weight" not in names
    if hf_cfg is not None:
        dims = gpt2_dims(hf_cfg, config_path)
        if hf_cfg.get("tie_word_embeddings", True) is False:
            tied = False                                            # then lm_head.weight must be there
    else:
        dims = _infer_dims(names, f, weights_path)
    return dict(GPT_CONFIG_124M, **dims, drop_rate=0.0, qkv_bias=True, tie_weights=tied)


def gpt2_dims(hf_cfg, where):
    """(numgpt's dims of a Hugging Face GPT2Config dict ``hf_cfg``, read from the file ``where``: every
    field numgpt uses checked for its type and range; WeightsError names the first that fails, or
    every setting numgpt cannot follow."""
    def integer(field, high, **options):
        return schema.integer(hf_cfg, field, where, low=1, high=high, error=WeightsError, **options)

    emb_dim, n_layers = integer("n_embd", MAX_WIDTH), integer("n_layer", MAX_LAYERS)
    n_heads, vocab_size = integer("n_head", MAX_HEADS), integer("vocab_size", MAX_VOCAB)
    context = integer("n_positions", MAX_CONTEXT, required=False,
                      default=integer("n_ctx", MAX_CONTEXT, required=False, default=1024))
    schema.number(hf_cfg, "layer_norm_epsilon", where, above=0, error=WeightsError, required=False)
    schema.boolean(hf_cfg, "tie_word_embeddings", where, error=WeightsError, required=False)
    if emb_dim % n_heads:
        schema.fail(where, "n_head", n_heads, f"a divisor of n_embd {emb_dim}", WeightsError)
    problems = []
    activation = hf_cfg.get("activation_function", "gelu_new")
    if activation not in GELU_TANH:
        problems.append(f"activation_function {schema.shown(activation)}: numgpt's GELU is the tanh form "
                        f"('gelu_new')")
    n_inner = hf_cfg.get("n_inner")
    if n_inner is not None and n_inner != 4 * emb_dim:
        problems.append(f"n_inner {schema.shown(n_inner)}: numgpt's MLP is 4 * n_embd wide")
    if problems:
        raise WeightsError(f"{where} does not describe a GPT-2 numgpt can build: " + "; ".join(problems))
    return dict(vocab_size=vocab_size, emb_dim=emb_dim, n_heads=n_heads, n_layers=n_layers, context_length=context)


def _infer_dims(names, f, weights_path):
    """The dims of a GPT-2 from its tensors' shapes alone: wte (V, C), wpe (context, C), and the
    h.{i} blocks, which must run from h.0 without a gap and number at most MAX_LAYERS."""
    problems = [f"missing: {name}" for name in ("wte.weight", "wpe.weight") if name not in names]
    if problems:
        raise WeightsError(f"{weights_path}: cannot infer the config from the shapes ({'; '.join(problems)}); "
                           "is it a GPT-2 file? Put a config.json beside model.safetensors")
    for name, first in (("wte.weight", "vocab_size"), ("wpe.weight", "context_length")):
        shape = tuple(f.get_slice(names[name]).get_shape())
        if len(shape) != 2 or 0 in shape:
            raise WeightsError(f"{weights_path}: {names[name]} has shape {shape}; expected ({first}, emb_dim) "
                               f"with neither zero (a GPT-2 embedding table)")
    V, C = f.get_slice(names["wte.weight"]).get_shape()                       # (V, C)
    context = f.get_slice(names["wpe.weight"]).get_shape()[0]                 # (context, C)
    for field, value, high in (("vocab_size", V, MAX_VOCAB), ("emb_dim", C, MAX_WIDTH),
                               ("context_length", context, MAX_CONTEXT)):
        if value > high:
            raise WeightsError(f"{weights_path}: {field} {value} (from the tensor shapes) exceeds numgpt's limit "
                               f"of {high}")
    blocks = {int(m.group(1)) for m in map(BLOCK_NAME.match, names) if m}
    if not blocks:
        raise WeightsError(f"{weights_path}: no transformer blocks (h.0.*) in the file; is it a GPT-2 file?")
    if len(blocks) > MAX_LAYERS or max(blocks) >= MAX_LAYERS:
        raise WeightsError(f"{weights_path}: the tensor names number blocks up to h.{max(blocks)}; numgpt builds "
                           f"at most {MAX_LAYERS} layers")
    if len(blocks) != max(blocks) + 1:
        absent = sorted(set(range(max(blocks) + 1)) - blocks)
        raise WeightsError(f"{weights_path}: the tensor names number blocks up to h.{max(blocks)} but "
                           f"{len(absent)} of them hold no tensor (h.{absent[0]} first): the layer count "
                           f"cannot be inferred; put a config.json beside model.safetensors")
    if C not in HEADS_BY_EMB_DIM:
        raise WeightsError(f"{weights_path}: emb_dim {C} is not one of GPT-2's sizes "
                           f"({', '.join(map(str, HEADS_BY_EMB_DIM))}), so n_heads is unknown: put a config.json "
                           "(Hugging Face GPT2Config: n_embd, n_layer, n_head, n_positions, vocab_size) beside "
                           "model.safetensors and load the directory")
    return dict(vocab_size=V, emb_dim=C, n_heads=HEADS_BY_EMB_DIM[C], context_length=context,
                n_layers=max(blocks) + 1)


def _describe(cfg):
    return (f"vocab_size {cfg['vocab_size']}, emb_dim {cfg['emb_dim']}, n_layers {cfg['n_layers']}, "
            f"n_heads {cfg['n_heads']}, context_length {cfg['context_length']}, "
            f"{'tied head' if cfg['tie_weights'] else 'untied head (lm_head.weight)'}")


# ---------------------------------------------------------------- export

def is_tied(model):
    return model.out_head.weight is model.tok_emb.weight


def export_hf(model, directory, max_shard_bytes=5 * 2**30):
    """Write ``model`` as Hugging Face GPT-2: model.safetensors and config.json in ``directory``.

    Keys carry the ``transformer.`` prefix, as GPT2LMHeadModel.save_pretrained
    writes them; Linear weights are written in Conv1D (in, out) layout and
    W_query/W_key/W_value concatenated into c_attn. ``lm_head.weight`` is
    written only when the head is untied (config tie_word_embeddings false).
    GPT-2's layout always has c_attn.bias: a model built with qkv_bias False is
    written with zero query/key/value biases, which compute the same thing.
    The causal-mask buffers (attn.bias) are not written; transformers does not
    need them. Tensors are written one at a time, each file atomically.

    Weights larger than ``max_shard_bytes`` (5 GiB by default, as transformers)
    are written as transformers' float32 shards and model.safetensors.index.json
    (``hf_weights.save_weights``); the weight files of an earlier export that
    this one does not use are removed. Returns the directory.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WeightsError(f"cannot export to {directory}: {error.strerror or error}") from None
    cfg, tied = model.cfg, is_tied(model)
    arrays = {name: param.data for name, param in model.named_parameters()}
    dtype = arrays["tok_emb.weight"].dtype
    for i in range(cfg["n_layers"]):                                # qkv_bias False: zero biases
        for name in _QKV:
            arrays.setdefault(f"trf_blocks.{i}.{name}.bias", numpy.zeros(cfg["emb_dim"], dtype))

    def hf_tensor(entry):
        parts = [to_host(arrays[name]) for name in entry.numgpt]                     # one tensor at a time
        value = parts[0] if len(parts) == 1 else numpy.concatenate(parts, axis=0)   # 3 x (C, C) -> (3C, C)
        return value.T if entry.conv1d else value                                   # (out, in) -> (in, out)

    table = [e if e is LM_HEAD else e._replace(hf=HF_PREFIX + e.hf) for e in weight_table(cfg["n_layers"], tied)]
    header = {entry.hf: (hf_shape(entry, arrays), dtype) for entry in table}
    if sum(math.prod(shape) for shape, _ in header.values()) * dtype.itemsize > max_shard_bytes:
        save_weights(_LazyTensors(table, hf_tensor), directory, max_shard_bytes=max_shard_bytes)
    else:
        atomic_write(directory / SINGLE_FILE,
                     lambda fh: stream_safetensors(fh, header, map(hf_tensor, table), metadata={"format": "pt"}))
        for path in directory.iterdir():                            # an earlier sharded export's files
            if path.name == INDEX_FILE or SHARD_PATTERN.match(path.name):
                path.unlink()
    config = hf_config(model)
    atomic_write(directory / "config.json",
                 lambda fh: fh.write((json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8")))
    return directory


class _LazyTensors(Mapping):
    """{Hugging Face name: tensor} whose tensors are made when read (c_attn concatenated then),
    so that save_weights holds one at a time."""

    def __init__(self, table, make):
        self._entry = {entry.hf: entry for entry in table}
        self._make = make

    def __getitem__(self, name):
        return self._make(self._entry[name])

    def __iter__(self):
        return iter(self._entry)

    def __len__(self):
        return len(self._entry)


def hf_config(model):
    """The Hugging Face GPT2Config dict of ``model``."""
    cfg = model.cfg
    config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "vocab_size": cfg["vocab_size"],
        "n_positions": cfg["context_length"],
        "n_ctx": cfg["context_length"],
        "n_embd": cfg["emb_dim"],
        "n_layer": cfg["n_layers"],
        "n_head": cfg["n_heads"],
        "n_inner": None,
        "layer_norm_epsilon": model.final_norm.eps,
        "embd_pdrop": cfg["drop_rate"],
        "attn_pdrop": cfg["drop_rate"],
        "resid_pdrop": cfg["drop_rate"],
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": is_tied(model),
        "torch_dtype": numpy.dtype(model.tok_emb.weight.dtype).name,
    }
    if cfg["vocab_size"] > 50256:                                   # GPT-2's <|endoftext|>
        config.update(bos_token_id=50256, eos_token_id=50256)
    return config
