"""Every model family through one door: build, load, tokenize and export.

``load_pretrained(source)`` and ``get_tokenizer(source)`` take

- a GPT-2 size name ('gpt2-124m', '124m', ...): OpenAI's weights, found or
  fetched as ``load_gpt2`` does; GPT-2's bundled tiktoken tokenizer;
- a numgpt run directory (or one checkpoint in it): its newest checkpoint, and
  the tokenizer the run trained with (``RUN/tokenizer/``, copied there when a
  run starts from a Llama-family model; GPT-2 runs use the bundled one);
- a Hugging Face model directory (config.json beside model.safetensors or a
  sharded model.safetensors.index.json, and tokenizer.json): its
  ``model_type`` decides the family, gpt2, llama, qwen2 or qwen3;
- a Hugging Face hub id ('HuggingFaceTB/SmolLM2-135M'), fetched into the
  Hugging Face cache through huggingface_hub (``numgpt.io.hub``), reused from it
  when transformers or an earlier run already downloaded it.
"""
import json
import re
from pathlib import Path

from numgpt import backend, schema
from numgpt.device import to_host
from numgpt.errors import NumgptError
from numgpt.io import tokenizer
from numgpt.io.checkpoint import CheckpointManager, build_model, is_committed, load_checkpoint
from numgpt.io.download import canonical_size
from numgpt.io.hf_tokenizer import HFTokenizer
from numgpt.io.hf_weights import load_weights, save_weights
from numgpt.io.hub import resolve_model_dir
from numgpt.io.pretrained import WeightsError, export_hf, load_gpt2
from numgpt.io.safe_io import read_json
from numgpt.io.tokenizer import N_VOCAB, save_hf_tokenizer
from numgpt.io.torch_format import TORCH_SUFFIXES
from numgpt.io.torch_weights import seed_model
from numgpt.models.llama import LlamaForCausalLM
from numgpt.models.llama_config import from_hf_config, is_llama_config, to_hf_config
from numgpt.models.memory import check_model_fits
from numgpt.nn.inference_bf16 import bf16_weight_arrays, to_bf16_true
from numgpt.safe_write import atomic_write, copy_file, own_directory

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
MAX_CONFIG_BYTES = 2**20              # a config.json is a few kilobytes
RUN_TOKENIZER_DIR = "tokenizer"        # RUN/tokenizer/: the tokenizer a Llama-family run trains with


class SourceError(NumgptError, ValueError):
    """A model source that is none of the things ``load_pretrained`` takes."""


def is_run_or_checkpoint(path):
    path = Path(path)
    return path.is_dir() and (is_committed(path) or (path / "checkpoints").is_dir()
                              or (path / "settings.json").is_file())


def _checkpoint_of(path):
    path = Path(path)
    if not is_committed(path):
        latest = CheckpointManager(path / "checkpoints").latest() or CheckpointManager(path).latest()
        if latest is None:
            raise SourceError(f"{path} holds no committed checkpoint (expected a run directory or a checkpoint)")
        path = latest
    return load_checkpoint(path)


def _model_type(directory):
    """(model_type or None, the config.json dict or None) of a Hugging Face directory."""
    config_path = Path(directory) / "config.json"
    if not config_path.is_file():
        return None, None
    config = read_json(config_path, MAX_CONFIG_BYTES)
    if not isinstance(config, dict):
        raise SourceError(f"{config_path} is not a JSON object (expected a Hugging Face config.json)")
    return schema.string(config, "model_type", config_path, error=SourceError, required=False), config


def locate(source, cache_dir=None):
    """(kind, where) for a source: ('gpt2', size or .safetensors file), ('run', path) or ('hf', directory)."""
    if isinstance(source, (str, Path)) and Path(source).expanduser().exists():
        path = Path(source).expanduser()
        if is_run_or_checkpoint(path):
            return "run", path
        if path.is_dir():
            return "hf", path
        if path.suffix == ".safetensors":
            return "gpt2", path                              # GPT-2 weights in one file (load_gpt2's)
        if path.suffix in TORCH_SUFFIXES:
            return "torch", path                             # the seed's torch.save, read as data
        raise SourceError(f"{path} is a file: expected a model directory (config.json and .safetensors files), "
                          f"a numgpt run directory, a GPT-2 .safetensors file, the seed's .pth or a hub id")
    size = canonical_size(source) if isinstance(source, str) else None
    if size is not None:
        return "gpt2", size
    if isinstance(source, str) and re.fullmatch(r"[\w.-]+/[\w.-]+(@[\w./-]+)?", source):
        return "hf", resolve_model_dir(source, cache_dir=cache_dir)
    raise SourceError(f"{source!r} is neither an existing directory, a GPT-2 size (124m, 355m, 774m, 1558m) nor "
                      f"a Hugging Face hub id (owner/name)")


def load_pretrained(source, cache_dir=None, precision="32-true"):
    """The model (eval mode) of ``source``, any supported family; see the module docstring.
    ``precision="bf16-true"`` keeps its weights as bf16 (numgpt/nn/inference_bf16.py): a Llama-family
    directory's bf16 tensors are loaded as their bits, GPT-2 and numgpt runs converted after loading."""
    kind, where = locate(source, cache_dir)
    if kind == "gpt2":
        model = load_gpt2(where, cache_dir=cache_dir)
    elif kind == "torch":
        model = seed_model(where)
    elif kind == "run":
        model = build_model(_checkpoint_of(where)).eval()
    elif _model_type(where)[0] in (None, "gpt2"):
        model = load_gpt2(where)
    else:
        return load_llama(where, precision)
    return to_bf16_true(model) if precision == "bf16-true" else model


