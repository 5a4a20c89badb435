"""numgpt export: write a model in the Hugging Face layout of its family."""
from numgpt.cli import arguments
from numgpt.cli.arguments import byte_size
from numgpt.cli.common import add_model_source, load_model
from numgpt.io.families import export_pretrained, tokenizer_directory
from numgpt.models.llama_config import describe, is_llama_config


def cmd_export(args):
    model = load_model(args)
    tokenizer_dir = None
    if is_llama_config(model.cfg):
        tokenizer_dir = tokenizer_directory(args.model or args.checkpoint)
    directory = export_pretrained(model, args.out, tokenizer_dir=tokenizer_dir, max_shard_bytes=args.max_shard_size)
    family = describe(model.cfg) if is_llama_config(model.cfg) else "GPT-2"
    print(f"Wrote the Hugging Face layout of {family} to {directory}")
    return 0


def add_parser(sub):
    """The export subcommand's flags."""
    ex = sub.add_parser("export", help="write a model in the Hugging Face layout of its family")
    add_model_source(ex)
    ex.add_argument("--out", required=True, help="the directory to write")
    ex.add_argument("--max-shard-size", type=byte_size, metavar="SIZE",
                    help="split the weights into files of at most SIZE: bytes, or with a unit as transformers reads "
                         "it (10KB, 500MB, 5GB in powers of 10; 2GiB in powers of 2) (default 5GiB)")
    ex.set_defaults(run=cmd_export, check=arguments.check_export)
