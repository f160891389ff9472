"""Commands that need an optional extra say how to install it, in one line and exit 69, never with a traceback.

The device installs the agent without extras (``systemd/install.sh``); the local MediSync server behind ``serve``
and ``demo`` comes with the ``[server]`` extra (``tests/setup.sh`` installs it).
"""

from __future__ import annotations

import importlib.util

from agent.errors import NotInstalledError

SERVER_PACKAGE = "aiohttp"
"""The package of the ``[server]`` extra the local server cannot run without (its recogniser is optional)."""
SERVER_INSTALL = "pip install 'medisync-agent[server]' in the agent's environment (a checkout: bash tests/setup.sh)"


def require_server(command: str) -> None:
    """NotInstalledError unless the local server's packages can be imported (checked without importing them)."""
    if importlib.util.find_spec(SERVER_PACKAGE) is None:
        raise NotInstalledError(f"'{command}' needs the local MediSync server, which is not installed here "
                                f"({SERVER_PACKAGE} missing): {SERVER_INSTALL}")  # fmt: skip
