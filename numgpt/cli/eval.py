"""numgpt eval: a model's loss and perplexity on a text file."""
from numgpt.autograd import no_grad
from numgpt.cli import arguments
from numgpt.cli.arguments import integer
from numgpt.cli.common import (DEFAULT_MAX_WINDOW, add_model_source, add_precision, add_threads, check_token_ids,
                               inference_model, source_flag, tokenizer_of, use_threads, window)
from numgpt.data.datasets import TooFewTokens, create_dataloader_v1, read_text
from numgpt.errors import UsageError
from numgpt.precision import precision_context
from numgpt.training.train import calc_loss_loader, perplexity


def cmd_eval(args):
    use_threads(args)
    model = inference_model(args)
    context = window(args.context_length, model.cfg, source_flag(args))
    tokenizer = tokenizer_of(args)
    try:
        loader = create_dataloader_v1(read_text(args.data), batch_size=args.batch_size, max_length=context,
                                      stride=context, shuffle=False, drop_last=False, tokenizer=tokenizer)
    except TooFewTokens as short:
        raise UsageError(f"--data {args.data} has {short.n_tokens} tokens; one window of --context-length {context} "
                         f"needs {context + 1}: give a longer text or a smaller --context-length") from None
    for ids in (loader.dataset.input_ids, loader.dataset.target_ids):
        check_token_ids(model, ids, f"--data {args.data}", tokenizer)
    with no_grad(), precision_context(args.precision):
        loss = calc_loss_loader(loader, model)
    print(f"loss {loss:.4f}, perplexity {perplexity(loss):.2f} ({len(loader)} batches of {context} tokens)")
    return 0


def add_parser(sub):
    """The eval subcommand's flags."""
    ev = sub.add_parser("eval", help="loss and perplexity of a model on a text file")
    add_model_source(ev)
    ev.add_argument("--data", required=True, help="a UTF-8 text file")
    ev.add_argument("--batch-size", type=integer(1), default=2, help="windows per batch")
    ev.add_argument("--context-length", type=integer(1),
                    help=f"window length (default: the model's context, at most {DEFAULT_MAX_WINDOW})")
    add_precision(ev)
    add_threads(ev)
    ev.set_defaults(run=cmd_eval, check=arguments.check_eval)
