"""numgpt prepare: tokenize a corpus once into a token store (numgpt.data.prepare)."""
import time

from numgpt.cli import arguments
from numgpt.cli.arguments import integer, real
from numgpt.data.prepare import prepare
from numgpt.errors import UsageError


def cmd_prepare(args):
    if args.tokenizer_train and args.vocab_size is None:
        raise UsageError("--tokenizer-train needs --vocab-size N (the number of ids of the new tokenizer)")
    if args.vocab_size is not None and not args.tokenizer_train:
        raise UsageError("--vocab-size is the size of a tokenizer to train: add --tokenizer-train")
    if args.tokenizer_train and args.tokenizer is not None:
        raise UsageError("--tokenizer-train makes a tokenizer of its own: leave --tokenizer out")
    started = time.time()
    manifest = prepare(args.sources, args.out, tokenizer=args.tokenizer, workers=args.workers,
                       shard_tokens=args.shard_tokens, val_fraction=args.val_fraction, val_docs=args.val_docs,
                       train_ratio=args.train_ratio, text_field=args.text_field, allow_special=args.allow_special,
                       train_vocab_size=args.vocab_size, split=args.split)
    splits = manifest["splits"]
    print(f"Wrote a token store of {splits['train']['n_tokens']:,} training and {splits['val']['n_tokens']:,} "
          f"validation tokens ({manifest['dtype']}, {manifest['documents']:,} documents, tokenizer "
          f"{manifest['tokenizer']['name']}) to {args.out} in {time.time() - started:.1f} s")
    return 0


def add_parser(sub):
    """The prepare subcommand's flags."""
    prep = sub.add_parser("prepare", help="tokenize a corpus once into a token store for numgpt train --data",
                          description="Tokenize text files, directories, globs, .jsonl(.gz) and .parquet files "
                                      "(and, with the datasets library, Hugging Face datasets) "
                                      "into a token store: uint16/uint32 shards and a manifest, trained on with "
                                      "numgpt train --data DIR.")
    prep.add_argument("sources", nargs="+", metavar="SOURCE")
    prep.add_argument("--out", required=True, help="the store directory (an interrupted prepare resumes there)")
    prep.add_argument("--tokenizer", help="what get_tokenizer takes: a model directory with tokenizer.json, a "
                                          "hub id or a run directory (default GPT-2's)")
    prep.add_argument("--tokenizer-train", action="store_true",
                      help="train a byte-level BPE on the sources (saved in OUT/tokenizer/tokenizer.json)")
    prep.add_argument("--vocab-size", type=integer(1), help="the size of the tokenizer --tokenizer-train makes")
    prep.add_argument("--text-field", default="text", help="the text of a .jsonl record or .parquet row "
                                                           "(default text)")
    prep.add_argument("--split", default="train", help="the split of a Hugging Face dataset source (default train)")
    prep.add_argument("--val-fraction", type=real(0, 1, high_open=True), default=0.1,
                      help="the fraction of documents for validation, spread evenly (default 0.1)")
    prep.add_argument("--val-docs", type=integer(0), help="the first N documents for validation instead")
    prep.add_argument("--train-ratio", type=real(0, 1, low_open=True, high_open=True), default=0.9,
                      help="a corpus of one text file: the fraction of its characters for training (default 0.9)")
    prep.add_argument("--allow-special", action="store_true",
                      help="encode special-token text (<|endoftext|>) in documents as the special token")
    prep.add_argument("--workers", type=integer(1), help="encoding processes (default: one per core)")
    prep.add_argument("--shard-tokens", type=integer(1), default=100_000_000,
                      help="tokens per shard (default 100,000,000)")
    prep.set_defaults(run=cmd_prepare, check=arguments.check_prepare)
