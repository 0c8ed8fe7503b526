"""Test modules that share one tiny-expert CoE app (see conftest.py here).

A package, not a plain folder, so that pytest's package-scoped fixture ends with the package's last
test rather than with the session: the next module in the same worker starts its own Ray.
"""

# The shared app's max_tokens limit (tiny.yaml says 64): ~5 ms a token on a warm tiny expert, so a
# generation this long lasts seconds and the gRPC module's cancellations and deadlines land mid-stream.
LONG_TOKENS = 480
