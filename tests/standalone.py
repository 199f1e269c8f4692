"""The copy-paste check: lift named definitions out of a sample into an empty module and run them there alone.

A reader copies a store class (and what it needs: its exception types, constants, the orchestrator function) into
their own app, where neither `sample_support` nor the other scripts exist. `run_standalone` does the same: it
copies the script's top-level definitions named by the test, plus those of the script's imports that come from the
standard library or the framework's packages, into a new module in an empty folder, and runs a test body against
it in a fresh interpreter whose path holds neither this repository nor anything else of ours. An import of anything
else (or a name the copied code uses but did not bring along) fails the run. A class that builds on a module of ours
(e.g. durable_chat_history.py) is copied with that module beside it (`beside`), each as its named definitions.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from tests.local_servers import run_child

REPO_DIR = Path(__file__).resolve().parent.parent
# What a copied class may import besides the standard library: the framework's packages and their clients.
ALLOWED_PACKAGES = frozenset(
    {"agent_framework", "agent_framework_openai", "agent_framework_redis", "redis", "durabletask", "grpc", "azure"}
)


def _allowed(module: str | None) -> bool:
    top = (module or "").split(".")[0]
    return top == "__future__" or top in sys.stdlib_module_names or top in ALLOWED_PACKAGES


def _defined_names(node: ast.stmt) -> set[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return {node.name}
    targets: list[ast.expr] = []
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, ast.AnnAssign):
        targets = [node.target]
    return {target.id for target in targets if isinstance(target, ast.Name)}


def standalone_source(script: str, names: Sequence[str], *, keep_imports_from: Collection[str] = ()) -> str:
    """A module holding the allowed imports of `script` and the top-level definitions in `names`, in file order.
    Imports from the modules in `keep_imports_from` (copied beside it) are kept too."""
    path = REPO_DIR / script
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    wanted = set(names)
    parts: list[str] = []
    found: set[str] = set()
    for node in tree.body:
        allowed_import = (isinstance(node, ast.Import) and all(_allowed(alias.name) for alias in node.names)) or (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (_allowed(node.module) or node.module in keep_imports_from)
        )
        if allowed_import:
            parts.append(ast.get_source_segment(source, node) or "")
        elif defined := _defined_names(node) & wanted:
            found |= defined
            start = min([node.lineno, *(decorator.lineno for decorator in getattr(node, "decorator_list", []))])
            parts.append("\n".join(source.splitlines()[start - 1 : node.end_lineno]))
    missing = wanted - found
    if missing:
        raise AssertionError(f"{script} has no top-level definition of {sorted(missing)}")
    return "\n\n".join(parts) + "\n"


# Module-level code a body starts with: an embedded scheduler (`backend`) on a free loopback `port`, as a reader's own
# test would start one. The body connects its worker and client to `localhost:{port}` and stops `backend` at the end.
EMBEDDED_SCHEDULER = """
    import socket
    from durabletask.testing import InMemoryOrchestrationBackend

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = InMemoryOrchestrationBackend(port=port)
    backend.start()
"""


def run_standalone(
    tmp_path: Path,
    script: str,
    names: Sequence[str],
    body: str,
    *,
    beside: Mapping[str, Sequence[str]] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Write the copied definitions to `tmp_path/copied.py` and run `body` (module-level code that imports from
    `copied`) in a new interpreter with `tmp_path` as its only project folder. Asserts that it exits 0.

    `beside`: other files of ours the copy imports from (file name -> the names copied into a module of that name);
    the copies keep their imports from those modules, and only those."""
    beside = beside or {}
    ours = {Path(file).stem for file in beside}
    for file, file_names in beside.items():
        (tmp_path / file).write_text(standalone_source(file, file_names, keep_imports_from=ours), encoding="utf-8")
    (tmp_path / "copied.py").write_text(standalone_source(script, names, keep_imports_from=ours), encoding="utf-8")
    (tmp_path / "check.py").write_text(textwrap.dedent(body), encoding="utf-8")
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    command = [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "check.py"]
    process = run_child(command, timeout=timeout, cwd=tmp_path, env=environment, text=True)  # dies with the tests
    assert process.returncode == 0, f"the copied code failed on its own:\n{process.stdout}\n{process.stderr}"
    return process
