"""The project's import graph, read from the source: config.py at the bottom, every import pointing down the floors of
docs/house.md (the model before the speed, the speed before the plumbing), no circle, and every project import at the
top of its module, where a reader sees the layers."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODULES = {path.stem: path for path in REPO.glob("*.py")}
LATE = {"bench", "check"}  # bench.py imports the modules it measures in its children, which may run another checkout;
# check.py's child imports a student's modules of the same names, so minllama's are imported in the parent's functions
FLOORS = {  # docs/house.md: a module imports only modules of its own floor or lower ones
    "config": 0, "files": 0,
    "rope": 1, "optimizer": 1, "tokenizer": 1, "checkpoint": 1, "assets": 1, "metrics": 1,
    "llama": 2,
    "blocked_linear": 3, "decode": 3, "fast": 3, "lora": 3,
    "classifier": 4, "splits": 4, "options": 4,
    "trainer": 5,
    "run_llama": 6, "convert": 6, "reproduce": 6, "sanity_check": 6, "rope_test": 6, "optimizer_test": 6, "bench": 6,
    "check": 6,
}
SPEED = {"blocked_linear", "decode", "fast"}  # installed on the model from above (fast.install), never imported by it


def project_imports(module: str) -> list[tuple[str, bool]]:
    """(imported project module, whether the import sits at the top level of the module) for each import."""
    tree = ast.parse(MODULES[module].read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        found += [(name.split(".")[0], id(node) in top) for name in names if name.split(".")[0] in MODULES]
    return found


def test_config_imports_no_project_module():
    assert project_imports("config") == []


def test_project_imports_sit_at_the_top_of_their_module():
    hidden = [(module, imported) for module in MODULES if module not in LATE
              for imported, at_top in project_imports(module) if not at_top]
    assert hidden == []


def test_the_import_graph_has_no_circle():
    graph = {module: {imported for imported, _ in project_imports(module)}
             for module in MODULES if module not in LATE}
    done, path = set(), []

    def visit(module: str) -> None:
        assert module not in path, f"import circle: {' -> '.join(path[path.index(module):] + [module])}"
        if module in done:
            return
        path.append(module)
        for imported in sorted(graph.get(module, ())):
            visit(imported)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_every_module_has_a_floor_and_imports_none_above_its_own():
    assert sorted(FLOORS) == sorted(MODULES)
    upward = [(module, imported) for module in MODULES for imported, _ in project_imports(module)
              if FLOORS[imported] > FLOORS[module]]
    assert upward == []


def test_the_model_imports_no_speed_module():
    assert {imported for imported, _ in project_imports("llama")} == {"config", "rope", "checkpoint"}
    below, todo = set(), ["llama"]  # every module llama.py imports, directly or through others
    while todo:
        for imported, _ in project_imports(todo.pop()):
            if imported not in below:
                below.add(imported)
                todo.append(imported)
    assert below.isdisjoint(SPEED)
