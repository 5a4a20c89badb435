"""Text generation: the seed's ``generate_text_simple`` and ``generate``,
batch-safe and deterministic.

- temperature 0 is greedy (argmax); temperature > 0 samples from
  softmax(logits / temperature) with numgpt's seeded generator;
- top_k keeps, per row, the k largest logits;
- eos_id stops a row: as in the seed, the EOS token is not appended; a row that
  stopped while others go on is padded with eos_id, and generation ends when
  every row has stopped;
- the context is cropped to the last ``context_size`` tokens;
- with ``use_cache`` (the default) each new token costs one position through
  the model: keys and values of the window are kept per layer. Once the
  window is full, every position's embedding shifts with each new token, so
  the cache is rebuilt from the cropped window (the same logits as a full
  recomputation, which is what cache-less generation does).

On a CUDA device the model runs there and token ids stay on the host: the
model's embedding moves them in, and each step brings back only the last
position's logits (B, V) to sample from numgpt's host generator, so a seed
gives the same text on every device.
"""
import numpy

from numgpt import backend
from numgpt.autograd import array_of, no_grad
from numgpt.device import to_host


def _check_idx(idx):
    idx = to_host(array_of(idx))
    if idx.ndim != 2 or idx.shape[1] == 0 or idx.dtype.kind not in "iu":
        raise ValueError(f"idx must be integer token ids of shape (batch, n >= 1), got {idx.dtype} {idx.shape}")
    return idx.astype(backend.INDEX_DTYPE, copy=False)


def next_token_logits(model, idx, context_size, use_cache=True, max_new_tokens=None):
    """Yield the last position's logits (B, V) for idx, then for idx plus each
    token sent in: ``logits = gen.send(next_ids)`` with next_ids (B, 1).
    ``max_new_tokens`` (when known) bounds the cache to the positions that
    will be used, rather than the whole window."""
    window = min(context_size, model.cfg["context_length"])
    idx_cond = idx[:, -window:]
    capacity = window if max_new_tokens is None else min(window, idx_cond.shape[1] + max_new_tokens)
    cache = model.new_kv_cache(idx.shape[0], capacity) if use_cache else None

    def last_logits(ids):
        with no_grad():  # only around the model: the caller's grad mode is left alone between yields
            return to_host(model(ids, kv_cache=cache).data[:, -1, :])         # (B, T, V) -> (B, V), on the host

    logits = last_logits(idx_cond)
    while True:
        next_ids = yield logits
        idx_cond = numpy.concatenate([idx_cond, next_ids], axis=1)[:, -window:]   # (B, <= window)
        if cache is not None and cache[0].length < capacity:
            logits = last_logits(next_ids)                                     # one new position
        else:
            if cache is not None:                                              # window full: rebuild
                cache = model.new_kv_cache(idx.shape[0], capacity)
            logits = last_logits(idx_cond)


def sample_next(logits, temperature=0.0, top_k=None, generator=None):
    """Next ids (B, 1) from logits (B, V): greedy at temperature 0, else sampled."""
    if top_k is not None:
        k = min(int(top_k), logits.shape[-1])
        kth = numpy.partition(logits, -k, axis=-1)[:, -k][:, None]            # (B, 1) k-th largest per row
        logits = numpy.where(logits < kth, -numpy.inf, logits)
    if temperature == 0.0:
        return logits.argmax(axis=-1)[:, None]                                 # (B, 1)
    scaled = logits / logits.dtype.type(temperature)
    probs = numpy.exp(scaled - scaled.max(axis=-1, keepdims=True))
    cdf = numpy.cumsum(probs, axis=-1)                                        # (B, V), unnormalised
    generator = generator or backend.get_generator()
    u = generator.random((logits.shape[0], 1), dtype=logits.dtype) * cdf[:, -1:]
    choice = (cdf <= u).sum(axis=-1, keepdims=True)                           # inverse CDF per row
    return numpy.minimum(choice, logits.shape[-1] - 1).astype(backend.INDEX_DTYPE)


def generate(model, idx, max_new_tokens, context_size, temperature=0.0, top_k=None, eos_id=None,
             use_cache=True, generator=None):
    """Append up to ``max_new_tokens`` tokens to idx (B, T); returns (B, T + n) int64."""
    if temperature is None or temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if context_size < 1:
        raise ValueError(f"context_size must be >= 1, got {context_size}")
    idx = _check_idx(idx)
    if max_new_tokens <= 0:
        return idx
    steps = next_token_logits(model, idx, context_size, use_cache, max_new_tokens)
    logits = next(steps)
    stopped = numpy.zeros((idx.shape[0], 1), dtype=bool)
    pieces = [idx]
    for step in range(max_new_tokens):
        next_ids = sample_next(logits, temperature, top_k, generator)         # (B, 1)
        if eos_id is not None:
            stopped |= next_ids == eos_id
            if stopped.all():
                break
            next_ids = numpy.where(stopped, eos_id, next_ids)
        pieces.append(next_ids)
        if step + 1 < max_new_tokens:
            logits = steps.send(next_ids)
    steps.close()
    return numpy.concatenate(pieces, axis=1)


def generate_text_simple(model, idx, max_new_tokens, context_size, use_cache=True):
    """Greedy decoding, as the seed's function of that name."""
    return generate(model, idx, max_new_tokens, context_size, temperature=0.0, use_cache=use_cache)
