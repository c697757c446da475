"""Every reference in the README and docs/ resolves inside the repository: a path in backticks or a link
(minisft/..., tests/..., reference_models/..., proofs/..., with globs and pytest ids) exists; no
path leaves the repository (../), no bare file name stands for a file elsewhere, and no sentence
points at an issue number a reader of the repository cannot open."""

import re
from pathlib import Path

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
    assert "../" not in text, "a path outside the repository"
    assert not re.search(r"\bissue \d+", text, re.I), "an issue number a reader cannot open"
    for ref in references(text):
        if re.fullmatch(r"[\w.-]+\.(md|json|py)", ref) and ref not in WRITTEN:  # a bare name of a repository file
            hits = [h for h in ROOT.rglob(ref) if ".git" not in h.parts]
            unique_elsewhere = len(hits) == 1 and hits[0].parent != ROOT
            assert not unique_elsewhere, f"bare file name {ref!r}: write {hits[0].relative_to(ROOT)}"
