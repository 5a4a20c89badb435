"""The seed's training utilities: losses over batches and loaders, evaluation,
samples, and ``train_model_simple`` with the seed's log lines.

``train_model_simple`` keeps the seed's signature and return value; its extra
keyword arguments (all optional) serve long runs: a step limit, gradient
clipping, gradient accumulation, a learning-rate schedule (``LRSchedule``), a
progress bar, callbacks after every step (checkpoints) and every evaluation
(metrics), and a ``TrainState`` to resume from.

The loaders may be any iterable of ``(inputs, targets)`` batches (a
``DataLoader``, a list, a generator), as with torch. Exact resume of an
interrupted epoch needs a loader whose iterators offer ``state_dict()`` (numgpt's
``DataLoader`` does); with any other loader a resumed run starts that epoch over.
"""
import contextlib
import dataclasses
import hashlib
import itertools
import math
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy
from tqdm.auto import tqdm

from numgpt import backend, schema
from numgpt.autograd import no_grad
from numgpt.device import to_host
from numgpt.errors import UsageError
from numgpt.io.tokenizer import text_to_token_ids, token_ids_to_text
from numgpt.models.generate import generate_text_simple
from numgpt.ops import cross_entropy
from numgpt.optim import clip_grad_norm_, grad_norm
from numgpt.training.distributed import World


def calc_loss_batch(input_batch, target_batch, model, device=None):
    """Mean cross-entropy of the model's logits (B, T, V) against targets (B, T).
    The batches may be arrays or nested lists of token ids, on the host or on the
    model's device; host batches are moved to the model's device (``device`` is
    accepted as the seed passes it: the model's own device decides)."""
    logits = model(backend.asarray(input_batch, dtype=backend.INDEX_DTYPE))
    return cross_entropy(logits.flatten(0, 1), backend.asarray(target_batch, dtype=backend.INDEX_DTYPE).reshape(-1))


def calc_loss_loader(data_loader, model, device=None, num_batches=None, world=None):
    """Average batch loss over the first ``num_batches`` batches of any iterable
    of (inputs, targets) (all of them by default; nan when there are none).
    With a ``world`` of N processes (numgpt.training.distributed), process r computes
    batches r, r + N, ... and the sums are reduced: every process returns the mean."""
    if num_batches is None and hasattr(data_loader, "__len__"):
        num_batches = len(data_loader)
    rank, size = (0, 1) if world is None else (world.rank, world.size)
    total_loss, counted = 0.0, 0
    for i, (input_batch, target_batch) in enumerate(itertools.islice(data_loader, num_batches)):
        if i % size == rank:
            total_loss += calc_loss_batch(input_batch, target_batch, model, device).item()
            counted += 1
    if size > 1:
        total_loss, counted = world.sum(total_loss), int(world.sum(counted))
    return total_loss / counted if counted else float("nan")


def perplexity(loss):
    """exp(loss): the effective number of tokens the model hesitates between."""
    return math.exp(loss) if loss < 700 else float("inf")


def evaluate_model(model, train_loader, val_loader, device, eval_iter, world=None):
    """Train and validation loss over ``eval_iter`` batches each, in eval mode, without a graph
    (shared among the processes of ``world``, see calc_loss_loader)."""
    model.eval()
    with no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=eval_iter, world=world)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=eval_iter, world=world)
    model.train()
    return train_loss, val_loss


def generate_and_print_sample(model, tokenizer, device, start_context, max_new_tokens=50, file=None):
    """Print 50 greedy tokens after ``start_context``, on one line."""
    model.eval()
    context_size = model.cfg["context_length"]               # the seed's model.pos_emb.weight.shape[0]
    encoded = text_to_token_ids(start_context, tokenizer)
    token_ids = generate_text_simple(model, encoded, max_new_tokens, context_size)
    _write(token_ids_to_text(token_ids, tokenizer).replace("\n", " "), file)
    model.train()


