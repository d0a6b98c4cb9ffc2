"""The documentation stays true: every `fedattack ...` command that README.md and docs/*.md
show parses with the current command line, and every link between those pages points to a
file (and a heading) that exists.

Which commands are checked, and how:

- In fenced code blocks, every line that starts with `fedattack ` (after leading blanks or
  a `$ ` prompt). Lines ending in a backslash are joined with the next. The line is split
  with shlex as a POSIX shell would (quotes, `# comments`) and cut at the first shell
  operator (`|`, `>`, `<`, `&`, `&&`, `;`, parentheses): what follows belongs to the shell,
  not to `fedattack`. The result must parse in full with `cli.main.build_parser()`.
- In inline code spans (also spans that wrap over a line break), every span that starts
  with `fedattack `. Two pieces of table metasyntax are expanded first:
  `[--opt X]` optional groups give two command lines, one with every group dropped and
  one with every group kept (brackets removed); `a\\|b` alternatives (a table's escaped
  pipe) give one command line per alternative. A span with options (a token starting with
  `-`) must parse in full; a span without any is the name of a command ("`fedattack data
  check` writes the split"), so only its words are checked: each must be a subcommand of
  the one before.
- Placeholders written in capitals stay as they are (`--config CFG` parses as a path),
  except those standing for numbers, which are replaced by a number: N, PX and S.

Beside the commands: every relative link between these pages must point to a file that
exists (and, into a page, to one of its headings, by GitHub's anchor rule), README.md must
link every page of docs/, and every path into the code that a page names (`shared/...py`,
`deploy/Dockerfile`, `configs/...yaml`) must exist.

argparse reports an error by raising SystemExit: each failure is listed with its file, line
and command. At least MIN_COMMANDS command lines must be found, so that the test cannot pass
on nothing (a changed fence style, a moved folder).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli.main import build_parser
from tests.conftest import REPO

pytestmark = pytest.mark.unit

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MIN_COMMANDS = 30
NUMERIC_PLACEHOLDERS = {"N": "300", "PX": "64", "S": "7"}
SHELL_OPERATORS = set(";&|<>()")
FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
OPTIONAL_GROUP = re.compile(r"\s*\[([^\[\]]*)\]")
ROOMS = "shared|server|clients|attack|deploy|pipeline|cli|tests|benchmarks|configs"
REPO_PATH = re.compile(
    rf"(?<![\w/.])((?:{ROOMS})/[\w./-]*?\.(?:py|sh|yaml|yml|toml)|deploy/Dockerfile)(?![\w/])"
)


@dataclass(frozen=True)
class Command:
    doc: Path
    line: int
    text: str
    inline: bool

    def where(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}: {self.text}"


def _paragraphs(lines: list[str]) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(line number, text) of every fenced-code line, and of every prose paragraph."""
    code: list[tuple[int, str]] = []
    prose: list[tuple[int, str]] = []
    fence = ""
    block: list[str] = []
    start = 0
    for number, line in enumerate(lines, 1):
        m = FENCE.match(line)
        if fence:
            if m and m.group(1) == fence:
                fence = ""
            else:
                code.append((number, line))
            continue
        if m:
            fence = m.group(1)
        if m or not line.strip():
            if block:
                prose.append((start, "\n".join(block)))
            block = []
            continue
        if not block:
            start = number
        block.append(line)
    if block:
        prose.append((start, "\n".join(block)))
    return code, prose


def _block_commands(doc: Path, code: list[tuple[int, str]]) -> list[Command]:
    found = []
    pending, first = "", 0
    for number, line in code:
        if not pending:
            first = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        text = text.removeprefix("$ ")
        if text.startswith("fedattack "):
            found.append(Command(doc, first, text, inline=False))
    return found


def _inline_commands(doc: Path, prose: list[tuple[int, str]]) -> list[Command]:
    found = []
    for start, paragraph in prose:
        for m in CODE_SPAN.finditer(paragraph):
            text = " ".join(m.group(2).split())
            if text.startswith("fedattack "):
                line = start + paragraph.count("\n", 0, m.start())
                found.append(Command(doc, line, text, inline=True))
    return found


def documented_commands(doc: Path) -> list[Command]:
    code, prose = _paragraphs(doc.read_text().splitlines())
    return _block_commands(doc, code) + _inline_commands(doc, prose)


def expand(text: str) -> list[str]:
    """The command lines one documented command stands for (optional groups, alternatives)."""
    variants = [OPTIONAL_GROUP.sub("", text), OPTIONAL_GROUP.sub(r" \1", text)]
    out: list[str] = []
    for variant in dict.fromkeys(variants):
        words = variant.split(" ")
        alternatives = [i for i, w in enumerate(words) if "\\|" in w]
        if not alternatives:
            out.append(variant)
            continue
        i = alternatives[0]
        for choice in words[i].split("\\|"):
            out += expand(" ".join([*words[:i], choice, *words[i + 1 :]]))
    return out


