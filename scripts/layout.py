"""The package's rooms and the arrows between them, read from the code's own imports and definitions.

    python scripts/layout.py            # floors, arrows up, circles, and each room's size
    python scripts/layout.py --sizes    # only the table: file, lines, longest function

A room is a module of `src/photobg`; an arrow is an import of one room by another, at the top of a file or inside a
function (a lazy import is still a dependency). Floors are counted from the bottom: a room that imports no other
room is on floor 0, any other one floor above the highest room it imports. An arrow "up" is an import of a room
on the same or a higher floor, which only a circle can make. `tests/test_layout.py` asserts there is none.
"""

import argparse
import ast
from pathlib import Path

PACKAGE = "photobg"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE


def rooms(source=SOURCE):
    """{module name: path} of every module of the package (a package is its `__init__.py`)."""
    found = {}
    for path in sorted(source.rglob("*.py")):
        parts = path.relative_to(source.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name, path, known):
    """The rooms that module `name` imports (resolved to modules in `known`), wherever the import stands."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from . import x` imports the module x when there is one, else a name of the package.
            targets.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names)
    resolved = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name and not name.startswith(target + "."):
            resolved.add(target)  # a module importing its own package's __init__ is how Python loads it anyway
    return resolved


def graph(source=SOURCE):
    known = rooms(source)
    return {name: imports(name, path, known) for name, path in known.items()}


def circles(arrows):
    """The strongly connected groups of more than one room (Tarjan's algorithm), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in arrows[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(arrows):
        if node not in index:
            visit(node)
    return found


def floors(arrows):
    """{room: floor}; the rooms of a circle share the floor above everything they import from outside it."""
    group_of = {room: tuple(group) for group in circles(arrows) for room in group}
    floor = {}

    def height(room, seen=()):
        if room in floor:
            return floor[room]
        group = group_of.get(room, (room,))
        below = {t for member in group for t in arrows[member] if t not in group}
        level = 1 + max((height(t, seen + group) for t in below), default=-1)
        for member in group:
            floor[member] = level
        return level

    for room in arrows:
        height(room)
    return floor


def arrows_up(arrows):
    level = floors(arrows)
    return sorted((a, b) for a, targets in arrows.items() for b in targets if level[b] >= level[a])


def sizes(source=SOURCE):
    """[(file, lines, longest function's name, its lines)] for every module, longest file first."""
    rows = []
    for path in sorted(source.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        functions = [
            (node.name, node.end_lineno - node.lineno + 1)
            for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        ]
        name, length = max(functions, key=lambda f: f[1], default=("-", 0))
        rows.append((str(path.relative_to(source.parent)), len(text.splitlines()), name, length))
    return sorted(rows, key=lambda row: -row[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", action="store_true", help="print only the table of sizes")
    args = parser.parse_args()
    table = sizes()
    if not args.sizes:
        arrows = graph()
        level = floors(arrows)
        print(f"{len(arrows)} rooms on {max(level.values()) + 1} floors, {sum(map(len, arrows.values()))} arrows")
        print(f"arrows up: {arrows_up(arrows) or 'none'}")
        print(f"circles: {circles(arrows) or 'none'}")
        for k in range(max(level.values()) + 1):
            print(f"  floor {k}: {', '.join(sorted(r.removeprefix(PACKAGE + '.') for r in arrows if level[r] == k))}")
    print("\n| file | lines | longest function (lines) |\n|---|---|---|")
    for file, lines, name, length in table:
        print(f"| {file} | {lines} | {name} ({length}) |")
    print(f"| total | {sum(row[1] for row in table)} | |")


if __name__ == "__main__":
    main()
