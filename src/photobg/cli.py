"""The `photobg` command. Each subcommand lives in its own module, imported only when it runs, so
`photobg --help` is instant. A command module has `HELP` (one line), `add_arguments(parser)` and `run(args)`.
"""

import argparse
import ast
import importlib
import importlib.util
import sys

from . import __version__

COMMANDS = {
    "generate": "photobg.generation.cli",
    "app": "photobg.app_page",
    "convert": "photobg.convert",
    "evaluate": "photobg.evaluate",
    "bench": "photobg.bench",
    "train": "photobg.train",
    "prepare": "photobg.prepare",
    "launch": "photobg.launch",  # takes `accelerate launch`'s own arguments: not parsed here (see `main`)
}


def build_parser(command=None):
    """The argument parser; only the module of `command` (if any) is imported."""
    parser = argparse.ArgumentParser(
        prog="photobg",
        description="Salient-object-aware background generation: paint a new scene around an object "
        "without growing, shrinking or redrawing it. Run `photobg COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"photobg {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        if name != command or name == "launch":  # launch's arguments are accelerate's (see `main`)
            subparsers.add_parser(name, help=_help_line(module_name))
            continue
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(
            name,
            help=module.HELP,
            description=module.HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["launch"]:  # accelerate's parser reads the rest: its options and the launched command's
        from .launch import run

        return run(argv[1:])
    command = next((a for a in argv if a in COMMANDS), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if command is None:
        parser.print_help()
        return 0
    return args.run(args) or 0


def _help_line(module_name):
    # Read the module's HELP constant without importing it (and torch with it).
    spec = importlib.util.find_spec(module_name)
    with open(spec.origin) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "HELP" for t in node.targets):
            return ast.literal_eval(node.value)
    return ""


if __name__ == "__main__":
    sys.exit(main())
