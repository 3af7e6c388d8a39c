"""The library's shape, checked: the import-linter layers contract (pyproject's [tool.importlinter]), no import
cycle among `mrl` modules counting every import (module- and function-level), few function-level imports of our
own modules (each with a `# lazy:` reason), no function past 60 lines, and no benchmark code inside the library."""

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

LIBRARY = REPO / "platform" / "mrl"
MAX_LAZY = 15


def _modules() -> dict[str, Path]:
    found = {}
    for path in LIBRARY.rglob("*.py"):
        parts = path.relative_to(LIBRARY.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, known: dict[str, Path]) -> list[tuple[str, int, bool, str]]:
    """(imported mrl module, line, inside a function, source line) for every import of `mrl` in `path`."""
    lines = path.read_text().splitlines()
    found = []

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [f"{child.module}.{a.name}" for a in child.names] + [child.module]
            targets = {resolve(n) for n in names if n.split(".")[0] == "mrl"} - {None}
            for target in targets:
                found.append((target, child.lineno, in_function, lines[child.lineno - 1]))
            visit(child, inside)

    visit(ast.parse(path.read_text()), False)
    return found


def test_the_layers_contract_is_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--config", str(REPO / "pyproject.toml")], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "1 kept, 0 broken" in done.stdout, done.stdout[-3000:] + done.stderr[-2000:]


def test_no_import_cycle_among_library_modules():
    modules = _modules()
    graph = {m: {t for t, *_ in _imports(p, modules) if t != m} for m, p in modules.items()}
    cycles = []
    for start in graph:  # a module that can reach itself through its imports is on a cycle
        stack, seen = list(graph[start]), set()
        while stack:
            m = stack.pop()
            if m == start:
                cycles.append(start)
                break
            if m not in seen:
                seen.add(m)
                stack.extend(graph[m])
    assert not cycles, f"modules on an import cycle: {sorted(cycles)}"


def test_function_level_imports_of_the_library_are_few_and_give_a_reason():
    modules = _modules()
    lazy = sorted({(p, line, text) for m, p in modules.items() for _, line, inside, text in _imports(p, modules)
                   if inside})  # statements, not the modules they name
    unexplained = [f"{p.relative_to(REPO)}:{line}" for p, line, text in lazy
                   if "# lazy:" not in text and "# lazy:" not in p.read_text().splitlines()[line - 2]]
    assert not unexplained, f"function-level imports of mrl without a '# lazy:' reason: {unexplained}"
    assert len(lazy) <= MAX_LAZY, f"{len(lazy)} function-level imports of mrl (at most {MAX_LAZY})"


def test_the_library_never_imports_the_benchmark_package():
    offenders = [f"{p.relative_to(REPO)}:{i + 1}" for p in LIBRARY.rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines())
                 if line.lstrip().startswith(("import mrlbench", "from mrlbench"))]
    assert not offenders, offenders


def test_no_library_function_runs_past_60_lines():
    long = [f"{p.relative_to(REPO)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for p in LIBRARY.rglob("*.py") for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60]
    assert not long, f"split these by what they do: {long}"
