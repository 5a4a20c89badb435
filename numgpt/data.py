"""Text in, (B, T) int64 batches out.

- ``GPTDatasetV1`` cuts the token stream of a text into windows of ``max_length``
  tokens every ``stride`` tokens (the seed's sliding window); the targets are the
  inputs shifted one token to the right.
- ``DataLoader`` batches a dataset like ``torch.utils.data.DataLoader`` with
  ``num_workers=0``: same ``len``, same ``shuffle`` / ``drop_last`` meaning, a new
  permutation per epoch drawn from numgpt's generator, and a ``state_dict`` so an
  interrupted epoch can be resumed at the batch where it stopped.
- ``create_dataloader_v1`` is the seed's one-call constructor.
- ``split_text``, ``read_text`` and ``load_the_verdict`` get text: the seed's
  corpus ships with numgpt, so no network is ever needed.
"""
from pathlib import Path

import numpy

from numgpt import backend, bundled
from numgpt.errors import NumgptError
from numgpt.tokenizer import get_tokenizer

VERDICT_SHA256 = bundled.SHA256[bundled.VERDICT]


class DataError(NumgptError, ValueError):
    """A corpus that cannot be read, decoded or downloaded."""


# ---------------------------------------------------------------- dataset


class GPTDatasetV1:
    """Sliding windows over the tokens of ``txt``.

    Window i starts at token ``i * stride``; its input is ``max_length`` tokens
    and its target the same span one token later. Windows are taken while a
    full target fits, i.e. for starts in ``range(0, n_tokens - max_length, stride)``.
    A literal ``<|endoftext|>`` in ``txt`` is encoded as ordinary text (a corpus
    that quotes it is not split by it); pass
    ``allowed_special={"<|endoftext|>"}`` for documents joined with the token.
    (Prompts follow the seed's rule instead: ``text_to_token_ids`` allows it.)
    """

    def __init__(self, txt, tokenizer, max_length, stride, allowed_special=()):
        if max_length < 1 or stride < 1:
            raise DataError(f"max_length and stride must be >= 1, got {max_length} and {stride}")
        token_ids = backend.asarray(tokenizer.encode(txt, allowed_special=set(allowed_special), disallowed_special=()),
                                    dtype=backend.INDEX_DTYPE)  # (n_tokens,)
        if len(token_ids) < max_length + 1:
            raise DataError(f"the text has {len(token_ids)} tokens; one window needs "
                             f"max_length + 1 = {max_length + 1}")
        starts = numpy.arange(0, len(token_ids) - max_length, stride)  # (N,)
        positions = starts[:, None] + numpy.arange(max_length)  # (N, T)
        self.input_ids = token_ids[positions]  # (N, T)
        self.target_ids = token_ids[positions + 1]  # (N, T)
        self.input_ids.flags.writeable = False  # __getitem__ hands out views of these rows
        self.target_ids.flags.writeable = False

    def __len__(self):
        return len(self.input_ids)

    def __getitem__(self, idx):
        return self.input_ids[idx], self.target_ids[idx]  # (T,), (T,)


# ---------------------------------------------------------------- loader