def load_llama(directory, precision="32-true"):
    """A LlamaForCausalLM (eval mode) with the weights of a Hugging Face directory: its
    config.json decides the shape, its safetensors files (one or sharded; bf16 and fp16
    widened to float32 one tensor at a time) the weights. With ``precision="bf16-true"``
    the model is converted before loading (numgpt/nn/inference_bf16.py) and the weight
    matrices receive the files' bf16 bits unwidened (others rounded to bf16). Every
    missing, extra or misshapen tensor is reported in one WeightsError."""
    directory = Path(directory)
    _, config = _model_type(directory)
    if config is None:
        raise SourceError(f"{directory} has no config.json (expected a Hugging Face model directory)")
    cfg = from_hf_config(config, where=str(directory / "config.json"))
    check_model_fits(cfg, directory / "config.json")            # before anything is allocated
    rng_state = backend.get_rng_state()
    try:
        model = LlamaForCausalLM(cfg)
    finally:
        backend.set_rng_state(rng_state)             # loading draws no random numbers a run would see
    if precision == "bf16-true":
        params = dict(to_bf16_true(model).named_parameters(), **bf16_weight_arrays(model))
    else:
        params = dict(model.named_parameters())      # a tied head is listed once, as model.embed_tokens
    ignore = r"(.*\.rotary_emb\.inv_freq)" + (r"|lm_head\.weight" if cfg["tie_word_embeddings"] else "")
    load_weights(params, directory, ignore=re.compile(ignore))
    return model.eval()


def tokenizer_directory(source, cache_dir=None):
    """The directory holding the tokenizer.json of ``source``, or None for GPT-2 (tiktoken, bundled).
    A directory is GPT-2's when its config.json says model_type gpt2; any other directory is read
    through its tokenizer.json (config.json or not), and one with neither is an error."""
    kind, where = locate(source, cache_dir)
    if kind in ("gpt2", "torch"):
        return None
    if kind == "run":
        checkpoint = _checkpoint_of(where)
        if not is_llama_config(checkpoint.config):
            return None
        for run_dir in (where, *Path(checkpoint.path).parents):
            if (run_dir / RUN_TOKENIZER_DIR / "tokenizer.json").is_file():
                return run_dir / RUN_TOKENIZER_DIR
        raise SourceError(f"{where} holds a {checkpoint.config['model_type']} model but no {RUN_TOKENIZER_DIR}/"
                          f"tokenizer.json (numgpt train copies it there from --init)")
    model_type, _ = _model_type(where)
    if model_type == "gpt2":
        return None
    if model_type is None and not (Path(where) / "tokenizer.json").is_file():
        raise SourceError(f"{where} holds neither a tokenizer.json nor a config.json: expected a model or "
                          f"tokenizer directory (a GPT-2 config.json, or a tokenizer.json), a run directory, a "
                          f"GPT-2 size or a hub id")
    return where


def get_tokenizer(source=None, cache_dir=None):
    """The tokenizer of ``source``: GPT-2's bundled tiktoken encoding for GPT-2 models (and for
    ``source=None``), the model's own tokenizer.json (numgpt.io.hf_tokenizer) for the others."""
    directory = None if source is None else tokenizer_directory(source, cache_dir)
    if directory is None:
        return tokenizer.get_tokenizer()
    return HFTokenizer(directory)


def copy_tokenizer(source_dir, run_dir):
    """Copy the tokenizer files of a model directory into RUN/tokenizer/ (what there is of them),
    never through a symbolic link (numgpt.safe_write)."""
    target = own_directory(Path(run_dir) / RUN_TOKENIZER_DIR)
    for name in TOKENIZER_FILES:
        if (Path(source_dir) / name).is_file():
            copy_file(Path(source_dir) / name, target / name)
    return target


def export_pretrained(model, directory, tokenizer_dir=None, max_shard_bytes=None):
    """Write ``model`` in the Hugging Face layout of its family into ``directory``:
    config.json and model.safetensors (sharded with model.safetensors.index.json when
    larger than ``max_shard_bytes``, 5 GiB by default, as transformers), and the
    tokenizer files: those of ``tokenizer_dir`` when given; for GPT-2, GPT-2's own
    (numgpt.io.tokenizer.save_hf_tokenizer) when its vocabulary fits the model's.
    Returns the directory."""
    options = {} if max_shard_bytes is None else {"max_shard_bytes": max_shard_bytes}
    if not is_llama_config(model.cfg):
        directory = export_hf(model, directory, **options)
        if model.cfg["vocab_size"] >= N_VOCAB:
            save_hf_tokenizer(directory, model.cfg["context_length"])
        return directory
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WeightsError(f"cannot export to {directory}: {error.strerror or error}") from None
    state = {name: to_host(param.data) for name, param in model.named_parameters()}   # a tied head once
    save_weights(state, directory, **options)
    config = (json.dumps(to_hf_config(model.cfg), indent=2, sort_keys=True) + "\n").encode("utf-8")
    atomic_write(directory / "config.json", lambda fh: fh.write(config))
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            if (Path(tokenizer_dir) / name).is_file() and Path(tokenizer_dir).resolve() != directory.resolve():
                copy_file(Path(tokenizer_dir) / name, directory / name)
    return directory
