"""Every reference in the README and docs/ resolves inside the repository: a path in backticks or a link
(minisft/..., tests/..., reference_models/..., proofs/..., with globs and pytest ids) exists; no
path leaves the repository (../), no bare file name stands for a file elsewhere, and no sentence
points at an issue number a reader of the repository cannot open."""

import functools
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = ("minisft/", "tests/", "reference_models/", "proofs/", "docs/", ".ci/")
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
WRITTEN = ("compare.json", "compare-timings.json", "result.json", "manifest.json", "bench.json", "adapeft-front.json",
           "config.json", "adapter_config.json", "tokenizer.json")  # names of files the commands write


def references(text):
    """Path-like tokens: `code spans` and link targets."""
    spans = re.findall(r"`([^`\n]+)`", text)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t for t in spans + links if not t.startswith(("http://", "https://", "#"))]


@pytest.mark.parametrize("page", PAGES)
def test_every_repository_path_in_the_readme_exists(page):
    text = (ROOT / page).read_text()
    checked = 0
    for ref in references(text):
        for token in re.split(r"[\s,]+", ref):
            path = token.split("::")[0].rstrip(".:;)")
            if path.startswith(TOP):
                hits = list(ROOT.glob(path)) if any(c in path for c in "*?[") else [ROOT / path]
                assert any(h.exists() for h in hits), f"{page} names {token!r}, which is not in the repository"
                checked += 1
    assert page != "README.md" or checked >= 5


@pytest.mark.parametrize("page", PAGES)
def test_no_reference_leaves_the_repository_or_names_an_unreachable_issue(page):
    text = (ROOT / page).read_text()
    links = [link for link in re.findall(r"\]\(([^)\s#]+)", text) if not link.startswith(("http://", "https://"))]
    for link in links:  # a relative link resolves from the page's folder, inside the repository
        target = (ROOT / page).parent / link
        assert target.resolve().is_relative_to(ROOT) and target.exists(), f"{page} links {link!r}"
    for ref in references(text):
        assert "../" not in ref or ref in links, f"a path outside the repository: {ref}"
    assert not re.search(r"\bissue \d+", text, re.I), "an issue number a reader cannot open"
    for ref in references(text):
        if ref not in links and re.fullmatch(r"[\w.-]+\.(md|json|py)", ref) and ref not in WRITTEN:  # a bare name of a repository file
            hits = [h for h in ROOT.rglob(ref) if ".git" not in h.parts]
            unique_elsewhere = len(hits) == 1 and hits[0].parent != ROOT
            assert not unique_elsewhere, f"bare file name {ref!r}: write {hits[0].relative_to(ROOT)}"


# ------------------------------------------------------------------------- cited tests resolve
CITED = re.compile(r"((?:minisft|tests|reference_models)/[\w/.-]+?\.py)?::([\w*?]+(?:::[\w*?]+)?)(\[[^\]\s`]*\])?")
ID_PAGES = PAGES + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "proofs").glob("*.md"))


@functools.cache
def defined_names(path):
    """{name: decorator source texts} of a Python file's top-level functions and classes, and
    `Class::method` of each class's methods, from its syntax tree (nothing is imported)."""
    import ast

    source = (ROOT / path).read_text()
    tree = ast.parse(source)
    module_marks = [ast.unparse(node.value) for node in tree.body
                    if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in node.targets)]
    names = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            marks = [ast.unparse(d) for d in node.decorator_list] + module_marks
            names[node.name] = marks
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        names[f"{node.name}::{item.name}"] = marks + [ast.unparse(d) for d in item.decorator_list]
    return names


def cited_ids(text):
    """(path, name, the text around it) of every `path::name` in a page, a bare `::name` continuing
    the last path named before it; parametrized ids ([...]) are dropped."""
    last = None
    for m in CITED.finditer(text):
        path, name = m.group(1), m.group(2)
        if path is None and m.start() > 0 and text[m.start() - 1] not in "`( ,":
            continue  # `::` inside other text (a C++ scope, a URL): no citation
        last = path or last
        assert last is not None, f"::{name} names no file before it"
        yield last, name, text[max(0, m.start() - 60):m.start()]


@pytest.mark.parametrize("page", ID_PAGES)
def test_every_cited_test_id_resolves_and_runs_by_default(page):
    """Every `file::name` (and bare `::name` after a file) in the README, docs/ and proofs/ names a
    function, class or method defined in that file (a glob must match one); a cited test is not
    marked slow unless the page cites it in a `pytest -m slow` command of a dated measurement (so a
    claim never rests on a test CI does not run)."""
    from fnmatch import fnmatchcase

    text = (ROOT / page).read_text()
    for path, name, before in cited_ids(text):
        assert (ROOT / path).is_file(), f"{page}: {path}::{name}: no such file"
        names = defined_names(path)
        hits = [n for n in names if fnmatchcase(n, name)]
        assert hits, f"{page}: {path}::{name} names nothing defined in {path}"
        slow = [n for n in hits if any("mark.slow" in d for d in names[n])]
        assert not slow or "pytest -m slow" in before, \
            f"{page}: {path}::{name} backs a claim but is marked slow (CI never runs it): {slow}"


def test_the_readme_usage_block_runs():
    """The README's Python example runs as written and gives a finite loss with a gradient for
    every parameter."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Usage\n\n```python\n(.*?)```", text, re.S).group(1)
    scope = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert np.isfinite(float(scope["loss"])) and set(scope["grads"]) == set(scope["model"].params)
    assert scope["method"].name == "spruft"


def test_every_results_file_is_cited_by_a_page():
    """docs/results/ holds only measured data that the README, a docs/ page or a proof cites (by name
    or by a glob such as `run*.json`)."""
    from fnmatch import fnmatchcase

    pages = PAGES + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "proofs").glob("*.md"))
    cited = [name for page in pages for name in re.findall(r"results/([\w.*-]+)", (ROOT / page).read_text())]
    kept = sorted(p.name for p in (ROOT / "docs" / "results").iterdir())
    uncited = [name for name in kept if not any(fnmatchcase(name, ref) for ref in cited)]
    assert kept and not uncited, f"files in docs/results/ that no page cites: {uncited}"
