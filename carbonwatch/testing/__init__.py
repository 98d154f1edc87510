"""Tools for checking carbonwatch against a truth it did not produce (shipped, so users and the
benchmarks can use them too): :mod:`carbonwatch.testing.synthetic` writes replay-format GPU traces
from a known power model, with the true energy of every process and call beside them."""
