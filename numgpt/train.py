"""The seed's training utilities: losses over batches and loaders, evaluation,
samples, and ``train_model_simple`` with the seed's log lines.

``train_model_simple`` keeps the seed's signature and return value; its extra
keyword arguments (all optional) serve long runs: a step limit, gradient
clipping, a progress bar, a callback after every step (checkpoints), and a
``TrainState`` to resume from.
"""
import hashlib
import math
import sys
import time
from dataclasses import dataclass, field

import numpy
from tqdm.auto import tqdm

from numgpt.autograd import no_grad
from numgpt.generate import generate_text_simple
from numgpt.ops import cross_entropy
from numgpt.optim import clip_grad_norm_, grad_norm
from numgpt.tokenizer import text_to_token_ids, token_ids_to_text


def calc_loss_batch(input_batch, target_batch, model, device=None):
    """Mean cross-entropy of the model's logits (B, T, V) against targets (B, T)."""
    logits = model(input_batch)
    return cross_entropy(logits.flatten(0, 1), numpy.asarray(target_batch).reshape(-1))


def calc_loss_loader(data_loader, model, device=None, num_batches=None):
    """Average batch loss over the first ``num_batches`` batches (all by default; nan when empty)."""
    if len(data_loader) == 0:
        return float("nan")
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    total_loss = 0.0
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i >= num_batches:
            break
        total_loss += calc_loss_batch(input_batch, target_batch, model, device).item()
    return total_loss / num_batches


def perplexity(loss):
    """exp(loss): the effective number of tokens the model hesitates between."""
    return math.exp(loss) if loss < 700 else float("inf")


def evaluate_model(model, train_loader, val_loader, device, eval_iter):
    """Train and validation loss over ``eval_iter`` batches each, in eval mode, without a graph."""
    model.eval()
    with no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=eval_iter)
    model.train()
    return train_loss, val_loss


def generate_and_print_sample(model, tokenizer, device, start_context, max_new_tokens=50, file=None):
    """Print 50 greedy tokens after ``start_context``, on one line."""
    model.eval()
    context_size = model.pos_emb.weight.shape[0]
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
    h.update(numpy.ascontiguousarray(input_batch, dtype=numpy.int64).tobytes())
    h.update(numpy.ascontiguousarray(target_batch, dtype=numpy.int64).tobytes())
    return h.hexdigest()


@dataclass
class TrainState:
    """Where a run stands: enough, with the model, optimizer, loader and RNG
    states, to continue it exactly."""
    epoch: int = 0                       # the epoch in progress (0-based)
    global_step: int = -1                # the last step taken (-1: none)
    tokens_seen: int = 0
    train_losses: list = field(default_factory=list)
    val_losses: list = field(default_factory=list)
    track_tokens_seen: list = field(default_factory=list)
    loader_state: dict = None            # the training epoch's position (DataLoader iterator state)
    batches_digest: str = ""             # sha256 chained over every batch's token ids, in order
    skipped_steps: int = 0               # consecutive steps whose loss or gradient was not finite

    def to_dict(self):
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data):
        missing = [name for name in cls.__dataclass_fields__ if name not in data]
        if missing:
            raise ValueError(f"training state lacks {', '.join(missing)}: cannot resume exactly")
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


def estimate_training_bytes(cfg, batch_size, context_length, dtype_bytes=4):
    """A rough upper estimate of a training step's memory: weights, gradients
    and two AdamW moments, plus the activations the backward pass keeps
    (measured peaks: 3.07 GB estimated 3.4 GB at 124M, 2 x 256; 6.4 GB
    estimated 7.1 GB at 2 x 1024)."""
    B, T, C = batch_size, context_length, cfg["emb_dim"]
    V, L, NH = cfg["vocab_size"], cfg["n_layers"], cfg["n_heads"]
    params = V * C * 2 + cfg["context_length"] * C + L * 12 * C * C
    per_layer = B * T * C * 24 + B * NH * T * T * 5 // 4     # saved inputs, qkv, mlp; attention weights + byte mask
    attention_scratch = B * NH * T * T * 3                    # scores and their gradients, one layer at a time
    logits = B * T * V * 2                                    # logits, probabilities (turned into their gradient)
    return dtype_bytes * (4 * params + L * per_layer + attention_scratch + logits)


