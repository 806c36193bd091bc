"""The front door and the manual (README.md, docs/*.md) as a reader uses them: every relative link and `#anchor`
leads somewhere, and every `photobg` or training command shown in a ```bash block parses with the command's own
parser, so a renamed or removed flag fails here rather than for the reader.
"""

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from photobg import cli, train_config

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
SCRIPT_VARIANTS = {script: variant for variant, script in train_config.SCRIPTS.items()}
# An unquoted `...` stands for "the other arguments, shown above": it is left out, and such a command may then lack
# a required argument (`-m photobg generate ... --output-dir DIR`); its flags must still parse. A quoted "..." (a
# prompt left to the reader) is an argument like any other.
PLACEHOLDER = re.compile(r"(?<=\s)\.\.\.(?=\s|$)")
REST = "<the other arguments>"


def split_page(text):
    """(prose lines, code blocks as (language, text)): fences may be indented (inside a list item)."""
    prose, blocks, fence = [], [], None
    for line in text.splitlines():
        stripped = line.strip()
        if fence is None and stripped.startswith("```"):
            fence = (stripped[3:].strip(), len(line) - len(line.lstrip()), [])
        elif fence is not None and stripped == "```":
            language, indent, body = fence
            blocks.append((language, "\n".join(body_line[indent:] for body_line in body)))
            fence = None
        elif fence is not None:
            fence[2].append(line)
        else:
            prose.append(line)
    return prose, blocks


def slug(heading):
    """GitHub's anchor for a heading: lowercase, punctuation other than '-' and '_' dropped, spaces to '-'."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page):
    prose, _ = split_page(page.read_text(encoding="utf-8"))
    found, seen = set(), {}
    for line in prose:
        if match := re.match(r"#{1,6} (.+)", line):
            base = slug(match.group(1))
            found.add(base if base not in seen else f"{base}-{seen[base]}")  # GitHub numbers repeated headings
            seen[base] = seen.get(base, 0) + 1
    return found


def links(page):
    """The relative links of a page's prose (code spans and blocks hold no links)."""
    prose, _ = split_page(page.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", "\n".join(prose))
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for page in PAGES:
        for target in links(page):
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
                broken.append(f"{page.relative_to(REPO)}: {target} (no heading #{anchor} there)")
    assert not broken, "\n".join(broken)


def test_every_manual_page_is_in_the_index():
    index = {(REPO / "docs" / target.partition("#")[0]).resolve() for target in links(REPO / "docs" / "README.md")}
    assert {page for page in PAGES if page.parent.name == "docs" and page.name != "README.md"} <= index


def test_the_backbones_table_is_the_same_on_the_front_door_and_its_page():
    def table(page):
        section = re.split(r"^#+ Backbones$", page.read_text(encoding="utf-8"), flags=re.M)[1]
        return [line for line in section.split("\n#")[0].splitlines() if line[:1] == "|"]

    assert table(REPO / "README.md") == table(REPO / "docs" / "backbones.md") != []


def command_lines(block):
    """The block's commands as tokens: continued lines joined, comments dropped, split at && ; | and ||."""
    for line in block.replace("\\\n", " ").splitlines():
        command = []
        for token in shlex.split(PLACEHOLDER.sub(shlex.quote(REST), line), comments=True):
            if token in ("&&", ";", "|", "||"):
                yield command
                command = []
            else:
                command.append(token)
        yield command


def documented_commands():
    """(where, parser maker, arguments) of every photobg or training command in the pages' bash blocks."""
    found = []
    for page in PAGES:
        for language, block in split_page(page.read_text(encoding="utf-8"))[1]:
            if language != "bash":
                continue
            for tokens in command_lines(block):
                while tokens and re.fullmatch(r"[A-Z_]+=\S*", tokens[0]):  # ACCELERATE_USE_CPU=true ...
                    tokens = tokens[1:]
                if parsed := command_parser(tokens):
                    found.append((f"{page.relative_to(REPO)}: {shlex.join(tokens)[:90]}", *parsed))
    return found


def command_parser(tokens):
    """(a function making the parser, the arguments it parses), or None for a command that is not ours."""
    if tokens[:1] == ["photobg"]:
        args = tokens[1:]
    elif tokens[:2] == ["accelerate", "launch"] and "-m" in tokens:
        start = tokens.index("-m")
        if tokens[start + 1 : start + 2] != ["photobg"]:
            return None
        args = tokens[start + 2 :]
    else:
        script = next((t for t in tokens if Path(t).name in SCRIPT_VARIANTS), None)
        if script is None or tokens[0] not in ("accelerate", "python", "python3"):
            return None
        args = tokens[tokens.index(script) + 1 :]
        return (lambda: train_config.build_parser(SCRIPT_VARIANTS[Path(script).name])), args
    return (lambda: cli.build_parser(args[0] if args else None)), args


COMMANDS = documented_commands()


def test_the_pages_show_commands_of_every_kind():
    shown = " ".join(where for where, _, _ in COMMANDS)
    for command in ("photobg generate", "photobg evaluate", "photobg prepare", "photobg train", "photobg app"):
        assert command in shown
    assert "train_controlnet_inpaint.py" in shown and "train_controlnet.py" in shown
    assert "-m photobg generate" in shown  # under accelerate launch


@pytest.mark.parametrize("where, make_parser, args", COMMANDS, ids=[where for where, _, _ in COMMANDS])
def test_documented_command_parses(where, make_parser, args):
    complete = REST not in args
    args = [arg for arg in args if arg != REST]
    error = io.StringIO()
    with contextlib.redirect_stderr(error), contextlib.suppress(SystemExit):
        make_parser().parse_args(args)
        return
    message = error.getvalue().strip().splitlines()[-1:]
    assert not complete and "the following arguments are required" in error.getvalue(), f"{where}: {message}"
