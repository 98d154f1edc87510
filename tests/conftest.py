"""Suite-wide options. They live with the chaos suite (tests/chaos/options.py); pytest only reads
options from the conftest files it loads first, which is this one when it runs on ``tests``."""

from chaos.options import add_chaos_options


def pytest_addoption(parser):
    add_chaos_options(parser)