def argv_of(text: str) -> list[str]:
    """`fedattack ...` as the argv the parser gets: shell-split, cut at the first operator."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|<>()")
    lexer.whitespace_split = True
    argv = []
    for token in lexer:
        if token and set(token) <= SHELL_OPERATORS:
            break
        argv.append(NUMERIC_PLACEHOLDERS.get(token, token))
    assert argv[0] == "fedattack", text
    return argv[1:]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def check(command: Command, parser: argparse.ArgumentParser) -> list[str]:
    """Why the command does not parse (one line per failing expansion), or nothing."""
    failures = []
    for text in expand(command.text):
        argv = argv_of(text)
        if command.inline and not any(a.startswith("-") for a in argv):
            node = parser
            for word in argv:
                choices = _subcommands(node)
                if word not in choices:
                    failures.append(f"{command.where()}  ({word!r} is not a subcommand here)")
                    break
                node = choices[word]
            continue
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                parser.parse_args(argv)
        except SystemExit:
            reason = stderr.getvalue().strip().splitlines()[-1:] or ["exit"]
            failures.append(f"{command.where()}  ({reason[0]})")
    return failures


def test_documented_commands_parse() -> None:
    parser = build_parser()
    commands = [c for doc in DOCS for c in documented_commands(doc)]
    assert len(commands) >= MIN_COMMANDS, (
        f"only {len(commands)} `fedattack` command lines found in {len(DOCS)} pages: "
        "has the extraction broken?"
    )
    failures = [f for c in commands for f in check(c, parser)]
    assert failures == [], "documented commands the CLI does not accept:\n" + "\n".join(failures)


def test_extraction_rules() -> None:
    assert expand("fedattack demo [--config C] [--seed S]") == [
        "fedattack demo",
        "fedattack demo --config C --seed S",
    ]
    assert expand("fedattack deploy a\\|b") == ["fedattack deploy a", "fedattack deploy b"]
    assert argv_of("fedattack demo --seed S # seven | tee log") == ["demo", "--seed", "7"]
    assert argv_of("fedattack data check --config 'a b.yaml' > out.txt") == [
        "data",
        "check",
        "--config",
        "a b.yaml",
    ]
    doc = REPO / "README.md"
    code, prose = _paragraphs(["```bash", "fedattack a \\", "  --b c", "```", "see `fedattack", "d`"])
    assert [c.text for c in _block_commands(doc, code)] == ["fedattack a    --b c"]
    assert [(c.line, c.text) for c in _inline_commands(doc, prose)] == [(5, "fedattack d")]
    parser = build_parser()
    assert check(Command(doc, 1, "fedattack attack --config c --no-such-flag", False), parser)
    assert check(Command(doc, 1, "fedattack data nosuch", True), parser)
    assert check(Command(doc, 1, "fedattack data check", True), parser) == []


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, blanks to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    code_lines = {n for n, _ in _paragraphs(doc.read_text().splitlines())[0]}
    seen: dict[str, int] = {}
    out = set()
    for number, line in enumerate(doc.read_text().splitlines(), 1):
        m = re.match(r"#{1,6} (.+)", line)
        if m and number not in code_lines:
            slug = _slug(m.group(1))
            out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return out


def links(doc: Path) -> list[tuple[int, str]]:
    """(line, target) of every Markdown link in prose (not in code blocks or code spans)."""
    found = []
    for start, paragraph in _paragraphs(doc.read_text().splitlines())[1]:
        plain = CODE_SPAN.sub(lambda m: " " * len(m.group(0)), paragraph)
        for m in LINK.finditer(plain):
            found.append((start + plain.count("\n", 0, m.start()), m.group(1)))
    return found


def test_links_between_pages_resolve() -> None:
    broken = []
    checked = 0
    for doc in DOCS:
        for line, target in links(doc):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue  # http:, https:, mailto:
            path_part, _, anchor = target.partition("#")
            path = (doc.parent / path_part).resolve() if path_part else doc
            where = f"{doc.relative_to(REPO)}:{line}: {target}"
            checked += 1
            if not path.exists():
                broken.append(f"{where}  (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{where}  (no heading with that anchor)")
    assert checked >= 20, f"only {checked} relative links found"
    assert broken == [], "broken links:\n" + "\n".join(broken)


def test_mentioned_files_exist() -> None:
    """A path into the code that a page names (`shared/ml/calibration.py`) is still there."""
    missing = []
    count = 0
    for doc in DOCS:
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            for m in REPO_PATH.finditer(line):
                count += 1
                if not (REPO / m.group(1)).exists():
                    missing.append(f"{doc.relative_to(REPO)}:{number}: {m.group(1)}")
    assert count >= 30, f"only {count} paths into the code found"
    assert missing == [], "pages name files that do not exist:\n" + "\n".join(missing)


def test_readme_links_every_page() -> None:
    linked = {(REPO / t.partition("#")[0]).resolve() for _, t in links(REPO / "README.md")}
    missing = [p.relative_to(REPO) for p in DOCS[1:] if p.resolve() not in linked]
    assert missing == [], f"README.md does not link these pages: {missing}"