def _write(line, file=None):
    """Print without breaking a progress bar."""
    tqdm.write(line, file=file or sys.stdout)


class NonFiniteTraining(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


def chain_digest(digest, input_batch, target_batch):
    """Extend a hex digest with one batch: equal digests mean equal batch sequences."""
    h = hashlib.sha256(digest.encode())
    for batch in (input_batch, target_batch):     # token ids on the host (a device batch is copied back)
        h.update(numpy.ascontiguousarray(to_host(backend.asarray(batch)), dtype=numpy.int64).tobytes())
    return h.hexdigest()


@dataclass
class TrainState:
    """Where a run stands: enough, with the model, optimizer, loader and RNG
    states, to continue it exactly."""
    epoch: int = 0                       # the epoch in progress (0-based)
    global_step: int = -1                # the last optimizer step taken (-1: none)
    tokens_seen: int = 0
    train_losses: list = field(default_factory=list)
    val_losses: list = field(default_factory=list)
    track_tokens_seen: list = field(default_factory=list)
    loader_state: dict = None            # the training epoch's position (DataLoader iterator state)
    batches_digest: str = ""             # sha256 chained over every batch's token ids, in order
    skipped_steps: int = 0               # consecutive steps whose loss or gradient was not finite
    epoch_steps: int = 0                 # optimizer steps taken in the epoch in progress
    elapsed_s: float = 0.0               # seconds of training so far, over every session of the run
    dropout_seed: int = None             # keys each micro-batch's random stream (drawn when the run starts)

    # fields a checkpoint written before they existed may lack
    OPTIONAL = ("epoch_steps", "elapsed_s", "dropout_seed")

    def to_dict(self):
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data, where="training state"):
        """The state ``to_dict`` wrote, read back from ``where`` (a checkpoint.json): every field
        checked for its type and range (a UsageError names the field, the value and what was expected)."""
        if not isinstance(data, dict):
            schema.fail(where, "train_state", data, "a JSON object", UsageError)
        missing = [name for name in cls.__dataclass_fields__ if name not in data and name not in cls.OPTIONAL]
        if missing:
            raise UsageError(f"training state lacks {', '.join(missing)}: cannot resume exactly")
        _check_train_state(data, f"{where}: train_state")
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


def _check_train_state(data, where):
    for name, low in (("epoch", 0), ("global_step", -1), ("tokens_seen", 0), ("skipped_steps", 0),
                      ("epoch_steps", 0)):
        schema.integer(data, name, where, low=low, error=UsageError, required=False)
    schema.number(data, "elapsed_s", where, low=0, error=UsageError, required=False)
    schema.string(data, "batches_digest", where, error=UsageError)
    if data.get("dropout_seed") is not None:
        schema.integer(data, "dropout_seed", where, low=0, error=UsageError)
    for name in ("train_losses", "val_losses", "track_tokens_seen"):      # NaN and Inf losses round-trip
        values = data[name]
        if not (isinstance(values, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 for v in values)):
            schema.fail(where, name, values, "a list of numbers", UsageError)
    loader = data["loader_state"]
    if loader is not None:
        loader = schema.mapping(data, "loader_state", where, error=UsageError)
        order = loader.get("epoch_order")
        if order is not None and not (isinstance(order, list) and all(schema.is_int(i) for i in order)):
            schema.fail(where, "loader_state epoch_order", order, "null or a list of item indices", UsageError)
        schema.integer(loader, "batches_yielded", f"{where}: loader_state", low=0, error=UsageError)


