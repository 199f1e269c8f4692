"""Suspend a conversation to a file and resume it later, in another process, even while a tool waits for approval.

`session.to_dict()` -> JSON -> `AgentSession.from_dict()`: a local thread's file carries its messages and any tool
call waiting for a person's approval (`@tool(approval_mode="always_require")`, kept in `state["tool_approval"]`); a
service-managed thread's file holds only the service's response id. `SessionFile` writes atomically and versions
every save, so two processes continuing one file never lose a turn silently: the later one is told.

    python suspend_resume_thread.py                                      # parts 1-3, resuming in a child process
    python suspend_resume_thread.py --suspend s.json [--say TEXT ...]    # start a conversation, save it
    python suspend_resume_thread.py --resume s.json [--approve|--decline] # continue it, answer a waiting approval
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Annotated, Any, NamedTuple

from agent_framework import Agent, AgentSession, Content, Message, tool
from agent_framework.openai import OpenAIChatClient, OpenAIChatCompletionClient

from sample_support import ModelBackend, open_backends, run_sample


class SessionFileError(Exception):
    """A session file that cannot be read, trusted or written; the message is one line naming the file."""


class SessionConflictError(SessionFileError):
    """Another process created or saved the file first; nothing was overwritten."""


class SessionFile:
    """One `AgentSession` in a JSON file `{"version": N, "session": session.to_dict()}` (POSIX: uses fcntl).

    Atomic writes; `create` never overwrites; `save` is a compare-and-swap on the version last read or written
    (the framework's `FileSessionStore` is last-writer-wins across processes and moves corrupt files aside)."""

    MAX_BYTES = 32 * 1024 * 1024

    def __init__(self, path: Path) -> None:
        self.path, self.version = path, 0

    def create(self, session: AgentSession) -> None:
        temporary = self._write_temporary(session, 1)
        try:
            os.link(temporary, self.path)  # atomic and exclusive: of several creators exactly one succeeds
        except OSError as error:
            kind = SessionConflictError if isinstance(error, FileExistsError) else SessionFileError
            raise kind(f"cannot create {self.path}: {error.strerror}; nothing was overwritten") from None
        finally:
            temporary.unlink()
        self.version = 1

    def load(self) -> AgentSession:
        self.version, session = self._read()
        return session

    def save(self, session: AgentSession) -> None:
        temporary = self._write_temporary(session, self.version + 1)
        folder = os.open(self.path.parent, os.O_RDONLY)  # its lock makes the compare and the rename one step
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)  # released by os.close, or by the kernel if this process dies
            if self._read()[0] != self.version:
                raise SessionConflictError(
                    f"{self.path} was saved by another process after this one read version {self.version}: "
                    "this process's new turns were not saved (resume from the file again)"
                )
            os.replace(temporary, self.path)
        finally:
            os.close(folder)
            temporary.unlink(missing_ok=True)
        self.version += 1

    def _write_temporary(self, session: AgentSession, version: int) -> Path:
        try:
            fd, name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
            with open(fd, "w", encoding="utf-8") as file:
                json.dump({"version": version, "session": session.to_dict()}, file, indent=2)
                file.flush()
                os.fsync(file.fileno())
        except OSError as error:
            raise SessionFileError(f"cannot save the session to {self.path}: {error.strerror}") from None
        return Path(name)

    def _read(self) -> tuple[int, AgentSession]:
        try:  # O_NONBLOCK: opening a FIFO must not wait for a writer
            with open(os.open(self.path, os.O_RDONLY | os.O_NONBLOCK), "rb") as file:
                info = os.fstat(file.fileno())
                if not stat.S_ISREG(info.st_mode) or info.st_size > self.MAX_BYTES:
                    raise SessionFileError(f"{self.path} is not a regular file of at most {self.MAX_BYTES:,} bytes")
                raw = file.read()
        except OSError as error:
            raise SessionFileError(f"cannot read the session file {self.path}: {error.strerror}") from None
        try:
            data = json.loads(raw.decode("utf-8"))
        except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
            raise SessionFileError(f"{self.path} is not valid JSON ({error}); it was left unchanged") from None
        saved = data.get("session") if isinstance(data, dict) else None
        if not isinstance(saved, dict) or type(data.get("version")) is not int or saved.get("type") != "session":
            raise SessionFileError(f'{self.path} is not a session file ({{"version": N, "session": {{...}}}})')
        if not isinstance(saved.get("session_id"), str) or not saved["session_id"]:
            raise SessionFileError(f"{self.path} holds a session without a session_id (a non-empty string)")
        damaged = f"{self.path} holds a damaged session"
        try:  # the history too: a model service rejects a damaged one with an error that blames the service
            session = AgentSession.from_dict(saved)
            called: set[str | None] = set()
            for number, message in enumerate((session.state.get("in_memory") or {}).get("messages", []), 1):
                if not isinstance(message, Message) or message.role not in ("system", "user", "assistant", "tool"):
                    raise SessionFileError(f"{damaged}: message {number} has no valid role")
                for content in message.contents:
                    called.update([content.call_id] if content.type == "function_call" else [])
                    if content.type == "function_result" and content.call_id not in called:
                        raise SessionFileError(f"{damaged}: message {number} answers a tool call never made")
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise SessionFileError(f"{damaged}: {error}") from None
        return data["version"], session


