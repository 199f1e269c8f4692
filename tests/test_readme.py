"""README.md says what the repository does: its two commands, the tests it names, the files it links, and the
"Check your own store" snippet, which runs here on the SQLite store as a reader would run it on theirs."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from tests.conftest import REPO_DIR
from tests.local_servers import run_child

README = (REPO_DIR / "README.md").read_text(encoding="utf-8")


def test_the_first_lines_are_the_two_set_up_commands_and_ci_runs_the_second() -> None:
    first_block = README.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in first_block.splitlines()]
    assert commands == ["make samples", "make test"]
    assert README.index("```bash") < 200  # on the first screen
    assert (REPO_DIR / ".ci" / "run").read_text(encoding="utf-8").rstrip().endswith("\nmake test")


def test_every_test_the_readme_names_exists() -> None:
    defined = set()
    for module in (REPO_DIR / "tests").glob("*.py"):
        defined |= set(re.findall(r"def (test_\w+)\(", module.read_text(encoding="utf-8")))
    named = re.findall(r"`(test_\w+?)(_?\.\.\.)?`", README)
    assert len(named) > 20
    for name, cut in named:  # "test_two_writers_at_once_..." names every test starting so
        assert any(test.startswith(name) for test in defined) if cut else name in defined, name


def test_every_linked_file_exists() -> None:
    links = re.findall(r"\]\(([^)#:]+)\)", README)
    assert len(links) > 8
    assert [link for link in links if not (REPO_DIR / link).exists()] == []


def test_the_check_your_own_store_snippet_runs_the_contract(tmp_path: Path) -> None:
    snippet = re.search(r"```python\n(from tests\.chat_store_contract .*?)```", README, re.S)
    assert snippet is not None
    # The reader's store: the SQLite sample's. The reader's file sits in tests/, where tests/conftest.py is loaded.
    mine = "from custom_chat_message_store_thread import CustomChatMessageStore as MyStore\n" + snippet.group(1)
    (tmp_path / "test_my_store.py").write_text(mine, encoding="utf-8")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider"]
    command += ["--rootdir", str(tmp_path), "-W", "error::ResourceWarning", str(tmp_path / "test_my_store.py")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")} | {"PYTHONPATH": str(REPO_DIR)}
    result = run_child(command, timeout=120, cwd=tmp_path, text=True, env=env)
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r"\b(1\d|[2-9]\d) passed", result.stdout) and " failed" not in result.stdout, result.stdout
