"""Corpora, the byte-level BPE tokenizer and batching (minisft/data/corpus.py, tokenizer.py, batches.py).

Oracles: the split and cap rules recomputed from their definitions (SHA-256 of the key), the
standard library re-listed with pathlib, pair counts of the byte-level pieces for the first BPE
merge, an independent process (one thread) for training determinism, and brute-force window
positions for batching.
"""

import ast
import collections
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import sysconfig
import tokenize
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import minisft.data.tokenizer as tokenizer_mod
from minisft.data import corpus as corpus_mod
from minisft.core.backend import to_numpy
from minisft.data.batches import TokenStream, corpus_streams, random_windows, validation_batches
from minisft.data.corpus import Corpus, load_corpus
from minisft.data.stdlib import split_source
from minisft.data.tokenizer import EOT, BPETokenizer, build_tokenizer

REPO = Path(__file__).resolve().parents[1]
SMALL_CHARS = 200_000
SMALL_VOCAB = 320
# `xp` is a module (stateless), so sharing it across hypothesis examples is safe.
with_xp = settings(suppress_health_check=[*settings().suppress_health_check, HealthCheck.function_scoped_fixture])


def u(key):
    """The split coordinate of a document key, from its definition in the corpus module doc."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def _write_tree(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())


def n_chars(corpus, split):
    return sum(map(len, corpus.docs(split)))


@pytest.fixture(scope="module")
def small():
    return tuple(load_corpus(kind, max_chars=SMALL_CHARS) for kind in ("code", "prose"))


@pytest.fixture(scope="module")
def tok(small, tmp_path_factory):
    return build_tokenizer(small, vocab_size=SMALL_VOCAB, cache_dir=tmp_path_factory.mktemp("tok-cache"))


# ----------------------------------------------------------------------------------------- corpora


def _stdlib_files():
    """The standard library's own *.py files, listed with pathlib (the oracle of the file set)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "pydoc_data"}
    # site-packages is skipped while listing only because it is large; the filter below excludes it too
    tops = [top for top in root.iterdir() if top.name != "site-packages"]
    paths = [p for top in tops for p in ([top] if top.is_file() else top.rglob("*"))]
    out = {}
    for p in (p for p in paths if p.suffix == ".py"):
        folders = p.relative_to(root).parts[:-1]
        if skip.isdisjoint(folders) and not any(f.startswith("config-") for f in folders):
            if not p.name.startswith("_sysconfigdata"):
                out[p.relative_to(root).as_posix()] = p
    return root, out


def test_code_and_prose_corpora_cover_the_stdlib_files_and_the_topics_in_every_split():
    """Every standard-library file gives one code and one prose document (an empty one is dropped),
    the topics are prose documents, and each document sits in the split its key's u places it in:
    validation u < 0.1, test 0.1 <= u < 0.2, training the rest."""
    from pydoc_data.topics import topics

    from minisft.data.stdlib import code_of, prose_of

    root, files = _stdlib_files()
    code, prose = load_corpus("code"), load_corpus("prose")

    def split_of(key):
        return "val" if u(key) < 0.1 else "test" if u(key) < 0.2 else "train"

    for split in ("train", "val", "test"):
        want_code = sorted(code_of(p) for k, p in files.items() if split_of(k) == split and code_of(p))
        want_prose = sorted([prose_of(p) for k, p in files.items() if split_of(k) == split and prose_of(p)]
                            + [t for k, t in topics.items() if split_of(f"pydoc_data.topics/{k}") == split and t])
        assert sorted(code.docs(split)) == want_code, split
        assert sorted(prose.docs(split)) == want_prose, split
    assert code.split_by == prose.split_by == "document"
    for excluded in ("pydoc_data/topics.py", "test/test_grammar.py", "idlelib/idle_test/htest.py"):
        assert excluded not in files


def _significant_tokens(text, drop=()):
    """(type, string) of every token but layout and comments, skipping the tokens that start at `drop`."""
    layout = {tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT, tokenize.ENDMARKER}
    return [(t.type, t.string) for t in tokenize.generate_tokens(io.StringIO(text).readline)
            if t.type not in layout and t.start not in drop]


def _docstrings(text):
    """{(line, column): cleaned docstring} of every module, class and function docstring (ast's definition)."""
    out = {}
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc is not None:
                first = node.body[0]
                line = text.splitlines()[first.lineno - 1]
                out[(first.lineno, len(line.encode()[:first.col_offset].decode()))] = doc
    return out


