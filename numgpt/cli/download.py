"""numgpt download: fetch a model into the Hugging Face cache (a hub id or a GPT-2 size)."""
from numgpt.cli import arguments
from numgpt.cli.arguments import non_empty
from numgpt.io.download import canonical_size, download_gpt2
from numgpt.io.hub import download_model


def cmd_download(args):
    if canonical_size(args.model) is not None or "/" not in args.model:     # a GPT-2 size (or a wrong one)
        directory = download_gpt2(args.model)
        print(f"GPT-2 weights in {directory}")
        return 0
    directory = download_model(args.model, revision=args.revision)
    print(f"{args.model} in {directory}")
    return 0


def add_parser(sub):
    """The download subcommand's flags."""
    dl = sub.add_parser("download", help="fetch a model into the Hugging Face cache: a hub id or a GPT-2 size")
    dl.add_argument("model", metavar="HF_ID", help="a hub id (HuggingFaceTB/SmolLM2-135M, Qwen/Qwen3-0.6B, ...) or "
                                                   "gpt2-124m, gpt2-355m, gpt2-774m, gpt2-1558m")
    dl.add_argument("--revision", type=non_empty, help="a branch, tag or commit of the hub repository (default main)")
    dl.set_defaults(run=cmd_download, check=arguments.check_nothing)
