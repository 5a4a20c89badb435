"""Text in, (B, T) int64 batches out.

- ``GPTDatasetV1`` cuts the token stream of a text into windows of ``max_length``
  tokens every ``stride`` tokens (the seed's sliding window); the targets are the
  inputs shifted one token to the right. It holds the token stream only
  (``TokenWindows``, which also windows a memory-mapped token store): a batch's
  windows are gathered when the batch is asked for.
- ``RandomWindowLoader`` draws windows at random offsets instead (nanoGPT's
  ``get_batch``), from a key per epoch, so its position resumes exactly too.
- ``DataLoader`` batches a dataset like ``torch.utils.data.DataLoader`` with
  ``num_workers=0``: same ``len``, same ``shuffle`` / ``drop_last`` meaning, a new
  permutation per epoch drawn from numgpt's generator, and a ``state_dict`` so an
  interrupted epoch can be resumed at the batch where it stopped.
- Any map-style dataset works: an object with ``__len__`` and ``__getitem__(int)``,
  a list of ``(inputs, targets)`` pairs included. Its items are fetched one index
  at a time and stacked by ``default_collate`` as torch's default collate does (a
  tuple item gives a tuple of stacks, a dict item a dict of stacks). A dataset
  with a ``get_batch(indices)`` method is asked for the whole batch in one call
  instead: ``GPTDatasetV1``'s is one gather of its windows (the fast path), and
  ``Subset(dataset, indices)``, torch's ``Subset``, passes the batch on to its
  dataset, so a subset of windows keeps the fast path.
- ``create_dataloader_v1`` is the seed's one-call constructor.
- ``split_text``, ``read_text`` and ``load_the_verdict`` get text: the seed's
  corpus ships with numgpt, so no network is ever needed.
"""

import numpy

from numgpt import backend
from numgpt.data.token_store import TokenSequence
from numgpt.errors import NumgptError
from numgpt.io import bundled, safe_io
from numgpt.io.tokenizer import get_tokenizer

VERDICT_SHA256 = bundled.SHA256[bundled.VERDICT]


class DataError(NumgptError, ValueError):
    """A corpus that cannot be read, decoded or downloaded, or a dataset that cannot be batched."""


class TooFewTokens(DataError):
    """A text shorter than one window: ``n_tokens`` tokens where ``needed`` are needed."""

    def __init__(self, n_tokens, needed, what="the text"):
        super().__init__(f"{what} has {n_tokens} tokens; one window needs max_length + 1 = {needed}")
        self.n_tokens, self.needed = n_tokens, needed


# ---------------------------------------------------------------- dataset


class TokenWindows:
    """Windows of ``max_length`` tokens every ``stride`` tokens over one token stream, read on demand.

    Window i starts at token ``i * stride``; its input is ``max_length`` tokens and its target
    the same span one token later. Windows are taken while a full target fits, i.e. for starts
    in ``range(0, n_tokens - max_length, stride)``. Only the token stream is held (a 1-D array,
    or a ``TokenSequence`` of memory-mapped shards): a batch gathers its windows when asked,
    so memory does not grow with the number of windows.
    """

    def __init__(self, tokens, max_length, stride, what="the token stream"):
        if max_length < 1 or stride < 1:
            raise DataError(f"max_length and stride must be >= 1, got {max_length} and {stride}")
        if not hasattr(tokens, "gather"):
            tokens = numpy.asarray(tokens, dtype=backend.INDEX_DTYPE)  # (n_tokens,)
            tokens.flags.writeable = False
            tokens = TokenSequence([tokens])
        if len(tokens) < max_length + 1:
            raise TooFewTokens(len(tokens), max_length + 1, what)
        self.tokens = tokens
        self.max_length, self.stride = max_length, stride
        self.n_windows = len(range(0, len(tokens) - max_length, stride))

    def __len__(self):
        return self.n_windows

    def __getitem__(self, idx):
        index = int(idx)
        if not -self.n_windows <= index < self.n_windows:
            raise IndexError(f"window {idx} is outside the {self.n_windows} windows")
        inputs, targets = self.get_batch(numpy.asarray([index % self.n_windows]))
        return inputs[0], targets[0]  # (T,), (T,)

    def get_batch(self, indices):
        """The windows at ``indices`` (B,), gathered in one read: DataLoader's fast path."""
        spans = self.tokens.gather(numpy.asarray(indices, dtype=numpy.int64) * self.stride,
                                   self.max_length + 1)  # (B, T + 1)
        return numpy.ascontiguousarray(spans[:, :-1]), numpy.ascontiguousarray(spans[:, 1:])  # (B, T), (B, T)

    @property
    def input_ids(self):
        """Every window's input, (N, T): a copy made when asked, for inspection."""
        return self.get_batch(numpy.arange(self.n_windows))[0]

    @property
    def target_ids(self):
        """Every window's target, (N, T): a copy made when asked, for inspection."""
        return self.get_batch(numpy.arange(self.n_windows))[1]


