"""The README and docs/ hold together: every relative link resolves (file and heading), the
README stays a front page, and its commands are the ones the scripts run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def slug(heading: str) -> str:
    """The anchor a heading gets on GitHub."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m[1]) for m in re.finditer(r"^#+\s+(.*)$", text, re.MULTILINE)}


def links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
    return [m[1] for m in LINK.finditer(text) if not re.match(r"[a-z]+:", m[1])]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_docs_are_linked_from_the_readme() -> None:
    readme = set(links(ROOT / "README.md"))
    for name in ("api", "operations", "design", "performance", "testing"):
        assert f"docs/{name}.md" in readme


def test_the_readme_is_a_front_page() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_the_readme_commands_are_the_scripts() -> None:
    readme = (ROOT / "README.md").read_text()
    for command in ("./scripts/run", "./scripts/test", "docker compose up --build"):
        assert f"\n{command}\n" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./scripts/test\n" in ci, "CI runs the README's test command"


def test_the_slugs_follow_github() -> None:
    assert slug("`GET /events/stream`: live tail") == "get-eventsstream-live-tail"
    assert slug("Dead letters, backpressure and memory") == "dead-letters-backpressure-and-memory"


# A figure: digits, with thousands separated by commas and a decimal part or not, standing
# alone (not part of a word such as p99, 2-core or a commit hash).
FIGURE = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(?![\w])")


def figures(text: str) -> set[float]:
    return {float(f"{m[1].replace(',', '')}.{m[2] or '0'}") for m in FIGURE.finditer(text)}


def test_every_figure_on_the_performance_page_is_in_what_its_section_cites() -> None:
    """docs/performance.md states figures only from the measurements the tools wrote: every
    number of a section is, to the precision it is quoted, in a measurement file the section
    links, or in a source file it names (a constant of the code, such as the soak's bounds).
    Numbers inside inline code (commands, settings) are what a reader types, not figures."""
    page = ROOT / "docs" / "performance.md"
    wrong = []
    for section in re.split(r"\n(?=## )", FENCE.sub("", page.read_text())):
        cited = [page.parent / target for target in re.findall(r"\]\(([^)#\s]+\.md)", section)]
        named = [ROOT / path for path in re.findall(r"`([\w/.-]+\.py)`", section)]
        known = set()
        for source in [*cited, *named]:
            if source.is_file():
                known |= figures(source.read_text())
        prose = re.sub(r"`[^`]*`", "", re.sub(r"\]\([^)]*\)", "]", section))
        for m in FIGURE.finditer(prose):
            value = float(f"{m[1].replace(',', '')}.{m[2] or '0'}")
            if not any(round(k, len(m[2] or "")) == value for k in known):
                heading = section.splitlines()[0]
                wrong.append(f"{heading}: {m[0]} (…{prose[max(0, m.start() - 40) : m.end()]})")
    assert not wrong, "figures no cited file holds:\n" + "\n".join(wrong)