def booking_tool(ledger: Path) -> Any:
    """`book_flight` appends every booking it makes to `ledger`, so you can count what really ran."""

    @tool(approval_mode="always_require")
    def book_flight(destination: Annotated[str, "the city to fly to"]) -> str:
        """Book a flight to a destination. It buys a ticket, so a person approves every call."""
        with ledger.open("a", encoding="utf-8") as file:
            file.write(f"{destination}\n")
        return f"Booked a flight to {destination}."

    return book_flight


@contextlib.asynccontextmanager
async def open_agent(model: ModelBackend, path: Path, *, service_managed: bool = False) -> AsyncIterator[Agent]:
    """A brand-new client and agent for the session saved at `path`; nothing else survives from earlier ones."""
    # Responses API (store=True): the service keeps the history. Chat Completions: the session keeps it.
    client = (OpenAIChatClient if service_managed else OpenAIChatCompletionClient)(**model.client_kwargs())
    tools = [booking_tool(path.with_name("bookings.txt"))]  # what book_flight did, readable from any process
    try:
        yield Agent(client=client, instructions="You are a helpful travel assistant.", tools=tools)
    finally:
        await client.client.close()  # the OpenAI SDK client, which `agent.close()` leaves open


def pending_approvals(session: AgentSession) -> list[Content]:
    """The tool calls waiting for a person's answer, as the framework keeps them in `state["tool_approval"]`."""
    requests = (session.state.get("tool_approval") or {}).get("pending_approval_requests", [])
    return [Content.from_dict(request) for request in requests]


async def say(agent: Agent, session: AgentSession, text: str | Message) -> str:
    print(f"User: {text if isinstance(text, str) else '(answers the approval)'}")
    response = await agent.run(text, session=session)
    for request in response.user_input_requests:
        print(f"Approval: the agent asks to run {request.function_call.name}{request.function_call.arguments}")
    print(f"Agent: {response.text or '(waits for the approval)'}")
    return response.text


async def local_thread(model: ModelBackend, folder: Path) -> Outcome:
    print("\n== 1. Local thread: suspended while a tool call waits for approval, resumed in another process ==")
    path, declined, ledger = folder / "local_session.json", folder / "declined_session.json", folder / "bookings.txt"
    await suspend(model, path, "My favorite color is blue.", "Book a flight to Paris.")
    await run_child(path, "--approve")  # a new process: no agent, client or session object survives
    print("The same conversation once more, declined in this process:")
    await suspend(model, declined, "My favorite color is blue.", "Book a flight to Paris.")
    replies = (await resume(model, declined, approve=False)).replies
    print(f"Bookings made: {ledger.read_text().splitlines()} (the approved one; the declined call never ran)")
    return Outcome(replies, SessionFile(path))


async def service_managed_thread(model: ModelBackend, folder: Path) -> Outcome:
    print("\n== 2. Service-managed thread: the file holds only the service's response id ==")
    path, file = folder / "service_session.json", SessionFile(folder / "service_session.json")
    await suspend(model, path, "I live in Paris.", service_managed=True)
    suspended_id = (session := file.load()).service_session_id
    async with open_agent(model, path, service_managed=True) as agent:
        replies = [await say(agent, session, "Where do I live?")]
    file.save(session)  # each turn stores a new response pointing at the last one: save after every turn
    print(f"service_session_id moved on: {suspended_id} -> {session.service_session_id} (saved again)")
    return Outcome(replies, file)


async def two_instances(model: ModelBackend, folder: Path) -> Outcome:
    print("\n== 3. Two app instances continue one session at once: one wins, the other is told ==")
    path = folder / "shared_session.json"
    await suspend(model, path, "My name is Alice.")
    first, second = SessionFile(path), SessionFile(path)  # what two processes would each hold
    async with open_agent(model, path) as agent:
        await say(agent, session_a := first.load(), "My favorite color is green.")
        await say(agent, session_b := second.load(), "My favorite food is pasta.")
    first.save(session_a)
    try:
        second.save(session_b)
    except SessionConflictError as error:
        print(f"Instance A saved version {first.version}. Instance B was told: {error}")
        return Outcome([], first, told=str(error))
    return Outcome([], second)