class GPTDatasetV1(TokenWindows):
    """The seed's dataset: sliding windows (``TokenWindows``) over the tokens of ``txt``.

    A literal ``<|endoftext|>`` in ``txt`` is encoded as ordinary text (a corpus
    that quotes it is not split by it); pass
    ``allowed_special={"<|endoftext|>"}`` for documents joined with the token.
    (Prompts follow the seed's rule instead: ``text_to_token_ids`` allows it.)
    """

    def __init__(self, txt, tokenizer, max_length, stride, allowed_special=()):
        if max_length < 1 or stride < 1:
            raise DataError(f"max_length and stride must be >= 1, got {max_length} and {stride}")
        token_ids = tokenizer.encode(txt, allowed_special=set(allowed_special), disallowed_special=())
        super().__init__(token_ids, max_length, stride, what="the text")


class Subset:
    """The items of ``dataset`` at ``indices``, as ``torch.utils.data.Subset``:
    ``len(subset) == len(indices)`` and ``subset[i] == dataset[indices[i]]``.

    ``indices`` is any 1-D sequence of integers in ``[0, len(dataset))``
    (``range(1)``, a list, an array); repeats are allowed. Batches keep the
    fast path of a dataset that has one.
    """

    def __init__(self, dataset, indices):
        _check_map_style(dataset)
        positions = numpy.asarray(indices)
        if positions.size == 0:  # [] reads as float64
            positions = positions.astype(backend.INDEX_DTYPE)
        if positions.ndim != 1 or positions.dtype.kind not in "iu":
            raise DataError(f"Subset indices must be a 1-D sequence of integers, got an array "
                            f"of shape {positions.shape} and dtype {positions.dtype}")
        outside = positions[(positions < 0) | (positions >= len(dataset))]
        if outside.size:
            raise DataError(f"Subset index {outside[0]} is outside the dataset's "
                            f"{len(dataset)} items; expected indices in [0, {len(dataset)})")
        self.dataset = dataset
        self.indices = positions.astype(backend.INDEX_DTYPE)  # (N,) positions in dataset
        self.indices.flags.writeable = False

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, idx):
        return self.dataset[int(self.indices[idx])]

    def get_batch(self, indices):
        """The items at ``indices`` (B,), by the underlying dataset's fast path if it has one."""
        return fetch_batch(self.dataset, self.indices[indices])


def _check_map_style(dataset):
    """DataError unless ``dataset`` has ``__len__`` and ``__getitem__``."""
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise DataError(f"a dataset needs __len__ and __getitem__(int), got a {type(dataset).__name__}; "
                        "materialise an iterable first, e.g. list(items)")


# ---------------------------------------------------------------- batches


def fetch_batch(dataset, indices):
    """The batch of ``dataset``'s items at ``indices`` (B,).

    The rule: a dataset with a ``get_batch`` method returns the whole batch
    from that one call (the fast path); any other dataset is asked for one
    integer index at a time and its items go through ``default_collate``.
    """
    if hasattr(dataset, "get_batch"):
        return dataset.get_batch(indices)
    indices = [int(i) for i in indices]
    return default_collate([dataset[i] for i in indices], indices)


