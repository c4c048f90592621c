"""No import cycle inside the `talking_head` package (issue 39).

The graph is built from the source, not by importing it: every `import` and `from ... import` statement anywhere
in a module (top level, inside functions, under `if TYPE_CHECKING:` or `try:`) is an edge, relative imports
resolved. The modules are the packages that setup.cfg installs, each found through its `package_dir` mapping
(`talking_head` -> src/talking_head/, `talking_head.models` -> models/, ...), read from setup.cfg itself so a new
folder is covered the day it is mapped. Dynamic imports (`importlib.import_module("...")`, as the lazy
`__getattr__` of the package `__init__`s use) are not statements and are not edges.

The edge rules:

- `import a.b.c` is an edge to `a.b.c`, and to the packages `a` and `a.b` (Python runs their `__init__` first);
- `from a.b import name` is an edge to the module `a.b.name` when there is one (and to its parents `a`, `a.b`),
  else to `a.b` (the name comes from that module or package `__init__`; and to `a`);
- one exception: the implicit edges to the importing module's OWN enclosing packages are left out.
  Python has already started those `__init__`s before the module runs, so a package `__init__` that imports
  its submodule which imports a sibling through the package (`from talking_head.training.logs import ...` in
  `talking_head.training.loop`, while `talking_head/training/__init__.py` imports both) is ordinary and safe.
  An explicit `from pkg import NAME` of a name defined in the enclosing package's `__init__` is still an edge:
  that one fails when the `__init__` is only half run.

Edges to modules outside the package (torch, diffusers, ...) are dropped. A module importing itself is ignored.
"""

from __future__ import annotations

import ast
import configparser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ the checker
def packages_from_setup_cfg(setup_cfg: Path) -> dict[str, Path]:
    """setup.cfg's [options] packages -> {package name: its folder}, through package_dir's longest matching prefix."""
    cfg = configparser.ConfigParser()
    cfg.read(setup_cfg)
    root = setup_cfg.parent
    package_dir = {}
    for line in cfg["options"].get("package_dir", "").splitlines():
        if "=" in line:
            name, folder = (part.strip() for part in line.split("=", 1))
            package_dir[name] = folder
    folders = {}
    for package in cfg["options"]["packages"].split():
        parts = package.split(".")
        for cut in range(len(parts), -1, -1):
            prefix = ".".join(parts[:cut])
            if prefix in package_dir:
                folders[package] = root / package_dir[prefix] / Path(*parts[cut:])
                break
        else:  # pragma: no cover - setuptools' default: the package under the project root
            folders[package] = root / Path(*parts)
    return folders


