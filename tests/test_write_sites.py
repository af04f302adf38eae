"""Issue 24: every file hardreid writes goes through the atomic helpers of hardreid.files (write to a temporary
file, flush to disk, rename). This walks the source: a bare ``open(..., "w")``, ``write_text``, ``torch.save``,
``np.save``, ``savefig``, an image's or model's ``.save``, ``faiss.write_index`` or ``json.dump`` outside them fails,
naming the file and line. A call is inside the helpers when it is in hardreid/files.py, or in a lambda or a local
function that is handed to one of them (``atomic_write(path, lambda handle: torch.save(obj, handle))``)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "hardreid"
HELPERS = {"atomic_write", "atomic_write_path", "atomic_write_text", "atomic_write_json", "atomic_save_npy",
           "atomic_save_image", "atomic_save_figure", "atomic_save"}
WRITERS = {"write_text", "write_bytes", "savefig", "save", "write_index", "dump", "to_csv", "tofile"}
# Writes that are deliberately not atomic, each with its reason.
EXEMPT = {
    ("data/synthetic", "save"): "one generated image of thousands; synthetic.json, written last and atomically, marks "
                                "the set complete, and an incomplete set is regenerated",
    ("viz/report", "save"): "a thumbnail into an in-memory buffer, embedded in the HTML page (written atomically)",
}


def _handed_to_helper(node: ast.AST, parents: dict[ast.AST, ast.AST], local_writers: set[str]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Lambda) and isinstance(parents.get(node), ast.Call):
            return _call_name(parents[node]) in HELPERS
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return node.name in local_writers
    return False


def _call_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _bare_writes(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    local_writers = {arg.id for call in ast.walk(tree) if isinstance(call, ast.Call) and _call_name(call) in HELPERS
                     for arg in call.args if isinstance(arg, ast.Name)}
    module = path.relative_to(SRC).with_suffix("").as_posix()
    found = []
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call):
            continue
        name = _call_name(call)
        opens_for_writing = name == "open" and any(
            isinstance(a, ast.Constant) and isinstance(a.value, str) and set(a.value) & set("wax")
            for a in [*call.args[1:2], *(k.value for k in call.keywords if k.arg == "mode")])
        if not (opens_for_writing or name in WRITERS):
            continue
        if isinstance(call.func, ast.Attribute) and getattr(call.func.value, "id", "") == "self":
            continue  # a method of ours (Trainer.save writes through the helpers itself)
        if name == "dump" and not (isinstance(call.func, ast.Attribute) and getattr(call.func.value, "id", "") in {"json", "yaml", "pickle"}):
            continue
        if _handed_to_helper(call, parents, local_writers) or any(module.startswith(m) and name == n for m, n in EXEMPT):
            continue
        found.append(f"{path.relative_to(SRC.parent)}:{call.lineno}: {ast.unparse(call)[:80]}")
    return found


def test_every_write_goes_through_the_atomic_helpers():
    bare = [line for path in sorted(SRC.rglob("*.py")) if path.name != "files.py" for line in _bare_writes(path)]
    assert not bare, "writes outside hardreid.files' atomic helpers:\n" + "\n".join(bare)


def test_the_check_catches_a_planted_bare_write(tmp_path, monkeypatch):
    """Negative twin: a module with a bare torch.save and an open(..., 'w') is reported; the same writes handed to
    the helpers are not."""
    planted = SRC / "_planted_for_test.py"
    code = ("import torch\nfrom .files import atomic_write\n"
            "def bad(obj, path):\n    torch.save(obj, path)\n    open(path, 'w').write('x')\n"
            "def good(obj, path):\n    atomic_write(path, lambda handle: torch.save(obj, handle))\n")
    planted.write_text(code)
    try:
        found = _bare_writes(planted)
    finally:
        planted.unlink()
    assert [line.split(": ", 1)[1] for line in found] == ["torch.save(obj, path)", "open(path, 'w')"], found