class DataLoader:
    """Batches of ``(inputs, targets)``, each (B, T) int64, like torch's DataLoader.

    Each ``iter()`` starts an epoch with an iterator of its own (so the seed's
    evaluation, which iterates ``train_loader`` in the middle of a training
    epoch, leaves the training epoch alone). With ``shuffle`` the iterator
    draws a permutation from ``generator`` (default: numgpt's global generator,
    read when iteration starts, so ``backend.manual_seed`` before iterating
    makes the order repeatable). An iterator's ``state_dict()`` records its
    order and how many batches it yielded; after ``loader.load_state_dict(s)``
    the next ``iter()`` yields the rest of that epoch instead of a new one.
    """

    def __init__(self, dataset, batch_size=1, shuffle=False, drop_last=False, generator=None):
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = generator
        self._resume = None  # (order or None, batches yielded) for the next iter()

    def __len__(self):
        if self.drop_last:
            return len(self.dataset) // self.batch_size
        return -(-len(self.dataset) // self.batch_size)  # ceil

    def __iter__(self):
        if self._resume is not None:
            (order, yielded), self._resume = self._resume, None
            return LoaderIterator(self, order, yielded)
        order = None
        if self.shuffle:  # drawn now, not at the first next()
            generator = self.generator if self.generator is not None else backend.get_generator()
            order = generator.permutation(len(self.dataset))
        return LoaderIterator(self, order, 0)

    def load_state_dict(self, state):
        """Make the next ``iter()`` continue the epoch an iterator's ``state_dict()`` described."""
        order, yielded = state["epoch_order"], state["batches_yielded"]
        n_items = len(self.dataset)
        if order is not None and sorted(order) != list(range(n_items)):
            raise DataError(f"epoch_order is not a permutation of the {n_items} dataset items")
        if order is None and self.shuffle:
            raise DataError("epoch_order is None but this loader shuffles")
        if not 0 <= yielded <= len(self):
            raise DataError(f"batches_yielded must be in [0, {len(self)}], got {yielded}")
        order = None if order is None else numpy.asarray(order, dtype=backend.INDEX_DTYPE)
        self._resume = (order, int(yielded))


class LoaderIterator:
    """One epoch of a DataLoader: its order and its position."""

    def __init__(self, loader, order, batches_yielded):
        self.loader = loader
        self.order = order                  # (N,) permutation, or None for the dataset's order
        self.batches_yielded = batches_yielded

    def __iter__(self):
        return self

    def __next__(self):
        loader = self.loader
        if self.batches_yielded >= len(loader):
            raise StopIteration
        first = self.batches_yielded * loader.batch_size
        last = min(first + loader.batch_size, len(loader.dataset))
        items = numpy.arange(first, last) if self.order is None else self.order[first:last]
        self.batches_yielded += 1
        inputs, targets = loader.dataset[items]     # a batch of windows at once: (B, T), (B, T)
        return inputs, targets

    def state_dict(self):
        """This epoch's order and position, as JSON-able data."""
        order = None if self.order is None else [int(i) for i in self.order]
        return {"epoch_order": order, "batches_yielded": self.batches_yielded}


def create_dataloader_v1(txt, batch_size=4, max_length=256, stride=128, shuffle=True,
                         drop_last=True, num_workers=0, tokenizer=None, allowed_special=()):
    """The seed's constructor: ``GPTDatasetV1`` over ``txt`` in a ``DataLoader``."""
    if num_workers != 0:
        raise DataError(f"num_workers={num_workers}: numgpt loads batches in the main "
                         "process only; use num_workers=0")
    dataset = GPTDatasetV1(txt, tokenizer if tokenizer is not None else get_tokenizer(),
                           max_length, stride, allowed_special)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last)


# ---------------------------------------------------------------- text


def split_text(text, train_ratio=0.9):
    """(train_text, val_text), split at character ``int(train_ratio * len(text))``."""
    if not 0.0 <= train_ratio <= 1.0:
        raise DataError(f"train_ratio must be in [0, 1], got {train_ratio}")
    split_idx = int(train_ratio * len(text))
    return text[:split_idx], text[split_idx:]


def _decode_utf8(data, source):
    """UTF-8 bytes -> text with newlines normalised to '\\n', as Python's text mode reads files."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{source} is not UTF-8 text: byte offset {error.start} "
                        f"({data[error.start:error.start + 1]!r}) cannot be decoded") from error
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_text(path):
    """The UTF-8 text of the file at ``path``; DataError if it cannot be read or decoded."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from error
    return _decode_utf8(data, path)


def load_the_verdict(path=None):
    """The seed's corpus, "The Verdict" (20,479 characters), with no network:
    numgpt's bundled copy, checked against ``VERDICT_SHA256``; or the file at
    ``path`` when given."""
    if path is not None:
        return read_text(path)
    return _decode_utf8(bundled.read_bundled(bundled.VERDICT), bundled.bundled_path(bundled.VERDICT))
