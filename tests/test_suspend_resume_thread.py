"""suspend_resume_thread.py: the session file alone carries the conversation (and a tool call waiting for approval)
across objects and processes; two writers of one file are told, never silently lost; bad files are one line."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from agent_framework import AgentSession

from sample_support import select_model
from sample_support.offline_model import OFFLINE_MODEL_NAME
from suspend_resume_thread import (
    SessionConflictError,
    SessionFile,
    SessionFileError,
    main,
    open_agent,
    pending_approvals,
    service_managed_thread,
    two_instances,
)
from tests.conftest import REPO_DIR, ScriptRunner
from tests.local_servers import run_child, start_child, stop_child
from tests.model_probe import ModelProbe
from tests.standalone import run_standalone
from tests.test_custom_chat_message_store_thread import model_holding_the_first_requests

SCRIPT = "suspend_resume_thread.py"
BLUE, BOOK = "My favorite color is blue.", "Book a flight to Paris."
RESUME_QUESTIONS = ["What is my favorite color?", "Summarize our conversation."]
CONFLICT = r"was saved by another process after this one read version \d+: this process's new turns were not saved"


def saved(path: Path) -> dict:
    return json.loads(path.read_text())


def saved_messages(path: Path) -> list[tuple[str, str]]:
    """(role, text) of every message in a local thread's session file, read as plain JSON."""
    return [
        (
            message["role"],
            " ".join(str(content.get("text", content.get("result", ""))) for content in message["contents"]),
        )
        for message in saved(path)["session"]["state"]["in_memory"]["messages"]
    ]


def bookings(folder: Path) -> list[str]:
    ledger = folder / "bookings.txt"
    return ledger.read_text().splitlines() if ledger.exists() else []


def ask(session: AgentSession, question: str, path: Path, *, service_managed: bool = False) -> str:
    """One turn on `session` with an agent and client built just for it (and closed after it)."""

    async def turn() -> str:
        async with open_agent(select_model(), path, service_managed=service_managed) as agent:
            return (await agent.run(question, session=session)).text

    return asyncio.run(turn())


def script(*args: str, **options: object) -> subprocess.Popen[str]:
    """`python suspend_resume_thread.py args` started now (not waited for); it dies with the tests."""
    return start_child(
        [sys.executable, SCRIPT, *args],
        cwd=REPO_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **options,
    )


# Issue 8 (and everything the sample showed before): the file carries the history; each resume continues it.


def test_local_thread_file_carries_the_history(tmp_path: Path) -> None:
    path = tmp_path / "session.json"
    (introduction,) = asyncio.run(main(["--suspend", str(path)]))["suspend"].replies
    assert saved_messages(path) == [("user", BLUE), ("assistant", introduction)]
    assert saved(path)["version"] == 1

    # The file alone is enough: a session restored from it recalls, the same file without its messages does not.
    assert "blue" in ask(SessionFile(path).load(), "What is my favorite color?", path).lower()
    emptied = saved(path)["session"]
    emptied["state"]["in_memory"]["messages"] = []
    assert "blue" not in ask(AgentSession.from_dict(emptied), "What is my favorite color?", path).lower()


def test_service_managed_file_holds_only_the_latest_response_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = asyncio.run(service_managed_thread(select_model(), tmp_path))
    (recall,) = outcome.replies
    assert "paris" in recall.lower()
    suspended_id, latest_id = re.search(r"moved on: (\S+) -> (\S+) \(saved again\)", capsys.readouterr().out).groups()
    assert suspended_id != latest_id

    path = tmp_path / "service_session.json"
    assert saved(path)["version"] == 2
    session = saved(path)["session"]
    assert session["state"] == {}  # no messages: the service has them
    assert session["service_session_id"] == latest_id
    assert "paris" in ask(SessionFile(path).load(), "Where do I live?", path, service_managed=True).lower()
    assert "paris" not in ask(AgentSession(), "Where do I live?", path, service_managed=True).lower()
    with pytest.raises(SessionFileError, match="holds no local thread"):
        asyncio.run(main(["--resume", str(path)]))