SOURCES = {
    "everything": ('#!/usr/bin/env python3\n# -*- coding: utf-8 -*-\n"""Module doc.\n\n    Indented."""\n'
                   "import os  # the OS\n\n# ------\n# A block\n# of two lines.\ndef f(x):\n"
                   '    """The doc of f."""\n    s = "not a docstring"  # trailing note\n    return x\n\n\n'
                   "class C:\n    'Class doc'\n    async def g(self):\n        r'''raw doc'''\n        pass\n"),
    "no prose": "x = 1\ny = [1,\n     2]\n",
    "only a docstring": '"""Only this."""\n',
    "bytes and f-strings are not docstrings": 'b"no"\nf"no {1}"\nx = 1  # 100% sure\n',
    "unicode columns": 'def f():\n    """é ✓ doc"""  # ümlaut ☃\n    return "é"\n',
}


def _check_split(text):
    """split_source against the tokenizer and ast: the code holds exactly the source's tokens minus its
    docstring literals and comments, in order, and no comment; the prose holds every docstring
    (cleaned) and every comment with a letter."""
    code, prose = split_source(text)
    docs = _docstrings(text)
    assert _significant_tokens(code) == _significant_tokens(text, drop=set(docs))
    left = [t for t in tokenize.generate_tokens(io.StringIO(code).readline) if t.type == tokenize.COMMENT]
    assert all(c.start[0] <= 2 and (c.string.startswith("#!") or "coding" in c.string) for c in left), left
    comments = [t.string.lstrip("#").strip() for t in tokenize.generate_tokens(io.StringIO(text).readline)
                if t.type == tokenize.COMMENT and re.search(r"[^\W\d_]", t.string)
                and not (t.start[0] == 1 and t.string.startswith("#!")) and "coding:" not in t.string]
    for piece in [*docs.values(), *comments]:
        assert piece in prose, piece
    return code, prose


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_split_source_keeps_every_code_token_and_every_docstring_and_comment(name):
    code, prose = _check_split(SOURCES[name])
    assert "not a docstring" not in prose and "import os" not in prose and "------" not in prose
    assert "#!/usr/bin/env" in code or not SOURCES[name].startswith("#!")  # a shebang is code, not prose


def test_split_source_on_standard_library_files():
    """The same properties on a sample of real files (every 25th by path)."""
    _, files = _stdlib_files()
    for key in sorted(files)[::25]:
        _check_split(files[key].read_text("utf-8"))


@given(f1=st.floats(0.05, 0.85), f2=st.floats(0.05, 0.85))
def test_validation_sets_are_nested_in_val_fraction(f1, f2):
    f1, f2 = sorted((f1, f2))
    a, b = load_corpus("prose", val_fraction=f1), load_corpus("prose", val_fraction=f2)
    assume(a.split_by == b.split_by == "document")
    assert set(a.val_docs) <= set(b.val_docs)
    assert set(b.train_docs) <= set(a.train_docs)


@given(t1=st.floats(0.05, 0.85), t2=st.floats(0.05, 0.85))
def test_test_sets_only_take_training_documents_as_test_fraction_grows(t1, t2):
    t1, t2 = sorted((t1, t2))
    a, b = load_corpus("prose", test_fraction=t1), load_corpus("prose", test_fraction=t2)
    assume(a.split_by == b.split_by == "document")
    assert a.val_docs == b.val_docs
    assert set(a.test_docs) <= set(b.test_docs) and set(b.train_docs) <= set(a.train_docs)


@given(cap=st.integers(1, 600_000))
@example(cap=SMALL_CHARS)
def test_max_chars_keeps_exactly_a_prefix_of_the_uncapped_order(cap):
    full = load_corpus("prose")
    capped = load_corpus("prose", max_chars=cap)
    for split in ("train", "val", "test"):
        docs, ref = capped.docs(split), full.docs(split)
        assert n_chars(capped, split) == min(cap, n_chars(full, split))
        assert docs[:-1] == ref[: len(docs) - 1]
        assert ref[len(docs) - 1].startswith(docs[-1])


def test_code_corpus_cap_samples_across_the_library():
    full, capped = load_corpus("code"), load_corpus("code", max_chars=SMALL_CHARS)
    for split in ("train", "val", "test"):
        assert n_chars(capped, split) == min(SMALL_CHARS, n_chars(full, split))
        assert "".join(full.docs(split)).startswith("".join(capped.docs(split)))


