"""The project's own exceptions. Vendor errors (NVML, HTTP, SQLite) are mapped to these at the seam
so callers never need to import a vendor module to handle a failure."""

from __future__ import annotations


class CarbonwatchError(Exception):
    """Base class: every error carbonwatch raises on purpose derives from it."""


class ConfigError(CarbonwatchError):
    """A setting, config file or flag is missing, unreadable or invalid."""


class InputError(CarbonwatchError):
    """User-supplied data (a trace, a CSV, a request body) is malformed."""


class DeviceError(CarbonwatchError):
    """A hardware read failed."""


class NotSupported(DeviceError):
    """The device or driver does not offer this reading (e.g. the energy counter before Volta)."""


class DeviceLost(DeviceError):
    """The device fell off the bus or vanished; it will not answer again."""


class DeviceTimeout(DeviceError):
    """The read did not answer in time; the device may answer later."""


class UnknownZone(CarbonwatchError):
    """No carbon intensity is known for the requested country, region or zone."""


class ProviderError(CarbonwatchError):
    """A grid-intensity provider failed or answered something unusable."""


class StoreError(CarbonwatchError):
    """The SQLite store could not be opened, migrated or written."""