def test_each_resume_continues_from_the_last_save(tmp_path: Path) -> None:
    path = tmp_path / "session.json"
    asyncio.run(main(["--suspend", str(path)]))
    session_id = saved(path)["session"]["session_id"]

    for expected_count, expected_version in ((6, 2), (10, 3)):
        recall, _summary = asyncio.run(main(["--resume", str(path)]))["resume"].replies
        assert "blue" in recall.lower()
        messages = saved_messages(path)
        # Exact counts: a repeated question and answer must not be mistaken for a replay and dropped.
        assert len(messages) == expected_count
        assert [text for role, text in messages[-4:] if role == "user"] == RESUME_QUESTIONS
        assert (saved(path)["version"], saved(path)["session"]["session_id"]) == (expected_version, session_id)

    # Negative control: the same file without the first exchange does not know the color.
    trimmed = saved(path)
    del trimmed["session"]["state"]["in_memory"]["messages"][:2]
    path.write_text(json.dumps(trimmed))
    recall, _summary = asyncio.run(main(["--resume", str(path)]))["resume"].replies
    assert "blue" not in recall.lower()


@pytest.mark.timeout(90)
def test_default_run_resumes_in_a_child_process(capsys: pytest.CaptureFixture[str]) -> None:
    outcomes = asyncio.run(main())
    output = capsys.readouterr().out

    child_pid = int(re.search(r"^  child \| Resumed .* in process (\d+): 4 messages, version 1$", output, re.M)[1])
    assert child_pid != os.getpid()
    assert "  child | Agent: Booked a flight to Paris." in output.splitlines()
    assert "  child | Agent: Your favorite color is blue." in output.splitlines()
    assert "  child | Suspended again: 11 messages saved to" in output
    assert "Bookings made: ['Paris'] (the approved one; the declined call never ran)" in output
    declined, recall, _summary = outcomes["local_thread"].replies
    assert (declined, recall) == (
        "I did not book the flight to Paris: the request was declined.",
        "Your favorite color is blue.",
    )
    assert "paris" in outcomes["service_managed_thread"].replies[0].lower()
    assert re.search(CONFLICT, outcomes["two_instances"].told)
    folder = re.search(r"^Session files go to (\S+) \(deleted at the end\)\.$", output, re.M)[1]
    assert not Path(folder).exists()


@pytest.mark.timeout(90)
def test_script_runs_as_a_user_would_and_leaks_nothing() -> None:
    # The command; the warnings filter in the environment reaches the resuming child too.
    command = [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", SCRIPT]
    environment = {**os.environ, "PYTHONWARNINGS": "error::ResourceWarning"}
    result = run_child(command, cwd=REPO_DIR, env=environment, text=True, timeout=90)
    assert result.returncode == 0, result.stderr
    assert "ResourceWarning" not in result.stderr and "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Backends: model=")
    assert "  child | Agent: Your favorite color is blue." in lines
    assert "Agent: I did not book the flight to Paris: the request was declined." in lines
    assert "Agent: You live in Paris." in lines
    assert any(re.search(f"Instance B was told: .*{CONFLICT}", line) for line in lines)


def test_session_file_works_copied_alone(tmp_path: Path) -> None:
    body = """
        from pathlib import Path
        from agent_framework import AgentSession, Content, Message
        from copied import SessionConflictError, SessionFile, SessionFileError

        session = AgentSession()
        call = Content.from_function_call(call_id="c1", name="lookup", arguments="{}")
        session.state["in_memory"] = {"messages": [
            Message(role="user", contents=["hi"]),
            Message(role="assistant", contents=[call]),
            Message(role="tool", contents=[Content.from_function_result(call_id="c1", result="42")]),
        ]}
        path = Path("session.json")
        SessionFile(path).create(session)
        first, second = SessionFile(path), SessionFile(path)
        loaded = first.load()
        assert [m.role for m in loaded.state["in_memory"]["messages"]] == ["user", "assistant", "tool"]
        second.load()
        loaded.state["in_memory"]["messages"].append(Message(role="user", contents=["again"]))
        first.save(loaded)
        try:
            second.save(loaded)
            raise AssertionError("a stale save went through")
        except SessionConflictError:
            pass
        assert len(SessionFile(path).load().state["in_memory"]["messages"]) == 4
        try:
            SessionFile(path).create(session)
            raise AssertionError("create overwrote a file")
        except SessionConflictError:
            pass
        orphan = AgentSession()
        orphan.state["in_memory"] = {"messages": [Message(role="tool", contents=[
            Content.from_function_result(call_id="nope", result="x")])]}
        SessionFile(Path("orphan.json")).create(orphan)
        try:
            SessionFile(Path("orphan.json")).load()
            raise AssertionError("an orphan tool result was accepted")
        except SessionFileError as error:
            assert "message 1 answers a tool call never made" in str(error)
        print("ok")
    """
    assert (
        run_standalone(tmp_path, SCRIPT, ["SessionFileError", "SessionConflictError", "SessionFile"], body).stdout
        == "ok\n"
    )


