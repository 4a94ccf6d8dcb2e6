"""Read a running server's admin endpoint (for ``fivetuple top`` and ``fivetuple conns``)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from ..errors import SetupError

DEFAULT_ADMIN = "127.0.0.1:7001"
TIMEOUT_S = 5.0


def admin_url(addr: str, path: str) -> str:
    """``HOST:PORT`` (or ``http://HOST:PORT``) and a path -> a URL."""
    base = addr if addr.startswith(("http://", "https://")) else f"http://{addr}"
    return base.rstrip("/") + path


def fetch(addr: str, path: str) -> Any:
    """GET ``path`` from the admin endpoint at ``addr`` and decode its JSON.

    Raises:
        SetupError: nothing answers there, or the answer is not the admin's JSON.
    """
    url = admin_url(addr, path)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        raise SetupError(f"{url} answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SetupError(
            f"cannot reach the admin endpoint at {addr} ({reason}); "
            "start the server with --admin HOST:PORT"
        ) from None
    except ValueError:
        raise SetupError(
            f"{url} did not answer with JSON; is that a fivetuple admin port?"
        ) from None
