"""Suspend a conversation thread to a file and resume it later - even in another process.

A thread (an `AgentSession` on the current API) is serialized with `session.to_dict()`, written as JSON,
and restored with `AgentSession.from_dict()`. What the file holds depends on where the history lives:

1. Local thread (Chat Completions, default in-memory chat message store): the messages themselves are
   in the file, under `state["in_memory"]["messages"]`.
2. Service-managed thread (Responses API, `store=True`): the service keeps the history; the file holds
   only the id of the last stored response (`service_session_id`).
3. Suspend in one process, resume in another: `--suspend FILE` starts a conversation, saves it and
   exits; `--resume FILE` loads it in a fresh process, continues, and saves it again. The default run
   does both, the resume in a child process.

Each part throws the agent and its client away before resuming, so everything the agent remembers
afterwards came from the saved session.

Run it:
    python suspend_resume_thread.py                          # parts 1-3, part 3 resumes in a child process
    python suspend_resume_thread.py --suspend session.json   # part 3 step by step: suspend ...
    python suspend_resume_thread.py --resume session.json    # ... and resume (again and again) later

Prerequisites: none. With nothing configured it talks to a deterministic offline model served on a
loopback port by this process. Against a real model set, in the environment or in `.env`:
    OPENAI_API_KEY + OPENAI_MODEL (optional OPENAI_BASE_URL), or
    AZURE_OPENAI_ENDPOINT + AZURE_OPENAI_MODEL (+ AZURE_OPENAI_API_KEY, or an `az login`).
Redis (REDIS_URL) and the Durable Task Scheduler (DTS_ENDPOINT, DTS_TASKHUB) are not used here.

Part 3 suspends a local thread because its file is self-contained. A service-managed session resumes in
another process just the same against a real service; the offline model, though, keeps its stored
responses only while the process that served them runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from agent_framework import Agent, AgentSession, InMemoryHistoryProvider, Message
from agent_framework.openai import OpenAIChatClient, OpenAIChatCompletionClient

from sample_support import ModelBackend, SampleError, open_backends, run_sample

INSTRUCTIONS = "You are a friendly assistant. Answer briefly."
# Where the default in-memory chat message store keeps a local thread's messages inside `session.state`.
LOCAL_HISTORY = InMemoryHistoryProvider.DEFAULT_SOURCE_ID
SHOWN_JSON_LINES = 40


def new_agent(model: ModelBackend, *, service_managed: bool) -> Agent:
    """A brand-new client and agent: nothing survives from an earlier one except what the session carries."""
    if service_managed:
        # Responses API with store=True (the default): the service keeps the history.
        client: OpenAIChatClient | OpenAIChatCompletionClient = OpenAIChatClient(**model.client_kwargs())
    else:
        # Chat Completions: the history is local, kept by the default in-memory chat message store.
        client = OpenAIChatCompletionClient(**model.client_kwargs())
    return Agent(client=client, instructions=INSTRUCTIONS, name="Assistant")


async def say(agent: Agent, session: AgentSession, text: str) -> str:
    print(f"User: {text}")
    response = await agent.run(text, session=session)
    print(f"Agent: {response.text}")
    return response.text


def local_messages(session: AgentSession) -> list[Any]:
    return session.state.get(LOCAL_HISTORY, {}).get("messages", [])


# region Saving and loading a session file


def save_session(session: AgentSession, path: Path) -> None:
    """Write `session.to_dict()` as JSON; the old file is replaced only once the new one is complete."""
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_text(json.dumps(session.to_dict(), indent=2), encoding="utf-8")
        os.replace(partial, path)
    except OSError as error:
        raise SampleError(f"cannot save the session to {path}: {error.strerror}") from None


def load_session(path: Path) -> AgentSession:
    """Read a file written by `save_session`; anything wrong with it becomes one line naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SampleError(f"no saved session at {path}: create one with --suspend {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SampleError(f"cannot read the session file {path}: {error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise SampleError(
            f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); it was left unchanged"
        ) from None
    if (
        not isinstance(data, dict)
        or data.get("type") != "session"
        or not isinstance(data.get("session_id"), str)
        or not isinstance(data.get("state", {}), dict)
    ):
        raise SampleError(f"{path} does not hold a saved agent session (the JSON of session.to_dict())")
    try:
        return AgentSession.from_dict(data)
    except (KeyError, TypeError, ValueError) as error:
        raise SampleError(f"{path} holds a damaged session: {error}") from None


def load_local_thread(path: Path) -> AgentSession:
    """A session whose whole history is in the file, as `--suspend` writes it."""
    session = load_session(path)
    if session.service_session_id:
        raise SampleError(
            f"{path} holds a service-managed session (its history is stored by the service under "
            f"{session.service_session_id!r}); --resume continues local threads written by --suspend"
        )
    history = session.state.get(LOCAL_HISTORY)
    messages = history.get("messages") if isinstance(history, dict) else None
    if not isinstance(messages, list):
        keys = ", ".join(repr(key) for key in session.state) or "none"
        raise SampleError(
            f"{path} holds no in-memory history (state keys: {keys}): it was saved with a different chat "
            "message store, whose messages are not in the file; --resume continues threads written by --suspend"
        )
    if not all(isinstance(message, Message) for message in messages):
        raise SampleError(f"{path} holds a damaged session: state['{LOCAL_HISTORY}']['messages'] are not all messages")
    return session


def show_saved(path: Path) -> None:
    """Print the session file as the reader would see it, cut after SHOWN_JSON_LINES lines."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    print(f"Saved {path.name} ({len(text.encode())} bytes):")
    for line in lines[:SHOWN_JSON_LINES]:
        print(f"    {line}")
    if len(lines) > SHOWN_JSON_LINES:
        print(f"    ... ({len(lines) - SHOWN_JSON_LINES} more lines)")


# endregion

# region The three parts


async def local_thread(model: ModelBackend, folder: Path) -> None:
    print("\n== 1. Local thread: the messages travel in the session file ==")
    path = folder / "local_session.json"
    agent = new_agent(model, service_managed=False)
    session = agent.create_session()
    await say(agent, session, "My name is Alice.")
    save_session(session, path)
    show_saved(path)
    print(f"Suspended: {len(local_messages(session))} messages in state['{LOCAL_HISTORY}']['messages'].")

    del agent, session  # the "restart": no agent, client or session object survives
    agent = new_agent(model, service_managed=False)
    session = load_local_thread(path)
    print(f"Resumed session {session.session_id} with {len(local_messages(session))} messages, new agent and client.")
    await say(agent, session, "What is my name?")
    print(f"The session now holds {len(local_messages(session))} messages.")

    print("Control - the same question in a new session, which has no history:")
    await say(agent, agent.create_session(), "What is my name?")


async def service_managed_thread(model: ModelBackend, folder: Path) -> None:
    print("\n== 2. Service-managed thread: the file holds only the service's response id ==")
    path = folder / "service_session.json"
    agent = new_agent(model, service_managed=True)
    session = agent.create_session()
    await say(agent, session, "I live in Paris.")
    save_session(session, path)
    show_saved(path)
    suspended_id = session.service_session_id
    print(f"Suspended: service_session_id={suspended_id}, local messages: {len(local_messages(session))}.")

    del agent, session
    agent = new_agent(model, service_managed=True)
    session = load_session(path)
    await say(agent, session, "Where do I live?")
    # Each turn stores a new response that points back at the previous one: save again after every turn,
    # or the next resume continues from the older response and this turn is forgotten.
    save_session(session, path)
    print(f"service_session_id moved on: {suspended_id} -> {session.service_session_id} (saved again)")


async def suspend(model: ModelBackend, path: Path) -> None:
    """Part 3, first process: start a conversation and save it."""
    if path.exists():
        raise SampleError(f"{path} already exists: resume it with --resume {path}, or choose another file")
    if not path.parent.is_dir():
        raise SampleError(f"cannot save the session to {path}: the folder {path.parent} does not exist")
    agent = new_agent(model, service_managed=False)
    session = agent.create_session()
    await say(agent, session, "My favorite color is blue.")
    save_session(session, path)
    print(f"Suspended session {session.session_id}: {len(local_messages(session))} messages saved to {path}")


async def resume(model: ModelBackend, path: Path) -> None:
    """Part 3, a later process: load the conversation, continue it, save it again."""
    session = load_local_thread(path)
    count = len(local_messages(session))
    print(f"Resumed session {session.session_id} from {path}: {count} messages, in process {os.getpid()}")
    agent = new_agent(model, service_managed=False)
    await say(agent, session, "What is my favorite color?")
    await say(agent, session, "Summarize our conversation.")
    save_session(session, path)
    print(f"Suspended again: {len(local_messages(session))} messages saved to {path}")


async def suspend_and_resume_in_child(model: ModelBackend, folder: Path) -> None:
    print("\n== 3. Suspend in this process, resume in another one ==")
    path = folder / "suspended_session.json"
    print(f"This process ({os.getpid()}) runs --suspend:")
    await suspend(model, path)
    command = [sys.executable, str(Path(__file__).resolve()), "--resume", str(path)]
    print(f"A child process runs: python {Path(__file__).name} --resume {path}")
    # The child gets this environment, so it selects the same kind of model; it shares nothing else with us.
    child = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await child.communicate()
    for line in stdout.decode().splitlines():
        print(f"  child | {line}")
    if child.returncode != 0:
        last_line = (stderr.decode().strip().splitlines() or ["no error output"])[-1]
        raise SampleError(f"the resuming child process failed (exit status {child.returncode}): {last_line}")
    sys.stderr.write(stderr.decode())  # nothing, normally; but a warning from the child must not be hidden
    print(f"Back in the parent: the file now holds {len(local_messages(load_local_thread(path)))} messages.")


# endregion


async def main(suspend_to: Path | None = None, resume_from: Path | None = None) -> None:
    async with open_backends() as backends:
        if suspend_to:
            await suspend(backends.model, suspend_to)
            return
        if resume_from:
            await resume(backends.model, resume_from)
            return
        with tempfile.TemporaryDirectory(prefix="suspend_resume_") as folder:
            print(f"Session files go to {folder} (deleted at the end).")
            await local_thread(backends.model, Path(folder))
            await service_managed_thread(backends.model, Path(folder))
            await suspend_and_resume_in_child(backends.model, Path(folder))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = parser.add_mutually_exclusive_group()
    steps.add_argument("--suspend", type=Path, metavar="FILE", help="start a conversation and save it to FILE")
    steps.add_argument("--resume", type=Path, metavar="FILE", help="continue the conversation saved in FILE")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    run_sample(main(arguments.suspend, arguments.resume))