@dataclass(frozen=True)
class LRSchedule:
    """The learning rate of each optimizer step, as the reference book's training
    appendix schedules it: a linear warmup from ``initial_lr`` to ``peak_lr``
    over ``warmup_steps`` steps, then ``peak_lr`` ("constant") or a half cosine
    from ``peak_lr`` down to ``min_lr`` at step ``total_steps`` ("cosine").

    ``schedule(step)`` is the rate for 0-based optimizer step ``step``::

        step < W:   initial + step * (peak - initial) / W
        cosine:     min + (peak - min) * (1 + cos(pi * p)) / 2,   p = (step - W) / (total - W), at most 1

    A cosine re-anchored at step A with rate R (``anchor_step``, ``anchor_lr``:
    a resumed run whose ``total_steps`` changed, see ``reanchored``) is, from A
    on, a half cosine from R down to ``min_lr`` at step ``total_steps``:
    p = (step - A) / (total - A), at most 1. (The steps before A were taken
    under the schedule as it was then.)
    """
    peak_lr: float
    total_steps: int
    warmup_steps: int = 0
    kind: str = "constant"
    min_lr: float = 0.0
    initial_lr: float = 0.0
    anchor_step: int = None
    anchor_lr: float = None

    KINDS = ("constant", "cosine")

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise UsageError(f"learning-rate schedule {self.kind!r}: expected one of {', '.join(self.KINDS)}")
        if self.warmup_steps < 0 or self.total_steps < 0:
            raise UsageError(f"warmup_steps ({self.warmup_steps}) and total_steps ({self.total_steps}) must be >= 0")
        if not 0 <= self.min_lr <= self.peak_lr:
            raise UsageError(f"min_lr {self.min_lr} must be between 0 and the peak learning rate {self.peak_lr}")

    def __call__(self, step):
        if step < self.warmup_steps:
            return self.initial_lr + step * (self.peak_lr - self.initial_lr) / self.warmup_steps
        if self.kind == "constant":
            return self.peak_lr
        start, rate = self.warmup_steps, self.peak_lr
        if self.anchor_step is not None and step >= self.anchor_step:
            start, rate = self.anchor_step, self.anchor_lr
        progress = min(1.0, (step - start) / max(1, self.total_steps - start))
        return self.min_lr + (rate - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def decays_after(self, step):
        """True when the rate of steps from ``step`` on depends on ``total_steps``."""
        return self.kind == "cosine" and step > self.warmup_steps

    def reanchored(self, next_step, total_steps):
        """This schedule for a run resumed at ``next_step`` that now ends at ``total_steps``:
        unchanged where the steps from ``next_step`` on do not depend on the end; else the
        remaining steps stretched (or squeezed) from the rate of the last step taken,
        ``self(next_step - 1)``, down to ``min_lr`` at ``total_steps``, so the rate goes on
        without a jump."""
        if total_steps == self.total_steps:
            return self
        if not self.decays_after(next_step):
            return dataclasses.replace(self, total_steps=total_steps)
        return dataclasses.replace(self, total_steps=total_steps, anchor_step=next_step,
                                   anchor_lr=self(next_step - 1))


def train_model_simple(model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq, eval_iter,
                       start_context, tokenizer, *, max_steps=None, grad_clip=None, grad_accum=1, lr_schedule=None,
                       progress=None, on_step=None, on_evaluate=None, on_epoch_end=None, state=None,
                       max_skipped_steps=5, file=None, world=None):
    """The seed's loop: per batch zero_grad, loss, backward, step; evaluate every
    ``eval_freq`` steps; a greedy sample after each epoch.

    Returns (train_losses, val_losses, track_tokens_seen). Extra options:

    - max_steps stops after that many optimizer steps in all;
    - grad_clip clips the global gradient norm (the log line shows the norm before clipping);
      0 (or None) clips nothing, as nanoGPT's ``grad_clip = 0.0`` and the Hugging Face
      Trainer's ``max_grad_norm = 0`` (``clip_grad_norm_(params, 0)`` zeroes the gradients);
    - grad_accum=K sums the gradients of K consecutive batches, each loss
      divided by K, into one AdamW step: the step of one batch K times larger
      (a last group of fewer than K batches in an epoch is left out, as
      ``drop_last`` would leave out a short large batch); steps, ``eval_freq``
      and ``max_steps`` count optimizer steps;
    - lr_schedule(step) -> learning rate, set on every parameter group before each step;
    - a step whose loss or gradient is not finite updates nothing (weights and
      AdamW moments stay) and is logged; after ``max_skipped_steps`` such steps
      in a row NonFiniteTraining is raised;
    - progress shows a tqdm bar (default: when stdout is a terminal);
    - on_step(state) runs after every step (state.loader_state holds the
      epoch's position), on_evaluate(state, record) after every evaluation
      (``record``: step, epoch, tokens, losses, perplexities, learning rate,
      gradient norm, tokens/s, elapsed seconds), on_epoch_end(state) after each
      epoch's sample;
    - state resumes a run;
    - world (numgpt.training.distributed.world()) trains data-parallel over its N
      processes: a step takes K x N consecutive batches, process r the K
      batches from r*K, and the gradients are averaged over the processes
      (overlapping the backward pass); losses and evaluations are reduced,
      and only process 0 prints. The result equals one process with
      grad_accum K x N over the same batches.

    When a step has several micro-batches (K x N > 1), dropout (and anything
    else a forward pass draws) takes its random numbers from a stream keyed
    by (state.dropout_seed, step, place of the micro-batch in the step), so
    the draws do not depend on how the micro-batches are spread over
    processes; state.dropout_seed is read off numgpt's generator (without a
    draw) when such a run starts. With one batch per step (the seed's loop) dropout draws
    from numgpt's generator in order, as it always did.
    """
    if not isinstance(grad_accum, int) or grad_accum < 1:
        raise UsageError(f"grad_accum must be a positive integer, got {grad_accum!r}")
    if grad_clip is not None and not grad_clip >= 0:
        raise UsageError(f"grad_clip must be >= 0 (0: no clipping), got {grad_clip!r}")
    grad_clip = grad_clip or None                       # 0: no clipping
    world = world or World()
    group_size = grad_accum * world.size                # loader batches per optimizer step, all processes
    averager = world.gradient_averager(model.parameters())
    say = _write if world.is_main else (lambda line, file=None: None)
    state = state or TrainState()
    keyed = group_size > 1                               # a step of several micro-batches: keyed random streams
    if keyed and state.dropout_seed is None:             # read off the generator's state, not drawn: the
        state.dropout_seed = backend.get_rng_state()["state"]["state"] % 2 ** 63   # shuffles stay the same
    if state.loader_state is not None:
        if not hasattr(train_loader, "load_state_dict"):
            raise UsageError("the training state holds a loader position but train_loader has no load_state_dict()")
        train_loader.load_state_dict(state.loader_state)
    # mpiexec hands its ranks a terminal of their own: several processes show no bar unless asked
    show = (sys.stdout.isatty() and world.size == 1 if progress is None else progress) and world.is_main
    steps_per_epoch = len(train_loader) // group_size if hasattr(train_loader, "__len__") else None
    total = None if steps_per_epoch is None else num_epochs * steps_per_epoch
    if max_steps is not None:
        total = max_steps if total is None else min(total, max_steps)
    initial = state.global_step + 1 if total is None else min(state.global_step + 1, total)
    bar = tqdm(total=total, initial=initial, disable=not show, unit="step", dynamic_ncols=True)
    started, tokens_at_start, elapsed_at_start = time.perf_counter(), state.tokens_seen, state.elapsed_s
    try:
        while state.epoch < num_epochs:
            model.train()
            batches = iter(train_loader)
            if not hasattr(batches, "state_dict"):
                warnings.warn("train_loader's batches offer no state_dict(): a run resumed from a checkpoint "
                              "taken mid-epoch starts that epoch over", stacklevel=2)
            while len(group := list(itertools.islice(batches, group_size))) == group_size:   # K x N batches, one step
                if max_steps is not None and state.global_step + 1 >= max_steps:
                    return state.train_losses, state.val_losses, state.track_tokens_seen
                step = state.global_step + 1
                if lr_schedule is not None:
                    for param_group in optimizer.param_groups:
                        param_group["lr"] = lr_schedule(step)
                optimizer.zero_grad()
                loss_sum = 0.0
                for j in range(world.rank * grad_accum, (world.rank + 1) * grad_accum):   # this process's K batches
                    input_batch, target_batch = group[j]
                    with backend.random_stream(state.dropout_seed, step, j) if keyed else contextlib.nullcontext():
                        loss = calc_loss_batch(input_batch, target_batch, model, device)
                    if averager is not None and j == (world.rank + 1) * grad_accum - 1:
                        averager.arm()                  # this backward completes the step's gradients
                    (loss / grad_accum if grad_accum > 1 else loss).backward()   # gradients add up over the group
                    loss_sum += loss.item()
                if averager is not None:
                    averager.finish()                   # the mean over the processes, in every .grad
                for input_batch, target_batch in group:
                    state.tokens_seen += backend.asarray(input_batch).size
                    state.batches_digest = chain_digest(state.batches_digest, input_batch, target_batch)
                loss_value = world.sum(loss_sum) / group_size
                norm = grad_norm(model.parameters())
                state.global_step += 1
                state.epoch_steps += 1
                state.loader_state = batches.state_dict() if hasattr(batches, "state_dict") else None
                if math.isfinite(loss_value) and math.isfinite(norm):
                    state.skipped_steps = 0
                    if grad_clip is not None:
                        clip_grad_norm_(model.parameters(), grad_clip, total_norm=norm)
                    optimizer.step()
                else:
                    state.skipped_steps += 1
                    say(f"Ep {state.epoch + 1} (Step {state.global_step:06d}): loss {loss_value:.3f}, "
                           f"gradient norm {norm:.3f}: not finite, update skipped "
                           f"({state.skipped_steps} in a row)", file)
                    if state.skipped_steps >= max_skipped_steps:
                        raise NonFiniteTraining(f"{state.skipped_steps} consecutive steps had a non-finite loss "
                                                f"or gradient (last: step {state.global_step}); stopping")
                seconds = time.perf_counter() - started
                state.elapsed_s = elapsed_at_start + seconds
                rate = (state.tokens_seen - tokens_at_start) / max(seconds, 1e-9)
                bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{rate:.0f}")
                bar.update(1)

                if state.global_step % eval_freq == 0:
                    train_loss, val_loss = evaluate_model(model, train_loader, val_loader, device, eval_iter, world)
                    state.train_losses.append(train_loss)
                    state.val_losses.append(val_loss)
                    state.track_tokens_seen.append(state.tokens_seen)
                    clipped = f" (grad norm {norm:.3f} before clipping)" if grad_clip is not None else ""
                    say(f"Ep {state.epoch + 1} (Step {state.global_step:06d}): "
                        f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}{clipped}", file)
                    if on_evaluate is not None:
                        epoch = state.epoch + (state.epoch_steps / steps_per_epoch if steps_per_epoch else 0.0)
                        on_evaluate(state, {
                            "step": state.global_step, "epoch": epoch, "tokens_seen": state.tokens_seen,
                            "train_loss": train_loss, "val_loss": val_loss,
                            "train_perplexity": perplexity(train_loss), "val_perplexity": perplexity(val_loss),
                            "lr": optimizer.param_groups[0]["lr"], "grad_norm": norm, "tokens_per_s": rate,
                            "elapsed_s": time.perf_counter() - started + elapsed_at_start})
                if on_step is not None:
                    on_step(state)
            if world.is_main:
                generate_and_print_sample(model, tokenizer, device, start_context, file=file)
            state.epoch += 1
            state.epoch_steps = 0
            state.loader_state = None
            if on_epoch_end is not None:
                on_epoch_end(state)
    finally:
        bar.close()
        if averager is not None:
            averager.remove()
    return state.train_losses, state.val_losses, state.track_tokens_seen
