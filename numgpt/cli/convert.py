"""numgpt convert: a PyTorch .pth/.bin written as safetensors, read without running it."""
from numgpt.cli import arguments
from numgpt.io.torch_weights import convert


def cmd_convert(args):
    written = convert(args.file, args.out)
    print(f"Wrote {', '.join(str(path) for path in written)}")
    return 0


def add_parser(sub):
    """The convert subcommand's flags."""
    conv = sub.add_parser("convert", help="write a PyTorch .pth/.bin as safetensors, read without running it",
                          description="Read a torch.save file (the seed's model_and_optimizer.pth, the book's "
                                      "model.pth, a pytorch_model.bin) without Python's unpickler and write its "
                                      "weights as safetensors: the seed's GPTModel in the Hugging Face GPT-2 "
                                      "layout (model.safetensors, config.json), any other state dict under its "
                                      "own names.")
    conv.add_argument("file", help="the PyTorch file (.pth, .pt, .bin)")
    conv.add_argument("--out", required=True, help="the directory to write")
    conv.set_defaults(run=cmd_convert, check=arguments.check_convert)