async def suspend(model: ModelBackend, path: Path, *texts: str, service_managed: bool = False) -> Outcome:
    """`--suspend`: start a conversation and save it to a new file."""
    async with open_agent(model, path, service_managed=service_managed) as agent:
        session = agent.create_session()
        replies = [await say(agent, session, text) for text in texts or ["My favorite color is blue."]]
    (file := SessionFile(path)).create(session)
    print(f"Suspended session {session.session_id}: {len(messages_of(session))} messages saved to {path} (version 1)")
    return Outcome(replies, file)


async def resume(model: ModelBackend, path: Path, approve: bool | None = None) -> Outcome:
    """`--resume`: load the conversation, answer the tool call waiting for approval, continue it, save it again."""
    session = (file := SessionFile(path)).load()
    if session.service_session_id or not isinstance(session.state.get("in_memory"), dict):
        raise SessionFileError(f"{path} holds no local thread (its messages are kept elsewhere); use --suspend")
    waiting = pending_approvals(session)
    print(f"Resumed {path} in process {os.getpid()}: {len(messages_of(session))} messages, version {file.version}")
    for request in waiting:
        answer = {True: "approved", False: "declined"}.get(approve, "no answer given")
        call = request.function_call
        print(f"Approval (kept in state['tool_approval']): {call.name}{call.arguments} waits for a person: {answer}")
    if bool(waiting) != (approve is not None):
        problem = "waits for an answer: add --approve or --decline" if waiting else "has no tool call waiting"
        raise SessionFileError(f"{path} {problem}")
    async with open_agent(model, path) as agent:
        answers = [request.to_function_approval_response(approved=approve) for request in waiting]
        replies = [await say(agent, session, Message(role="user", contents=answers))] if waiting else []
        questions = ("What is my favorite color?", "Summarize our conversation.")
        replies += [await say(agent, session, text) for text in questions]
    file.save(session)
    print(f"Suspended again: {len(messages_of(session))} messages saved to {path} (version {file.version})")
    return Outcome(replies, file)


async def main(argv: Sequence[str] = ()) -> dict[str, Outcome]:
    arguments = parse_args(argv)
    async with open_backends() as backends:
        if arguments.suspend:
            return {"suspend": await suspend(backends.model, arguments.suspend, *(arguments.say or []))}
        if arguments.resume:
            return {"resume": await resume(backends.model, arguments.resume, arguments.approve)}
        with tempfile.TemporaryDirectory(prefix="suspend_resume_") as name:
            print(f"Session files go to {name} (deleted at the end).")
            parts = (local_thread, service_managed_thread, two_instances)
            return {part.__name__: await part(backends.model, Path(name)) for part in parts}


class Outcome(NamedTuple):  # what a part did, for the tests
    replies: list[str]
    file: SessionFile
    told: str = ""


def messages_of(session: AgentSession) -> list[Message]:
    return session.state.get("in_memory", {}).get("messages", [])


async def run_child(path: Path, *options: str) -> None:
    command = [sys.executable, str(Path(__file__).resolve()), "--resume", str(path), *options]
    child = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)  # its stderr is ours
    print(f"A child process (pid {child.pid}) runs: python {' '.join(command[1:])}", flush=True)
    try:
        stdout, _ = await child.communicate()
    except BaseException:  # Ctrl+C or SIGTERM: the child must not outlive this process
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()
        raise
    print(*(f"  child | {line}" for line in stdout.decode().splitlines()), sep="\n")
    if child.returncode:
        raise SessionFileError(f"the resuming child process failed (exit status {child.returncode})")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    step = parser.add_mutually_exclusive_group()
    step.add_argument("--suspend", type=Path, metavar="FILE", help="start a conversation and save it to a new FILE")
    step.add_argument("--resume", type=Path, metavar="FILE", help="continue the conversation saved in FILE")
    parser.add_argument("--say", metavar="TEXT", action="append", help="with --suspend: a message (repeatable)")
    answer = parser.add_mutually_exclusive_group()
    answer.add_argument("--approve", dest="approve", action="store_const", const=True, help="with --resume: say yes")
    answer.add_argument("--decline", dest="approve", action="store_const", const=False, help="with --resume: say no")
    arguments = parser.parse_args(argv)
    if (arguments.say and not arguments.suspend) or (arguments.approve is not None and not arguments.resume):
        parser.error("--say goes with --suspend, --approve and --decline with --resume")
    return arguments


if __name__ == "__main__":
    run_sample(main(sys.argv[1:]), errors=(SessionFileError,))
