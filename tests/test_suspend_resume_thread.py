"""suspend_resume_thread.py: a session file alone carries the conversation, across objects and processes."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import pytest
from agent_framework import AgentSession

from sample_support import SampleError, select_model
from suspend_resume_thread import (
    load_local_thread,
    load_session,
    local_thread,
    main,
    new_agent,
    service_managed_thread,
)
from tests.conftest import ScriptRunner

SCRIPT = "suspend_resume_thread.py"


def saved_messages(path: Path) -> list[tuple[str, str]]:
    """(role, text) of every message in a local thread's session file, read as plain JSON."""
    data = json.loads(path.read_text())
    return [
        (message["role"], " ".join(content.get("text", "") for content in message["contents"]))
        for message in data["state"]["in_memory"]["messages"]
    ]


def agent_replies(output: str) -> list[str]:
    return re.findall(r"^(?:  child \| )?Agent: (.*)$", output, re.MULTILINE)


def ask(session: AgentSession, question: str, *, service_managed: bool) -> str:
    """One turn on `session` with an agent and client built just for it."""
    agent = new_agent(select_model(), service_managed=service_managed)
    return asyncio.run(agent.run(question, session=session)).text


def test_local_thread_file_carries_the_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(local_thread(select_model(), tmp_path))
    output = capsys.readouterr().out

    introduction, recall, control = agent_replies(output)
    assert "alice" in recall.lower()
    assert "alice" not in control.lower()
    assert "Suspended: 2 messages in state['in_memory']['messages']." in output
    assert "The session now holds 4 messages." in output

    # The file alone is enough: a session restored from it recalls, the same file without its messages does not.
    path = tmp_path / "local_session.json"
    assert saved_messages(path) == [("user", "My name is Alice."), ("assistant", introduction)]
    assert "alice" in ask(load_local_thread(path), "What is my name?", service_managed=False).lower()
    emptied = json.loads(path.read_text())
    emptied["state"]["in_memory"]["messages"] = []
    forgetful = AgentSession.from_dict(emptied)
    assert "alice" not in ask(forgetful, "What is my name?", service_managed=False).lower()


def test_service_managed_file_holds_only_the_latest_response_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(service_managed_thread(select_model(), tmp_path))
    output = capsys.readouterr().out

    _, recall = agent_replies(output)
    assert "paris" in recall.lower()
    suspended_id, latest_id = re.search(r"service_session_id moved on: (\S+) -> (\S+) \(saved again\)", output).groups()
    assert suspended_id != latest_id

    path = tmp_path / "service_session.json"
    data = json.loads(path.read_text())
    assert data["state"] == {}  # no messages: the service has them
    assert data["service_session_id"] == latest_id
    assert "paris" in ask(load_session(path), "Where do I live?", service_managed=True).lower()
    assert "paris" not in ask(AgentSession(), "Where do I live?", service_managed=True).lower()

    with pytest.raises(SampleError, match="holds a service-managed session"):
        load_local_thread(path)