def train_model_simple(model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq, eval_iter,
                       start_context, tokenizer, *, max_steps=None, grad_clip=None, progress=None,
                       on_step=None, on_epoch_end=None, state=None, max_skipped_steps=5, file=None):
    """The seed's loop: per batch zero_grad, loss, backward, step; evaluate every
    ``eval_freq`` steps; a greedy sample after each epoch.

    Returns (train_losses, val_losses, track_tokens_seen). Extra options:
    max_steps stops after that many steps in all; grad_clip clips the global
    gradient norm (and the log line shows the norm before clipping); a step
    whose loss or gradient is not finite updates nothing (weights and AdamW
    moments stay) and is logged, and after ``max_skipped_steps`` such steps in
    a row NonFiniteTraining is raised; progress shows a tqdm bar (default: when stdout is a
    terminal); on_step(state) runs after every step (state.loader_state holds
    the epoch's position) and on_epoch_end(state) after each epoch's sample;
    state resumes a run.
    """
    state = state or TrainState()
    if state.loader_state is not None:
        train_loader.load_state_dict(state.loader_state)
    show = sys.stdout.isatty() if progress is None else progress
    total = num_epochs * len(train_loader)
    bar = tqdm(total=total, initial=min(state.global_step + 1, total), disable=not show, unit="step",
               dynamic_ncols=True)
    started, tokens_at_start = time.perf_counter(), state.tokens_seen
    try:
        while state.epoch < num_epochs:
            model.train()
            batches = iter(train_loader)
            for input_batch, target_batch in batches:
                if max_steps is not None and state.global_step + 1 >= max_steps:
                    return state.train_losses, state.val_losses, state.track_tokens_seen
                optimizer.zero_grad()
                loss = calc_loss_batch(input_batch, target_batch, model, device)
                loss.backward()
                norm = grad_norm(model.parameters())
                state.tokens_seen += input_batch.size
                state.global_step += 1
                state.loader_state = batches.state_dict()
                state.batches_digest = chain_digest(state.batches_digest, input_batch, target_batch)
                if math.isfinite(loss.item()) and math.isfinite(norm):
                    state.skipped_steps = 0
                    if grad_clip is not None:
                        clip_grad_norm_(model.parameters(), grad_clip, total_norm=norm)
                    optimizer.step()
                else:
                    state.skipped_steps += 1
                    _write(f"Ep {state.epoch + 1} (Step {state.global_step:06d}): loss {loss.item():.3f}, "
                           f"gradient norm {norm:.3f}: not finite, update skipped "
                           f"({state.skipped_steps} in a row)", file)
                    if state.skipped_steps >= max_skipped_steps:
                        raise NonFiniteTraining(f"{state.skipped_steps} consecutive steps had a non-finite loss "
                                                f"or gradient (last: step {state.global_step}); stopping")
                rate = (state.tokens_seen - tokens_at_start) / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{rate:.0f}")
                bar.update(1)

                if state.global_step % eval_freq == 0:
                    train_loss, val_loss = evaluate_model(model, train_loader, val_loader, device, eval_iter)
                    state.train_losses.append(train_loss)
                    state.val_losses.append(val_loss)
                    state.track_tokens_seen.append(state.tokens_seen)
                    clipped = f" (grad norm {norm:.3f} before clipping)" if grad_clip is not None else ""
                    _write(f"Ep {state.epoch + 1} (Step {state.global_step:06d}): "
                           f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}{clipped}", file)
                if on_step is not None:
                    on_step(state)
            generate_and_print_sample(model, tokenizer, device, start_context, file=file)
            state.epoch += 1
            state.loader_state = None
            if on_epoch_end is not None:
                on_epoch_end(state)
    finally:
        bar.close()
    return state.train_losses, state.val_losses, state.track_tokens_seen
