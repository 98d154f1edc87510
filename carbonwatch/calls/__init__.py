"""Per-call attribution: a serving process's energy split over the inference calls it served.

``ledger`` keeps the books (``CallLedger``: spans in, settled calls out as arrays), ``split`` is the
arithmetic of one interval's split (power-fit or overlap time), ``inputs`` what a call contributes
to the fit (running count, weight, token rates), ``chunk`` the settled calls as arrays and their
minute and job rollups. Nothing here reads a clock or does I/O: the daemon, ``carbonwatch replay
--calls`` and the benchmarks drive the same code."""
