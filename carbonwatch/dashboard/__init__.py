"""The Dash dashboard: ``app`` (shell, routing), ``pages`` (one module per page), ``data`` (every
query, read-only), ``figures`` and ``components``. Nothing here is imported by the rest of
carbonwatch, so commands other than ``carbonwatch dashboard`` never pay for importing Dash."""
