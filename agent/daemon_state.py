"""The daemon's visit slot as a small state machine. Pure: no I/O, no event loop.

::

    IDLE --start--> STARTING --ok--> RECORDING --stop--> STOPPING --archived--> IDLE
                       |                 |                              ^
                       +--refused--------+---- the visit ended itself ---+

A stopped visit's live stream may still replay its backlog in the background: that is not a state of the slot
(the next visit can start at once) but a count the daemon reports (``draining_streams``). ``status`` shows the
state's value, so the values are the words the control protocol has always used.
"""

from __future__ import annotations

import enum
from collections.abc import Callable


class DaemonState(enum.StrEnum):
    IDLE = "idle"
    """No visit: capture runs for the watchdog only; uploads and draining streams go on."""
    STARTING = "starting"
    """A visit start is checking the account and the queue."""
    RECORDING = "recording"
    """A visit captures, archives and streams."""
    STOPPING = "stopping"
    """The visit was told to stop and is finishing its archive and queueing its upload."""

    @property
    def in_visit(self) -> bool:
        """True while a visit holds the slot (another start is refused)."""
        return self is not DaemonState.IDLE


TRANSITIONS: dict[DaemonState, frozenset[DaemonState]] = {
    DaemonState.IDLE: frozenset({DaemonState.STARTING}),
    DaemonState.STARTING: frozenset({DaemonState.RECORDING, DaemonState.IDLE}),
    DaemonState.RECORDING: frozenset({DaemonState.STOPPING, DaemonState.IDLE}),
    DaemonState.STOPPING: frozenset({DaemonState.IDLE}),
}
"""Which state may follow which (a visit can end by itself, from RECORDING straight to IDLE)."""


class IllegalTransition(RuntimeError):
    """A move the table does not allow: a bug in the daemon, never a person's mistake."""


class VisitSlot:
    """The current state, moved only along :data:`TRANSITIONS`; ``on_change`` is called after every move."""

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self._state = DaemonState.IDLE
        self._on_change = on_change

    @property
    def state(self) -> DaemonState:
        return self._state

    def can_move(self, to: DaemonState) -> bool:
        return to in TRANSITIONS[self._state]

    def move(self, to: DaemonState) -> None:
        """Go to ``to``; :class:`IllegalTransition` when the table does not allow it (the state stays)."""
        if not self.can_move(to):
            raise IllegalTransition(f"daemon state {self._state.value} cannot become {to.value}")
        self._state = to
        if self._on_change is not None:
            self._on_change()

    def end(self) -> None:
        """The visit is over however it ended (archived, failed, refused): back to IDLE from any visit state."""
        if self._state is not DaemonState.IDLE:
            self.move(DaemonState.IDLE)
