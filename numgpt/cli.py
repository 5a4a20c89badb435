"""The ``numgpt`` command: train, generate, eval, gradcheck, download, export.

Bad input ends with exit status 2 and one line on stderr; an interrupted
training run (SIGINT, SIGTERM) finishes its step, saves a committed
checkpoint and exits 130 or 143.
"""
import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy

from numgpt import backend

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}
SEED_START_CONTEXT = "Every effort moves you"


class UsageError(Exception):
    """Bad input found by the command itself."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _non_negative_float(text):
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


# ---------------------------------------------------------------- train
def _model_config(args):
    from numgpt.model import PRESETS
    cfg = dict(PRESETS[args.preset])
    if args.context_length is not None:
        cfg["context_length"] = args.context_length
    if args.drop_rate is not None:
        cfg["drop_rate"] = args.drop_rate
    return cfg


def _memory_available():
    """Bytes the kernel says are available (MemAvailable), or None when unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _check_memory(cfg, batch_size, context):
    from numgpt.train import estimate_training_bytes
    needed, available = estimate_training_bytes(cfg, batch_size, context), _memory_available()
    if available is not None and needed > available:
        raise UsageError(f"this run needs about {needed / 2**30:.1f} GiB but {available / 2**30:.1f} GiB are "
                         f"available: try a smaller --batch-size or --context-length")


class StopRequest:
    """SIGINT/SIGTERM handling: the first signal asks the loop to stop after the
    current step; a second one exits at once."""

    def __init__(self):
        self.signum = None

    def __enter__(self):
        self.previous = {s: signal.signal(s, self._handle) for s in EXIT_SIGNAL}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        if self.signum is not None:
            os._exit(EXIT_SIGNAL[signum])  # second signal: now, the last committed checkpoint stays
        self.signum = signum
        print(f"numgpt: {signal.Signals(signum).name} received: finishing the step and saving a checkpoint "
              f"(again to quit at once)", file=sys.stderr, flush=True)


class Stopped(Exception):
    def __init__(self, signum):
        self.signum = signum


def cmd_train(args):
    from numgpt.checkpoint import CheckpointManager, restore
    from numgpt.data import create_dataloader_v1, load_the_verdict, read_text, split_text
    from numgpt.model import GPTModel
    from numgpt.optim import AdamW
    from numgpt.plot import plot_losses
    from numgpt.tokenizer import get_tokenizer
    from numgpt.train import NonFiniteTraining, TrainState, train_model_simple

    out = Path(args.out)
    text = read_text(args.data) if args.data else load_the_verdict()
    train_text, val_text = split_text(text, args.train_ratio)
    tokenizer = get_tokenizer()

    if args.init:
        from numgpt.pretrained import load_gpt2
        model = load_gpt2(args.init)
        cfg = model.cfg
        if args.drop_rate is not None:  # the weights, in a model built with this dropout
            weights, cfg = model.state_dict(), dict(cfg, drop_rate=args.drop_rate)
            model = GPTModel(cfg)
            model.load_state_dict(weights)
    else:
        cfg = _model_config(args)
    context = min(args.context_length or cfg["context_length"], cfg["context_length"])
    _check_memory(cfg, args.batch_size, context)
    special = {"<|endoftext|>"} if args.allow_special else ()
    train_loader = create_dataloader_v1(train_text, batch_size=args.batch_size, max_length=context, stride=context,
                                        drop_last=True, shuffle=True, tokenizer=tokenizer, allowed_special=special)
    val_loader = create_dataloader_v1(val_text, batch_size=args.batch_size, max_length=context, stride=context,
                                      drop_last=False, shuffle=False, tokenizer=tokenizer, allowed_special=special)
    if len(train_loader) == 0:
        raise UsageError(f"the training text gives no full batch of {args.batch_size} x {context} tokens: "
                         f"lower --batch-size or --context-length")
    backend.manual_seed(args.seed)
    if not args.init:
        model = GPTModel(cfg)
    optimizer = AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    manager = CheckpointManager(out / "checkpoints", keep_last=args.keep_last)
    state = TrainState()
    if args.resume:
        manager.clean_stale()
        checkpoint = manager.load_latest()
        if checkpoint is None:
            raise UsageError(f"--resume: no committed checkpoint in {manager.directory}")
        restore(checkpoint, model, optimizer, require=("rng_state", "train_state"))
        state = TrainState.from_dict(checkpoint.state["train_state"])
        print(f"Resuming from {checkpoint.path} (step {state.global_step})")

    def save():
        path = manager.save(state.global_step + 1, model, optimizer, rng_state=backend.get_rng_state(),
                            train_state=state.to_dict())
        print(f"Saved checkpoint {path}", flush=True)

    out.mkdir(parents=True, exist_ok=True)
    start_time = time.time()
    with StopRequest() as stop:
        def after_step(current):
            if stop.signum is not None:
                save()
                raise Stopped(stop.signum)
            if args.checkpoint_every and (current.global_step + 1) % args.checkpoint_every == 0:
                save()

        try:
            train_model_simple(model, train_loader, val_loader, optimizer, "cpu", num_epochs=args.epochs,
                               eval_freq=args.eval_freq, eval_iter=args.eval_iter, start_context=args.start_context,
                               tokenizer=tokenizer, max_steps=args.max_steps, grad_clip=args.grad_clip,
                               on_step=after_step, on_epoch_end=after_step, state=state,
                               max_skipped_steps=args.max_skipped_steps)
        except Stopped as stopped:
            return EXIT_SIGNAL[stopped.signum]
        except NonFiniteTraining as exc:
            latest = manager.latest()
            kept = f"the last good checkpoint is {latest}" if latest else "no checkpoint was saved"
            print(f"numgpt train: error: {exc}; {kept}", file=sys.stderr)
            return EXIT_FAILURE
    minutes = (time.time() - start_time) / 60
    print(f"Training completed in {minutes:.2f} minutes.")
    save()
    _write_run_report(out, state, args.epochs)
    plot = plot_losses(_epochs_axis(state, args.epochs), state.track_tokens_seen, state.train_losses,
                       state.val_losses, out / "loss-plot.pdf")
    print(f"Wrote {plot} and {out / 'losses.json'}")
    return 0