def default_collate(items, indices=None):
    """Stack a list of items into a batch, as torch's default collate does.

    An item that is a tuple or a list is a record of fields, and so is a tuple
    or a dict anywhere inside one: a tuple gives a tuple of per-field batches,
    a dict a dict of them, recursively. Everything else is a leaf (an array, a
    number, a list of numbers inside a record), stacked with ``numpy.stack``
    along a new first axis B: ``(*shape,) -> (B, *shape)``. Integer leaves come
    out int64 (token ids index embeddings); float arrays keep their dtype and
    Python floats give float64. ``indices`` (the items' dataset indices) only
    name the items in errors; items with unequal shapes or fields raise
    DataError naming the field, the item and the shapes.
    """
    if len(items) == 0:
        raise DataError("default_collate needs at least one item, got none")
    indices = list(range(len(items))) if indices is None else list(indices)
    return _collate(items, indices, field="", top=True)


def _collate(values, indices, field, top):
    """The batch of ``values`` (one per item) found at ``field`` of each item."""
    first = values[0]
    if isinstance(first, dict):
        for value, index in zip(values, indices):
            if not isinstance(value, dict) or value.keys() != first.keys():
                raise DataError(f"{_where(field, index)} is {_describe(value)}; "
                                f"{_where(field, indices[0])} is a dict with keys {sorted(first, key=str)}")
        return {key: _collate([value[key] for value in values], indices, f"{field}[{key!r}]", False)
                for key in first}
    if isinstance(first, tuple) or (top and isinstance(first, list)):
        for value, index in zip(values, indices):
            if not isinstance(value, (tuple, list)) or len(value) != len(first):
                raise DataError(f"{_where(field, index)} is {_describe(value)}; "
                                f"{_where(field, indices[0])} has {len(first)} fields")
        return tuple(_collate([value[k] for value in values], indices, f"{field}[{k}]", False)
                     for k in range(len(first)))
    return _stack(values, indices, field)


def _stack(values, indices, field):
    """Leaves (one per item) -> one array (B, *shape); integers as int64."""
    arrays = []
    for value, index in zip(values, indices):
        try:
            arrays.append(numpy.asarray(value))
        except ValueError as error:  # a ragged nested list
            raise DataError(f"{_where(field, index)} is not a rectangular array: {error}") from error
    for array, index in zip(arrays, indices):
        if array.shape != arrays[0].shape:
            raise DataError(f"{_where(field, index)} has shape {array.shape} but "
                            f"{_where(field, indices[0])} has {arrays[0].shape}; the items of a "
                            "batch must have equal shapes to be stacked")
    batch = numpy.stack(arrays)  # (B, *shape)
    if batch.dtype.kind in "iu":
        batch = batch.astype(backend.INDEX_DTYPE, copy=False)
    return batch


def _where(field, index):
    """Names a place in an item for errors: 'field [0] of item 7', or 'item 7'."""
    return f"field {field} of item {index}" if field else f"item {index}"


def _describe(value):
    """Says what a value that does not fit its record is, for errors."""
    if isinstance(value, dict):
        return f"a dict with keys {sorted(value, key=str)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} fields"
    return f"a {type(value).__name__}"


# ---------------------------------------------------------------- loader


class DataLoader:
    """Batches of a map-style dataset, like torch's DataLoader: for
    ``GPTDatasetV1``, ``(inputs, targets)``, each (B, T) int64.

    ``dataset`` needs ``__len__`` and ``__getitem__(int)``; ``fetch_batch``
    says how a batch is fetched and ``default_collate`` how items are stacked.

    Each ``iter()`` starts an epoch with an iterator of its own (so the seed's
    evaluation, which iterates ``train_loader`` in the middle of a training
    epoch, leaves the training epoch alone). With ``shuffle`` the iterator
    draws a permutation from ``generator`` (default: numgpt's global generator,
    read when iteration starts, so ``backend.manual_seed`` before iterating
    makes the order repeatable). An iterator's ``state_dict()`` records its
    order and how many batches it yielded; after ``loader.load_state_dict(s)``
    the next ``iter()`` yields the rest of that epoch instead of a new one.

    A dataset of more than ``LITERAL_ORDER_LIMIT`` items (the windows of a large
    token store) is shuffled by a ``KeyedPermutation`` instead, from a key drawn
    from the generator: no (N,) order in memory or in checkpoints, only its key.
    """

    def __init__(self, dataset, batch_size=1, shuffle=False, drop_last=False, generator=None):
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        _check_map_style(dataset)
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
            if len(self.dataset) > LITERAL_ORDER_LIMIT:
                order = KeyedPermutation(len(self.dataset), int(generator.integers(0, 2**63)))
            else:
                order = generator.permutation(len(self.dataset))
        return LoaderIterator(self, order, 0)

    def load_state_dict(self, state):
        """Make the next ``iter()`` continue the epoch an iterator's ``state_dict()`` described."""
        order, yielded = state["epoch_order"], state["batches_yielded"]
        n_items = len(self.dataset)
        if "epoch_key" in state:
            key = state["epoch_key"]
            if not isinstance(key, int) or not 0 <= key < 2**63 or n_items <= LITERAL_ORDER_LIMIT:
                raise DataError(f"epoch_key {key!r} does not describe an order of this loader's {n_items} items")
            order = KeyedPermutation(n_items, key)
        elif order is not None and sorted(order) != list(range(n_items)):
            raise DataError(f"epoch_order is not a permutation of the {n_items} dataset items")
        if order is None and self.shuffle:
            raise DataError("epoch_order is None but this loader shuffles")
        if not 0 <= yielded <= len(self):
            raise DataError(f"batches_yielded must be in [0, {len(self)}], got {yielded}")
        if isinstance(order, list):
            order = numpy.asarray(order, dtype=backend.INDEX_DTYPE)
        self._resume = (order, int(yielded))


