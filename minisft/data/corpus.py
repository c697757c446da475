"""Text corpora with deterministic train / validation / test splits, embedded by default (no download).

Two corpora ship with every Python interpreter (minisft.data.stdlib): "code", the standard library's
sources without their docstrings and comments, and "prose", those docstrings and comments plus the
documentation topics of `pydoc_data`. Users may pass their own files or folders instead (folders are
walked recursively for a set of suffixes). A document is one file or one topic.

The splits and the size cap are functions of the documents alone, never of the order in which the
filesystem lists them. Each document has a key (its path relative to the folder it was found in,
with "/" separators, or its topic name) and a number u(key) in [0, 1): the first 8 bytes of
SHA-256(key) read as a big-endian integer, divided by 2**64. Then, with v = val_fraction and
t = test_fraction,

    validation  = documents with u(key) <  v,
    test        = documents with v <= u(key) < v + t,
    training    = documents with u(key) >= v + t,

so a larger `val_fraction` only moves documents from test or training to validation, and a larger
`test_fraction` only moves documents from training to test. The validation split is for choices
(learning rates), the test split for the numbers a study reports, never for a choice. Within each
split the documents are ordered by (u(key), key), a reproducible shuffle, and `max_chars` keeps that
order's prefix: whole documents while they fit, then the first characters of the next one, so each
split holds exactly min(max_chars, its total) characters and a small cap still samples the whole
library rather than its alphabetically first files.

Choices:
- When splitting by document would leave a split empty (a single file, or very few), each document
  is cut by position instead: its last round(len * t) characters go to test, the round(len * v)
  before them to validation, the rest to training. `Corpus.split_by` records which rule was used
  ("document" or "position").
- Files are read as bytes and decoded strictly (UTF-8 unless `encoding` says otherwise; no
  newline translation), so the text is exactly the file's content: a byte that is not valid in the
  encoding is an error naming the file and the offset (pass `encoding="latin-1"`, or `--encoding`),
  never a silent U+FFFD. A file holding a NUL character is binary (an executable, an image) and is
  refused. A file decoded by another encoding that is also clean UTF-8 text reading otherwise (an
  ASCII file read as UTF-16) gets a note saying so. Bytes-to-bytes codecs (zlib, base64, hex,
  rot13) are not text encodings and are refused. Only regular files are read, each at most `max_file_bytes`
  (`fileio.read_regular_file`: FIFOs and devices are refused without blocking). Hidden files and
  folders (names starting with ".") and `__pycache__` are skipped when walking a folder; a file
  reached twice (say, named and inside a named folder) counts once; empty files contribute nothing.
- `Corpus.fingerprint()` hashes the documents only: two corpora with the same documents in each
  split share cached artefacts whatever settings produced them.
"""

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import bad_type, bad_value, positive_int, ratio_in, require
from ..core.fileio import MAX_FILE_BYTES, bad_path, read_regular_file, text_codec
from ..core.progress import note
from . import stdlib

DEFAULT_SUFFIXES = (".txt", ".md", ".py", ".rst")
SPLITS = ("train", "val", "test")
EMBEDDED = {"code": stdlib.code_entries, "prose": stdlib.prose_entries}


@dataclass(frozen=True)
class Corpus:
    """Named training, validation and test documents (tuples of strings)."""

    name: str
    train_docs: tuple
    val_docs: tuple
    test_docs: tuple = ()
    split_by: str = "document"

    def __post_init__(self):
        for arg in ("train_docs", "val_docs", "test_docs"):
            docs = getattr(self, arg)
            if not isinstance(docs, (list, tuple)) or not all(isinstance(d, str) for d in docs):
                raise bad_type(arg, docs, "a list of strings (documents)")
            object.__setattr__(self, arg, tuple(docs))

    def docs(self, split):
        """The documents of `split` ("train", "val" or "test")."""
        if split not in SPLITS:
            raise bad_value("split", split, f"one of {SPLITS}")
        return getattr(self, f"{split}_docs")

    def chars(self):
        """{split: characters}."""
        return {split: sum(len(d) for d in self.docs(split)) for split in SPLITS}

    def fingerprint(self):
        """SHA-256 (hex) of the documents of every split, each length-prefixed."""
        h = hashlib.sha256(b"minisft-corpus-v2")
        for split in SPLITS:
            docs = self.docs(split)
            h.update(split.encode() + len(docs).to_bytes(8, "big"))
            for doc in docs:
                data = doc.encode("utf-8", errors="surrogatepass")
                h.update(len(data).to_bytes(8, "big") + data)
        return h.hexdigest()


