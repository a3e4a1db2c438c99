"""The README and docs/ hold together: every relative link resolves (file and heading), the
README stays a front page, its commands are the ones the scripts run, and the docs name only
routes, variables and subcommands that exist (and every route)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pubsub import api
from pubsub.settings import DEPLOYMENT_VARIABLES, Settings, env_name
from stack.cli import COMMANDS

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


# --- the docs name what exists -----------------------------------------------------------------

# The suite's own variables (tests/, scripts/), which are not settings either.
TEST_VARIABLES = {"PUBSUB_TEST_AMQP_URL", "PUBSUB_TEST_DATABASE_URL", "PUBSUB_TEST_ARTIFACTS",
                  "PUBSUB_TEST_SEED"}  # fmt: skip
# The misspelling docs/operations.md shows being refused.
MISSPELT = {"PUBSUB_RETENTON"}


def test_every_route_declared_is_in_the_api_tables_first_column() -> None:
    table = (ROOT / "docs" / "api.md").read_text().split("\n\n| route |", 1)[1].split("\n\n")[0]
    rows = [line.split("|")[1] for line in table.splitlines()[2:]]
    missing = []
    for route in api.GATEWAY:
        # A row names the method and the path in code spans; several paths may share it.
        if not any(
            route.method in row and re.search(rf"`(?:[A-Z ]+ )?{re.escape(route.path)}`", row)
            for row in rows
        ):
            missing.append(f"{route.method} {route.path}")
    assert not missing, f"docs/api.md's table has no row for: {', '.join(sorted(missing))}"


def test_every_pubsub_variable_the_docs_name_exists() -> None:
    known = {env_name(name) for name in Settings.model_fields}
    known |= DEPLOYMENT_VARIABLES | TEST_VARIABLES | MISSPELT
    unknown = []
    for page in PAGES:
        for name, wildcard in re.findall(r"\b(PUBSUB_[A-Z0-9_]*[A-Z0-9])(_\*)?", page.read_text()):
            # PUBSUB_IMAGE_* names a family: some variable must start with it.
            if (name not in known and not wildcard) or (
                wildcard and not any(k.startswith(name + "_") for k in known)
            ):
                unknown.append(f"{page.relative_to(ROOT)}: {name}{wildcard}")
    assert not unknown, "not a setting or a known variable: " + "; ".join(sorted(set(unknown)))


COMMAND_WORDS = re.compile(r"pubsub-aggregator ([a-z][\w-]*)(?: ([a-z][\w-]*))?")


def test_every_subcommand_the_docs_name_exists() -> None:
    names = {c.name for c in COMMANDS}
    actions = {"dead-letters": {"list", "replay"}}
    wrong = []
    for page in PAGES:
        text = page.read_text()
        # As a command: in a code span or a fenced block, not the project's name in prose.
        code = re.findall(r"`[^`\n]+`", FENCE.sub("", text)) + FENCE.findall(text)
        for snippet in code:
            for word, then in re.findall(
                r"pubsub-aggregator ([a-z][\w-]*)(?: ([a-z][\w-]*))?", snippet
            ):
                if word not in names:
                    wrong.append(f"{page.relative_to(ROOT)}: pubsub-aggregator {word}")
                elif word in actions and then and then not in actions[word]:
                    wrong.append(f"{page.relative_to(ROOT)}: pubsub-aggregator {word} {then}")
    assert not wrong, "no such subcommand: " + "; ".join(sorted(set(wrong)))