class LoaderIterator:
    """One epoch of a DataLoader: its order and its position."""

    def __init__(self, loader, order, batches_yielded):
        self.loader = loader
        self.order = order                  # (N,) permutation, a KeyedPermutation, or None for the dataset's order
        self.batches_yielded = batches_yielded

    def __iter__(self):
        return self

    def __next__(self):
        loader = self.loader
        if self.batches_yielded >= len(loader):
            raise StopIteration
        first = self.batches_yielded * loader.batch_size
        last = min(first + loader.batch_size, len(loader.dataset))
        items = numpy.arange(first, last) if self.order is None else self.order[first:last]  # (B,)
        batch = fetch_batch(loader.dataset, items)  # GPTDatasetV1: (B, T), (B, T)
        self.batches_yielded += 1  # counted once fetched: a batch that failed is not skipped on resume
        return batch

    def state_dict(self):
        """This epoch's order (or its key) and position, as JSON-able data."""
        if isinstance(self.order, KeyedPermutation):
            return {"epoch_order": None, "epoch_key": self.order.key, "batches_yielded": self.batches_yielded}
        order = None if self.order is None else [int(i) for i in self.order]
        return {"epoch_order": order, "batches_yielded": self.batches_yielded}


LITERAL_ORDER_LIMIT = 1 << 20   # larger datasets are shuffled by a KeyedPermutation (8 bytes an item saved)
FEISTEL_ROUNDS = 4
GOLDEN_GAMMA, MIX_1, MIX_2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB   # splitmix64's


def _splitmix64(values):
    """splitmix64's finaliser on uint64 values (wrapping arithmetic): a 64-bit mixing hash."""
    z = values * numpy.uint64(GOLDEN_GAMMA)
    z = (z ^ (z >> numpy.uint64(30))) * numpy.uint64(MIX_1)
    z = (z ^ (z >> numpy.uint64(27))) * numpy.uint64(MIX_2)
    return z ^ (z >> numpy.uint64(31))