def _unit_hash(key):
    """u(key) in [0, 1): the first 8 bytes of SHA-256(key), big-endian, over 2**64."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


def _read_text(path, encoding="utf-8", max_bytes=MAX_FILE_BYTES):
    """The text of the regular file `path`, decoded strictly; binary files are refused."""
    data = read_regular_file(path, "source", max_bytes)
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        raise bad_path("source", path, f"text in the {encoding} encoding (byte {e.start} is not; "
                       "if the file is text in another encoding, say which: encoding=/--encoding, e.g. latin-1)") from None
    nul = text.find("\x00")
    if nul >= 0:
        raise bad_path("source", path, f"a text file (character {nul} is NUL: a binary file?)")
    if encoding != "utf-8" and _reads_otherwise_as_utf8(data, text):
        note(f"{path}: decoded as {encoding}, but it is also clean UTF-8 text, which reads otherwise; if it is "
             "UTF-8, run without --encoding")
    return text


def _reads_otherwise_as_utf8(data, text):
    """Whether the bytes `data`, decoded into `text` by another encoding, are also UTF-8 text
    without NUL characters that differs from `text` (say, an ASCII file read as UTF-16: CJK
    ideographs). A file really in UTF-16 or UTF-32 holds NUL bytes, and one in Latin-1 with accents
    is not valid UTF-8, so neither is flagged."""
    try:
        utf8 = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return "\x00" not in utf8 and utf8 != text


def _take(texts, max_chars):
    """The prefix of `texts` (an iterable of strings) holding min(max_chars, total) characters.

    Empty strings are dropped; the last document kept may be cut short to meet the cap exactly.
    """
    out, total = [], 0
    for text in texts:
        if max_chars is not None:
            text = text[: max_chars - total]
        if text:
            out.append(text)
            total += len(text)
        if total == max_chars:
            break
    return out


def _position_cuts(text, val_fraction, test_fraction):
    """Where the position rule cuts a document: (end of training, end of validation)."""
    test_start = len(text) - round(len(text) * test_fraction)
    return test_start - round(len(text) * val_fraction), test_start


def _split(entries, val_fraction, test_fraction, max_chars):
    """(train_docs, val_docs, test_docs, split_by) from `entries`, a list of (key, read) with read() -> text."""
    ranked = sorted(entries, key=lambda e: (_unit_hash(e[0]), e[0]))
    which = ["val" if u < val_fraction else "test" if u < val_fraction + test_fraction else "train"
             for u in (_unit_hash(key) for key, _ in ranked)]
    out = [_take((read() for (_, read), w in zip(ranked, which) if w == split), max_chars) for split in SPLITS]
    if all(out):
        return (*out, "document")
    texts = [read() for _, read in ranked]
    cuts = [_position_cuts(t, val_fraction, test_fraction) for t in texts]
    pieces = ([t[:a] for t, (a, _) in zip(texts, cuts)], [t[a:b] for t, (a, b) in zip(texts, cuts)],
              [t[b:] for t, (_, b) in zip(texts, cuts)])
    return (*(_take(piece, max_chars) for piece in pieces), "position")


def _path_entries(paths, suffixes, encoding, max_file_bytes):
    """(key, read) for every file named in `paths` or found under a folder named there (errors name
    the path as the user wrote it, not where a link points)."""
    found = {}  # resolved path -> (key, path as given)
    for p in paths:
        if not isinstance(p, (str, os.PathLike)):
            raise bad_type("source", p, '"code", "prose", or a path / list of paths to text files or folders')
        if str(p) == "":
            raise bad_path("source", p, "a path to a text file or folder (an empty string is no path)")
        p = Path(p)
        if p.exists() and not (p.is_file() or p.is_dir()):
            raise bad_path("source", p, "a regular file or a folder (this is a FIFO, a device or a socket)")
        if p.is_file():
            if p.stat().st_size == 0:
                raise bad_path("source", p, "a non-empty text file")
            found.setdefault(p.resolve(), (p.name, p))
        elif p.is_dir():
            before = len(found)
            for folder, dirs, files in os.walk(p):
                dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
                for name in files:
                    if not name.startswith(".") and name.lower().endswith(suffixes):
                        path = Path(folder) / name
                        found.setdefault(path.resolve(), (f"{p.name}/{path.relative_to(p).as_posix()}", path))
            if len(found) == before:
                raise bad_path("source", p, f"a folder containing files ending in one of {suffixes}")
        else:
            raise bad_path("source", p, '"code", "prose", or an existing file or folder')
    return [(key, functools.partial(_read_text, str(path), encoding, max_file_bytes)) for key, path in found.values()]


def load_corpus(source, max_chars=None, val_fraction=0.1, test_fraction=0.1, suffixes=DEFAULT_SUFFIXES,
                encoding="utf-8", max_file_bytes=MAX_FILE_BYTES):
    """Load a corpus and split it into training, validation and test documents (see the module doc).

    source: "code" (standard-library code), "prose" (its docstrings, comments and documentation
        topics), or a path or list of paths (str or PathLike) to text files and folders; a folder is
        searched recursively for files whose names end in one of `suffixes` (case-insensitive).
    max_chars: None, or a positive cap on the characters of each split.
    val_fraction, test_fraction: in (0, 1), the expected shares of documents that go to validation
        and to test (together less than 1).
    encoding: the text encoding of the user's files (decoded strictly); the embedded corpora are UTF-8.
    max_file_bytes: the largest file read (a larger one is an error, not a truncation).
    """
    if max_chars is not None:
        max_chars = positive_int("max_chars", max_chars)
    val_fraction = ratio_in("val_fraction", val_fraction, 0.0, 1.0, low_open=True, high_open=True)
    test_fraction = ratio_in("test_fraction", test_fraction, 0.0, 1.0, low_open=True, high_open=True)
    require(val_fraction + test_fraction < 1, "test_fraction", test_fraction,
            f"less than 1 - val_fraction = {1 - val_fraction} (some documents must train)")
    if isinstance(suffixes, str) or not suffixes or not all(isinstance(s, str) and s.startswith(".") for s in suffixes):
        raise bad_value("suffixes", suffixes, 'a non-empty list of file suffixes such as ".txt"')
    encoding = text_codec("encoding", encoding)
    max_file_bytes = positive_int("max_file_bytes", max_file_bytes)
    if isinstance(source, str) and source in EMBEDDED:
        entries, origin = EMBEDDED[source]()
        name = source
    else:
        if not isinstance(source, (str, os.PathLike, list, tuple)):
            raise bad_type("source", source, '"code", "prose", or a path / list of paths to text files or folders')
        paths = [source] if isinstance(source, (str, os.PathLike)) else list(source)
        if not paths:
            raise bad_value("source", source, "a non-empty list of paths")
        entries = _path_entries(paths, tuple(s.lower() for s in suffixes), encoding, max_file_bytes)
        name = origin = ",".join(str(p) for p in paths)
    train, val, test, split_by = _split(entries, val_fraction, test_fraction, max_chars)
    if not (train and val and test):
        total = sum(len(read()) for _, read in entries)
        expected = (
            "a corpus with some text"
            if total == 0
            else f"enough text for a training, a validation and a test split (found {total} characters)"
        )
        raise bad_path("source", origin, expected)
    return Corpus(name, train, val, test, split_by)

