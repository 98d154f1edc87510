"""A small client for Prometheus's HTTP query API (``/api/v1/query``), stdlib only.

Instant queries only: the fleet view asks "what is the total now (or at T)", and range questions
are asked in PromQL itself (``increase(x[1h])``). Transport and PromQL errors become
:class:`FleetError`, so callers handle one exception."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from carbonwatch.errors import CarbonwatchError

MAX_GET_BYTES = 4000  # longer queries are POSTed: URLs this long are refused by some proxies


class FleetError(CarbonwatchError):
    """Prometheus could not be reached, refused the query, or answered something unexpected."""


@dataclass(frozen=True)
class Sample:
    """One series of an instant vector: its labels, the evaluation time and the value."""

    labels: Mapping[str, str]
    t_s: float
    value: float


@dataclass(frozen=True)
class RangeSeries:
    """One series of a range vector (an instant query of ``selector[window]``): raw samples."""

    labels: Mapping[str, str]
    points: tuple[tuple[float, float], ...]  # (t_s, value), oldest first


class PrometheusClient:
    def __init__(
        self, base_url: str, *, timeout_s: float = 10.0, headers: Mapping[str, str] | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})

    def _get(self, path: str, params: Mapping[str, str]) -> dict:
        encoded = urllib.parse.urlencode(params)
        if len(encoded) <= MAX_GET_BYTES:
            request = urllib.request.Request(  # noqa: S310 - http(s) URL
                f"{self.base_url}{path}?{encoded}", headers=self.headers
            )
        else:  # a long query (many stale nodes): as a form, which the API also takes
            request = urllib.request.Request(  # noqa: S310 - http(s) URL
                f"{self.base_url}{path}", data=encoded.encode(), method="POST",
                headers={**self.headers, "Content-Type": "application/x-www-form-urlencoded"},
            )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:  # noqa: S310
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 400/422: a PromQL error, with a JSON body
            try:
                body = json.loads(exc.read())
            except ValueError:
                raise FleetError(f"Prometheus at {self.base_url}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise FleetError(f"cannot reach Prometheus at {self.base_url}: {reason}") from None
        except ValueError as exc:
            raise FleetError(f"Prometheus at {self.base_url} sent invalid JSON: {exc}") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            what = body.get("error", body) if isinstance(body, dict) else body
            raise FleetError(
                f"Prometheus at {self.base_url} refused {params.get('query')!r}: {what}"
            )
        return body["data"]

    def _query(self, expr: str, at_s: float | None) -> dict:
        params = {"query": expr}
        if at_s is not None:
            params["time"] = f"{at_s:.3f}"
        return self._get("/api/v1/query", params)

    def query(self, expr: str, at_s: float | None = None) -> list[Sample]:
        """An instant vector (or a scalar, as one unlabelled sample)."""
        data = self._query(expr, at_s)
        kind = data.get("resultType")
        if kind == "scalar":
            t, v = data["result"]
            return [Sample({}, float(t), float(v))]
        if kind != "vector":
            raise FleetError(f"{expr!r}: expected an instant vector, got {kind}")
        return [
            Sample(r["metric"], float(r["value"][0]), float(r["value"][1])) for r in data["result"]
        ]

    def query_range_vector(self, expr: str, at_s: float | None = None) -> list[RangeSeries]:
        """Raw samples of a range selector such as ``up{instance="a"}[1h]``."""
        data = self._query(expr, at_s)
        if data.get("resultType") != "matrix":
            raise FleetError(f"{expr!r}: expected a range vector, got {data.get('resultType')}")
        return [
            RangeSeries(r["metric"], tuple((float(t), float(v)) for t, v in r["values"]))
            for r in data["result"]
        ]

    def ready(self) -> bool:
        try:
            self.query("1")
        except FleetError:
            return False
        return True


def quote(value: str) -> str:
    """A PromQL string literal (double-quoted, Go escapes): json.dumps writes exactly those."""
    return json.dumps(value)