class KeyedPermutation:
    """A pseudo-random permutation of ``range(n)`` given by a 63-bit ``key``, computed per position.

    ``order[i]`` for i in [0, n): a Feistel network of FEISTEL_ROUNDS rounds on the 2h-bit values
    (the smallest even width with 2^(2h) >= n) is a bijection of [0, 2^(2h)); a value it sends to
    n or beyond is sent through it again (cycle walking) until it lands in [0, n), which keeps it
    a bijection of [0, n). Round r maps (L, R) to (R, L xor F(R)), F(R) = splitmix64(R xor k_r)
    cut to h bits, k_r = splitmix64(key + r). Slicing gives an int64 array, like a permutation's.
    """

    def __init__(self, n, key):
        self.n, self.key = int(n), int(key)
        self.half = max(1, (max(self.n - 1, 1).bit_length() + 1) // 2)    # h: 2h bits cover [0, n)
        self.mask = numpy.uint64((1 << self.half) - 1)
        self.round_keys = _splitmix64(numpy.arange(FEISTEL_ROUNDS, dtype=numpy.uint64) + numpy.uint64(self.key))

    def __len__(self):
        return self.n

    def _feistel(self, values):
        h = numpy.uint64(self.half)
        left, right = values >> h, values & self.mask
        for round_key in self.round_keys:
            left, right = right, left ^ (_splitmix64(right ^ round_key) & self.mask)
        return (left << h) | right

    def __getitem__(self, index):
        if isinstance(index, slice):
            chosen = range(self.n)[index]                     # the positions, without an (n,) array
            positions = numpy.arange(chosen.start, chosen.stop, chosen.step)
        else:
            positions = numpy.asarray(index)
        values = self._feistel(positions.astype(numpy.uint64))
        outside = values >= numpy.uint64(self.n)
        while outside.any():                                  # cycle walking back into [0, n)
            values[outside] = self._feistel(values[outside])
            outside = values >= numpy.uint64(self.n)
        return values.astype(backend.INDEX_DTYPE)


class RandomWindowLoader:
    """Batches of ``max_length``-token windows at random offsets in ``tokens`` (nanoGPT's sampling).

    An epoch is as many batches as the windows at stride ``max_length`` fill
    (``len(TokenWindows(tokens, max_length, max_length)) // batch_size``). Each ``iter()``
    draws an epoch key from ``generator`` (default numgpt's global generator, as
    DataLoader's permutation); batch k's offsets come from ``default_rng([key, k])``,
    uniform over every start whose target fits. The iterator's ``state_dict()`` is the
    key and the batches yielded, so a resumed epoch continues with the same offsets.
    """

    def __init__(self, tokens, max_length, batch_size, generator=None):
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        self.windows = TokenWindows(tokens, max_length, max_length)
        self.dataset = self.windows
        self.batch_size = batch_size
        self.generator = generator
        self._resume = None

    def __len__(self):
        return len(self.windows) // self.batch_size

    def __iter__(self):
        if self._resume is not None:
            (key, yielded), self._resume = self._resume, None
            return RandomWindowIterator(self, key, yielded)
        generator = self.generator if self.generator is not None else backend.get_generator()
        return RandomWindowIterator(self, int(generator.integers(0, 2**63)), 0)

    def offsets(self, key, batch):
        """The window starts (B,) of batch ``batch`` of the epoch keyed ``key``."""
        n_starts = len(self.windows.tokens) - self.windows.max_length   # starts whose target fits
        return numpy.random.default_rng([key, batch]).integers(0, n_starts, size=self.batch_size)

    def load_state_dict(self, state):
        """Make the next ``iter()`` continue the epoch an iterator's ``state_dict()`` described."""
        key, yielded = state.get("epoch_key"), state.get("batches_yielded")
        if not isinstance(key, int) or not 0 <= key < 2**63:
            raise DataError(f"epoch_key must be an integer in [0, 2**63), got {key!r}")
        if not isinstance(yielded, int) or not 0 <= yielded <= len(self):
            raise DataError(f"batches_yielded must be in [0, {len(self)}], got {yielded!r}")
        self._resume = (key, yielded)


class RandomWindowIterator:
    """One epoch of a RandomWindowLoader: its key and its position."""

    def __init__(self, loader, key, batches_yielded):
        self.loader, self.key, self.batches_yielded = loader, key, batches_yielded

    def __iter__(self):
        return self

    def __next__(self):
        if self.batches_yielded >= len(self.loader):
            raise StopIteration
        starts = self.loader.offsets(self.key, self.batches_yielded)  # (B,)
        spans = self.loader.windows.tokens.gather(starts, self.loader.windows.max_length + 1)  # (B, T + 1)
        self.batches_yielded += 1
        return numpy.ascontiguousarray(spans[:, :-1]), numpy.ascontiguousarray(spans[:, 1:])  # (B, T), (B, T)

    def state_dict(self):
        return {"epoch_key": self.key, "batches_yielded": self.batches_yielded}


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
    """The UTF-8 text of the regular file at ``path``; DataError if it cannot be read or decoded,
    or is a FIFO, a device or a socket (safe_io.open_regular: never read, so never a hang)."""
    try:
        with safe_io.open_regular(path) as f:
            data = f.read()
    except safe_io.UnsafeFileError as error:
        raise DataError(str(error)) from None
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
