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


def _demo_paragraphs() -> str:
    """The README's account of the demo's ablation table (from its first number to the next section)."""
    readme = (REPO / "README.md").read_text()
    start = readme.index("The demo's table, as last computed here")
    return readme[start : readme.index("\n## ", start)]


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _signed(value: float) -> str:
    return f"{100 * value:+.1f}"


def test_the_readme_quotes_the_committed_ablation_table_and_evaluation():
    """Every figure the README quotes for the demo is the committed metrics' (a run on another machine
    rewrote them once and left the README's older numbers, one verdict the other way round): a variant's
    accuracy (`x` 62.1 %), a difference to full with its interval (`x`, -6.6 [-12.8, -0.4]), full's seeds
    and evaluate's accuracy."""
    import json

    table = json.loads((REPO / "metrics/ablation.json").read_text())
    evaluation = json.loads((REPO / "metrics/eval.json").read_text())
    text = " ".join(_demo_paragraphs().split())
    checked = 0
    for variant, value in re.findall(r"`(\w+)`(?:'s)? (\d+\.\d) %", text):
        assert value == _pct(table[variant]["accuracy_mean"]), (variant, value)
        checked += 1
    for variant, delta, low, high in re.findall(
        r"`(\w+)`, ([+-]\d+\.\d) \[([+-]\d+\.\d), ([+-]\d+\.\d)\]", text
    ):
        row = table[variant]
        quoted = (delta, low, high)
        assert quoted == (_signed(row["delta_vs_full"]), *map(_signed, row["delta_interval"])), variant
        checked += 1
    different = re.search(r"On the demo (\w+) rows differ from `full`", text)
    counts = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5}
    assert counts[different[1]] == sum(bool(row.get("delta_significant")) for row in table.values())
    seeds = re.search(r"`full`'s own three seeds scored (\d+\.\d), (\d+\.\d) and (\d+\.\d) %", text)
    assert list(seeds.groups()) == [_pct(a) for a in table["full"]["seed_accuracies"]]
    scored = re.search(r"`evaluate` \(seed 0's `full` head\) scores (\d+\.\d) %", text)
    assert scored[1] == _pct(evaluation["sequence_accuracy"])
    assert checked >= 10, checked  # the patterns still find the README's figures


def test_the_readme_quotes_the_committed_heat_and_probes():
    """The README's account of Figure 4 on the demo quotes `metrics/eval.json`: every 0.xxx figure in it is one
    of the committed heat masses, box shares or probe scores, every percentage a share of clips above their
    box's share, and each probe's score is quoted."""
    import json

    evaluation = json.loads((REPO / "metrics/eval.json").read_text())
    readme = (REPO / "README.md").read_text()
    start = readme.index("`explain` draws the paper's Figure 4")
    text = " ".join(readme[start : readme.index("\n## ", start)].split())
    heat, probes = evaluation["heat_on_test_clips"], evaluation["person_in_tokens"]
    committed = {f"{v:.3f}" for m in heat.values() for v in (m["mass_in_box"], m["box_share"])}
    committed |= {f"{v:.3f}" for k, v in probes.items() if isinstance(v, float)}
    quoted = re.findall(r"(?<![\d.])(0\.\d{3})(?!\d)", text)
    assert quoted and set(quoted) <= committed, sorted(set(quoted) - committed)
    probe_scores = ("on_box_balanced_accuracy", "class_from_person_tokens", "class_from_background_tokens")
    assert {f"{probes[k]:.3f}" for k in probe_scores} <= set(quoted)
    shares = {f"{100 * m['clips_above_share']:.0f}" for m in heat.values()}
    percentages = re.findall(r"(\d+) %", text)
    assert percentages and set(percentages) <= shares, (percentages, shares)
    clips = re.search(r"over the (\d+) test clips", text)
    assert int(clips[1]) == heat["selector token scores"]["clips"]
