"""Checks of the code's shape that ruff and import-linter do not make, run by `make lint`:

- no import cycle between dlrun's modules, imports inside functions included;
- no function longer than 60 lines, and no closure that rebinds an outer variable (`nonlocal`).

Exits non-zero, naming each place, when one fails."""

import ast
import sys
from pathlib import Path

import grimp

MAX_LINES = 60
ROOT = Path(__file__).resolve().parents[1] / "dlrun"


def cycles() -> list[str]:
    graph = grimp.build_graph("dlrun")
    modules = sorted(m for m in graph.modules if m != "dlrun.configs" and not m.startswith("dlrun.configs."))
    problems = []
    for module in modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if imported == module or imported == "dlrun":
                continue
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back:
                problems.append(f"import cycle: {module} -> {' -> '.join(back)}")
    return sorted(set(problems))


def shapes() -> list[str]:
    problems = []
    for path in sorted(ROOT.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(ROOT.parent)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_LINES:
                    problems.append(f"{where}:{node.lineno}: {node.name} is {length} lines (at most {MAX_LINES})")
            if isinstance(node, ast.Nonlocal):
                problems.append(f"{where}:{node.lineno}: nonlocal {', '.join(node.names)} (keep loop state in an object)")
    return problems


def main() -> int:
    problems = cycles() + shapes()
    for problem in problems:
        print(problem)
    if not problems:
        print("no import cycle; every function at most 60 lines; no nonlocal")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
