"""Fair queuing over real HTTP: two simulated users (two gradio_client sessions) against the app
on tiny stand-in checkpoints. The assertions are on what the server ran (``studio.turns``: the
sessions in the order they composed, the requests each held) and on the seeds that came back."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

import app
from app_harness import make_tiny_checkpoints
from cwcompose.render import Renderer, StreamRenderer
from cwcompose.request import Limits
from cwcompose.studio import Studio


class PausableRenderer(Renderer):
    """The real renderer, except that a stream waits before each bar while ``go`` is clear: a
    request in progress holds its turn for as long as the test needs to line others up."""

    def __init__(self):
        super().__init__()
        self.go = threading.Event()
        self.go.set()

    @contextmanager
    def stream(self):
        with super().stream() as inner:
            yield PausedStream(self, inner)


class PausedStream:
    def __init__(self, renderer: PausableRenderer, inner: StreamRenderer):
        self.renderer, self.inner = renderer, inner

    def feed(self, midi, until_tick):
        assert self.renderer.go.wait(30), "the test never let the composer go on"
        return self.inner.feed(midi, until_tick)

    def finish(self, midi):
        return self.inner.finish(midi)


def wait_until(condition, seconds=20.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return make_tiny_checkpoints(tmp_path_factory.mktemp("checkpoints"))


@contextmanager
def served(checkpoints, limits=None):
    studio = Studio(checkpoints, renderer=PausableRenderer(), limits=limits)
    demo = app.launch(studio, prevent_thread_lock=True, quiet=True)
    try:
        yield demo, studio
    finally:
        studio.renderer.go.set()
        demo.close()
        studio.close()


def compose(client, seed, bars=2):
    return client.submit(bars=bars, seed=seed, random_seed=False, api_name="/compose")


def test_clicking_again_replaces_the_pending_request_and_others_keep_their_place(checkpoints):
    with served(checkpoints) as (demo, studio):
        a, b = Client(demo.local_url, verbose=False), Client(demo.local_url, verbose=False)
        turns = studio.turns
        studio.renderer.go.clear()  # A's first request will hold the composer
        first = compose(a, seed=1, bars=3)
        wait_until(lambda: turns.snapshot()["running"] == [a.session_hash])
        pending = []
        for seed in (2, 3, 4):  # A clicks Generate three more times while composing
            pending.append(compose(a, seed))
            wait_until(lambda: turns.replaced.get(a.session_hash, 0) == len(pending) - 1
                       and turns.snapshot()["waiting"] == [a.session_hash])
        other = compose(b, seed=100)  # B arrives: one request of A's is ahead of it, besides the running one
        wait_until(lambda: turns.snapshot()["waiting"] == [a.session_hash, b.session_hash])
        last = compose(a, seed=5)  # A clicks again: its pending request is replaced, behind B
        wait_until(lambda: turns.snapshot()["waiting"] == [b.session_hash, a.session_hash])
        studio.renderer.go.set()

        assert first.result()[-1] == 1 and other.result()[-1] == 100 and last.result()[-1] == 5
        for job in pending:
            with pytest.raises(AppError, match="replaced by a newer one from the same session"):
                job.result()
        # what the server ran: A, then B (who waited for A's running request only), then A's last click
        assert list(turns.order) == [a.session_hash, b.session_hash, a.session_hash]
        assert turns.started == {a.session_hash: 2, b.session_hash: 1}
        assert turns.most_held[a.session_hash] == 2 and turns.replaced[a.session_hash] == 3
        assert turns.snapshot() == {"running": [], "waiting": []}


def test_a_flood_from_one_session_holds_two_requests_at_most(checkpoints):
    with served(checkpoints) as (demo, studio):
        a, b = Client(demo.local_url, verbose=False), Client(demo.local_url, verbose=False)
        studio.renderer.go.clear()
        flood = [compose(a, seed=s) for s in range(10)]  # all at once: arrival order is the server's
        wait_until(lambda: studio.turns.replaced.get(a.session_hash, 0) == 8)
        other = compose(b, seed=100)
        wait_until(lambda: len(studio.turns.snapshot()["waiting"]) == 2)
        studio.renderer.go.set()
        results, refused = [], 0
        for job in flood:
            try:
                results.append(job.result()[-1])
            except AppError as err:
                assert "replaced by a newer one" in str(err)
                refused += 1
        assert len(results) == 2 and refused == 8 and other.result()[-1] == 100
        assert studio.turns.started == {a.session_hash: 2, b.session_hash: 1}
        assert studio.turns.most_held[a.session_hash] == 2
        # B, arriving after the flood, waits for A's running request and A's one pending request: no more
        assert list(studio.turns.order) == [a.session_hash, a.session_hash, b.session_hash]


def a_held_composing(demo, studio) -> tuple[Client, Client, object]:
    """Two visitors, A composing (held at its first bar by the renderer's gate) and B free to
    ask; returns them and A's running job."""
    a, b = Client(demo.local_url, verbose=False), Client(demo.local_url, verbose=False)
    studio.renderer.go.clear()
    first = compose(a, seed=1)
    wait_until(lambda: studio.turns.snapshot()["running"] == [a.session_hash])
    return a, b, first


def test_a_waiting_request_sees_how_many_are_ahead_and_stop_withdraws_it(checkpoints):
    with served(checkpoints) as (demo, studio):
        a, b, first = a_held_composing(demo, studio)
        waiting = compose(b, seed=7)
        wait_until(lambda: any("Waiting for your turn: 1 ahead of you" in str(out) for out in waiting.outputs()),
                   seconds=10)
        b.predict(api_name="/stop")  # B gives up: its waiting request goes, A's is untouched
        with pytest.raises(AppError, match="Stopped before its turn came: nothing was composed"):
            waiting.result()
        studio.renderer.go.set()
        assert first.result()[-1] == 1 and studio.turns.started == {a.session_hash: 1}


def click(demo, client: Client, elem_id: str) -> None:
    """What the page sends when button ``elem_id`` is clicked in ``client``'s session (also for a
    private event: out of the API, the page still calls it over the same queue)."""
    button = next(c["id"] for c in demo.config["components"] if c.get("props", {}).get("elem_id") == elem_id)
    fn = next(d["id"] for d in demo.config["dependencies"] if [button, "click"] in map(list, d["targets"]))
    httpx.post(client.sse_data_url, json={"data": [], "fn_index": fn, "session_hash": client.session_hash,
                                          "event_data": None, "trigger_id": button}).raise_for_status()


def test_a_waiting_compare_shows_its_place_and_its_stop_withdraws_it(checkpoints):
    with served(checkpoints) as (demo, studio):
        a, b, first = a_held_composing(demo, studio)
        waiting = b.submit(bars=2, seed=7, random_seed=False, api_name="/compare")
        wait_until(lambda: any("Waiting for your turn: 1 ahead of you" in str(out[0]) for out in waiting.outputs()),
                   seconds=10)
        click(demo, b, "compare-stop")  # the compare tab's own Stop
        with pytest.raises(AppError, match="Stopped before its turn came: nothing was composed"):
            waiting.result(timeout=20)
        studio.renderer.go.set()
        assert first.result()[-1] == 1 and studio.turns.started == {a.session_hash: 1}


def test_sessions_that_leave_are_forgotten_by_the_turns(checkpoints, monkeypatch):
    monkeypatch.setenv("GRADIO_HEARTBEAT_INTERVAL", "0.5")  # how soon the server notices (15 s by default)
    with served(checkpoints) as (demo, studio):
        turns, visitors = studio.turns, [Client(demo.local_url, verbose=False) for _ in range(3)]
        studio.renderer.go.clear()
        running = compose(visitors[0], seed=1)
        wait_until(lambda: turns.snapshot()["running"] == [visitors[0].session_hash])
        replaced = compose(visitors[0], seed=2)
        wait_until(lambda: turns.snapshot()["waiting"] == [visitors[0].session_hash])
        last = compose(visitors[0], seed=3)  # takes the place of seed 2
        wait_until(lambda: turns.replaced.get(visitors[0].session_hash) == 1)
        studio.renderer.go.set()
        assert running.result()[-1] == 1 and last.result()[-1] == 3
        with pytest.raises(AppError, match="replaced"):
            replaced.result()
        for seed, visitor in enumerate(visitors[1:], 4):
            compose(visitor, seed).result()
        sessions = {v.session_hash for v in visitors}
        assert sessions <= set(turns.started) and sessions <= set(turns.most_held)
        for visitor in visitors:
            visitor.close()  # the heartbeat ends, as when a tab closes
        wait_until(lambda: not sessions & {*turns.started, *turns.replaced, *turns.most_held}, seconds=10)
        assert turns.started == turns.replaced == turns.most_held == {}

def test_the_queue_has_a_size(checkpoints):
    with served(checkpoints, Limits(queue_size=2)) as (demo, studio):
        clients = [Client(demo.local_url, verbose=False) for _ in range(4)]
        studio.renderer.go.clear()
        jobs = [compose(clients[0], seed=0)]
        wait_until(lambda: studio.turns.snapshot()["running"])
        for i in (1, 2):
            jobs.append(compose(clients[i], seed=i))
            wait_until(lambda: len(studio.turns.snapshot()["waiting"]) == i)
        with pytest.raises(AppError, match="The server is busy: 2 requests are waiting already. Try again"):
            clients[3].predict(bars=2, seed=3, random_seed=False, api_name="/compose")
        studio.renderer.go.set()
        assert [job.result()[-1] for job in jobs] == [0, 1, 2]


def test_the_browser_defers_a_second_click_instead_of_queueing_it(checkpoints):
    with served(checkpoints) as (demo, studio):
        compose_event = next(d for d in demo.config["dependencies"] if d.get("api_name") == "compose")
        # Gradio's front end keeps at most one deferred run per event and runs it, with the values
        # at that moment, when the pending one ends (``always_last``)
        assert compose_event["trigger_mode"] == "always_last"
        groups = {d["api_name"]: d.get("concurrency_id") for d in demo.config["dependencies"]
                  if d.get("api_name") in ("compose", "rewind", "continue", "compare")}
        assert len(set(groups.values())) == 1, "every composing event waits in the studio's one line"
