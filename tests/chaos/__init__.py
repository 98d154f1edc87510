"""Chaos experiments: faults injected into a real daemon, with the steady state checked after each
(see conftest.py and steady.py; ``scripts/reliability.py`` runs them and writes the report)."""
