"""README.md is a short front door and the pages under docs/ hold the rest; every link between them resolves.

- README.md stays at most 250 lines, and its first commands are the set-up that CI (`.ci/run`)
  and the Makefile rely on: `make demo` and `make test`.
- Every relative link and image in README.md and docs/*.md names an existing file, and a
  `#anchor` names a heading of the page it points to (GitHub's heading ids).
- Every page under docs/ (but the generated config.md) opens with a title and a summary
  paragraph that cites the report (arXiv 2501.12599).
- No document or source file names the project's planning notes.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
MAX_README_LINES = 250
REPORT = "2501.12599"
PLANNING_NOTES = tuple(name + ".md" for name in ("SPEC", "DESIGN"))

LINK = re.compile(r"!?\[[^\]]*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


def prose_lines(path: Path) -> list[str]:
    """The page's lines outside fenced code blocks, with inline code removed."""
    out, fenced = [], False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            out.append(CODE_SPAN.sub("", line))
    return out


def slug(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)   # a link keeps its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    ids = set()
    fenced = False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            ids.add(base if count == 0 else f"{base}-{count}")
    return ids


def links(path: Path) -> list[str]:
    return [m.group(1) for line in prose_lines(path) for m in LINK.finditer(line)]


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines (at most {MAX_README_LINES}): move details to docs/")


def test_readme_opens_with_the_setup_commands_ci_runs():
    text = README.read_text()
    first_block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in first_block.splitlines()]
    assert commands[:2] == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_the_pages_exist_and_are_linked_from_the_readme():
    names = {p.name for p in DOCS}
    assert {"stages.md", "curation.md", "rl.md", "rewards.md", "long2short.md", "scaling.md",
            "performance.md", "demo.md", "config.md"} <= names
    linked = {target.split("#", 1)[0] for target in links(README)}
    assert {f"docs/{name}" for name in names} <= linked, "a page under docs/ is not linked from README.md"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_images_resolve(page: Path):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):   # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with id '{anchor}' in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}:\n" + "\n".join(broken)


@pytest.mark.parametrize("page", [p for p in DOCS if p.name != "config.md"], ids=lambda p: p.name)
def test_each_page_opens_with_a_title_and_a_summary_citing_the_report(page: Path):
    lines = page.read_text().splitlines()
    assert lines[0].startswith("# ") and lines[1] == "", f"{page.name}: a '# title' line, then a blank line"
    summary = " ".join(lines[2:lines.index("", 2)])
    assert summary and not summary.startswith(("#", "-", "|", "```")), f"{page.name}: no summary paragraph"
    assert REPORT in summary, f"{page.name}: the summary should cite the report (arXiv {REPORT})"


def test_the_slug_matches_githubs_ids():
    assert slug("Language-model stages: pretrain, sft, longcot (report §2.2, §2.5)") == \
        "language-model-stages-pretrain-sft-longcot-report-22-25"
    assert slug("Ray (`openk1 rl --ray`; `src/openk1/stages/rl_ray.py`)") == \
        "ray-openk1-rl---ray-srcopenk1stagesrl_raypy"
    assert slug("torchrun + FSDP2 (RL, SFT)") == "torchrun--fsdp2-rl-sft"


def test_no_page_or_source_file_names_the_planning_notes():
    files = [*PAGES, *(p for p in (ROOT / "src").rglob("*") if p.is_file() and p.suffix in {".py", ".yaml", ".md"}
                        and "egg-info" not in str(p))]
    named = [str(p.relative_to(ROOT)) for p in files if any(n in p.read_text() for n in PLANNING_NOTES)]
    assert not named, f"these files name the planning notes: {named}"
