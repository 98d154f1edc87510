"""One module per page: ``layout()`` draws the page's skeleton (controls and an empty body),
``register(app, ctx)`` adds the callbacks that fill the body from ``dashboard.data``."""

from __future__ import annotations

from dash import Input

# Every page refreshes on the interval tick and follows the shell's range and zone.
SHELL_INPUTS = (Input("refresh", "n_intervals"), Input("range", "value"), Input("zone", "value"))