# Issue 11.3: a tool call waiting for a person's approval survives a suspend and runs once when approved elsewhere.


def test_pending_approval_survives_the_json_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "session.json"
    (waiting,) = asyncio.run(main(["--suspend", str(path), "--say", BOOK]))["suspend"].replies
    assert waiting == ""  # the agent stopped to ask
    (request,) = saved(path)["session"]["state"]["tool_approval"]["pending_approval_requests"]
    assert request["type"] == "function_approval_request"
    assert (request["function_call"]["name"], json.loads(request["function_call"]["arguments"])) == (
        "book_flight",
        {"destination": "Paris"},
    )
    assert bookings(tmp_path) == []
    # Plain JSON -> AgentSession.from_dict -> the framework's own pending request, ready to be answered.
    (restored,) = pending_approvals(AgentSession.from_dict(saved(path)["session"]))
    answer = restored.to_function_approval_response(approved=True)
    assert (answer.type, answer.approved, answer.function_call.name) == (
        "function_approval_response",
        True,
        "book_flight",
    )


def test_approval_given_when_resumed_runs_the_tool_once(
    tmp_path: Path, run_script_here: ScriptRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    # The script's own command line, on the file alone (the default run approves in a child process).
    path = tmp_path / "session.json"
    asyncio.run(main(["--suspend", str(path), "--say", BLUE, "--say", BOOK]))
    assert 'Approval: the agent asks to run book_flight{"destination": "Paris"}' in capsys.readouterr().out
    before = path.read_bytes()
    with pytest.raises(SessionFileError, match=r"waits for an answer: add --approve or --decline$"):
        asyncio.run(main(["--resume", str(path)]))
    assert 'book_flight{"destination": "Paris"} waits for a person: no answer given' in capsys.readouterr().out
    assert path.read_bytes() == before
    assert bookings(tmp_path) == []

    approved = run_script_here(SCRIPT, "--resume", str(path), "--approve")
    assert approved.returncode == 0, approved.stderr
    assert approved.stderr == ""
    assert "Agent: Booked a flight to Paris." in approved.stdout.splitlines()
    assert "Agent: Your favorite color is blue." in approved.stdout.splitlines()  # the conversation goes on
    assert bookings(tmp_path) == ["Paris"]
    assert [text for role, text in saved_messages(path) if role == "tool"] == ["Booked a flight to Paris."]
    assert not pending_approvals(SessionFile(path).load())

    with pytest.raises(SessionFileError, match=r"has no tool call waiting$"):
        asyncio.run(main(["--resume", str(path), "--approve"]))
    asyncio.run(main(["--resume", str(path)]))  # continues; the strict endpoint accepts the history (no 400)
    assert bookings(tmp_path) == ["Paris"]  # still exactly once
    assert saved(path)["version"] == 3


def test_declined_approval_never_runs_the_tool(tmp_path: Path) -> None:
    path = tmp_path / "session.json"
    asyncio.run(main(["--suspend", str(path), "--say", BOOK]))
    declined, *_ = asyncio.run(main(["--resume", str(path), "--decline"]))["resume"].replies
    assert "declined" in declined and "Paris" in declined and "did not book" in declined
    assert bookings(tmp_path) == []
    assert not pending_approvals(SessionFile(path).load())
    asyncio.run(main(["--resume", str(path)]))  # the history with the declined call is one the endpoint accepts
    assert bookings(tmp_path) == []


# Issue 12.6: two writers of one file: one wins, the other is told in one line; never a silent loss.


def test_a_stale_save_is_refused_and_a_reload_succeeds(tmp_path: Path) -> None:
    outcome = asyncio.run(two_instances(select_model(), tmp_path))
    assert re.search(CONFLICT, outcome.told)
    path = tmp_path / "shared_session.json"
    assert saved(path)["version"] == 2
    assert [text for role, text in saved_messages(path) if role == "user"] == [
        "My name is Alice.",
        "My favorite color is green.",
    ]
    # The loser reloads and says its turn again: both turns are kept.
    file = SessionFile(path)
    session = file.load()
    ask(session, "My favorite food is pasta.", path)
    file.save(session)
    assert saved(path)["version"] == 3
    assert [text for role, text in saved_messages(path) if role == "user"][-2:] == [
        "My favorite color is green.",
        "My favorite food is pasta.",
    ]


def together(offline_model: ModelProbe, *commands: list[str]) -> list[tuple[str, str, int]]:
    """Runs `python suspend_resume_thread.py <command>` once per command, at the same time: the model holds each
    process's first request until all have sent one, so every process has read (or not yet created) the file before
    any of them writes it. Returns (stdout, stderr, exit status) per command."""
    with model_holding_the_first_requests(offline_model.base_url, len(commands)) as base_url:
        model = {"OPENAI_API_KEY": "offline", "OPENAI_MODEL": OFFLINE_MODEL_NAME, "OPENAI_BASE_URL": base_url}
        processes = [script(*command, env={**os.environ, **model}) for command in commands]
        try:
            return [(*process.communicate(timeout=100), process.returncode) for process in processes]
        finally:
            for process in processes:
                stop_child(process)


@pytest.mark.timeout(120)
def test_concurrent_resumes_leave_a_consistent_file(tmp_path: Path, offline_model: ModelProbe) -> None:
    path = tmp_path / "session.json"
    asyncio.run(main(["--suspend", str(path)]))
    results = together(offline_model, *[["--resume", str(path)]] * 3)

    # All three read version 1: exactly one saves, the other two are told in one line and save nothing.
    assert sorted(status for *_, status in results) == [0, 1, 1], [stderr for _, stderr, _ in results]
    for _, stderr, status in results:
        if status == 1:
            (line,) = stderr.splitlines()
            assert re.fullmatch(f"error: {re.escape(str(path))} {CONFLICT} \\(resume from the file again\\)", line)
    # The saved resume is in the file, whole and in order.
    messages = saved_messages(path)
    assert saved(path)["version"] == 2
    assert len(messages) == 2 + 4
    assert [text for role, text in messages if role == "user"] == [BLUE, *RESUME_QUESTIONS]
    assert sorted(item.name for item in tmp_path.iterdir()) == ["session.json"]  # no temporary file left behind


@pytest.mark.timeout(120)
def test_concurrent_suspends_create_exactly_one_file(tmp_path: Path, offline_model: ModelProbe) -> None:
    path = tmp_path / "session.json"
    texts = [f"My name is Alice{number}." for number in range(2)]
    results = together(offline_model, *[["--suspend", str(path), "--say", text] for text in texts])

    assert sorted(status for *_, status in results) == [0, 1]
    (winner,) = [text for text, (*_, status) in zip(texts, results, strict=True) if status == 0]
    for _, stderr, status in results:
        if status == 1:
            assert stderr.splitlines() == [f"error: cannot create {path}: File exists; nothing was overwritten"]
    assert saved_messages(path)[0] == ("user", winner)
    assert sorted(item.name for item in tmp_path.iterdir()) == ["session.json"]


# Issue 12, minor items: bad input is one line naming the file, which stays untouched; no hang; SIGTERM; --help.


SESSION = {"type": "session", "session_id": "s-1", "service_session_id": None}
TOOL_RESULT = {"type": "function_result", "call_id": "call_1", "result": "Booked."}
BAD_SESSION_FILES = {
    "corrupt JSON": ('{"version": 1, "session": ', r"is not valid JSON \(Expecting value: line 1 column 27"),
    "not UTF-8": (b'{"version": 1, "session": "\xff"}'.decode("latin-1"), "is not valid JSON"),
    "not a session": ('["My favorite color is blue."]', "is not a session file"),
    "a bare session.to_dict() without a version": (json.dumps({**SESSION, "state": {}}), "is not a session file"),
    "a version that is not a number": (json.dumps({"version": "1", "session": SESSION}), "is not a session file"),
    "an empty session_id": (
        json.dumps({"version": 1, "session": {**SESSION, "session_id": ""}}),
        r"holds a session without a session_id \(a non-empty string\)",
    ),
    "service-managed session": (
        json.dumps({"version": 1, "session": {**SESSION, "service_session_id": "resp_123", "state": {}}}),
        r"holds no local thread \(its messages are kept elsewhere\)",
    ),
    "session of another store (custom SQLite)": (
        json.dumps({"version": 1, "session": {**SESSION, "state": {"sqlite_store": {"database": "threads.db"}}}}),
        "holds no local thread",
    ),
    "message without fields": (
        json.dumps({"version": 1, "session": {**SESSION, "state": {"in_memory": {"messages": [{"type": "message"}]}}}}),
        "holds a damaged session",
    ),
    "messages that are not messages": (
        json.dumps({"version": 1, "session": {**SESSION, "state": {"in_memory": {"messages": [{"role": "user"}]}}}}),
        "holds a damaged session: message 1 has no valid role",
    ),
    "role 5": (
        json.dumps(
            {
                "version": 1,
                "session": {
                    **SESSION,
                    "state": {"in_memory": {"messages": [{"type": "message", "role": 5, "contents": []}]}},
                },
            }
        ),
        "holds a damaged session: message 1 has no valid role",
    ),
    "a tool result without its call": (
        json.dumps(
            {
                "version": 1,
                "session": {
                    **SESSION,
                    "state": {
                        "in_memory": {
                            "messages": [
                                {"type": "message", "role": "user", "contents": [{"type": "text", "text": "Hi"}]},
                                {"type": "message", "role": "tool", "contents": [TOOL_RESULT]},
                            ]
                        }
                    },
                },
            }
        ),
        "holds a damaged session: message 2 answers a tool call never made",
    ),
}


@pytest.mark.parametrize("case", BAD_SESSION_FILES)
def test_bad_session_file_is_a_one_line_error_and_stays_untouched(tmp_path: Path, case: str) -> None:
    content, message = BAD_SESSION_FILES[case]
    path = tmp_path / "session.json"
    path.write_text(content, encoding="latin-1" if case == "not UTF-8" else "utf-8")
    before = path.read_bytes()
    with pytest.raises(SessionFileError, match=message) as raised:
        asyncio.run(main(["--resume", str(path)]))
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)
    assert path.read_bytes() == before
    assert sorted(tmp_path.iterdir()) == [path]


