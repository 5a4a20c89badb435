"""Will it fit? The one memory check made before a model is built or trained.

Every place numgpt builds a model (a config, a checkpoint, a Hugging Face
directory, GPT-2 weights without a config) first asks ``check_model_fits``:
the bytes of its weights (the largest of them made twice while it is built,
as an untied head is made before it is tied) against the memory the machine
has available. Training asks ``check_training_fits``, which adds gradients,
AdamW's moments and the activations (numgpt.train.estimate_training_bytes).
A refusal is a ``MemoryCheckError`` naming the field that makes the model
large, the bytes needed and the bytes available.
"""
import os
import sys

from numgpt import backend
from numgpt.errors import UsageError


class MemoryCheckError(UsageError):
    """A model or a run that would take more memory than the machine has available."""


def memory_available(meminfo="/proc/meminfo"):
    """Bytes the kernel says are available (MemAvailable), else the free physical
    pages sysconf reports, or None when neither is known."""
    try:
        with open(meminfo) as lines:
            for line in lines:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def parameter_terms(cfg):
    """{config field: parameters it brings}, the model's parameters split by the field that
    scales them: the vocabulary's embedding (and untied head), the position table, the blocks."""
    from numgpt.llama import count_parameters, is_llama_config
    if is_llama_config(cfg):
        V, C = cfg["vocab_size"], cfg["hidden_size"]
        vocabulary = V * C * (1 if cfg["tie_word_embeddings"] else 2)
        return {"vocab_size": vocabulary, "num_hidden_layers": count_parameters(cfg) - vocabulary}
    V, C, L = cfg["vocab_size"], cfg["emb_dim"], cfg["n_layers"]
    return {"vocab_size": V * C * (1 if cfg.get("tie_weights") else 2), "context_length": cfg["context_length"] * C,
            "n_layers": L * (12 * C * C + 13 * C)}


def parameter_count(cfg):
    """Parameters of the model ``cfg`` describes (a tied head counted once)."""
    return sum(parameter_terms(cfg).values())


def model_bytes(cfg, dtype_bytes=None):
    """Bytes that building the model takes at its peak: the weights, and the vocabulary's
    (V, C) table once more (the head is made before it is tied to the embedding)."""
    dtype_bytes = dtype_bytes or backend.get_default_dtype().itemsize
    C = cfg.get("hidden_size", cfg.get("emb_dim"))
    return dtype_bytes * (parameter_count(cfg) + cfg["vocab_size"] * C)


def check_model_fits(cfg, where="model config", available=None, spelled=None):
    """Raise MemoryCheckError when building ``cfg`` (a validated config) would take more than
    ``available`` bytes (default: what the machine has available now); the message names the
    field of ``where`` that brings the most parameters, as ``spelled`` (cfg's name -> the file's)
    says the file names it."""
    available = memory_available() if available is None else available
    needed = model_bytes(cfg)
    if available is None or needed <= available:
        return needed
    terms = parameter_terms(cfg)
    field = max(terms, key=terms.get)
    name = (spelled or {}).get(field, field)
    raise MemoryCheckError(f"{where}: this model does not fit in memory: {name} {cfg[field]} makes its weights "
                           f"take {needed:,} bytes ({needed / 2**30:.1f} GiB) and {available:,} bytes "
                           f"({available / 2**30:.1f} GiB) are available")


def check_training_fits(cfg, batch_size, context, available):
    """Raise MemoryCheckError when a training step of ``cfg`` at ``batch_size`` x ``context``
    would take more than ``available`` bytes; None (unknown) prints a note instead."""
    from numgpt.train import estimate_training_bytes, model_state_bytes
    needed = estimate_training_bytes(cfg, batch_size, context)
    if available is None:
        print(f"numgpt train: note: memory check skipped: the available memory is unknown here "
              f"(this run needs about {needed / 2**30:.1f} GiB)", file=sys.stderr)
    elif needed > available:
        state = model_state_bytes(cfg)
        if state > available:
            raise MemoryCheckError(f"this model does not fit: its weights, gradients and AdamW moments alone take "
                                   f"{state:,} bytes ({state / 2**30:.1f} GiB) in float32 and {available:,} bytes "
                                   f"({available / 2**30:.1f} GiB) are available: choose a smaller model, e.g. "
                                   f"--init HuggingFaceTB/SmolLM2-135M or HuggingFaceTB/SmolLM2-360M")
        raise MemoryCheckError(f"this run needs about {needed:,} bytes ({needed / 2**30:.1f} GiB) but {available:,} "
                               f"bytes ({available / 2**30:.1f} GiB) are available: try a smaller --batch-size or "
                               f"--context-length")

