"""MediSync REST client and MediSearch SSE client."""

import sys

# httpx imports its command-line client's modules (click, pygments, rich) whenever they happen to be installed,
# about 2.2 MB the daemon would carry for months without ever using them (issue 11, RSS). A None entry makes that
# one optional import fail the way httpx already handles (its ``main`` then says the CLI is not installed).
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