USER_FILES = {
    **{f"pkg/m{i}.py": f"def f{i}():\n    return {i}\n" * (i + 1) for i in range(20)},
    **{f"notes/n{i}.txt": f"note {i} é 😀\n" * (i + 1) for i in range(20)},
    "README.MD": "# Title\n",
    "deep/a/b/c.rst": "Heading\n=======\n",
}
IGNORED_FILES = {
    ".hidden.txt": "hidden",
    ".git/config.txt": "git",
    "pkg/__pycache__/m.py": "cache",
    "data.bin": "binary",
    "empty.txt": "",
}


def test_user_folder_split_matches_definition(tmp_path):
    root = tmp_path / "corpus"
    _write_tree(root, {**USER_FILES, **IGNORED_FILES})
    got = load_corpus(root, val_fraction=0.25, test_fraction=0.2)
    ranked = sorted((u(f"corpus/{rel}"), f"corpus/{rel}", text) for rel, text in USER_FILES.items())
    assert got.split_by == "document"
    assert got.val_docs == tuple(t for h, _, t in ranked if h < 0.25)
    assert got.test_docs == tuple(t for h, _, t in ranked if 0.25 <= h < 0.45)
    assert got.train_docs == tuple(t for h, _, t in ranked if h >= 0.45)
    assert got.name == str(root)


def test_split_ignores_listing_order_and_location(tmp_path, monkeypatch):
    first, second = tmp_path / "a" / "corpus", tmp_path / "b" / "corpus"
    _write_tree(first, USER_FILES)
    _write_tree(second, dict(reversed(list(USER_FILES.items()))))
    walk = os.walk

    def reversed_walk(top, *args, **kwargs):
        for folder, dirs, files in walk(top, *args, **kwargs):
            dirs.reverse()
            yield folder, dirs, files[::-1]

    ref = load_corpus(first, val_fraction=0.3)
    monkeypatch.setattr(corpus_mod.os, "walk", reversed_walk)
    other = load_corpus(second, val_fraction=0.3)
    assert (ref.train_docs, ref.val_docs, ref.test_docs) == (other.train_docs, other.val_docs, other.test_docs)
    assert ref.fingerprint() == other.fingerprint()


def test_files_and_folders_together_count_each_file_once(tmp_path):
    _write_tree(tmp_path, USER_FILES)
    both = load_corpus([tmp_path / "pkg", tmp_path / "pkg" / "m3.py", str(tmp_path / "notes")], val_fraction=0.3)
    docs = both.train_docs + both.val_docs + both.test_docs
    assert len(docs) == 40 and len(set(docs)) == 40


def test_files_are_decoded_strictly_and_exactly(tmp_path):
    """UTF-8 text comes back byte for byte (no newline translation); Latin-1 bytes are an error
    naming the file and the offset, not U+FFFD, and decode exactly with encoding="latin-1"."""
    good = "café naïve ✓\r\n" * 50
    (tmp_path / "a.txt").write_bytes(good.encode())
    got = load_corpus(tmp_path / "a.txt")
    assert "".join(got.train_docs + got.val_docs + got.test_docs) == good
    raw = b"caf\xe9 au lait\r\n" * 50
    (tmp_path / "latin.txt").write_bytes(raw)
    with pytest.raises(ValueError, match=r"latin\.txt.*utf-8 encoding \(byte 3 is not.*latin-1"):
        load_corpus(tmp_path / "latin.txt")
    got = load_corpus(tmp_path / "latin.txt", encoding="latin-1")
    assert "".join(got.train_docs + got.val_docs + got.test_docs) == raw.decode("latin-1")
    with pytest.raises(ValueError, match="encoding"):
        load_corpus(tmp_path / "a.txt", encoding="no-such-codec")


