"""Local infrastructure for ``make dev``, the tests and the benchmarks: not part of the product.

- ``azurite``: the real Azurite from ``node_modules``, on loopback, started and stopped;
- ``postgres``: is PostgreSQL answering, and throwaway databases for tests and benchmarks;
- ``hostprocess``: the local host (``python -m devhost``) as a child process, for tests and
  benchmarks that talk to it over HTTP.

``devhost`` (the local Functions host) uses the first two; nothing in ``shared`` or
``function_app.py`` imports this package.
"""