def test_each_resume_continues_from_the_last_save(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "session.json"
    asyncio.run(main(suspend_to=path))
    assert [role for role, _ in saved_messages(path)] == ["user", "assistant"]
    session_id = json.loads(path.read_text())["session_id"]
    capsys.readouterr()

    for expected_count in (6, 10):
        asyncio.run(main(resume_from=path))
        recall, _summary = agent_replies(capsys.readouterr().out)
        assert "blue" in recall.lower()
        messages = saved_messages(path)
        # Exact counts: a repeated question and answer must not be mistaken for a replay and dropped.
        assert len(messages) == expected_count
        assert messages[-4][1] == "What is my favorite color?"
        assert json.loads(path.read_text())["session_id"] == session_id

    # Negative control: the same file without the first exchange does not know the color.
    trimmed = json.loads(path.read_text())
    del trimmed["state"]["in_memory"]["messages"][:2]
    path.write_text(json.dumps(trimmed))
    asyncio.run(main(resume_from=path))
    recall, _summary = agent_replies(capsys.readouterr().out)
    assert "blue" not in recall.lower()


@pytest.mark.timeout(60)
def test_default_run_resumes_in_a_child_process(capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(main())
    output = capsys.readouterr().out

    child_pid = int(re.search(r"^  child \| Resumed session .*: 2 messages, in process (\d+)$", output, re.M).group(1))
    assert child_pid != os.getpid()
    child_lines = [line for line in output.splitlines() if line.startswith("  child | ")]
    child_recall = next(line for line in child_lines if "Agent:" in line)
    assert "blue" in child_recall.lower()
    assert "  child | Suspended again: 6 messages saved to" in output
    assert "Back in the parent: the file now holds 6 messages." in output
    folder = re.search(r"^Session files go to (\S+) \(deleted at the end\)\.$", output, re.M).group(1)
    assert not Path(folder).exists()


@pytest.mark.timeout(60)
def test_script_runs_as_a_user_would(run_script: ScriptRunner) -> None:
    result = run_script(SCRIPT)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Backends: model=")
    assert lines.count("Agent: Your name is Alice.") == 1
    assert "Agent: You live in Paris." in lines
    assert "  child | Agent: Your favorite color is blue." in lines
    assert "Back in the parent: the file now holds 6 messages." in lines


SESSION = {"type": "session", "session_id": "s-1", "service_session_id": None}
BAD_SESSION_FILES = {
    "corrupt JSON": ('{"type": "session", "session_id": ', r"is not valid JSON \(line 1, column 35"),
    "not a session": ('["My favorite color is blue."]', "does not hold a saved agent session"),
    "service-managed session": (
        json.dumps({**SESSION, "service_session_id": "resp_123", "state": {}}),
        r"holds a service-managed session .*'resp_123'",
    ),
    "session of a store outside the file (Redis)": (
        json.dumps({**SESSION, "state": {}}),
        r"holds no in-memory history \(state keys: none\)",
    ),
    "session of another store (custom SQLite)": (
        json.dumps({**SESSION, "state": {"sqlite_store": {"database": "threads.db"}}}),
        r"holds no in-memory history \(state keys: 'sqlite_store'\)",
    ),
    "message without fields": (
        json.dumps({**SESSION, "state": {"in_memory": {"messages": [{"type": "message"}]}}}),
        "holds a damaged session",
    ),
    "messages that are not messages": (
        json.dumps({**SESSION, "state": {"in_memory": {"messages": [{"role": "user"}]}}}),
        r"holds a damaged session: .* are not all messages",
    ),
}


@pytest.mark.parametrize("case", BAD_SESSION_FILES)
def test_bad_session_file_is_a_one_line_error_and_stays_untouched(tmp_path: Path, case: str) -> None:
    content, message = BAD_SESSION_FILES[case]
    path = tmp_path / "session.json"
    path.write_text(content)
    with pytest.raises(SampleError, match=message):
        asyncio.run(main(resume_from=path))
    assert path.read_text() == content
    assert sorted(tmp_path.iterdir()) == [path]


def test_missing_file_and_overwriting_suspend_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "session.json"
    with pytest.raises(SampleError, match=r"no saved session at .*: create one with --suspend"):
        asyncio.run(main(resume_from=path))
    path.write_text("a conversation worth keeping")
    with pytest.raises(SampleError, match="already exists"):
        asyncio.run(main(suspend_to=path))
    assert path.read_text() == "a conversation worth keeping"
    with pytest.raises(SampleError, match="does not exist"):
        asyncio.run(main(suspend_to=tmp_path / "no such folder" / "session.json"))


@pytest.mark.timeout(60)
def test_corrupt_file_from_the_command_line_gives_one_line_and_exit_1(tmp_path: Path, run_script: ScriptRunner) -> None:
    path = tmp_path / "session.json"
    path.write_text('{"type": "session", "session_id": ')
    result = run_script(SCRIPT, "--resume", str(path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: {path} is not valid JSON (line 1, column 35: Expecting value); it was left unchanged"
    ]
    assert path.read_text() == '{"type": "session", "session_id": '
