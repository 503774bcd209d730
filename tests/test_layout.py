"""The package's import graph, read from the source (every import, including those inside functions):
no import circles between modules, and each room imports only from the rooms listed before it."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Top to bottom: a room may import from the rooms before it, never from those after it.
ROOMS = (
    "errors", "run_dir", "core", "optim", "batch", "models", "rollout", "data", "rewards", "demo",
    "distributed",
    "config", "trainer", "cli", "__main__",
)  # fmt: skip


def modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the sapo modules it imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    mods = modules()
    graph = {}
    for name, path in mods.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in mods else node.module)
        graph[name] = {m for m in found if m in mods and m != name}
    return graph


def room(module: str) -> str:
    return module.split(".")[1] if "." in module else "sapo"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return out


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_room_is_listed_and_imports_only_from_rooms_above_it():
    graph = import_graph()
    rooms = {room(m) for m in graph} - {"sapo"}
    assert rooms <= set(ROOMS), f"add {rooms - set(ROOMS)} to ROOMS (and to the README's layout)"
    upward = [
        (a, b)
        for a, targets in graph.items()
        for b in targets
        if room(b) != "sapo" and room(a) != "sapo" and ROOMS.index(room(b)) > ROOMS.index(room(a))
    ]
    assert upward == []


def test_only_config_trainer_and_cli_read_the_config():
    readers = {room(a) for a, targets in import_graph().items() if any(room(b) == "config" for b in targets)}
    assert readers <= {"config", "trainer", "cli"}
