"""Test modules that share one tiny-expert CoE app (see conftest.py here).

A package, not a plain folder, so that pytest's package-scoped fixture ends with the package's last
test rather than with the session: the next module in the same worker starts its own Ray.
"""
