"""The layout's rules (docs/architecture.md), checked on the source: which folder may import
which, no import cycles between modules, and imports inside functions only to defer a heavy
dependency, each saying so.

The import graph is read with `ast` from the files themselves (the packages live in top-level
folders mapped by pyproject.toml, which import-linter's graph builder does not follow).
"""

from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Folder (kvcast subpackage) -> the subpackages it may import; "core" is kvcast's own top-level
# modules (errors, contracts, objective). Every package may import core and itself.
MAY_IMPORT: dict[str, set[str]] = {
    "core": set(),
    "codec": set(),
    "kv": set(),
    "traces": set(),
    "controllers": set(),
    "reports": set(),
    "profiling": {"codec", "kv"},
    "sim": {"traces", "controllers"},
    "emulation": {"sim", "traces", "controllers", "codec", "kv"},
    "cli": {"codec", "kv", "profiling", "traces", "controllers", "sim", "emulation", "reports"},
}
# Third-party modules heavy enough that deferring them to the function that needs them is the
# point (import time, or optional: not installed everywhere).
HEAVY = {"torch", "triton", "transformers", "numba", "lmcache", "safetensors", "plotly", "gguf"}
DEFERRED_MARK = "# deferred:"


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. kvcast.sim.runner
    target: str  # the imported module, absolute
    line: int
    in_function: bool
    text: str  # the source line


def _modules() -> dict[str, Path]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    folders = dict(config["tool"]["setuptools"]["package-dir"]) | {"kvcast": "kvcast"}
    modules = {}
    for package, folder in folders.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(REPO / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


MODULES = _modules()


def _imports(module: str, path: Path) -> list[Import]:
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # type-only imports do not run
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = module.split(".")
                    anchor = anchor if is_package else anchor[:-1]
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from package import submodule` imports the submodule
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                    for a in child.names
                ]
            else:
                nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
                visit(child, nested)
                continue
            text = lines[child.lineno - 1].strip()
            for target in dict.fromkeys(targets):
                found.append(Import(module, target, child.lineno, in_function, text))

    visit(ast.parse(source), False)
    return found


IMPORTS = [imp for module, path in MODULES.items() for imp in _imports(module, path)]


def _package(module: str) -> str | None:
    """The kvcast subpackage of a kvcast module ("core" for kvcast's own modules)."""
    parts = module.split(".")
    if parts[0] != "kvcast":
        return None
    if len(parts) > 1 and parts[1] in MAY_IMPORT:
        return parts[1]
    return "core"


def test_every_source_folder_has_rules() -> None:
    packages = {_package(m) for m in MODULES} - {"scenarios", "profiles"}
    unknown = {p for p in packages if p not in MAY_IMPORT}
    assert not unknown, f"add the rules of {unknown} to MAY_IMPORT and docs/architecture.md"


def test_dependencies_point_one_way() -> None:
    broken = []
    for imp in IMPORTS:
        source, target = _package(imp.module), _package(imp.target)
        if imp.module == "kvcast.__main__":
            continue  # `python -m kvcast` runs the CLI
        if target is None or target in ("core", source):
            continue
        if target not in MAY_IMPORT[source]:
            broken.append(f"{MODULES[imp.module].relative_to(REPO)}:{imp.line}: {imp.text}")
    assert not broken, "imports against docs/architecture.md's rules:\n" + "\n".join(broken)


def test_no_module_level_import_cycles() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in IMPORTS:
        if not imp.in_function and imp.target in MODULES and imp.target != imp.module:
            graph[imp.module].add(imp.target)
            # importing a.b.c runs a and a.b first
            parts = imp.target.split(".")
            for i in range(2, len(parts)):
                parent = ".".join(parts[:i])
                if (
                    parent in MODULES
                    and parent != imp.module
                    and not imp.module.startswith(parent + ".")
                ):
                    graph[imp.module].add(parent)
    cycles = _cycles(graph)
    assert not cycles, "module-level import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def _cli_handler_import(imp: Import) -> bool:
    """The CLI's handlers import the library part they run when they run, so that `kvcast
    --help` and every other command stay fast (most parts pull in torch, numba or pandas)."""
    return _package(imp.module) == "cli" and _package(imp.target) not in (None, "core", "cli")


def test_imports_inside_functions_say_why() -> None:
    """An import inside a function defers a heavy dependency: a HEAVY third-party module, a CLI
    handler's library call, or a line that says what it defers (`# deferred: ...`)."""
    unexplained = [
        f"{MODULES[imp.module].relative_to(REPO)}:{imp.line}: {imp.text}"
        for imp in IMPORTS
        if imp.in_function
        and imp.target.split(".")[0] not in HEAVY
        and not _cli_handler_import(imp)
        and DEFERRED_MARK not in imp.text
    ]
    assert not unexplained, "imports inside functions without a reason:\n" + "\n".join(
        sorted(set(unexplained))
    )


def test_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_packages_are_found() -> None:
    assert _package("kvcast.sim.runner") == "sim"
    assert _package("kvcast.errors") == "core"
    assert _package("numpy") is None
    assert {"kvcast.codec.codec", "kvcast.cli", "kvcast.profiling.chunk_costs"} <= set(MODULES)


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_no_folder_holds_more_than_about_a_quarter_of_the_code(package: str) -> None:
    lines = {p: 0 for p in MAY_IMPORT}
    for module, path in MODULES.items():
        pkg = _package(module)
        if pkg in lines:
            lines[pkg] += len(path.read_text(encoding="utf-8").splitlines())
    share = lines[package] / sum(lines.values())
    assert share <= 0.27, f"{package}/ holds {share:.0%} of the code"