def test_binary_files_fifos_devices_and_huge_files_are_refused(tmp_path):
    """An executable (NUL bytes) is refused, also inside a folder; a FIFO and a link to a device are
    refused without blocking (a blocking open would hang this test); a file above the cap is an
    error, not a truncation."""
    (tmp_path / "prog.txt").write_bytes(b"\x7fELF\x02\x01\x01\x00" + b"text" * 100)
    with pytest.raises(ValueError, match=r"prog\.txt.*NUL"):
        load_corpus(tmp_path / "prog.txt")
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("words " * 500)
    os.mkfifo(folder / "pipe.txt")
    with pytest.raises(ValueError, match=r"pipe\.txt.*regular file"):
        load_corpus(folder)
    (folder / "pipe.txt").unlink()
    (folder / "zero.txt").symlink_to("/dev/zero")
    with pytest.raises(ValueError, match=r"zero\.txt.*regular file"):
        load_corpus(folder)
    with pytest.raises(ValueError, match=r"zero\.txt.*regular file"):
        load_corpus(folder / "zero.txt")
    (folder / "zero.txt").unlink()
    with pytest.raises(ValueError, match=r"a\.txt.*at most 100 bytes"):
        load_corpus(folder, max_file_bytes=100)
    with pytest.raises(ValueError, match="source=''"):
        load_corpus("")


@given(n=st.integers(3, 3000), v=st.floats(0.01, 0.49), t=st.floats(0.01, 0.49))
@example(n=3, v=0.34, t=0.34)
def test_single_file_is_split_by_position(tmp_path_factory, n, v, t):
    text = "".join(chr(0x61 + i % 26) for i in range(n))
    path = tmp_path_factory.mktemp("one") / "one.txt"
    path.write_text(text)
    test_start = n - round(n * t)
    val_start = test_start - round(n * v)
    assume(0 < val_start < test_start < n)
    got = load_corpus(path, val_fraction=v, test_fraction=t)
    assert got.split_by == "position"
    assert got.train_docs == (text[:val_start],) and got.val_docs == (text[val_start:test_start],)
    assert got.test_docs == (text[test_start:],)


def test_fingerprint_is_content_addressed():
    a = Corpus("a", ["ab", "c"], ["d"])
    assert a.fingerprint() == Corpus("other name", ("ab", "c"), ("d",)).fingerprint()
    assert re.fullmatch("[0-9a-f]{64}", a.fingerprint())
    for b in (Corpus("a", ["a", "bc"], ["d"]), Corpus("a", ["ab"], ["c", "d"]), Corpus("a", ["ab", "c"], ["e"])):
        assert a.fingerprint() != b.fingerprint()


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        ({"max_chars": 0}, "max_chars"),
        ({"max_chars": -5}, "max_chars"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": float("nan")}, "val_fraction"),
        ({"suffixes": ".txt"}, "suffixes"),
        ({"suffixes": ["txt"]}, "suffixes"),
        ({"suffixes": []}, "suffixes"),
    ],
)
def test_bad_settings_name_the_argument(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        load_corpus("docs", **kwargs)


def test_bad_sources_name_the_path(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "tiny.txt").write_text("x")
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "x.bin").write_text("x")
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("")
    cases = {
        tmp_path / "missing": "existing file or folder",
        tmp_path / "empty.txt": "non-empty text file",
        tmp_path / "nothing": "files ending in",
        tmp_path / "blank": "some text",
        tmp_path / "tiny.txt": "enough text.*found 1 characters",
    }
    for path, why in cases.items():
        with pytest.raises(ValueError, match="source=.*" + re.escape(path.name) + ".*" + why):
            load_corpus(path)
    with pytest.raises(ValueError, match="source"):
        load_corpus([])
    with pytest.raises(TypeError, match="source"):
        load_corpus([3])
    with pytest.raises(TypeError, match="source"):
        load_corpus(42)
    with pytest.raises(TypeError, match="train_docs"):
        Corpus("x", "not a list", [])
    with pytest.raises(ValueError, match="split"):
        Corpus("x", ["a"], ["b"]).docs("validation")


# --------------------------------------------------------------------------------------- tokenizer


@given(text=st.text())
@example(text="")
@example(text=EOT)
@example(text="\x00\r\n\t é 😀 中文 \u200b\ufeff")
@example(text="   leading and trailing   ")
def test_decode_inverts_encode(tok, text):
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert tok.decode(ids) == text


def test_literal_end_of_text_is_ordinary_bytes(tok):
    assert tok.eot_id not in tok.encode(f"a{EOT}b").tolist()


@given(docs=st.lists(st.text(max_size=50), max_size=6))
def test_encode_docs_is_each_document_then_end_of_text(tok, docs):
    stream = tok.encode_docs(docs)
    expected = [i for d in docs for i in tok.encode(d).tolist() + [tok.eot_id]]
    assert stream.dtype == np.int32 and stream.tolist() == expected
    assert tok.decode(stream) == "".join(d + EOT for d in docs)


