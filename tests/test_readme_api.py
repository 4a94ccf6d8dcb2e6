"""The README's Python API example, run as written."""

from __future__ import annotations

import re
import socket
import threading

from helpers import ROOT, recv_exactly


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README has no api-example block"
    return match.group(1)


def test_readme_example_serves_uppercase() -> None:
    source = readme_example()
    # The example listens on 7000 and handles signals; a test uses a free port
    # and runs the loop in a thread, with nothing else changed.
    source = source.replace("port=7000", "port=0").replace(
        "server.serve_forever()", "server.start()"
    )
    namespace: dict[str, object] = {}
    exec(compile(source, "README.md", "exec"), namespace)
    server = namespace["server"]
    thread = threading.Thread(target=server.serve_forever, kwargs={"handle_signals": False})  # type: ignore[attr-defined]
    thread.start()
    try:
        port = server.sockname[1]  # type: ignore[attr-defined]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.sendall(b"hello, fivetuple\n")
            assert recv_exactly(client, 17) == b"HELLO, FIVETUPLE\n"
    finally:
        server.shutdown_threadsafe()  # type: ignore[attr-defined]
        thread.join(5)
    assert not thread.is_alive()
