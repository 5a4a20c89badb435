"""numgpt generate: continue a prompt with a model."""
from numgpt import backend
from numgpt.cli import arguments
from numgpt.cli.arguments import integer, non_empty, real
from numgpt.cli.common import (add_model_source, add_precision, add_threads, check_token_ids, inference_model,
                               tokenizer_of, use_threads)
from numgpt.errors import UsageError
from numgpt.io.tokenizer import text_to_token_ids, token_ids_to_text
from numgpt.models.generate import generate
from numgpt.precision import precision_context


def cmd_generate(args):
    use_threads(args)
    model = inference_model(args)
    tokenizer = tokenizer_of(args)
    backend.manual_seed(args.seed)
    idx = text_to_token_ids(args.prompt, tokenizer)
    if idx.shape[1] == 0:
        raise UsageError(f"--prompt {args.prompt!r} encodes to no token: give some text the tokenizer keeps")
    check_token_ids(model, idx, "--prompt", tokenizer)
    with precision_context(args.precision):
        out = generate(model, idx, args.max_new_tokens, model.cfg["context_length"], temperature=args.temperature,
                       top_k=args.top_k, eos_id=None if args.no_eos else tokenizer.eot_token)
    print(token_ids_to_text(out, tokenizer))
    return 0


def add_parser(sub):
    """The generate subcommand's flags."""
    gen = sub.add_parser("generate", help="continue a prompt")
    add_model_source(gen)
    gen.add_argument("--prompt", required=True, type=non_empty, help="the text to continue")
    gen.add_argument("--max-new-tokens", type=integer(1), default=50, help="at most this many tokens")
    gen.add_argument("--temperature", type=real(0), default=0.0,
                     help="sample with this temperature; 0 is greedy")
    gen.add_argument("--top-k", type=integer(1), help="sample among the k likeliest tokens (default: all)")
    gen.add_argument("--seed", type=integer(0), default=123, help="the sampling's seed")
    gen.add_argument("--no-eos", action="store_true", help="do not stop at <|endoftext|>")
    add_precision(gen)
    add_threads(gen)
    gen.set_defaults(run=cmd_generate, check=arguments.check_generate)
