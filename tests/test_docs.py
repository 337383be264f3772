"""The README and docs/: every relative link and #anchor resolves, every page in docs/
is one link from the README, and the README stays short enough to read in one sitting."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
README_MAX_LINES = 450

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def prose(text: str) -> str:
    """The text outside fenced code blocks, code lines blanked (line numbers kept)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            lines.append("")
        else:
            lines.append("" if fenced else line)
    return "\n".join(lines)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup and punctuation dropped but - and _,
    lowercase, spaces to -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a Markdown file, repeats numbered as GitHub does."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose(path.read_text()).splitlines():
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match[2])
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[str]:
    """The targets of the relative links in a Markdown file (code spans and blocks
    left out: they are not rendered as links)."""
    text = re.sub(r"`[^`\n]*`", "", prose(path.read_text()))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z+.-]*:", t)]


def broken(path: Path) -> list[str]:
    """The links of a file whose target file or #anchor does not exist."""
    wrong = []
    for target in links(path):
        name, _, anchor = target.partition("#")
        goal = (path.parent / name).resolve() if name else path
        if not goal.exists():
            wrong.append(f"{target}: no such file")
        elif anchor and goal.suffix == ".md" and anchor not in anchors(goal):
            wrong.append(f"{target}: no such heading in {goal.name}")
    return wrong


# -- the checker itself -----------------------------------------------------------------


def test_slugs_follow_github():
    assert slug("`morph report`: what a model costs") == "morph-report-what-a-model-costs"
    assert slug("What is tested here, and what is not") == "what-is-tested-here-and-what-is-not"
    assert slug("Coverage: the zoo and models users bring") == (
        "coverage-the-zoo-and-models-users-bring")
    assert slug("Runs 6_7 - again") == "runs-6_7---again"


def test_the_checker_finds_a_broken_anchor_a_missing_file_and_skips_code(tmp_path):
    (tmp_path / "b.md").write_text("# B\n\n## Two words\n\n## Two words\n")
    page = tmp_path / "a.md"
    page.write_text(
        "# A\n\n[ok](b.md#two-words) [again](b.md#two-words-1) [self](#a)\n"
        "[gone](c.md) [bad](b.md#three)\n[wrapped\ntext](#nowhere)\n"
        "```text\n[in a block](#ignored)\n# not a heading\n```\n"
        "`[in code](#ignored)` [web](https://example.com#x)\n")
    assert broken(page) == ["c.md: no such file", "b.md#three: no such heading in b.md",
                            "#nowhere: no such heading in a.md"]


# -- the documents ------------------------------------------------------------------------


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(path):
    assert broken(path) == []


def test_the_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines < README_MAX_LINES, f"README.md has {lines} lines"


def test_every_page_in_docs_is_one_link_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(README)}
    assert PAGES, "docs/ holds no pages"
    assert [p.name for p in PAGES if p.resolve() not in linked] == []


def test_every_benchmark_script_named_exists():
    named = set()
    for path in [README, *PAGES]:
        named |= set(re.findall(r"benchmarks/\w+\.py", path.read_text()))
    assert named, "no benchmark script named"
    assert sorted(n for n in named if not (ROOT / n).is_file()) == []


def test_the_readme_benchmark_summary_quotes_the_full_sections():
    """Each headline figure is copied from docs/, with the script that produced it."""
    readme = README.read_text()
    summary = readme[readme.index("\n## Benchmarks\n"):readme.index("\n## Development\n")]
    rows = [r for r in summary.splitlines() if r.startswith("| `")]
    full = "\n".join(p.read_text() for p in PAGES)
    assert len(rows) == 7
    for row in rows:
        command, _, result = row.strip("|").split(" | ")
        script = re.search(r"benchmarks/\w+\.py", command)[0]
        assert script in full, row
        figures = re.findall(r"\d[\d.,]*(?:[–-]\d[\d.]*)?(?:%|/\d+|e-\d+)?", result)
        assert [f for f in figures if f not in full] == [], row
