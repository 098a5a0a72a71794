"""Fair turns: ``Limits.concurrency`` requests compose at a time (one by default), first
come first served, and a session holds at most one waiting request (a newer click replaces
it; Stop withdraws it). Also the per-session stop flags.
"""

from __future__ import annotations

import threading
from collections import deque
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

from cwcompose.request import RequestError


class StopSignals:
    """A stop flag per caller (e.g. per browser session), so a Stop click ends that caller's work."""

    def __init__(self):
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, key: str) -> threading.Event:
        with self._lock:
            self._events[key] = threading.Event()
            return self._events[key]

    def stop(self, key: str) -> None:
        with self._lock:
            if key in self._events:
                self._events[key].set()

    def finish(self, key: str, event: threading.Event) -> None:
        with self._lock:
            if self._events.get(key) is event:
                del self._events[key]


Update = TypeVar("Update")


def run_in_turn(turns: "Turns", stops: StopSignals, session: str, run: Callable[[threading.Event], Iterator[Update]],
                waiting: Callable[[str], Update]) -> Iterator[Update]:
    """The updates of ``run(stop)``, run in ``session``'s fair turn, with the stop flag that a
    Stop click sets for as long as it runs. While it waits it yields ``waiting(message)`` every
    second, the message saying how many are ahead: a caller streaming to a client (Gradio) can
    then notice the client left, and close this generator, which leaves the line."""
    with turns.turn(session) as turn:
        while not turn.wait(timeout=1.0):
            yield waiting(f"Waiting for your turn: {turn.ahead} ahead of you.")
        stop = stops.start(session)
        try:
            yield from run(stop)
        finally:
            stops.finish(session, stop)


def withdraw(turns: "Turns", stops: StopSignals, session: str) -> None:
    """Stop clicked: ``session``'s waiting request is withdrawn and its running one stops."""
    turns.drop_waiting(session)
    stops.stop(session)


class QueueFull(RequestError):
    """Too many requests are waiting; the person should try again shortly."""


class Replaced(RequestError):
    """A newer request from the same session took this waiting request's place."""


REPLACED = ("This request was replaced by a newer one from the same session, which runs in its place. "
            "Press Generate once and wait for it (Stop ends it early).")
WITHDRAWN = "Stopped before its turn came: nothing was composed. Click Generate or Compare to ask again."


class Ticket:
    """One request's place in :class:`Turns`: waiting, then running, then gone (``leave``)."""

    def __init__(self, turns: "Turns", session: str):
        self.turns, self.session = turns, session
        self.running = False
        self.replaced = False
        self.reason = REPLACED

    def wait(self, timeout: float | None = None) -> bool:
        """True once it is this request's turn, False after ``timeout`` seconds of waiting;
        :class:`Replaced` if a newer request of the same session took its place."""
        return self.turns.wait_for(self, timeout)

    @property
    def ahead(self) -> int:
        """Requests that run before this one (the ones composing and those waiting ahead of it)."""
        return self.turns.ahead_of(self)

    def leave(self) -> None:
        self.turns.leave(self)


class Turns:
    """Who composes next, fairly across sessions (browser tabs or API clients).

    At most ``at_once`` requests compose at the same time; the others wait first come, first
    served. A session holds at most two requests, one composing and one waiting: a newer
    request from a session that already has one waiting takes its place at the back of the
    line, and the older one ends with :class:`Replaced` (clicking Generate five times while
    composing runs the last click only, and never pushes anyone else back). With at most one
    waiting request per session, a request waits at most for the requests running and one
    request of each session ahead of it. At most ``max_waiting`` requests wait in all
    (:class:`QueueFull` after that). ``started`` counts the requests run per session, until
    ``forget``.
    """

    def __init__(self, at_once: int = 1, max_waiting: int = 16):
        self.at_once, self.max_waiting = at_once, max_waiting
        self._cond = threading.Condition()
        self._running: list[Ticket] = []
        self._waiting: list[Ticket] = []
        self.started: dict[str, int] = {}  # session -> requests that got their turn
        self.replaced: dict[str, int] = {}  # session -> waiting requests replaced by a newer one
        self.most_held: dict[str, int] = {}  # session -> most requests it held at once (running + waiting)
        self.order: deque[str] = deque(maxlen=1000)  # the sessions of the latest requests run, in order

    def join(self, session: str) -> Ticket:
        """A place in line for ``session`` (possibly running at once: see ``Ticket.wait``)."""
        ticket = Ticket(self, session)
        with self._cond:
            older = [t for t in self._waiting if t.session == session]
            for t in older:
                t.replaced = True
                self._waiting.remove(t)
                self.replaced[session] = self.replaced.get(session, 0) + 1
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(f"The server is busy: {len(self._waiting)} requests are waiting already. "
                                "Try again in a minute.")
            self._waiting.append(ticket)
            held = sum(t.session == session for t in (*self._running, *self._waiting))
            self.most_held[session] = max(self.most_held.get(session, 0), held)
            self._promote()
        return ticket

    @contextmanager
    def turn(self, session: str) -> Iterator[Ticket]:
        """``join`` and, whatever happens, ``leave``: ``with turns.turn(key) as t: t.wait(); work()``."""
        ticket = self.join(session)
        try:
            yield ticket
        finally:
            ticket.leave()

    def drop_waiting(self, session: str) -> None:
        """Withdraw ``session``'s waiting request (Stop pressed): it ends with :class:`Replaced`."""
        with self._cond:
            for t in [t for t in self._waiting if t.session == session]:
                t.replaced, t.reason = True, WITHDRAWN
                self._waiting.remove(t)
            self._cond.notify_all()

    def forget(self, session: str) -> None:
        """Drop ``session``'s counts once its page is gone: kept, they grow with every visitor."""
        with self._cond:
            for counts in (self.started, self.replaced, self.most_held):
                counts.pop(session, None)

    def wait_for(self, ticket: Ticket, timeout: float | None = None) -> bool:
        """See :meth:`Ticket.wait`."""
        with self._cond:
            self._cond.wait_for(lambda: ticket.running or ticket.replaced, timeout)
            if ticket.replaced:
                raise Replaced(ticket.reason)
            return ticket.running

    def ahead_of(self, ticket: Ticket) -> int:
        """See :attr:`Ticket.ahead`."""
        with self._cond:
            if ticket.running or ticket.replaced:
                return 0
            return len(self._running) + self._waiting.index(ticket)

    def leave(self, ticket: Ticket) -> None:
        """``ticket``'s request is done (or gone): the next one in line may run."""
        with self._cond:
            if ticket in self._running:
                self._running.remove(ticket)
            elif ticket in self._waiting:
                self._waiting.remove(ticket)
            self._promote()

    def _promote(self) -> None:
        while self._waiting and len(self._running) < self.at_once:
            ticket = self._waiting.pop(0)
            ticket.running = True
            self._running.append(ticket)
            self.started[ticket.session] = self.started.get(ticket.session, 0) + 1
            self.order.append(ticket.session)
        self._cond.notify_all()

    def snapshot(self) -> dict:
        """{"running": [sessions], "waiting": [sessions]}, in order."""
        with self._cond:
            return {"running": [t.session for t in self._running], "waiting": [t.session for t in self._waiting]}