def test_damaged_history_blames_the_file_not_the_model_key(tmp_path: Path, run_script_here: ScriptRunner) -> None:
    path = tmp_path / "session.json"
    path.write_text(BAD_SESSION_FILES["a tool result without its call"][0])
    result = run_script_here(SCRIPT, "--resume", str(path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: {path} holds a damaged session: message 2 answers a tool call never made"
    ]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["/dev/zero", "a FIFO", "a huge file", "a folder"])
def test_special_and_huge_files_are_refused_at_once(tmp_path: Path, kind: str) -> None:
    path = Path("/dev/zero") if kind == "/dev/zero" else tmp_path / "session.json"
    if kind == "a FIFO":
        os.mkfifo(path)
    elif kind == "a huge file":
        with path.open("wb") as file:
            file.truncate(SessionFile.MAX_BYTES + 1)  # sparse: takes no disk space
    elif kind == "a folder":
        path.mkdir()
    expected = "cannot read the session file .*: Is a directory" if kind == "a folder" else "is not a regular file"
    with pytest.raises(SessionFileError, match=expected) as raised:
        asyncio.run(main(["--resume", str(path)]))
    assert str(path) in str(raised.value)


def test_missing_file_and_existing_suspend_target_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "session.json"
    with pytest.raises(SessionFileError, match=r"cannot read the session file .*: No such file or directory"):
        asyncio.run(main(["--resume", str(path)]))
    path.write_text("a conversation worth keeping")
    with pytest.raises(SessionConflictError, match=r"cannot create .*: File exists; nothing was overwritten"):
        asyncio.run(main(["--suspend", str(path)]))
    assert path.read_text() == "a conversation worth keeping"
    with pytest.raises(SessionFileError, match=r"cannot save the session to .*: No such file or directory"):
        asyncio.run(main(["--suspend", str(tmp_path / "no such folder" / "session.json")]))
    assert sorted(tmp_path.iterdir()) == [path]