def test_vocabulary_size_and_compression(tok, small):
    assert tok.vocab_size == SMALL_VOCAB and tok.eot_id == 0
    for corpus in small:
        text = "".join(corpus.val_docs)
        assert len(tok.encode(text)) < len(text.encode("utf-8"))


def test_first_merge_is_the_most_frequent_byte_pair(tok, small):
    from tokenizers.pre_tokenizers import ByteLevel

    pre = ByteLevel(add_prefix_space=False)
    counts = collections.Counter()
    for doc in (d for c in small for d in c.train_docs):
        for piece, _ in pre.pre_tokenize_str(doc):
            counts.update(zip(piece, piece[1:]))
    merge = json.loads(tok.to_str())["model"]["merges"][0]
    pair = tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge)
    assert counts[pair] == max(counts.values()), (pair, counts[pair], counts.most_common(3))


def test_second_build_loads_the_cache(tok, small, monkeypatch):
    mtime = tok.path.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although the tokenizer is cached")

    monkeypatch.setattr(tokenizer_mod, "_train", no_training)
    again = build_tokenizer(small, vocab_size=SMALL_VOCAB, cache_dir=tok.path.parent)
    assert again.path == tok.path and tok.path.stat().st_mtime_ns == mtime
    assert again.to_str() == tok.to_str()
    with pytest.raises(AssertionError, match="retrained"):
        build_tokenizer(small, vocab_size=SMALL_VOCAB + 1, cache_dir=tok.path.parent)
    with pytest.raises(AssertionError, match="retrained"):
        build_tokenizer(small[1], vocab_size=SMALL_VOCAB, cache_dir=tok.path.parent)


