"""``carbonwatch.job(...)``: a block of user code marked as a job on the daemon (the client's
``Job``; the daemon's view of a running job is ``daemon/live_jobs.py``'s ``LiveJob``)."""

from __future__ import annotations

import logging
import os
import urllib.parse
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from carbonwatch.client import Client

log = logging.getLogger("carbonwatch.client")  # the client's logger: one name to configure


class Job:
    """A training (or other) job marker: the daemon attributes this process's energy to it.

    Enter POSTs ``/v1/jobs`` {name, kind, model, pid}; exit POSTs ``/v1/jobs/{id}/end`` with
    {"exit_code": 0}, or 1 when an exception leaves the block (the daemon marks it failed).
    Without a daemon it logs one warning and the block still runs."""

    def __init__(self, client: Client, name: str, kind: str, model: str | None) -> None:
        self._client = client
        self.name = name
        self.kind = kind
        self.model = model
        self.id: str | None = None

    def __enter__(self) -> Job:
        payload = {"name": self.name, "kind": self.kind, "model": self.model, "pid": os.getpid()}
        status, data = self._client._post_json("/v1/jobs", payload)
        if status is not None and status < 300 and isinstance(data, dict) and "id" in data:
            self.id = str(data["id"])
        else:
            log.warning(
                "carbonwatch: job %r not recorded (daemon at %s %s); running it anyway",
                self.name, self._client.daemon_url,
                "unreachable" if status is None else f"answered HTTP {status}",
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.id is None:
            return
        path = f"/v1/jobs/{urllib.parse.quote(self.id, safe='')}/end"
        # An exception leaving the block fails the job, as a non-zero exit code would.
        status, _ = self._client._post_json(path, {"exit_code": 0 if exc_type is None else 1})
        if status is None or status >= 300:
            log.warning("carbonwatch: end of job %r not recorded", self.name)
