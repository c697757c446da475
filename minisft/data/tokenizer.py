"""Byte-level BPE tokenizer (GPT-2 style), trained with HF `tokenizers` and cached on disk.

Byte-pair encoding (Sennrich, Haddow & Birch 2016, arXiv 1508.07909) over UTF-8 bytes as in GPT-2
(Radford et al. 2019, "Language Models are Unsupervised Multitask Learners", section 2.2): text is
split by the GPT-2 regular expression, each piece is mapped to its UTF-8 bytes, and merges are
learned greedily, each step merging the most frequent adjacent pair of symbols. The initial
alphabet is all 256 bytes, so every string encodes without an unknown token and
decode(encode(s)) == s for every Python string s that has a UTF-8 encoding.

One special token, "<|endoftext|>" (id 0), separates documents in a token stream
(`encode_docs`). It is never produced by `encode` from text: the literal characters
"<|endoftext|>" inside a document encode as ordinary bytes (`encode_special_tokens`).

Caching: `build_tokenizer(corpora, vocab_size, min_frequency)` trains on the training documents of
all the corpora together (so one vocabulary serves pretraining on code and fine-tuning on docs) and
stores the tokenizer JSON, written atomically with its SHA-256 (`fileio.atomic_write_checked`), in a
cache folder under a name derived from SHA-256 over the corpora fingerprints (in order), the
vocabulary size, the minimum pair frequency, the `tokenizers` version and the recipe version below.
A second call with the same inputs loads that file instead of training; a cached file whose content
no longer matches its checksum is retrained and rewritten, with a message.

Choices:
- Only training documents are seen by the trainer, so validation text never shapes the vocabulary.
- No normalizer and no prefix space: encoding is a pure function of the string's bytes.
- `vocab_size` is an upper bound: a corpus with fewer mergeable pairs of frequency at least
  `min_frequency` gives a smaller vocabulary; `BPETokenizer.vocab_size` is the size actually got.
- Determinism: the BPE trainer of `tokenizers` picks the most frequent pair and breaks count ties
  by the pair's symbol ids, and the byte alphabet's ids are assigned in sorted order, so the same
  documents give the same merges whatever the thread count (RAYON_NUM_THREADS) or the process's
  hash seeds. (The known nondeterminism of the `tokenizers` library (its tracker, #1794) comes from
  continuing-subword prefixes, which this recipe does not use.) tests/test_data.py checks it by
  training in a second process with one thread and comparing the JSON byte for byte.
- Ids are returned as int32 NumPy arrays (token streams are long; batches widen to int64).
- Bounded training: one piece of the pre-tokenizer is a run of letters, digits or punctuation, or a
  run of whitespace, and the BPE trainer's work on a piece grows faster than its length (each
  merge rescans it), so one 5 MB "word", or a megabyte of blanks, would train for hours. The
  trainer therefore sees every document cut after each MAX_RUN consecutive non-whitespace
  characters and after each MAX_RUN consecutive whitespace characters (`training_pieces`): no
  piece is longer than MAX_RUN, and training time is linear in the text
  (tests/test_tokenizer_time.py). MAX_RUN = 128 cuts one run of non-whitespace of the default
  corpora and no run of whitespace (none is as long); encoding is not cut (it is linear already).
- Identity: the cached file stores its cache key with the text (`fileio.atomic_write_checked`), so
  a valid tokenizer of other data copied under this name is refused (ForeignFileError naming the
  file), not used; a damaged file is trained again, with a message.
"""

import hashlib
import json
import os
import re

import numpy as np
import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ..core.backend import to_numpy
from .corpus import Corpus
from ..core.errors import CorruptFileError, bad_type, bad_value, positive_int
from ..core.fileio import (atomic_write_checked, atomic_write_text, bad_path, default_cache_dir, ensure_writable_dir,
    read_checked, read_json, remove_stale_temps, sha256_hex)
from ..core.progress import note

EOT = "<|endoftext|>"
RECIPE = "minisft-bytelevel-bpe-v3"  # v2: training pieces bounded by MAX_RUN; v3: whitespace runs too
N_BYTES = 256
MAX_RUN = 128
_RUN = re.compile(r"\S{%d}|\s{%d}" % (MAX_RUN, MAX_RUN))