def test_training_is_deterministic_across_processes_and_threads(tok, tmp_path):
    script = (
        "import sys; from minisft.data.corpus import load_corpus; from minisft.data.tokenizer import build_tokenizer; "
        f"corpora = [load_corpus(kind, max_chars={SMALL_CHARS}) for kind in ('code', 'prose')]; "
        f"print(build_tokenizer(corpora, vocab_size={SMALL_VOCAB}, cache_dir=sys.argv[1]).path)"
    )
    env = {**os.environ, "RAYON_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", script, str(tmp_path)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    other = Path(out.stdout.strip())
    assert other.parent == tmp_path and other.name == tok.path.name
    assert other.read_bytes() == tok.path.read_bytes()


def test_save_and_load_round_trip(tok, tmp_path):
    path = tok.save(tmp_path / "t.json")
    loaded = BPETokenizer.from_file(path)
    text = "for i in range(10):\n    print(i)  # 😀"
    assert loaded.encode(text).tolist() == tok.encode(text).tolist()
    assert loaded.eot_id == tok.eot_id and loaded.vocab_size == tok.vocab_size


def test_damaged_cache_is_retrained_with_a_message(small, tmp_path, capsys):
    """A cached tokenizer whose bytes changed (one flipped character, a truncation, a plain
    tokenizer JSON without its checksum) is not trusted: it is retrained, rewritten, and a message
    names the file."""
    tok = build_tokenizer(small[1], vocab_size=260, cache_dir=tmp_path)
    good = tok.path.read_bytes()
    i = good.index(b"merges")
    for bad in (good[:i] + b"X" + good[i + 1:], good[: len(good) // 2], tok.to_str().encode()):
        tok.path.write_bytes(bad)
        again = build_tokenizer(small[1], vocab_size=260, cache_dir=tmp_path)
        assert again.to_str() == tok.to_str() and tok.path.read_bytes() == good
        err = capsys.readouterr().err
        assert "damaged" in err and tok.path.name in err and "training it again" in err


@given(runs=st.lists(st.tuples(st.integers(0, 400), st.sampled_from(["a", "7", "=", "é", " ", "\n", "\t"]),
                               st.sampled_from([" ", "\n", "\t\t", "", "x"])), max_size=6))
@example(runs=[(tokenizer_mod.MAX_RUN, "a", ""), (1, "b", "")])
@example(runs=[(5_000, "x", "")])
@example(runs=[(5_000, " ", "")])
@example(runs=[(tokenizer_mod.MAX_RUN, " ", ""), (1, "\n", "")])
def test_training_pieces_partition_the_text_with_bounded_runs(runs):
    """BPE training sees every document cut so that no piece holds more than MAX_RUN non-whitespace,
    or whitespace, characters in a row (the bound that keeps training linear), and the pieces are
    the document."""
    doc = "".join(ch * n + sep for n, ch, sep in runs)
    pieces = list(tokenizer_mod.training_pieces(doc))
    assert "".join(pieces) == doc
    longest = max((len(r) for p in pieces for r in re.findall(r"\S+|\s+", p)), default=0)
    assert longest <= tokenizer_mod.MAX_RUN


def test_one_huge_word_trains_on_bounded_pieces(tmp_path, monkeypatch):
    """A 2 MB document with no whitespace: the BPE trainer is fed pieces whose runs are at most
    MAX_RUN long (a spy refuses anything longer before the trainer sees it: unbounded, this
    training takes hours), and the vocabulary learned is real (it compresses the word)."""
    real = tokenizer_mod.Tokenizer

    class Spy:
        def __init__(self, model):
            object.__setattr__(self, "_real", real(model))

        def __getattr__(self, name):
            return getattr(self._real, name)

        def __setattr__(self, name, value):
            setattr(self._real, name, value)

        def train_from_iterator(self, iterator, trainer, **kwargs):
            pieces = list(iterator)
            longest = max(len(r) for p in pieces for r in re.findall(r"\S+", p))
            assert longest <= tokenizer_mod.MAX_RUN, f"the trainer was fed a run of {longest} characters"
            self._real.train_from_iterator(pieces, trainer, **kwargs)

    monkeypatch.setattr(tokenizer_mod, "Tokenizer", Spy)
    word = "".join("abcdefghij"[(i * 7 + i // 3) % 10] for i in range(2_000_000))
    tok = build_tokenizer(Corpus("word", [word], [word[:1000]]), vocab_size=300, cache_dir=tmp_path)
    assert tok.vocab_size == 300 and len(tok.encode(word[:10_000])) < 10_000 / 2


def test_tokenizer_bad_input(tok, small, tmp_path):
    for vocab_size in (0, 256, 257 - 1):
        with pytest.raises(ValueError, match="vocab_size"):
            build_tokenizer(small, vocab_size=vocab_size, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="min_frequency"):
        build_tokenizer(small, min_frequency=0, cache_dir=tmp_path)
    for corpora in ([], "code", [small[0], "docs"]):
        with pytest.raises(TypeError, match="corpora"):
            build_tokenizer(corpora, cache_dir=tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="cache_dir=.*file"):
        build_tokenizer(small, cache_dir=tmp_path / "file" / "cache")
    with pytest.raises(TypeError, match="text"):
        tok.encode(b"bytes")
    with pytest.raises(ValueError, match="text=.*surrogates"):
        tok.encode("ok \ud800 not ok")
    with pytest.raises(TypeError, match="docs"):
        tok.encode_docs("one string")
    with pytest.raises(ValueError, match=r"ids=.*\[0, 320\) \(found 320\)"):
        tok.decode(np.array([1, 320]))
    with pytest.raises(ValueError, match=r"ids=.*found -1"):
        tok.decode([-1])
    with pytest.raises(TypeError, match=r"(?s)ids .*1-D.*shape \(2, 2\)"):
        tok.decode(np.zeros((2, 2), dtype=np.int64))


# ---------------------------------------------------------------------------------------- batches


@given(n=st.integers(2, 200), B=st.integers(1, 8), T=st.integers(1, 40), seed=st.integers(0, 2**32))
@example(n=2, B=1, T=1, seed=0)
@with_xp
def test_random_windows_are_contiguous_and_shifted(xp, n, B, T, seed):
    assume(n >= T + 1)
    x, y = random_windows(xp.arange(n), B, T, np.random.default_rng(seed))
    assert x.shape == y.shape == (B, T) and x.dtype == y.dtype == xp.int64
    x, y = to_numpy(x), to_numpy(y)
    starts = x[:, 0]
    assert ((starts >= 0) & (starts <= n - T - 1)).all()
    np.testing.assert_array_equal(x, starts[:, None] + np.arange(T))
    np.testing.assert_array_equal(y, x + 1)
    ids = np.random.default_rng(seed + 1).integers(0, 50, size=n)
    x2, y2 = random_windows(xp.asarray(ids), B, T, np.random.default_rng(seed))
    windows = np.stack([ids[s : s + T + 1] for s in starts])
    np.testing.assert_array_equal(to_numpy(x2), windows[:, :-1])
    np.testing.assert_array_equal(to_numpy(y2), windows[:, 1:])


def test_random_windows_reach_every_start_and_repeat_with_the_seed():
    n, T = 12, 6
    x, _ = random_windows(np.arange(n), 2000, T, np.random.default_rng(0))
    assert set(x[:, 0].tolist()) == set(range(n - T))
    a = random_windows(np.arange(n), 8, T, np.random.default_rng(5))
    b = random_windows(np.arange(n), 8, T, np.random.default_rng(5))
    assert all((p == q).all() for p, q in zip(a, b))


@given(n=st.integers(2, 400), B=st.integers(1, 6), T=st.integers(1, 30), data=st.data())
@with_xp
def test_validation_windows_are_disjoint_and_evenly_spaced(xp, n, B, T, data):
    m = n // (T + 1)
    assume(m >= B)
    n_batches = data.draw(st.none() | st.integers(1, m // B), label="n_batches")
    batches = validation_batches(xp.arange(n), B, T, n_batches)
    nb = m // B if n_batches is None else n_batches
    total = nb * B
    expected_starts = [(T + 1) * ((k * m) // total) for k in range(total)]
    assert len(batches) == nb
    starts = []
    for x, y in batches:
        x, y = to_numpy(x), to_numpy(y)
        assert x.shape == y.shape == (B, T) and x.dtype == np.int64
        np.testing.assert_array_equal(y, x + 1)
        np.testing.assert_array_equal(x, x[:, :1] + np.arange(T))
        starts += x[:, 0].tolist()
    assert starts == expected_starts
    assert all(b - a >= T + 1 for a, b in zip(starts, starts[1:]))
    if total == m:
        assert starts == list(range(0, m * (T + 1), T + 1))
    again = validation_batches(xp.arange(n), B, T, n_batches)
    assert all((p[0] == q[0]).all() for p, q in zip(batches, again))


def test_batches_bad_input():
    ids = TokenStream(np.arange(10), name="docs/val")
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"len\(docs/val\)=10: expected at least 11 tokens"):
        random_windows(ids, 2, 10, rng)
    with pytest.raises(ValueError, match=r"len\(docs/val\)=10: expected at least 12 tokens"):
        validation_batches(ids, 2, 5)
    with pytest.raises(ValueError, match=r"n_batches=3: expected at most 2: docs/val has 10 tokens"):
        validation_batches(ids, 1, 4, 3)
    for kwargs, arg in (({"batch_size": 0}, "batch_size"), ({"block_size": -1}, "block_size")):
        args = {"batch_size": 1, "block_size": 2, **kwargs}
        with pytest.raises(ValueError, match=arg):
            random_windows(ids, rng=rng, **args)
        with pytest.raises(ValueError, match=arg):
            validation_batches(ids, **args)
    with pytest.raises(ValueError, match="n_batches"):
        validation_batches(ids, 1, 2, 0)
    with pytest.raises(TypeError, match="rng"):
        random_windows(ids, 1, 2, 0)
    with pytest.raises(TypeError, match="ids"):
        TokenStream(np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(TypeError, match="ids"):
        random_windows(np.arange(10.0), 1, 2, rng)
    with pytest.raises(ValueError, match=r"code/train=.*\[-1, 3\].*\[0, inf\)"):
        TokenStream(np.array([3, -1]), name="code/train")
    with pytest.raises(ValueError, match=r"code/train=.*\[0, 8\)"):
        TokenStream(np.array([0, 8]), name="code/train", vocab_size=8)


def test_corpus_streams_are_named_encoded_documents(tok):
    corpus = Corpus("mini", ["def f():\n    pass\n", "x = 1\n"], ["y = 2\n"], ["z = 3\n"])
    train, val, test = corpus_streams(corpus, tok)
    assert (train.name, val.name, test.name) == ("mini/train", "mini/val", "mini/test")
    assert tok.decode(test.ids) == "z = 3\n" + EOT
    assert train.ids.tolist() == tok.encode_docs(corpus.train_docs).tolist()
    assert tok.decode(val.ids) == "y = 2\n" + EOT
