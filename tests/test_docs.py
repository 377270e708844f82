"""The README and docs/ stay true to the code: the printed `stexport --list` is the command's output, and every
relative link (file, image, or in-page anchor) resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stexport.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but '-' and '_' dropped, spaces -> '-'."""
    out = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def links(page: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", page.read_text()))


def test_readme_shows_what_list_prints(capsys: pytest.CaptureFixture[str]) -> None:
    readme = (ROOT / "README.md").read_text()
    shown = readme.split("$ stexport --list\n", 1)[1].split("```", 1)[0]
    assert main(["--list"]) == 0
    printed = capsys.readouterr().out
    missing = re.compile(r"missing: pip install \S+")  # an extra not installed here prints this instead
    assert missing.sub("installed", printed).strip() == shown.strip()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked here
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor.lower() not in anchors(dest):
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


def test_anchor_rule_matches_githubs() -> None:
    page = ROOT / "README.md"
    assert {"the-integer-boundary---io-int8", "bundles-in-your-hands-inspect-verify-predict",
            "precision", "benchmarks"} <= anchors(page)
