"""The bounds of the API's paged lists, in one place for the server, which refuses a request
outside them (422), and the CLI, which refuses such options before it asks (it imports nothing
of the server's)."""

from __future__ import annotations

#: The most rows one list request returns.
MAX_LIMIT = 5000
#: The largest offset the databases take (their 64-bit integers); a larger one is a 422, not a 500.
MAX_OFFSET = 2**63 - 1
