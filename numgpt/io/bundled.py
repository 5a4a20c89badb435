"""Files that ship inside the numgpt package (``numgpt/resources/``), each
checked against its sha256 before it is used, so a damaged install is an
error, never a silent difference.

- ``the-verdict.txt``: the seed's corpus, Edith Wharton's short story "The
  Verdict" (1908, public domain), as the LLMs-from-scratch walkthrough uses it.
- ``gpt2/encoder.json`` and ``gpt2/vocab.bpe``: OpenAI's GPT-2 byte-pair
  encoding files (sha256 as tiktoken pins them), with OpenAI's licence in
  ``gpt2/LICENSE``.
"""
import hashlib
from pathlib import Path

from numgpt.errors import NumgptError

RESOURCES = Path(__file__).resolve().parent.parent / "resources"   # numgpt/resources

VERDICT = "the-verdict.txt"
GPT2_ENCODER_JSON = "gpt2/encoder.json"
GPT2_VOCAB_BPE = "gpt2/vocab.bpe"

SHA256 = {
    VERDICT: "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f",
    GPT2_ENCODER_JSON: "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    GPT2_VOCAB_BPE: "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}


class BundledFileError(NumgptError, OSError):
    """A file of numgpt's own package data is missing or damaged: reinstall numgpt."""


def bundled_path(name):
    """The path of bundled file ``name`` (a key of ``SHA256``)."""
    return RESOURCES / name


def read_bundled(name):
    """The bytes of bundled file ``name``, after checking them against their sha256."""
    path = bundled_path(name)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BundledFileError(f"numgpt's package data {path} cannot be read ({error.strerror or error}): "
                               f"reinstall numgpt") from error
    actual = hashlib.sha256(data).hexdigest()
    if actual != SHA256[name]:
        raise BundledFileError(f"numgpt's package data {path} has sha256 {actual}, expected {SHA256[name]}: "
                               f"the file is damaged; reinstall numgpt")
    return data
