"""The user guide and the documentation site stay consistent with the code (no mkdocs needed).

- every relative link and image in README.md and docs/*.md points at an existing file, and an
  anchor at an existing heading of that file (slugs as Python-Markdown's toc and GitHub make
  them for plain headings); docs pages link only inside docs/ (mkdocs cannot serve the rest);
- every flag of every subcommand of `onnxcomp` (walked from the argparse parser) appears in the
  CLI reference page, in that subcommand's section;
- every docs page is in mkdocs.yml's nav, the README stays under 200 lines and keeps the support
  table .ci/check_wheels.py reads, and no page speaks of internal work units.
"""

from __future__ import annotations

import argparse
import re
import unicodedata
from pathlib import Path

import pytest

from onnxcomp import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~)")
CODE_SPAN = re.compile(r"(`+).+?\1")


def prose_lines(text: str) -> list[str]:
    """The lines of a Markdown page outside fenced and indented code blocks, code spans blanked."""
    lines, fenced, previous_blank = [], False, True
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            lines.append("")
            continue
        indented_code = previous_blank and line.startswith("    ") and not line.lstrip().startswith(("-", "*"))
        if fenced or indented_code:
            lines.append("")
            previous_blank = previous_blank and indented_code
            continue
        previous_blank = not line.strip()
        lines.append(CODE_SPAN.sub("", line))
    return lines


def slug(heading: str) -> str:
    """A heading's anchor as Python-Markdown's toc extension makes it (GitHub agrees on plain headings)."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    return {slug(line.lstrip("#").strip()) for line in prose_lines(page.read_text()) if re.match(r"#{1,6} ", line)}


def links(page: Path) -> list[str]:
    return [match.group(1) for line in prose_lines(page.read_text()) for match in LINK.finditer(line)]


def test_link_parser_finds_links_but_not_code():
    page_text = "see [a](x.md#y) and ![img](p.png)\n`[not](z.md)`\n\n    [code](c.md)\n```\n[fenced](f.md)\n```\n"
    found = [match.group(1) for line in prose_lines(page_text) for match in LINK.finditer(line)]
    assert found == ["x.md#y", "p.png"]
    assert slug("Calibration: row importance and `GPTQ`") == "calibration-row-importance-and-gptq"
    assert slug("export-mobile") == "export-mobile"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            continue  # http:, https:, mailto:
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            broken.append(f"{target}: no file {resolved}")
            continue
        if page.parent == DOCS and DOCS not in resolved.parents and resolved != DOCS:
            broken.append(f"{target}: outside docs/, which the site cannot serve")
        if anchor and (resolved.suffix != ".md" or anchor not in anchors(resolved)):
            broken.append(f"{target}: no heading '#{anchor}' in {resolved.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    actions = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    assert actions, "onnxcomp's parser has no subcommands"
    return dict(actions[0].choices)


def flags(parser: argparse.ArgumentParser) -> list[str]:
    return [option for action in parser._actions for option in action.option_strings if option not in ("-h", "--help")]


def sections(page: Path) -> dict[str, str]:
    """'## name' section titles -> their text, up to the next '## '."""
    found, title = {}, None
    for line in page.read_text().splitlines():
        if line.startswith("## "):
            title = line[3:].strip()
            found[title] = ""
        elif title is not None:
            found[title] += line + "\n"
    return found


def mentions(text: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


def test_every_cli_flag_is_in_the_reference():
    reference = sections(DOCS / "cli.md")
    commands = subcommands()
    assert {"compress", "sweep", "inspect", "export-mobile"} <= set(commands)
    missing = []
    for name, parser in commands.items():
        if name not in reference:
            missing.append(f"no '## {name}' section")
            continue
        missing += [f"{name} {flag}" for flag in flags(parser) if not mentions(reference[name], flag)]
    page = (DOCS / "cli.md").read_text()
    missing += [f"onnxcomp {flag}" for flag in flags(cli.build_parser()) if not mentions(page, flag)]
    assert not missing, "flags missing from docs/cli.md: " + ", ".join(missing)


def test_flag_check_would_catch_an_undocumented_flag():
    parser = argparse.ArgumentParser()
    parser.add_argument("--target-size")
    parser.add_argument("--made-up-flag")
    text = "| `--target-size SIZE` | ... |\n| `--made-up-flag-two` | ... |\n"
    assert [flag for flag in flags(parser) if not mentions(text, flag)] == ["--made-up-flag"]


def test_every_page_is_in_the_nav():
    config = (ROOT / "mkdocs.yml").read_text()
    listed = set(re.findall(r":\s*([\w./-]+\.md)\s*$", config, re.MULTILINE))
    pages = {page.name for page in DOCS.glob("*.md")}
    assert pages - listed == set(), "docs pages missing from mkdocs.yml's nav"
    assert listed - pages == set(), "mkdocs.yml's nav names pages that do not exist"


def test_readme_is_a_short_guide_with_the_support_table():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 200
    begin = "<!-- support-table:begin (generated by .ci/check_wheels.py --table) -->"
    assert begin in text and "<!-- support-table:end -->" in text
    table = text.split(begin, 1)[1].split("<!-- support-table:end -->", 1)[0].strip().splitlines()
    assert table[0].startswith("| Python |") and len(table) == 2 + 5
    for command in ("make demo", "make test"):
        assert f"\n    {command} " in text, f"README lost '{command}'"


@pytest.mark.parametrize("page", [*PAGES, *sorted((ROOT / "bench" / "results").glob("*.md"))],
                         ids=lambda page: str(page.relative_to(ROOT)))
def test_no_internal_work_units(page: Path):
    text = page.read_text()
    found = re.findall(r"\bstop \d+\b|\bthis stop\b|\bhelpers?\b|\bthis session\b", text, re.IGNORECASE)
    assert not found, f"{page.name} names internal work units: {found}"
