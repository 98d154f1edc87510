"""Serving integrations that need no client code: ASGI middleware (``asgi``)."""
