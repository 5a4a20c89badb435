"""Cross-entropy of logits against integer targets, fused with the softmax,
as ``torch.nn.functional.cross_entropy`` with reduction 'mean' and
ignore_index -100: the mean over the targets that are not ignored.

Shapes: logits (N, V), targets (N,) int, loss () ; probs (N, V).
For one row, z = logits[n] (V,) and y = targets[n]; forward as in the code:

    1. s = z - max(z)                      (V,)  the largest entry becomes 0
    2. e = exp(s)                          (V,)  every entry in (0, 1]
    3. S = sum(e)                          ()    >= 1, so log S is finite
    4. nll = log S - s[y]                  ()    = logsumexp(z) - z[y]
    5. loss = sum of nll over the valid rows / n_valid    ()

Why the shift changes nothing: log sum exp(z - m) = logsumexp(z) - m and
s[y] = z[y] - m, so m cancels in step 4 (and softmax(z - m) = softmax(z)).
The loss does not depend on m at all, so no gradient flows through the max;
the shift only keeps exp from overflowing (exp(1000) is inf in float64).

Backward, the same steps in reverse:

    5. loss is a mean over the valid rows: dnll[n] = dout / n_valid for a
       valid row, 0 for an ignored one (it is not in the sum).
    4. d logsumexp(z) / dz_i = exp(z_i) / sum_m exp(z_m) = softmax(z)_i
       d z[y] / dz_i         = [i == y] = one_hot(y)_i
       so dz = dnll * (softmax(z) - one_hot(y))                   (V,)
    3..1. nothing more: the shift cancelled, and probs = e / S is the
       softmax already computed.

For the batch:  dlogits = (probs - one_hot(targets)) * valid[:, None] * dout / n_valid
(N, V). Each row of dlogits sums to 0: raising every logit of a row by the
same amount leaves the loss unchanged. An ignored row's target is replaced by
0 so that the indexing stays in range; its row is then zeroed by valid.
With no valid target the loss is nan and the gradient 0 (max(n_valid, 1)).
"""
import math
from typing import NamedTuple

import numpy

from numgpt.autograd import array_of, as_tensor, record
from numgpt.device import array_module, is_host, like
from numgpt.registry import resolve

IGNORE_INDEX = -100


class CrossEntropyCache(NamedTuple):
    probs: numpy.ndarray     # (N, V) softmax of the logits
    targets: numpy.ndarray   # (N,)
    valid: numpy.ndarray     # (N,) bool, target != ignore_index
    n_valid: int


def cross_entropy_forward(logits, targets, ignore_index=IGNORE_INDEX):
    xp = array_module(logits)
    valid = targets != ignore_index                                # (N,)
    safe_targets = xp.where(valid, targets, 0)
    shifted = logits - logits.max(axis=1, keepdims=True)           # 1. (N, V), max 0 per row
    exp = xp.exp(shifted)                                          # 2. (N, V)
    sumexp = exp.sum(axis=1)                                       # 3. (N,)
    rows = xp.arange(len(targets))
    nll = xp.log(sumexp) - shifted[rows, safe_targets]             # 4. log-sum-exp - target logit (N,)
    n_valid = valid.sum()                                          # () on the logits' device: no host round trip
    total = (nll * valid).sum(dtype=logits.dtype)                  # ignored rows add 0
    loss = xp.where(n_valid > 0, total / xp.maximum(n_valid, 1).astype(logits.dtype),
                    math.nan).astype(logits.dtype)                 # 5. mean over valid rows (), nan if none
    probs = exp / sumexp[:, None]                                  # softmax, for the backward (N, V)
    return loss, CrossEntropyCache(probs, safe_targets, valid, n_valid)


def cross_entropy_backward(dout, cache):
    probs, targets, valid, n_valid = cache
    # 4. nll = logsumexp(logits) - logits[target]   (3..1: the shift cancels, no gradient)
    dlogits = probs.copy()                                         # d logsumexp / d logits = softmax (N, V)
    dlogits[array_module(probs).arange(len(targets)), targets] -= 1.0   # minus d logits[target] / d logits = one_hot
    # 5. loss = mean(nll[valid])  -> dnll = dout / n_valid on valid rows, 0 on ignored ones;
    #    a factor per row, applied last (it commutes with step 4's difference)
    dlogits *= (valid * (dout / array_module(probs).maximum(n_valid, 1))).astype(probs.dtype)[:, None]   # (N, 1)
    return dlogits


def cross_entropy(logits, targets, ignore_index=IGNORE_INDEX):
    """Mean cross-entropy of (N, V) logits against (N,) integer targets."""
    logits = as_tensor(logits)
    targets = array_of(targets)
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"cross_entropy expects logits (N, V) and targets (N,), got {logits.shape} and "
                         f"{targets.shape}")
    if targets.dtype.kind not in "iu":
        raise TypeError(f"targets must be integers, got dtype {targets.dtype}")
    vocab = logits.shape[1]
    if is_host(targets):       # checked on the host, then moved to the logits' device; device targets are not checked
        bad = (targets != ignore_index) & ((targets < 0) | (targets >= vocab))
        if bad.any():
            raise IndexError(f"target {targets[bad][0]} is outside [0, {vocab}) and is not ignore_index {ignore_index}")
        targets = like(targets, logits.data)
    forward, backward = resolve(cross_entropy_forward, cross_entropy_backward, logits.data)
    loss, cache = forward(logits.data, targets, ignore_index)
    return record(loss, (logits,), lambda dout: (backward(dout, cache),), "cross_entropy")
