"""The embedded corpora: two domains cut from the standard library of the running interpreter, so
every machine has them and nothing is downloaded.

- "code" (the source domain): every *.py file of the standard library (`sysconfig.get_paths()
  ["stdlib"]`) without its test suites, installed packages, build-configuration files and
  `pydoc_data`, with its docstrings and comments removed (`split_source`);
- "prose" (the target domain): the English text of the same files, their docstrings and comments,
  one document per file, plus the documentation topics of `pydoc_data.topics.topics`, one
  document per topic.

The two domains share no text: a character of a source file is either code or prose. Each file's
code and prose carry the same key (its path under the standard library), so both land in the same
split (minisft.data.corpus: the split is a function of the key): the prose of a test file comes from
files whose code the pretrained model never saw.

`split_source(text)`: docstrings are the string literals that are the first statement of a module,
class or function body (Python's definition, `ast.get_docstring`); comments are tokenizer COMMENT
tokens, except a first-line `#!` and PEP 263 encoding declarations. Code: the text with those
pieces cut out, lines left blank by a cut removed and trailing spaces stripped; lines that were
blank stay. Prose: the docstrings (`inspect.cleandoc`) and comments (without "#" and the spaces
after it) in source order, a comment run on consecutive lines as one paragraph, paragraphs separated
by a blank line; comments without a letter (rulers such as "# ----") are dropped. A file that does
not parse keeps its docstrings in the code (its comments are still found by the tokenizer); one
that does not tokenize is code only.
"""

import ast
import functools
import inspect
import io
import os
import re
import sysconfig
import tokenize
from pathlib import Path

from ..core.fileio import read_regular_file

# Folders of the standard library that are not its own source: test suites, installed third-party
# packages, byte-code caches, and pydoc_data (the documentation topics, which are prose).
SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "pydoc_data"})
_ENCODING_DECLARATION = re.compile(r"^[ \t\f]*#.*?coding[:=][ \t]*[-\w.]+")


def _docstring_spans(text, lines):
    """[(start, end)] character offsets of every docstring literal of `text`."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))

    def offset(lineno, col_bytes):  # ast columns count UTF-8 bytes
        line = lines[lineno - 1]
        return starts[lineno - 1] + len(line.encode("utf-8")[:col_bytes].decode("utf-8"))

    spans = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                spans.append((offset(first.lineno, first.col_offset), offset(first.end_lineno, first.end_col_offset),
                              first.lineno, inspect.cleandoc(first.value.value)))
    return spans


def _comment_spans(text, lines):
    """[(start, end, line number, comment text)] of every comment token worth keeping."""
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    spans = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type != tokenize.COMMENT:
                continue
            (row, col), (_, end_col) = tok.start, tok.end
            if (row == 1 and tok.string.startswith("#!")) or (row <= 2 and _ENCODING_DECLARATION.match(tok.string)):
                continue
            spans.append((starts[row - 1] + col, starts[row - 1] + end_col, row, tok.string.lstrip("#").strip()))
    except (tokenize.TokenError, SyntaxError):
        return None
    return spans


def split_source(text):
    """(code, prose) of a Python source text (module docstring)."""
    lines = text.splitlines(keepends=True)
    comments = _comment_spans(text, lines)
    if comments is None:
        return text, ""
    pieces = sorted([(s, e, row, doc, "doc") for s, e, row, doc in _docstring_spans(text, lines)]
                    + [(s, e, row, c, "comment") for s, e, row, c in comments])
    code, at, paragraphs, last_comment_row = [], 0, [], None
    touched = set()
    for start, end, row, words, kind in pieces:
        code.append(text[at:start] + "\n" * text.count("\n", start, end))  # line numbers kept
        at = end
        first = text.count("\n", 0, start)
        touched.update(range(first, first + text.count("\n", start, end) + 1))
        if kind == "comment":
            if not re.search(r"[^\W\d_]", words):
                continue
            if last_comment_row == row - 1 and paragraphs:
                paragraphs[-1] += "\n" + words
            else:
                paragraphs.append(words)
            last_comment_row = row
        else:
            if words:
                paragraphs.append(words)
            last_comment_row = None
    code.append(text[at:])
    kept = []
    for i, line in enumerate("".join(code).splitlines(keepends=True)):
        if i in touched:
            if not line.strip():
                continue
            line = line.rstrip() + "\n"
        kept.append(line)
    return "".join(kept), "\n\n".join(paragraphs) + ("\n" if paragraphs else "")


def stdlib_root():
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files():
    """[(key, path)] of the standard library's own *.py files, key = the path under its root with
    "/" separators (module docstring)."""
    root = stdlib_root()
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("config-"))
        for name in sorted(files):
            if name.endswith(".py") and not name.startswith("_sysconfigdata"):
                path = Path(folder) / name
                out.append((path.relative_to(root).as_posix(), path))
    return out


@functools.lru_cache(maxsize=None)
def _split_file(path):
    return split_source(read_regular_file(path, "standard library source").decode("utf-8"))


def code_of(path):
    """The code of one standard-library file (its docstrings and comments removed)."""
    return _split_file(str(path))[0]


def prose_of(path):
    """The docstrings and comments of one standard-library file."""
    return _split_file(str(path))[1]


def code_entries():
    """(key, read) of every document of the "code" domain."""
    return [(key, functools.partial(code_of, path)) for key, path in stdlib_files()], str(stdlib_root())


def prose_entries():
    """(key, read) of every document of the "prose" domain: the files' prose, then the topics."""
    from pydoc_data.topics import topics

    files = [(key, functools.partial(prose_of, path)) for key, path in stdlib_files()]
    return files + [(f"pydoc_data.topics/{key}", functools.partial(str, text)) for key, text in sorted(topics.items())], \
        f"{stdlib_root()} (docstrings and comments) and pydoc_data.topics"
