"""numba twin of numgpt.ops.cross_entropy: softmax and the negative
log-likelihood fused, one row of V logits per prange iteration.

Memory: the forward writes one (N, V) array, the probabilities the cache
needs; the backward turns that same array into dlogits in place and returns
it, so a step holds the logits and one (N, V) array, never more. The tape runs
each backward once; call the backward a second time on the same cache and it
sees gradients, not probabilities.

Accumulators: the row's sum of exponentials over V = 50,257 terms is a float64
scalar (a float32 running sum would lose about 3 digits); it is rounded to the
input dtype before it divides, as the NumPy twin's float32 sum is. The loss
itself is reduced exactly as the twin reduces it.

Shapes: logits and probs (N, V); targets, valid, nll (N,); loss ().
"""
import numpy
from numba import njit, prange

from numgpt.kernels.vexp import vexp

from numgpt.ops.cross_entropy import IGNORE_INDEX, CrossEntropyCache
from numgpt.kernels.scratch import reusable


LANES = 16   # independent partial max / sum lanes: they vectorise without reassociating a sum


@njit(parallel=True, cache=True)
def _cross_entropy_forward(logits, targets, probs, nll):
    N, V = logits.shape
    body = V - V % LANES
    for i in prange(N):
        lane_max = numpy.full(LANES, logits[i, 0])                     # 1. shift by the row max
        for j0 in range(0, body, LANES):
            for lane in range(LANES):
                value = logits[i, j0 + lane]
                lane_max[lane] = value if value > lane_max[lane] else lane_max[lane]
        rowmax = lane_max[0]
        for lane in range(1, LANES):
            rowmax = lane_max[lane] if lane_max[lane] > rowmax else rowmax
        for j in range(body, V):
            rowmax = logits[i, j] if logits[i, j] > rowmax else rowmax
        for j in range(V):
            probs[i, j] = vexp(logits[i, j] - rowmax)                  # 2. exp (no sum here: this loop vectorises)
        lane_sum = numpy.zeros(LANES, dtype=numpy.float64)             # float64 accumulators
        for j0 in range(0, body, LANES):
            for lane in range(LANES):
                lane_sum[lane] += probs[i, j0 + lane]
        total = 0.0
        for lane in range(LANES):
            total += lane_sum[lane]
        for j in range(body, V):
            total += probs[i, j]
        sumexp = logits.dtype.type(total)                              # 3. (rounded to the dtype)
        nll[i] = numpy.log(sumexp) - (logits[i, targets[i]] - rowmax)  # 4. log-sum-exp - target logit
        for j in range(V):
            probs[i, j] /= sumexp                                      # softmax, kept for the backward


def cross_entropy_forward(logits, targets, ignore_index=IGNORE_INDEX):
    valid = targets != ignore_index                                    # (N,)
    safe_targets = numpy.where(valid, targets, 0)
    logits = numpy.ascontiguousarray(logits)
    probs = reusable("cross_entropy.probs", logits.shape, logits.dtype)   # (N, V), the one (N, V) array
    nll = numpy.empty(logits.shape[0], dtype=logits.dtype)             # (N,)
    _cross_entropy_forward(logits, safe_targets, probs, nll)
    n_valid = int(valid.sum())
    loss = numpy.asarray(nll[valid].sum(dtype=logits.dtype) / logits.dtype.type(n_valid) if n_valid
                         else logits.dtype.type(numpy.nan))           # 5. mean over valid rows ()
    return loss, CrossEntropyCache(probs, safe_targets, valid, n_valid)


@njit(parallel=True, cache=True)
def _cross_entropy_backward(probs, targets, row_scale):
    N, V = probs.shape
    for i in prange(N):
        probs[i, targets[i]] -= 1.0                                    # softmax - one_hot(target)
        s = row_scale[i]
        for j in range(V):
            probs[i, j] *= s


def cross_entropy_backward(dout, cache):
    probs, targets, valid, n_valid = cache
    # 5. loss = mean(nll[valid])      4. nll = logsumexp(logits) - logits[target]
    row_scale = (valid * (dout / max(n_valid, 1))).astype(probs.dtype)   # (N,)
    _cross_entropy_backward(probs, targets, row_scale)                 # in place: probs -> dlogits
    return probs


JITTED = (_cross_entropy_forward, _cross_entropy_backward)