class BPETokenizer:
    """A trained byte-level BPE tokenizer: text <-> 1-D int32 arrays of token ids."""

    def __init__(self, hf_tokenizer, path=None):
        if not isinstance(hf_tokenizer, Tokenizer):
            raise bad_type("hf_tokenizer", hf_tokenizer, "a tokenizers.Tokenizer")
        if hf_tokenizer.token_to_id(EOT) is None:
            raise bad_value("hf_tokenizer", hf_tokenizer, f"a tokenizer with the special token {EOT!r}")
        hf_tokenizer.encode_special_tokens = True
        self._tok = hf_tokenizer
        self.path = path
        self.eot_id = hf_tokenizer.token_to_id(EOT)
        self.vocab_size = hf_tokenizer.get_vocab_size()

    @classmethod
    def from_str(cls, text, path=None):
        """Load from the tokenizer JSON string `text` (as written by `to_str`)."""
        try:
            return cls(Tokenizer.from_str(text), path)
        except Exception as e:  # tokenizers raises a plain Exception on a malformed description
            expected = f"a byte-level BPE tokenizer JSON ({e})"
            raise (bad_value("text", text, expected) if path is None else bad_path("path", path, expected)) from e

    @classmethod
    def from_file(cls, path):
        """Load a tokenizer JSON file; a missing or corrupt file names `path` in the error."""
        return cls.from_str(json.dumps(read_json(path)), path=path)

    def to_str(self):
        """The tokenizer as a JSON string."""
        return self._tok.to_str()

    def fingerprint(self):
        """SHA-256 (hex) of the tokenizer JSON: equal fingerprints encode every text alike."""
        return sha256_hex(self.to_str().encode("utf-8"))

    def save(self, path):
        """Write the tokenizer JSON to `path` atomically; return the Path."""
        return atomic_write_text(path, self.to_str())

    @staticmethod
    def _check_text(arg, text):
        if not isinstance(text, str):
            raise bad_type(arg, text, "a str")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            snippet = text[max(e.start - 10, 0) : e.end + 10]
            raise bad_value(arg, snippet, "text with a UTF-8 encoding (no lone surrogates)") from e

    def encode(self, text):
        """Token ids of `text`: (n,) int32."""
        self._check_text("text", text)
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def encode_docs(self, docs):
        """One stream of the documents `docs`, each followed by the end-of-text id: (n,) int32."""
        if isinstance(docs, str):
            raise bad_type("docs", docs, "a list of strings (documents), not one string")
        docs = list(docs)
        for doc in docs:
            self._check_text("docs", doc)
        encodings = self._tok.encode_batch(docs, add_special_tokens=False)
        pieces = [np.asarray(e.ids + [self.eot_id], dtype=np.int32) for e in encodings]
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)

    def decode(self, ids):
        """The text of token ids `ids` ((n,) integers in [0, vocab_size)); end-of-text shows as "<|endoftext|>".

        Decoding a slice that cuts a multi-byte character gives U+FFFD for the cut bytes.
        """
        ids = to_numpy(ids)
        if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
            raise bad_type("ids", ids, f"a 1-D array of integer token ids (got shape {ids.shape}, dtype {ids.dtype})")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            bad = ids[(ids < 0) | (ids >= self.vocab_size)][0]
            raise bad_value("ids", ids, f"token ids in [0, {self.vocab_size}) (found {int(bad)})")
        return self._tok.decode(ids.astype(np.int64).tolist(), skip_special_tokens=False)


def training_pieces(doc):
    """`doc` cut after every MAX_RUN consecutive non-whitespace characters and every MAX_RUN
    consecutive whitespace characters (the pieces concatenate to `doc`; no piece holds a longer run
    of either), in one linear pass."""
    if not isinstance(doc, str):
        raise bad_type("doc", doc, "a str (a document)")
    start = 0
    for m in _RUN.finditer(doc):
        yield doc[start : m.end()]
        start = m.end()
    yield doc[start:]


