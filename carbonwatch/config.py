"""Settings, resolved as defaults < TOML file < ``CARBONWATCH_*`` environment < command-line flags.

One flat, validated ``Settings`` value is built here and handed to everything else; nothing below
the CLI reads the environment itself."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from carbonwatch.errors import ConfigError

IDLE_POLICIES = ("separate", "proportional", "even")
ENV_PREFIX = "CARBONWATCH_"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "carbonwatch"


def default_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "carbonwatch" / "config.toml"


@dataclass(frozen=True)
class Settings:
    """Every setting carbonwatch knows, with its default. See docs/configuration in the README."""

    db: str = ""  # empty: <user data dir>/carbonwatch.db
    # Where the energy was used: an ISO country code (ISO 3166 alpha-3 or alpha-2), or a cloud
    # provider and region. Empty: codecarbon's world average, marked as such.
    country: str = ""
    cloud_provider: str = ""
    cloud_region: str = ""
    zone: str = ""  # grid zone for time-series providers (e.g. CISO, DE, GB)
    pue: float = 1.0
    # Money. No price is invented: with none configured, cost is reported as unknown.
    energy_price_per_kwh: float | None = None
    currency: str = "USD"
    gpu_hour_rate: float = 0.0  # per device-hour, e.g. a cloud GPU's hourly price
    cpu_hour_rate: float = 0.0
    idle_policy: str = "separate"
    backend: str = "auto"  # auto | nvml | none | replay:DIR
    rapl_root: str = "/sys/class/powercap"
    power_interval_s: float = 0.1
    counter_interval_s: float = 1.0
    # GPU idle power: "" learns it from the energy counter (kept per GPU UUID in the store);
    # "80" fixes it for every GPU; "GPU-uuid=80,GPU-uuid2=95" per GPU.
    gpu_idle_power_w: str = ""
    # How long a process's last NVML SM sample stands in for it when newer ones are missing.
    gpu_share_window_s: float = 5.0
    host: str = "127.0.0.1"
    port: int = 8787
    socket: str = ""  # listen on this unix socket instead of TCP
    # A unix socket beside the TCP listener, for the node's users: each reaches its own jobs and
    # launches deferred jobs (run as itself) there, with no token. Empty: none.
    local_socket: str = ""
    # The unix socket's mode (octal). 660: the daemon's user and group; 666: every local user,
    # each acting as themselves (the kernel tells the daemon who connects: SO_PEERCRED).
    socket_mode: str = "660"
    token: str = ""  # ingest and read: inference clients, Prometheus, `carbonwatch run`
    # Operators: launching commands over TCP, cancelling and ending other users' jobs; the
    # dashboard also takes it as a login. Empty: the scheduler's launch routes are open only on
    # the unix socket.
    admin_token: str = ""
    daemon_url: str = ""  # empty: http://{host}:{port}
    provider: str = "static"
    provider_url: str = ""
    csv_tz: str = ""  # IANA zone of CSV timestamps written without one; empty: UTC
    # Comma-separated provider URLs (or CSV files) a submitted deferred job may choose besides the
    # daemon's own provider_url. Empty: none; a request never picks what the daemon fetches.
    provider_urls: str = ""
    electricitymaps_token: str = ""
    watttime_username: str = ""
    watttime_password: str = ""
    no_forecast_policy: str = "latest"  # latest | now
    # Defer a job only when its expected saving is at least this many one-sigma bands of the
    # provider's measured forecast error (0: trust the forecast as it is).
    defer_error_sigmas: float = 1.0
    raw_call_log_max: int = 100_000
    scheduler_refresh_s: float = 900.0  # how often queued jobs are re-planned on a newer forecast
    intensity_refresh_s: float = 900.0  # how often accounting refetches the intensity series
    node: str = ""  # the daemon's `node` label on /metrics; empty: the host name
    # /metrics keeps a job's own series until this long after it ended (daemon clock seconds),
    # then folds them into the node's job_id="" series, so ended jobs do not grow it forever.
    metrics_job_retention_s: float = 3600.0
    # Inference servers whose Prometheus counters the daemon reads (``NAME=URL``, comma-separated;
    # a TOML array also works): their process's energy is split over the tokens they report.
    scrape: str = ""
    scrape_interval_s: float = 15.0  # how often each server is scraped (one window each)
    # Bounds on what clients can make the daemon hold (docs/reliability.md, "Security: bounds").
    max_auto_jobs_per_request: int = 64  # new services one call batch may register
    max_auto_jobs: int = 1024  # services registered by their calls, running at once
    max_running_jobs_per_user: int = 1024  # jobs one uid may hold registered at once (429)
    max_label_values: int = 300  # distinct model names on /metrics and in rollups; then 'other'
    request_header_timeout_s: float = 5.0  # a connection silent this long without a request
    # Open connections per client address (uid on the Unix socket). On loopback every local
    # user shares one address: 1024 leaves room for the 1,000-client load experiment.
    max_connections_per_client: int = 1024
    # Embodied carbon (carbonwatch.embodied): a device's manufacturing kg CO2e spread over
    # lifetime x utilisation hours; per-model figures override the shipped table
    # (``PATTERN=KG``, comma-separated, or a TOML table).
    embodied_lifetime_years: float = 6.0
    embodied_utilisation: float = 0.85
    embodied_kgco2e: str = ""
    # A second provider for the marginal signal (e.g. watttime beside an average provider): its
    # points are kept so jobs carry co2e_g_marginal beside co2e_g.
    marginal_provider: str = ""
    marginal_provider_url: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def socket_mode_bits(self) -> int:
        return int(self.socket_mode.strip(), 8)

    @property
    def allowed_provider_urls(self) -> tuple[str, ...]:
        return tuple(u.strip() for u in self.provider_urls.split(",") if u.strip())

    @property
    def db_path(self) -> Path:
        return Path(self.db) if self.db else default_data_dir() / "carbonwatch.db"

    def validate(self) -> Settings:
        if self.idle_policy not in IDLE_POLICIES:
            raise ConfigError(
                f"idle_policy must be one of {', '.join(IDLE_POLICIES)}, got {self.idle_policy!r}"
            )
        if not (math.isfinite(self.pue) and self.pue >= 1.0):
            raise ConfigError(f"pue must be a finite number >= 1.0, got {self.pue!r}")
        price = self.energy_price_per_kwh
        if price is not None and not (math.isfinite(price) and price >= 0):
            raise ConfigError(f"energy_price_per_kwh must be >= 0, got {price!r}")
        for name in ("gpu_hour_rate", "cpu_hour_rate", "power_interval_s", "counter_interval_s",
                     "metrics_job_retention_s", "scrape_interval_s",
                     "gpu_share_window_s", "defer_error_sigmas"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if not (math.isfinite(self.request_header_timeout_s)
                and self.request_header_timeout_s > 0):
            raise ConfigError("request_header_timeout_s must be a finite number > 0")
        if self.power_interval_s <= 0 or self.counter_interval_s <= 0:
            raise ConfigError("power_interval_s and counter_interval_s must be > 0")
        if self.scrape_interval_s <= 0:
            raise ConfigError("scrape_interval_s must be > 0")
        if self.csv_tz:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(self.csv_tz)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ConfigError(
                    f"csv_tz must be an IANA time zone (e.g. Europe/London), got {self.csv_tz!r}"
                ) from exc
        from carbonwatch.collectors.gpuidle import parse_idle_setting

        try:
            parse_idle_setting(self.gpu_idle_power_w)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        for name in ("max_auto_jobs_per_request", "max_auto_jobs", "max_running_jobs_per_user",
                     "max_label_values", "max_connections_per_client"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if not (math.isfinite(self.embodied_lifetime_years) and self.embodied_lifetime_years > 0):
            raise ConfigError("embodied_lifetime_years must be a finite number > 0")
        if not (math.isfinite(self.embodied_utilisation) and 0 < self.embodied_utilisation <= 1):
            raise ConfigError("embodied_utilisation must be in (0, 1]")
        from carbonwatch.embodied import parse_overrides

        parse_overrides(self.embodied_kgco2e)  # raises ConfigError naming the bad pair
        if self.no_forecast_policy not in ("latest", "now"):
            raise ConfigError("no_forecast_policy must be 'latest' or 'now'")
        if not re.fullmatch(r"0?[0-7]{3}", self.socket_mode.strip()):
            raise ConfigError(
                f"socket_mode must be an octal mode like 660, got {self.socket_mode!r}"
            )
        if self.admin_token and self.admin_token == self.token:
            raise ConfigError("admin_token must differ from token: every client holding the ingest "
                              "token would be an operator")
        return self


_HINTS = get_type_hints(Settings)
_NAMES = {f.name for f in fields(Settings) if f.name != "extra"}


def _coerce(name: str, raw: Any, source: str) -> Any:
    hint = _HINTS[name]
    try:
        if hint is bool:
            if isinstance(raw, str):
                return raw.strip().lower() in ("1", "true", "yes", "on")
            return bool(raw)
        if hint is int:
            return int(raw)
        if hint is float or hint == (float | None):
            if raw is None or raw == "":
                return None if hint is not float else 0.0
            value = float(raw)
            if math.isnan(value):
                raise ValueError("NaN")
            return value
        if isinstance(raw, list):  # a TOML array for a list-valued setting (scrape)
            return ",".join(str(item) for item in raw)
        if isinstance(raw, dict):  # a TOML table for a pairs setting (embodied_kgco2e)
            return ",".join(f"{k}={v}" for k, v in raw.items())
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: setting {name!r} has an invalid value {raw!r}") from exc


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except PermissionError as exc:
        raise ConfigError(f"config file {path} is not readable: permission denied") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"config file {path} could not be read: {exc}") from exc
    # Accept both a flat file and one with a [carbonwatch] table.
    return dict(data.get("carbonwatch", data))


def _default_exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError as exc:  # e.g. a service user whose HOME is still another user's
        raise ConfigError(
            f"cannot check for the default config file {path}: {exc.strerror}. Name one with "
            "--config (or CARBONWATCH_CONFIG), or set XDG_CONFIG_HOME to a folder this user "
            "may read") from exc


def load_settings(
    config_path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Settings:
    """Resolve settings. An explicit ``config_path`` (or CARBONWATCH_CONFIG) must exist; the default
    path is read only when present."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}

    explicit = config_path or env.get(ENV_PREFIX + "CONFIG")
    path = Path(explicit) if explicit else default_config_path()
    if explicit or _default_exists(path):
        for key, raw in read_toml(path).items():
            if key in _NAMES:
                values[key] = _coerce(key, raw, f"config file {path}")
            else:
                extra[key] = raw

    for name in _NAMES:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = _coerce(name, raw, f"environment {ENV_PREFIX}{name.upper()}")

    for name, raw in (flags or {}).items():
        if raw is None:
            continue
        if name not in _NAMES:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = _coerce(name, raw, f"flag --{name.replace('_', '-')}")

    return dataclasses.replace(Settings(), **values, extra=extra).validate()


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a configured listening address) is this machine's loopback only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere, so it needs a token
