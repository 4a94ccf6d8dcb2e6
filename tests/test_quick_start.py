"""The README's Quick start, as a new user runs it.

The first command (set up and run the chat server) runs literally, in a fresh
clone, with this machine's ``python3``; a chat client then gets its welcome.
The second (set up and run every test) is the one ``.ci/run`` runs, verbatim:
running it from inside the suite would run the suite again.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from helpers import ROOT, wait_for

SETUP_TIMEOUT_S = 240.0


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", section, flags=re.DOTALL)


def test_the_quick_start_has_two_one_line_commands_and_ci_runs_the_second() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2
    assert all("\n" not in command for command in commands)
    assert commands[1] in (ROOT / ".ci" / "run").read_text()
    # Neither installs into the system's Python: both make (or reuse) a venv first.
    assert all(command.startswith("python3 -m venv .venv && ") for command in commands)


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.timeout(SETUP_TIMEOUT_S + 60)
def test_the_first_command_runs_the_chat_server_in_a_fresh_clone(tmp_path: Path) -> None:
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs a git checkout to clone")
    if not _port_free(7000):
        pytest.skip("port 7000, the Quick start's, is in use here")
    clone = tmp_path / "fivetuple"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=60)
    command = quick_start_commands()[0]
    server = subprocess.Popen(
        ["bash", "-c", command],
        cwd=clone,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the venv's python is bash's child: signal the group
        env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"},
    )
    try:
        assert server.stdout is not None
        banner = server.stdout.readline()  # pip's own lines come first: skip them
        while banner and not banner.startswith("listening on "):
            banner = server.stdout.readline()
        assert banner.startswith("listening on tcp://127.0.0.1:7000 app=chat"), banner
        with socket.create_connection(("127.0.0.1", 7000), timeout=10) as client:
            welcome = wait_for(lambda: client.recv(4096), what="the welcome")
        assert welcome.startswith(b"* welcome, you are 127.0.0.1:")
        assert (clone / ".venv" / "bin" / "python").exists()
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # as Ctrl-C in a terminal reaches the group
        _, err = server.communicate(timeout=30)
    assert "SIGTERM: shutting down" in err and "Traceback" not in err, err
