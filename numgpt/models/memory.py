"""Will it fit? The one memory check made before a model is built or trained.

Every place numgpt builds a model (a config, a checkpoint, a Hugging Face
directory, GPT-2 weights without a config) first asks ``check_model_fits``:
the bytes of its weights (the largest of them made twice while it is built,
as an untied head is made before it is tied) against the memory the machine
has available. Training asks ``check_training_fits``, which adds gradients,
AdamW's moments and the activations (estimate_training_bytes).
A refusal is a ``MemoryCheckError`` naming the field that makes the model
large, the bytes needed and the bytes available.
"""
import os
import sys

from numgpt import backend
from numgpt.errors import UsageError
from numgpt.models.llama_config import count_parameters, is_llama_config


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


def model_state_bytes(cfg, dtype_bytes=4):
    """Bytes of the weights, their gradients and AdamW's two moments."""
    if is_llama_config(cfg):
        params = count_parameters(cfg)
    else:
        C, V, L = cfg["emb_dim"], cfg["vocab_size"], cfg["n_layers"]
        params = V * C * 2 + cfg["context_length"] * C + L * 12 * C * C
    return dtype_bytes * 4 * params


def estimate_training_bytes(cfg, batch_size, context_length, dtype_bytes=4, flash=None):
    """A rough upper estimate of a training step's memory: weights, gradients
    and two AdamW moments, plus the activations the backward pass keeps.

    ``flash`` (default: kernel mode numba) is the flash attention twin, which
    keeps per layer only the row log-sum-exp beside q, k, v and the output:
    O(B T C) per layer. The NumPy reference keeps the (B, NH, T, T) weights
    and their dropout mask per layer, and makes three more such arrays in the
    layer it is working on. Measured GPT-2 124M peaks (reference attention,
    before flash): 3.07 GB estimated 3.4 GB at 2 x 256; 6.4 GB estimated
    7.1 GB at 2 x 1024."""
    if flash is None:
        flash = backend.get_kernel_mode() == "numba"
    B, T, V = batch_size, context_length, cfg["vocab_size"]
    if is_llama_config(cfg):
        C, F, L, NH = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]
        Q, KV = NH * cfg["head_dim"], cfg["num_key_value_heads"] * cfg["head_dim"]
        # per token: two norms' inputs and outputs, q/k/v before and after rotation, the context,
        # the gate and up of the MLP (its product is recomputed)
        per_layer = B * T * (4 * C + 2 * Q + 2 * KV + Q + KV + 2 * F)
    else:
        C, L, NH = cfg["emb_dim"], cfg["n_layers"], cfg["n_heads"]
        per_layer = B * T * C * 24                                # saved inputs, qkv, mlp
    if flash:
        per_layer += B * NH * T                                   # the row log-sum-exp
        attention_scratch = 0
    else:
        per_layer += B * NH * T * T * 5 // 4                      # attention weights + byte mask
        attention_scratch = B * NH * T * T * 3                    # scores and their gradients, one layer at a time
    logits = B * T * V * 2                                        # logits, probabilities (turned into their gradient)
    return model_state_bytes(cfg, dtype_bytes) + dtype_bytes * (L * per_layer + attention_scratch + logits)