def _epochs_axis(state, num_epochs):
    return numpy.linspace(0, num_epochs, len(state.train_losses))


def _write_run_report(out, state, num_epochs):
    report = {"train_losses": state.train_losses, "val_losses": state.val_losses,
              "tokens_seen": state.track_tokens_seen, "epochs_seen": _epochs_axis(state, num_epochs).tolist(),
              "global_step": state.global_step, "total_tokens": state.tokens_seen}
    from numgpt.safe_io import atomic_write
    atomic_write(out / "losses.json", lambda fh: fh.write(json.dumps(report, indent=1).encode("utf-8")))


# ---------------------------------------------------------------- generate / eval
def _load_model(args):
    """The model a command names: --checkpoint (a run directory or one checkpoint)
    or --gpt2 (a size name, a directory or a .safetensors file)."""
    if getattr(args, "gpt2", None):
        from numgpt.pretrained import load_gpt2
        return load_gpt2(args.gpt2)
    from numgpt.checkpoint import CheckpointManager, build_model, is_committed, load_checkpoint
    from numgpt.safe_io import check_not_pickle
    path = Path(args.checkpoint)
    if not path.exists():
        raise UsageError(f"checkpoint {path} does not exist")
    if path.is_file():
        check_not_pickle(path)
        raise UsageError(f"checkpoint {path} is a file: expected a numgpt checkpoint or run directory "
                         f"(for GPT-2 weights in a .safetensors file, use --gpt2)")
    if not is_committed(path):
        latest = CheckpointManager(path / "checkpoints").latest() or CheckpointManager(path).latest()
        if latest is None:
            raise UsageError(f"{path} holds no committed checkpoint (expected a run directory or a checkpoint)")
        path = latest
    return build_model(load_checkpoint(path))


def cmd_generate(args):
    from numgpt.generate import generate
    from numgpt.tokenizer import get_tokenizer, text_to_token_ids, token_ids_to_text
    model = _load_model(args).eval()
    tokenizer = get_tokenizer()
    backend.manual_seed(args.seed)
    idx = text_to_token_ids(args.prompt, tokenizer)
    if idx.shape[1] == 0:
        raise UsageError("--prompt is empty: give at least one token of text")
    out = generate(model, idx, args.max_new_tokens, model.cfg["context_length"], temperature=args.temperature,
                   top_k=args.top_k, eos_id=None if args.no_eos else tokenizer.eot_token)
    print(token_ids_to_text(out, tokenizer))
    return 0


def cmd_eval(args):
    from numgpt.data import create_dataloader_v1, read_text
    from numgpt.tokenizer import get_tokenizer
    from numgpt.train import calc_loss_loader, perplexity
    model = _load_model(args).eval()
    context = min(args.context_length or model.cfg["context_length"], model.cfg["context_length"])
    loader = create_dataloader_v1(read_text(args.data), batch_size=args.batch_size, max_length=context,
                                  stride=context, shuffle=False, drop_last=False, tokenizer=get_tokenizer())
    from numgpt.autograd import no_grad
    with no_grad():
        loss = calc_loss_loader(loader, model)
    print(f"loss {loss:.4f}, perplexity {perplexity(loss):.2f} ({len(loader)} batches of {context} tokens)")
    return 0


# ---------------------------------------------------------------- gradcheck
def cmd_gradcheck(args):
    from numgpt.gradcheck import check_model, check_op, op_cases
    names = sorted(op_cases()) + ["model"]
    if args.op and args.op not in names:
        raise UsageError(f"unknown op {args.op!r}: expected one of {', '.join(names)}")
    failed = 0
    for name in [args.op] if args.op else names:
        result = check_model() if name == "model" else check_op(name)
        failed += not result.ok
        print(f"{name:<20} {'ok    ' if result.ok else 'FAILED'} worst rel error {result.worst_rel_error:.2e} "
              f"(abs {result.worst_abs_error:.2e}, {result.checked} elements)")
    return 1 if failed else 0


