"""Writes tests/reference/hf_trained_tokenizer/: a byte-level BPE trained with the
`tokenizers` library on numgpt's bundled the-verdict.txt and saved by transformers'
PreTrainedTokenizerFast.save_pretrained (tokenizer.json and tokenizer_config.json, as
transformers lays them out), plus expected.json: the ids transformers itself gives
for a few texts, which tests/test_corpora_train.py compares with numgpt.get_tokenizer.

    pip install transformers tokenizers
    python tests/reference/make_hf_tokenizer_reference.py
"""
import json
from pathlib import Path

import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

HERE = Path(__file__).resolve().parent
OUT = HERE / "hf_trained_tokenizer"
CORPUS = HERE.parents[1] / "numgpt" / "resources" / "the-verdict.txt"
TEXTS = ["Every effort moves you", "I HAD always thought Jack Gisburn rather a cheap genius",
         "a word<|endoftext|>another", "  spaces, digits 12345 and ünïcode"]


def main():
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([CORPUS.read_text(encoding="utf-8")], trainer=trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>",
                                                bos_token="<|endoftext|>")
    fast.save_pretrained(OUT)
    expected = {"transformers": transformers.__version__, "vocab_size": len(fast),
                "ids": {text: fast(text, add_special_tokens=False)["input_ids"] for text in TEXTS}}
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(sorted(p.name for p in OUT.iterdir()))


if __name__ == "__main__":
    main()
