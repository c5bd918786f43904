"""The documents name the tests that pin what they say: every name must be a test that exists.

``tests/<file>.py::<name>`` names a test of that file; a following ``::<name>`` one of the file named last
before it (``tests/<file>.py`` alone names a file) in the same document. A parametrised id (``[...]``) is
dropped.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "docs/decisions.md", "docs/data-contracts.md", "docs/benchmarks.md")
REFERENCE = re.compile(
    r"`(?:(?P<file>tests/[\w/]+\.py)(?:::(?P<named>\w+))?|::(?P<name>\w+))(?:\[[^\]`]*\])?`"
)


def references(text: str) -> list[tuple[str, str]]:
    """(test file, test name) of every reference in ``text``, in order."""
    found, current = [], None
    for match in REFERENCE.finditer(text):
        current = match["file"] or current
        name = match["named"] or match["name"]
        if name:
            found.append((current, name))
    return found


def test_the_reference_reader_follows_the_continuation_rule():
    text = "`tests/a.py::one`, `::two[x]`, `tests/b.py::three`, `::four`; `tests/c.py` (all), `::five`"
    assert references(text) == [
        ("tests/a.py", "one"),
        ("tests/a.py", "two"),
        ("tests/b.py", "three"),
        ("tests/b.py", "four"),
        ("tests/c.py", "five"),
    ]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_test_a_document_names_exists(document):
    text = (REPO / document).read_text()
    missing = []
    for file, name in references(text):
        path = REPO / file if file else None
        source = path.read_text() if path is not None and path.is_file() else ""
        if not re.search(rf"^\s*def {re.escape(name)}\(", source, re.MULTILINE):
            missing.append(f"{file}::{name}")
    assert not missing, f"{document} names tests that do not exist: {missing}"