def _train(docs, vocab_size, min_frequency):
    """Train a fresh byte-level BPE on the strings `docs` (the single training entry point)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((piece for doc in docs for piece in training_pieces(doc)), trainer)
    return tok


def _check_settings(corpora, vocab_size, min_frequency):
    """(corpora as a list, vocab_size, min_frequency) after checking them (build_tokenizer's doc)."""
    corpora = [corpora] if isinstance(corpora, Corpus) else corpora
    if not isinstance(corpora, (list, tuple)) or not corpora or not all(isinstance(c, Corpus) for c in corpora):
        raise bad_type("corpora", corpora, "a Corpus or a non-empty list of Corpus")
    vocab_size = positive_int("vocab_size", vocab_size)
    if vocab_size < N_BYTES + 1:
        raise bad_value("vocab_size", vocab_size, f"at least {N_BYTES + 1} (256 bytes and {EOT})")
    return list(corpora), vocab_size, positive_int("min_frequency", min_frequency)


def cache_key(corpora, vocab_size, min_frequency):
    """SHA-256 (hex) naming the cached tokenizer of these corpora and settings."""
    corpora, vocab_size, min_frequency = _check_settings(corpora, vocab_size, min_frequency)
    settings = {
        "recipe": RECIPE,
        "tokenizers": tokenizers.__version__,
        "vocab_size": vocab_size,
        "min_frequency": min_frequency,
        "corpora": [c.fingerprint() for c in corpora],
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def build_tokenizer(corpora, vocab_size=512, min_frequency=2, cache_dir=None):
    """Load the cached tokenizer of `corpora` and settings, training and caching it on a miss.

    corpora: a Corpus or a non-empty list of them; the trainer sees all their training documents.
    vocab_size: the largest vocabulary wanted, at least 257 (256 bytes and end-of-text).
    min_frequency: a pair is merged only if it occurs at least this often.
    cache_dir: folder of cached tokenizers (created if needed); default `fileio.default_cache_dir()`.
    Returns a BPETokenizer whose `path` is the cached file (the tokenizer JSON with its checksum:
    read it with `fileio.read_checked`; `BPETokenizer.save` writes a plain tokenizer JSON).
    """
    corpora, vocab_size, min_frequency = _check_settings(corpora, vocab_size, min_frequency)
    folder = ensure_writable_dir(default_cache_dir() if cache_dir is None else cache_dir, "cache_dir")
    remove_stale_temps(folder)
    key = cache_key(corpora, vocab_size, min_frequency)
    path = folder / f"bpe-{vocab_size}-{key[:24]}.json"
    if os.path.lexists(path):
        try:
            return BPETokenizer.from_str(read_checked(path, key), path)
        except CorruptFileError as e:
            note(f"the cached tokenizer is damaged ({e}); training it again")
    tok = BPETokenizer(_train([d for c in corpora for d in c.train_docs], vocab_size, min_frequency), path)
    atomic_write_checked(path, tok.to_str(), key)
    return tok


HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def save_hf_tokenizer(tokenizer, out_dir, model_max_length):
    """Write `tokenizer` (a BPETokenizer) into the folder `out_dir` as Hugging Face tokenizer files;
    returns the folder's Path. Files are written atomically:

        tokenizer.json            the tokenizer JSON itself (`to_str()`): `tokenizers.Tokenizer.from_file`
                                  loads it; set its `encode_special_tokens = True` to encode as minisft
                                  does a text holding the literal "<|endoftext|>" (as bytes, not id 0)
        tokenizer_config.json     for `transformers.AutoTokenizer.from_pretrained(out_dir)` and
                                  `PreTrainedTokenizerFast.from_pretrained(out_dir)`: a fast tokenizer with
                                  "<|endoftext|>" as its end-of-text, padding and unknown token,
                                  `split_special_tokens` on (so every text encodes as minisft encodes it),
                                  no prefix space, `model_max_length` = the model's positions
        special_tokens_map.json   the same special tokens

    Encoding a text with either HF class gives minisft's `encode(text)` ids
    (tests/test_export.py::test_hf_tokenizer_encodes_as_minisft)."""
    from ..core.fileio import atomic_write_json

    if not isinstance(tokenizer, BPETokenizer):
        raise bad_type("tokenizer", tokenizer, "a minisft BPETokenizer")
    model_max_length = positive_int("model_max_length", model_max_length)
    folder = ensure_writable_dir(out_dir, "out_dir")
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "pad_token": EOT}
    config = dict(special, tokenizer_class="PreTrainedTokenizerFast", split_special_tokens=True, add_prefix_space=False,
                  clean_up_tokenization_spaces=False, model_max_length=model_max_length)
    atomic_write_text(folder / HF_TOKENIZER_FILES[0], tokenizer.to_str())
    atomic_write_json(folder / HF_TOKENIZER_FILES[1], config)
    atomic_write_json(folder / HF_TOKENIZER_FILES[2], special)
    return folder