def module_files(packages: dict[str, Path]) -> dict[str, Path]:
    """{module name: file} for every .py file directly in each package's folder (`pkg/__init__.py` is `pkg`)."""
    modules = {}
    for package, folder in packages.items():
        for path in sorted(folder.glob("*.py")):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """{module: {imported module: line of the first statement importing it}}, by the rules in the docstring."""
    graph = {}
    for module, path in modules.items():
        is_package = path.stem == "__init__"
        own_package = module if is_package else module.rpartition(".")[0]
        own_ancestors = {*_parents(module)} | ({module} if is_package else set())
        edges: dict[str, int] = {}

        def add(target: str, line: int, implicit: bool = False) -> None:
            if target == module or target not in modules or (implicit and target in own_ancestors):
                return
            edges.setdefault(target, line)

        def add_with_parents(target: str, line: int) -> None:
            add(target, line)
            for parent in _parents(target):
                add(parent, line, implicit=True)

        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add_with_parents(alias.name, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = own_package.split(".")
                    base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    if alias.name != "*" and candidate in modules:
                        add_with_parents(candidate, node.lineno)
                    else:
                        add_with_parents(base, node.lineno)
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (a path that returns to its start) per strongly connected group of modules; [] when none."""
    return [_cycle_in(graph, group) for group in cycle_groups(graph)]


def cycle_groups(graph: dict[str, dict[str, int]]) -> list[set[str]]:
    """The strongly connected groups of two or more modules: each module of one reaches every other."""
    index, low, on_stack, stack, groups = {}, {}, set(), [], []

    def strongconnect(start: str) -> None:  # Tarjan's algorithm, iterative (no recursion limit to hit)
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
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
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(group)

    for module in sorted(graph):
        if module not in index:
            strongconnect(module)
    return groups


def _cycle_in(graph: dict[str, dict[str, int]], group: set[str]) -> list[str]:
    """The shortest path from the group's first module back to itself, inside the group (breadth first)."""
    start = min(group)
    came_from = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child == start:
                    path = [node]
                    while came_from[path[-1]] is not None:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if child in group and child not in came_from:
                    came_from[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(group)}")  # pragma: no cover


def describe(graph: dict[str, dict[str, int]], modules: dict[str, Path], group: set[str]) -> str:
    """The group's shortest cycle, with the line of each import on it, and the group's other members."""
    cycle = _cycle_in(graph, group)
    lines = [" -> ".join(cycle)]
    for here, there in zip(cycle, cycle[1:]):
        where = modules[here].relative_to(REPO) if modules[here].is_relative_to(REPO) else modules[here]
        lines.append(f"    {where}:{graph[here][there]} imports {there}")
    if len(group) > len(cycle) - 1:
        lines.append(f"    (the same group, each reaching every other: {', '.join(sorted(group))})")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ the tests
def test_the_package_has_no_import_cycle():
    packages = packages_from_setup_cfg(REPO / "setup.cfg")
    assert {"talking_head", "talking_head.models", "talking_head.pipelines", "talking_head.schedulers"} <= set(packages)
    modules = module_files(packages)
    assert {"talking_head.cli", "talking_head.app", "talking_head.train_command.command",
            "talking_head.pipelines.pipeline_talking_head"} <= set(modules)
    graph = import_graph(modules)
    groups = cycle_groups(graph)
    assert not groups, "import cycles in talking_head:\n" + "\n".join(describe(graph, modules, g) for g in groups)


def test_nothing_in_the_package_imports_the_command_line():
    """`talking_head.cli` is the top: it wires the commands; what they share lives below it (cli_common)."""
    graph = import_graph(module_files(packages_from_setup_cfg(REPO / "setup.cfg")))
    importers = sorted(module for module, edges in graph.items() if "talking_head.cli" in edges)
    assert importers == [], f"these import talking_head.cli; import from talking_head.cli_common: {importers}"


def _write_package(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    cfg = root / "setup.cfg"
    cfg.write_text("[options]\npackage_dir =\n    pkg = pkg\npackages =\n    pkg\n    pkg.sub\n")
    return module_files(packages_from_setup_cfg(cfg))


def test_the_checker_finds_a_cycle_through_a_function_level_relative_import(tmp_path):
    modules = _write_package(tmp_path, {
        "__init__.py": "",
        "sub/__init__.py": "",
        "cli.py": "from pkg.sub import command\n",
        "sub/command.py": "import os\n\n\ndef run():\n    from ..cli import UsageError\n",
    })
    graph = import_graph(modules)
    assert graph["pkg.sub.command"] == {"pkg.cli": 5}
    assert find_cycles(graph) == [["pkg.cli", "pkg.sub.command", "pkg.cli"]]


def test_the_checker_keeps_a_name_from_the_enclosing_init_and_leaves_out_the_implicit_parent(tmp_path):
    # __init__ -> a -> b is no cycle: b's implicit edge to its own package `pkg` is left out ...
    modules = _write_package(tmp_path, {
        "__init__.py": "from pkg.a import f\n",
        "a.py": "from pkg import b\n\n\ndef f():\n    return b\n",
        "b.py": "import pkg.sub.c\n",
        "sub/__init__.py": "",
        "sub/c.py": "",
    })
    graph = import_graph(modules)
    assert graph["pkg.b"] == {"pkg.sub.c": 1, "pkg.sub": 1}
    assert find_cycles(graph) == []
    # ... but a NAME taken from the half-run `pkg/__init__.py` is one.
    (tmp_path / "pkg" / "b.py").write_text("from pkg import f\n")
    assert find_cycles(import_graph(modules)) == [["pkg", "pkg.a", "pkg.b", "pkg"]]
