"""What the daemon shows of its state: the event stream (:mod:`agent.event_hub`) and the state hook
(:mod:`agent.hook`), both fed by one :class:`~agent.events.StateTracker` over the daemon's facts.

The daemon calls :meth:`StateView.refresh` on every tick and after every move of its visit slot; the hook runs in
a background task (:attr:`StateView.hook`); :meth:`StateView.close` tells the followers the daemon is stopping.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from agent.event_hub import EventHub
from agent.events import Facts
from agent.hook import HookRunner
from agent.settings import DeviceSettings

HOOK = "state_hook"
"""Name of the background task that runs the state hook."""
CLOSE_WAIT_S = 1.0
"""Seconds the followers get at the daemon's stop to take the last line."""


class StateView:
    def __init__(self, facts: Callable[[], Facts], device: Callable[[], DeviceSettings],
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.hub = EventHub(facts, clock)
        self.hook = HookRunner(device)
        self.hub.listeners.append(self.hook.submit)

    def refresh(self, facts: Facts | None = None) -> None:
        """Look at the daemon's facts (``facts``: already taken by the caller) and show a change."""
        self.hub.refresh(facts)

    async def close(self, budget_s: float) -> None:
        await self.hub.close(min(CLOSE_WAIT_S, budget_s))