# ---------------------------------------------------------------- GPT-2 weights
def cmd_download(args):
    from numgpt.download import download_gpt2
    directory = download_gpt2(args.size)
    print(f"GPT-2 weights in {directory}")
    return 0


def cmd_export(args):
    from numgpt.pretrained import export_hf
    model = _load_model(args)
    directory = export_hf(model, args.out)
    print(f"Wrote the Hugging Face GPT-2 layout to {directory}")
    return 0


# ---------------------------------------------------------------- the parser
def build_parser():
    from numgpt.model import PRESETS
    parser = OneLineParser(prog="numgpt", description="GPT pretraining in pure NumPy.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    train = sub.add_parser("train", help="pretrain (or continue pretraining) a GPT on a text file")
    train.add_argument("--data", help="UTF-8 text file (default: the seed's the-verdict.txt, downloaded once)")
    train.add_argument("--out", required=True, help="run directory: checkpoints, loss plot, losses.json")
    train.add_argument("--preset", choices=sorted(PRESETS), default="gpt2-124m")
    train.add_argument("--init", help="start from pretrained weights: gpt2-124m, a directory or a .safetensors file")
    train.add_argument("--epochs", type=_positive_int, default=10)
    train.add_argument("--max-steps", type=_positive_int)
    train.add_argument("--batch-size", type=_positive_int, default=2)
    train.add_argument("--context-length", type=_positive_int,
                       help="window length (max_length = stride); default the preset's context")
    train.add_argument("--lr", type=_non_negative_float, default=4e-4)
    train.add_argument("--weight-decay", type=_non_negative_float, default=0.1)
    train.add_argument("--drop-rate", type=_non_negative_float)
    train.add_argument("--grad-clip", type=_non_negative_float, help="clip the global gradient norm to this")
    train.add_argument("--max-skipped-steps", type=_positive_int, default=5,
                       help="stop after this many consecutive steps with a non-finite loss or gradient")
    train.add_argument("--eval-freq", type=_positive_int, default=5)
    train.add_argument("--eval-iter", type=_positive_int, default=5)
    train.add_argument("--train-ratio", type=float, default=0.9)
    train.add_argument("--start-context", default=SEED_START_CONTEXT)
    train.add_argument("--seed", type=int, default=123)
    train.add_argument("--checkpoint-every", type=_positive_int, help="save every N steps (and always at the end)")
    train.add_argument("--keep-last", type=_positive_int, help="keep only the newest K checkpoints")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    train.add_argument("--allow-special", action="store_true",
                       help="encode a literal <|endoftext|> in the text as the special token (default: as text)")
    train.set_defaults(run=cmd_train)

    def add_model_source(p):
        source = p.add_mutually_exclusive_group(required=True)
        source.add_argument("--checkpoint", help="a run directory (its newest checkpoint) or one checkpoint")
        source.add_argument("--gpt2", help="OpenAI's GPT-2 weights: 124m, 355m, 774m, 1558m (downloaded once), "
                                           "or a directory / .safetensors file in the Hugging Face layout")

    gen = sub.add_parser("generate", help="continue a prompt")
    add_model_source(gen)
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-new-tokens", type=int, default=50)
    gen.add_argument("--temperature", type=_non_negative_float, default=0.0, help="0 is greedy")
    gen.add_argument("--top-k", type=_positive_int)
    gen.add_argument("--seed", type=int, default=123)
    gen.add_argument("--no-eos", action="store_true", help="do not stop at <|endoftext|>")
    gen.set_defaults(run=cmd_generate)

    ev = sub.add_parser("eval", help="loss and perplexity of a model on a text file")
    add_model_source(ev)
    ev.add_argument("--data", required=True)
    ev.add_argument("--batch-size", type=_positive_int, default=2)
    ev.add_argument("--context-length", type=_positive_int)
    ev.set_defaults(run=cmd_eval)

    gc = sub.add_parser("gradcheck", help="float64 gradient check of each op and a tiny model")
    gc.add_argument("op", nargs="?", help="one op (default: all, then the model)")
    gc.set_defaults(run=cmd_gradcheck)

    dl = sub.add_parser("download", help="fetch OpenAI's GPT-2 weights into the cache")
    dl.add_argument("size", help="gpt2-124m, gpt2-355m, gpt2-774m or gpt2-1558m")
    dl.set_defaults(run=cmd_download)

    ex = sub.add_parser("export", help="write a model in the Hugging Face GPT-2 layout")
    add_model_source(ex)
    ex.add_argument("--out", required=True)
    ex.set_defaults(run=cmd_export)
    return parser


def _user_errors():
    """The exception types that mean bad input (one line, exit 2), not a bug."""
    from numgpt.checkpoint import CheckpointError
    from numgpt.download import DownloadError
    return (UsageError, ValueError, IndexError, OSError, CheckpointError, DownloadError)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except _user_errors() as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"numgpt {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_SIGNAL[signal.SIGINT]


if __name__ == "__main__":
    sys.exit(main())
