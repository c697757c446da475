"""Next-token batches from a token stream: random training windows and a fixed validation set.

Language-model training in the GPT-2 / nanoGPT style (Radford et al. 2019; the batching of
Karpathy's nanoGPT and llm.c): a batch is B windows of T + 1 consecutive tokens w of one stream,
split into inputs x = w[:T] and next-token targets y = w[1:], so y[b, t] = x[b, t + 1] for t < T - 1.

- Training: `random_windows` draws the B window starts independently and uniformly from
  {0, ..., n - T - 1} (every full window of the stream) with the caller's numpy Generator, so the
  same generator state gives the same batch on both backends.
- Validation: `validation_batches` is deterministic: n_batches * B disjoint windows of T + 1 tokens,
  the k-th starting at (T + 1) * floor(k * m / (n_batches * B)) where m = floor(n / (T + 1)) is
  the number of disjoint windows that fit. The windows are spread evenly over the stream, no token
  is a target twice, and with n_batches * B = m they cover the stream up to its last n mod (T + 1)
  tokens.

Choices: the stream stays on its backend (NumPy or CuPy); window starts are drawn on the host and
moved, so the random stream does not depend on the backend. Batches are int64 (the id type
indexing embeddings); streams may be any integer type. A stream too short for what is asked
raises an error naming the stream, its length and the length needed.
"""

import numpy as np

from ..core.backend import array_module, to_device
from ..core.errors import bad_type, bad_value, positive_int


class TokenStream:
    """A named 1-D integer array of token ids (NumPy or CuPy), checked once on construction.

    ids: (n,) integers in [0, vocab_size) (the upper bound is checked when `vocab_size` is given).
    name: how errors refer to the stream, e.g. "docs/val".
    """

    def __init__(self, ids, name="ids", vocab_size=None):
        if vocab_size is not None:
            vocab_size = positive_int("vocab_size", vocab_size)
        if not hasattr(ids, "dtype") and not isinstance(ids, (list, tuple)):
            raise bad_type(name, ids, "a 1-D integer array of token ids")
        xp = array_module(ids)
        ids = xp.asarray(ids)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise bad_type(name, ids, f"a 1-D integer array of token ids (got shape {ids.shape}, dtype {ids.dtype})")
        if ids.size:
            lo, hi = (int(v) for v in (ids.min(), ids.max()))
            top = f"[0, {vocab_size})" if vocab_size is not None else "[0, inf)"
            if lo < 0 or (vocab_size is not None and hi >= vocab_size):
                raise bad_value(name, f"ids in [{lo}, {hi}]", f"token ids in {top}")
        self.ids = ids
        self.name = name

    def __len__(self):
        return int(self.ids.shape[0])


def as_stream(ids):
    """`ids` as a TokenStream (checked once), or `ids` itself when it already is one."""
    return ids if isinstance(ids, TokenStream) else TokenStream(ids)


def _need(stream, length, why):
    if len(stream) < length:
        raise bad_value(f"len({stream.name})", len(stream), f"at least {length} tokens ({why})")


def disjoint_windows(ids, block_size):
    """(stream, m): `ids` as a TokenStream and m = floor(len / (T + 1)) >= 1, the number of disjoint
    windows of T + 1 tokens it holds (the unit LoRA-drop's sample and MGPP's n count)."""
    stream = as_stream(ids)
    block_size = positive_int("block_size", block_size)
    _need(stream, block_size + 1, f"one window of block_size + 1 = {block_size + 1}")
    return stream, len(stream) // (block_size + 1)


def windows_at(ids, starts, block_size):
    """x, y: (B, T) int64 from windows ids[s : s + T + 1] for s in `starts` ((B,) host ints, each in
    [0, n - T - 1]: a window never wraps around or runs past the end)."""
    if not hasattr(ids, "ndim") or ids.ndim != 1:  # cheap: this runs every training step
        raise bad_type("ids", ids, "a 1-D array of token ids")
    T = positive_int("block_size", block_size)
    host = np.asarray(starts) if isinstance(starts, (list, tuple, np.ndarray)) else None
    if host is None or host.ndim != 1 or not (host.size == 0 or np.issubdtype(host.dtype, np.integer)):
        raise bad_type("starts", starts, "a 1-D list or array of integer window starts")
    top = int(ids.shape[0]) - T - 1
    if host.size and (host.min() < 0 or host.max() > top):
        raise bad_value("starts", host.tolist()[:5], f"window starts in [0, {top}] (n - block_size - 1)")
    xp = array_module(ids)
    offsets = to_device(host.astype(np.int64)[:, None] + np.arange(T + 1), xp)
    w = ids[offsets].astype(xp.int64)
    return w[:, :-1], w[:, 1:]


def random_windows(ids, batch_size, block_size, rng):
    """One training batch of B random windows of the stream.

    ids: (n,) token ids or a TokenStream; rng: numpy.random.Generator (advanced by one draw).
    Returns x, y: (B, T) int64 with y[:, t] the token after x[:, t].
    """
    stream = as_stream(ids)
    B = positive_int("batch_size", batch_size)
    T = positive_int("block_size", block_size)
    if not isinstance(rng, np.random.Generator):
        raise bad_type("rng", rng, "a numpy.random.Generator")
    _need(stream, T + 1, f"one window of block_size + 1 = {T + 1}")
    starts = rng.integers(0, len(stream) - T, size=B)
    return windows_at(stream.ids, starts, T)


def validation_batches(ids, batch_size, block_size, n_batches=None):
    """The fixed validation set: `n_batches` batches of disjoint, evenly spaced windows.

    ids: (n,) token ids or a TokenStream. n_batches: None uses as many full batches as fit.
    Returns a list of (x, y), each (B, T) int64.
    """
    stream = as_stream(ids)
    B = positive_int("batch_size", batch_size)
    T = positive_int("block_size", block_size)
    _need(stream, B * (T + 1), f"one batch of batch_size * (block_size + 1) = {B} * {T + 1}")
    fit = len(stream) // (T + 1)
    if n_batches is None:
        n_batches = fit // B
    n_batches = positive_int("n_batches", n_batches)
    if n_batches * B > fit:
        raise bad_value(
            "n_batches",
            n_batches,
            f"at most {fit // B}: {stream.name} has {len(stream)} tokens, room for {fit} disjoint "
            f"windows of block_size + 1 = {T + 1}, and each batch takes batch_size = {B}",
        )
    k = np.arange(n_batches * B, dtype=np.int64)
    starts = (T + 1) * (k * fit // (n_batches * B))
    x, y = windows_at(stream.ids, starts, T)
    return [(x[i * B : (i + 1) * B], y[i * B : (i + 1) * B]) for i in range(n_batches)]


def corpus_streams(corpus, tokenizer):
    """The training, validation and test TokenStreams of `corpus` ("<name>/train", "<name>/val",
    "<name>/test")."""
    from .corpus import SPLITS, Corpus
    from .tokenizer import BPETokenizer

    if not isinstance(corpus, Corpus):
        raise bad_type("corpus", corpus, "a minisft.data.corpus.Corpus")
    if not isinstance(tokenizer, BPETokenizer):
        raise bad_type("tokenizer", tokenizer, "a minisft.data.tokenizer.BPETokenizer")
    return tuple(
        TokenStream(tokenizer.encode_docs(corpus.docs(split)), f"{corpus.name}/{split}", tokenizer.vocab_size)
        for split in SPLITS
    )
