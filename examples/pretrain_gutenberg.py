"""The reference book's Gutenberg flow (ch05/03_bonus_pretraining_on_gutenberg) in numgpt: a folder
of text files tokenized once into a token store, then a model pretrained over it.

    python examples/pretrain_gutenberg.py BOOKS_DIR [STORE_DIR] [RUN_DIR]

The same as three commands:

    numgpt prepare BOOKS_DIR --out STORE_DIR            # every .txt under BOOKS_DIR, one document each
    numgpt train --data STORE_DIR --out RUN_DIR --preset gpt2-124m --epochs 1 --checkpoint-every 500
    numgpt train --resume --out RUN_DIR                 # after an interruption: continues bit for bit

The book joins its books with <|endoftext|> into 500 MB text files and tokenizes them again in every
run; here the books are tokenized once (uint16 shards, memory-mapped while training), a tenth of
the books is kept for validation, and an interrupted prepare or training run continues where it
stopped. BOOKS_DIR is used as it is: the book's layout (gutenberg/data/raw/PG*_raw.txt) works.
"""
import sys
from pathlib import Path

from numgpt.cli import main

books = Path(sys.argv[1])
store = Path(sys.argv[2]) if len(sys.argv) > 2 else books.with_name(books.name + "-tokens")
run = Path(sys.argv[3]) if len(sys.argv) > 3 else books.with_name(books.name + "-run")

if not (store / "manifest.json").is_file():
    code = main(["prepare", str(books), "--out", str(store)])
    if code:
        sys.exit(code)
resume = ["--resume"] if (run / "settings.json").is_file() else ["--preset", "gpt2-124m", "--epochs", "1"]
sys.exit(main(["train", "--data", str(store), "--out", str(run), "--checkpoint-every", "500", *resume]))
