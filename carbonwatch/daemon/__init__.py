"""The carbonwatch daemon: an aiohttp sidecar that samples continuously, attributes energy to the
jobs and inference services it knows, and serves a versioned JSON API and Prometheus ``/metrics``.

Modules: ``server`` (lifecycle, signals), ``app`` (routes), ``validation`` (request bodies),
``state`` (shared in-memory state), ``sampling`` (the sampler thread), ``writer`` (the one
SQLite writer thread), ``storeops`` (its SQL), ``live_jobs`` (running jobs and their pids),
``metrics``, ``openapi``, ``trace_clock``.
``attach`` is the stdlib-only client ``carbonwatch run`` uses to register with a running daemon.
"""
