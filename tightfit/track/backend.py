"""Is the tracking backend there, and which exceptions mean it failed (not a tightfit bug).

Read by the outbox sync (``tightfit.track.sync``) and by the readers (``tightfit.track.read``), so both judge
an outage the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

from tightfit.errors import BackendError


def server_reachable(uri: str, timeout_s: float = 3.0) -> tuple[bool, str | None]:
    """(reachable, why not). HTTP servers answer ``/health``; SQLite/file stores need a writable directory."""
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            response = requests.get(uri.rstrip("/") + "/health", timeout=timeout_s)
        except requests.RequestException as exc:
            return False, f"{type(exc).__name__}: {exc}"
        if response.status_code >= 500:
            return False, f"HTTP {response.status_code} from {uri}/health"
        return True, None
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        directory = db.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return False, f"cannot create {directory}: {exc}"
        return (os.access(directory, os.W_OK), None if os.access(directory, os.W_OK) else f"{directory} is not writable")
    return True, None


def sync_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "the tracking backend failed", not "tightfit has a bug"."""
    import requests
    from mlflow.exceptions import MlflowException

    return (MlflowException, requests.RequestException, OSError, BackendError)
