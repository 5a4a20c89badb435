"""Cross-entropy of logits against integer targets, fused with the softmax,
as ``torch.nn.functional.cross_entropy`` with reduction 'mean' and
ignore_index -100: the mean over the targets that are not ignored.

Shapes: logits (N, V), targets (N,) int, loss () ; probs (N, V).
"""
from typing import NamedTuple

import numpy

from numgpt.autograd import array_of, as_tensor, record
from numgpt.registry import resolve

IGNORE_INDEX = -100


class CrossEntropyCache(NamedTuple):
    probs: numpy.ndarray     # (N, V) softmax of the logits
    targets: numpy.ndarray   # (N,)
    valid: numpy.ndarray     # (N,) bool, target != ignore_index
    n_valid: int


def cross_entropy_forward(logits, targets, ignore_index=IGNORE_INDEX):
    valid = targets != ignore_index                                # (N,)
    safe_targets = numpy.where(valid, targets, 0)
    shifted = logits - logits.max(axis=1, keepdims=True)           # 1. (N, V), max 0 per row
    exp = numpy.exp(shifted)                                       # 2. (N, V)
    sumexp = exp.sum(axis=1)                                       # 3. (N,)
    rows = numpy.arange(len(targets))
    nll = numpy.log(sumexp) - shifted[rows, safe_targets]          # 4. log-sum-exp - target logit (N,)
    n_valid = int(valid.sum())
    loss = numpy.asarray(nll[valid].sum(dtype=logits.dtype) / logits.dtype.type(n_valid) if n_valid
                         else logits.dtype.type(numpy.nan))       # 5. mean over valid rows ()
    probs = exp / sumexp[:, None]
    return loss, CrossEntropyCache(probs, safe_targets, valid, n_valid)


def cross_entropy_backward(dout, cache):
    probs, targets, valid, n_valid = cache
    # 5. loss = mean(nll[valid])      4. nll = logsumexp(logits) - logits[target]
    dlogits = probs.copy()                                         # d logsumexp / d logits = softmax
    dlogits[numpy.arange(len(targets)), targets] -= 1.0
    dlogits *= (valid * (dout / max(n_valid, 1))).astype(probs.dtype)[:, None]
    return dlogits


def cross_entropy(logits, targets, ignore_index=IGNORE_INDEX):
    """Mean cross-entropy of (N, V) logits against (N,) integer targets."""
    logits = as_tensor(logits)
    targets = array_of(targets)
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"cross_entropy expects logits (N, V) and targets (N,), got {logits.shape} and {targets.shape}")
    if targets.dtype.kind not in "iu":
        raise TypeError(f"targets must be integers, got dtype {targets.dtype}")
    vocab = logits.shape[1]
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= vocab))
    if bad.any():
        raise IndexError(f"target {targets[bad][0]} is outside [0, {vocab}) and is not ignore_index {ignore_index}")
    forward, backward = resolve(cross_entropy_forward, cross_entropy_backward)
    loss, cache = forward(logits.data, targets, ignore_index)
    return record(loss, (logits,), lambda dout: (backward(dout, cache),), "cross_entropy")
