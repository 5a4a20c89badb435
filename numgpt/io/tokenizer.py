"""The GPT-2 tokenizer, offline, from files shipped with numgpt.

``get_tokenizer()`` returns a tiktoken ``Encoding`` equal to
``tiktoken.get_encoding("gpt2")``, built from OpenAI's GPT-2 vocabulary that
ships inside numgpt (``numgpt/resources/gpt2/encoder.json``, checked against
the sha256 tiktoken pins for it). There is no network path: tiktoken's own
download is never called.

How ``encoder.json`` becomes tiktoken's ranks. GPT-2's BPE works on bytes,
but OpenAI stored each token as printable text: every byte value b is written
as one character, ``chr(b)`` when that character is printable and not a
space, otherwise ``chr(256 + n)`` for the n-th byte (in order) that is not.
So a token string maps back to its bytes character by character, and tiktoken
wants exactly that: ``{token bytes: id}``. (``vocab.bpe``, the merge list,
ships beside it for users of other BPE implementations; its ranks are the
same as the ids, which a test checks against tiktoken's own reader.)

``text_to_token_ids`` / ``token_ids_to_text`` are the seed's helpers: text to a
(1, n) int64 batch of ids, and back.
"""
import functools
import json
from pathlib import Path

import numpy
import tiktoken

from numgpt import backend
from numgpt.autograd import array_of
from numgpt.device import to_host
from numgpt.io import bundled
from numgpt.safe_write import atomic_write

ENCODING_NAME = "gpt2"
N_VOCAB = 50257
ENDOFTEXT = "<|endoftext|>"
ENDOFTEXT_ID = 50256
# GPT-2's pre-tokenizer: contractions, letter runs, digit runs, other symbols, spaces (r50k_base's pattern)
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
ALLOWED_SPECIAL = frozenset({ENDOFTEXT})


def _byte_of_char():
    """GPT-2's printable stand-in character for each byte -> that byte."""
    stand_in, shifted = {}, 0
    for byte in range(256):
        char = chr(byte)
        if char.isprintable() and char != " ":
            stand_in[char] = byte
        else:                                   # control bytes, space, NBSP, soft hyphen
            stand_in[chr(256 + shifted)] = byte
            shifted += 1
    return stand_in


def mergeable_ranks(encoder_json):
    """{token bytes: rank} from the text of GPT-2's encoder.json (the special token left out)."""
    byte_of = _byte_of_char()
    return {bytes(byte_of[c] for c in token): rank for token, rank in json.loads(encoder_json).items()
            if token != ENDOFTEXT}


@functools.lru_cache(maxsize=None)
def get_tokenizer():
    """The GPT-2 ``tiktoken.Encoding``, built once from numgpt's bundled vocabulary."""
    encoder_json = bundled.read_bundled(bundled.GPT2_ENCODER_JSON)
    return tiktoken.Encoding(name=ENCODING_NAME, pat_str=GPT2_SPLIT_PATTERN,
                             mergeable_ranks=mergeable_ranks(encoder_json), special_tokens={ENDOFTEXT: ENDOFTEXT_ID},
                             explicit_n_vocab=N_VOCAB)


def text_to_token_ids(text, tokenizer):
    """``text`` -> (1, n) int64 ids; ``<|endoftext|>`` is encoded as the special token."""
    ids = tokenizer.encode(text, allowed_special=ALLOWED_SPECIAL)
    return backend.asarray(ids, dtype=backend.INDEX_DTYPE).reshape(1, -1)  # (n,) -> (1, n)


def token_ids_to_text(token_ids, tokenizer):
    """(1, n) or (n,) ids (array, list, or numgpt Tensor) -> text."""
    ids = numpy.asarray(to_host(array_of(token_ids)))
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]  # (1, n) -> (n,)
    if ids.ndim != 1:
        raise ValueError(f"token ids must have shape (1, n) or (n,), got {ids.shape}")
    return tokenizer.decode(ids.tolist())


# the files transformers' GPT2TokenizerFast.save_pretrained writes, which AutoTokenizer.from_pretrained reads
HF_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def save_hf_tokenizer(directory, model_max_length):
    """Write GPT-2's tokenizer into ``directory`` as transformers lays it out: ``vocab.json`` and
    ``merges.txt`` (OpenAI's encoder.json and vocab.bpe, as bundled), ``tokenizer.json`` (the
    ``tokenizers`` pipeline: byte-level BPE over GPT-2's pre-tokenizer, <|endoftext|> special),
    ``tokenizer_config.json`` and ``special_tokens_map.json``. Each file is written atomically.
    Returns the paths written."""
    # the tokenizers library (Rust) is loaded only by those who write its files
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    encoder_json = bundled.read_bundled(bundled.GPT2_ENCODER_JSON)
    vocab_bpe = bundled.read_bundled(bundled.GPT2_VOCAB_BPE)
    merges = [tuple(line.split(" ")) for line in vocab_bpe.decode("utf-8").splitlines()[1:] if line]
    pipeline = Tokenizer(models.BPE(vocab=json.loads(encoder_json), merges=merges))
    pipeline.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    pipeline.decoder = decoders.ByteLevel()
    pipeline.post_processor = processors.ByteLevel(trim_offsets=False)
    pipeline.add_special_tokens([AddedToken(ENDOFTEXT, special=True, normalized=True)])
    special = {"content": ENDOFTEXT, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False,
               "special": True}
    config = {"add_prefix_space": False, "added_tokens_decoder": {str(ENDOFTEXT_ID): special},
              "bos_token": ENDOFTEXT, "clean_up_tokenization_spaces": False, "eos_token": ENDOFTEXT,
              "errors": "replace", "model_max_length": model_max_length, "pad_token": None,
              "tokenizer_class": "GPT2Tokenizer", "unk_token": ENDOFTEXT}
    contents = {
        "vocab.json": encoder_json,
        "merges.txt": vocab_bpe,
        "tokenizer.json": pipeline.to_str(pretty=True).encode("utf-8"),
        "tokenizer_config.json": (json.dumps(config, indent=2) + "\n").encode("utf-8"),
        "special_tokens_map.json": (json.dumps({"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT,
                                                "unk_token": ENDOFTEXT}, indent=2) + "\n").encode("utf-8"),
    }
    paths = []
    for name in HF_TOKENIZER_FILES:
        atomic_write(Path(directory) / name, lambda fh, data=contents[name]: fh.write(data))
        paths.append(Path(directory) / name)
    return paths