@pytest.mark.timeout(60)
def test_sigterm_removes_the_temp_folder_and_the_resuming_child() -> None:
    process = script(env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert process.stdout is not None
        folder = child_pid = None
        for line in process.stdout:
            if found := re.match(r"Session files go to (\S+) \(deleted at the end\)\.$", line):
                folder = Path(found[1])
            if found := re.match(r"A child process \(pid (\d+)\) runs: ", line):
                child_pid = int(found[1])
                break
        assert folder is not None and folder.is_dir() and child_pid is not None
        os.kill(child_pid, 0)  # the resuming child is running now
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        stop_child(process)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    assert not folder.exists()
    with pytest.raises(ProcessLookupError):  # gone already: the parent killed and reaped it before exiting
        os.kill(child_pid, 0)


def test_help_prints_usage_and_runs_nothing(run_script_here: ScriptRunner) -> None:
    result = run_script_here(SCRIPT, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: suspend_resume_thread.py")
    assert "Backends:" not in result.stdout and result.stderr == ""
    for wrong in (["--bogus"], ["--suspend", "x.json", "--approve"]):
        rejected = run_script_here(SCRIPT, *wrong)
        assert rejected.returncode == 2
        assert "Backends:" not in rejected.stdout
        assert rejected.stderr.splitlines()[-1].startswith("suspend_resume_thread.py: error: ")
