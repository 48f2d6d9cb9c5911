"""Live progress: one hub per API process answers every stream and long-poll watching an
enrollment from one read per change.

The activities that move a step bump `enrollment.progress_version` and, on PostgreSQL,
NOTIFY `enrollment_progress` in the same transaction. The payload is the Checkout Session
id, optionally followed by the step the activity just settled (`<id> {"key": ...}`): that
step is applied to what the hub last read at once, with no read at all, because the
workflow only marks it after the activity's completion has gone through Temporal and back.
Any other notification makes the hub read that enrollment (`read_enrollment`: one Temporal
query while it runs) and every watcher of it is answered from that read. Each API process
holds one LISTEN connection; on SQLite, which has no LISTEN, it reads the versions of the
enrollments it watches in one query per interval. No watcher ever reads Temporal on its own.
"""

import asyncio
import dataclasses
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol

import psycopg
import sqlalchemy as sa

from api.errors import AppError, Unavailable
from api.payments.verify import Verification
from core import metrics
from core import repository as repo
from core.contracts import Step
from core.settings import Settings

log = logging.getLogger(__name__)

Reader = Callable[[str], Awaitable[Verification]]

# A notification without its step is sent when the activity commits, a moment before its
# completion reaches Temporal and the workflow shows the change: the hub reads again on this
# schedule (seconds) until it sees the state move, then once more to catch a change right
# behind it. Such a notification stands for a change the workflow will show, so the hub
# keeps reading (backing off to 2 s, for about 30 s) until it does: under load the workflow
# task can lag the commit by seconds. No read at once: the workflow cannot show a change
# whose notification has only just been committed. Only notifications start this: a new
# watch and a resync read once, or a stream that sees nothing move would cost a read a
# second.
SETTLE_PAUSES = (0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, *([2.0] * 13))
# A watch created now reads once after this, for a change committed while it was created
# (a long-poll hands over what it read before it watched), unless a stream's first read
# started after the watch existed: any later change is then notified to it.
NEW_WATCH_READ_S = 0.1
# Nothing heard about a watched enrollment for this long: read it anyway (a notification
# lost while the LISTEN connection was down, a payment Stripe confirms late).
RESYNC_S = 30.0
POLL_CHUNK = 500
# How far along a step status is: a notified step shows over a read's until a read has
# it as far along (a read taken before the workflow caught up never takes it back).
RANK = {"pending": 0, "running": 1, "retrying": 1}  # done, failed, skipped: 2


class TooManyStreams(AppError):
    status_code = 429
    error = "Too many streams"


class StreamsFull(Unavailable):
    error = "Too many streams"


def rank(status: str) -> int:
    return RANK.get(status, 2)


class Watch:
    """One watched enrollment: its last read state, the steps notified since, and the
    watchers waiting on it."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.watchers = 0
        self.read: Verification | None = None  # the last read, as the workflow showed it
        self.current: Verification | None = None  # `read` with `ahead` applied
        self.version: str | None = None  # current's version, hashed once per change
        # Steps an activity settled that the last read did not show yet: key -> step.
        self.ahead: dict[str, Step] = {}
        self.read_at = time.monotonic()
        self.db_version: int | None = None  # SQLite poller's last seen progress_version
        self.dirty = False
        self.settle = False
        self.refreshing: asyncio.Task[None] | None = None
        self.opening: asyncio.Task[Verification] | None = None
        self.read_since_watched = False  # a read that started after this watch existed
        self._rendered: dict[str, str] = {}
        self._moved = asyncio.Event()

    @property
    def final(self) -> bool:
        return self.current is not None and (self.current.ready or self.current.closed)

    def publish(self, verification: Verification) -> bool:
        """A read: drop the notified steps it shows (or overtook), keep the rest over it.
        True if what the watchers see moved."""
        if (
            not verification.state.steps
            and self.read is not None
            and self.read.state.steps
            and not (verification.ready or verification.closed)
        ):
            # The memo behind a timed-out query, before the workflow first wrote its steps:
            # it knows less than the last read, and would blank the page's list.
            return False
        self.read = verification
        for step in verification.state.steps:
            ahead = self.ahead.get(step.key)
            if ahead is not None and rank(step.status) >= rank(ahead.status):
                del self.ahead[step.key]
        return self._show()

    def steps_settled(self, steps: Sequence[Step]) -> bool:
        """Steps an activity settled, before the workflow shows them. True if that moved."""
        for step in steps:
            known = self.ahead.get(step.key)
            if known is None or rank(step.status) >= rank(known.status):
                self.ahead[step.key] = step
        return self._show()

    @property
    def blind(self) -> bool:
        """The last read cannot carry a notified step: it has no such step (read before the
        workflow ran, or from a memo not yet written when the query timed out)."""
        if self.read is None:
            return bool(self.ahead)
        keys = {s.key for s in self.read.state.steps}
        return any(key not in keys for key in self.ahead)

    def _show(self) -> bool:
        read = self.read
        if read is None:
            return False
        shown = read
        if self.ahead and not (read.ready or read.closed):
            steps = [
                dataclasses.replace(s, status=a.status, detail=a.detail)
                if (a := self.ahead.get(s.key)) is not None and rank(a.status) > rank(s.status)
                else s
                for s in read.state.steps
            ]
            shown = dataclasses.replace(read, state=dataclasses.replace(read.state, steps=steps))
        version = shown.version
        if version == self.version:
            return False
        self.current, self.version = shown, version
        self._rendered = {}
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()
        return True

    def rendered(self, audience: str) -> str:
        """The current state as one SSE event, rendered once per audience for all watchers."""
        text = self._rendered.get(audience)
        if text is None:
            assert self.current is not None and self.version is not None
            text = self._rendered[audience] = event(self.current, audience, self.version)
        return text

    async def next(self, seen: str | None, wait_s: float) -> Verification | None:
        """The state once its version differs from `seen`; None if `wait_s` passes first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while self.current is None or self.version == seen:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                # A timeout around the wait, not wait_for: no extra task per waiting stream.
                async with asyncio.timeout(remaining):
                    await self._moved.wait()
            except TimeoutError:
                return None
        return self.current


class Slot:
    """One open stream or long-poll, counted per client address and per process."""

    def __init__(self, hub: "ProgressHub", client: str) -> None:
        self.hub, self.client, self.released = hub, client, False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.hub._release(self.client)


class Source(Protocol):
    async def run(self, hub: "ProgressHub") -> None: ...


class ProgressHub:
    def __init__(self, reader: Reader, settings: Settings, source: Source | None = None) -> None:
        self._reader = reader
        self.settings = settings
        self.source = source
        self._watches: dict[str, Watch] = {}
        self._per_client: Counter[str] = Counter()
        self.open = 0
        self.reads = 0
        self._tasks: list[asyncio.Task[None]] = []

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self.source is not None:
            self._tasks.append(asyncio.create_task(self.source.run(self)))
        self._tasks.append(asyncio.create_task(self._resync()))

    async def stop(self) -> None:
        tasks = self._tasks + [w.refreshing for w in self._watches.values() if w.refreshing]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    # ---- bounds ----------------------------------------------------------------------

    def reserve(self, client: str) -> Slot:
        if self.open >= self.settings.progress_streams_max:
            raise StreamsFull(
                "Too many live progress streams right now; poll verify-session instead.",
                headers={"Retry-After": "5"},
            )
        if self._per_client[client] >= self.settings.progress_streams_per_client:
            raise TooManyStreams(
                "Too many live progress streams from this address; close one or poll "
                "verify-session instead.",
                headers={"Retry-After": "5"},
            )
        self._per_client[client] += 1
        self.open += 1
        metrics.PROGRESS_STREAMS.inc()
        return Slot(self, client)

    def _release(self, client: str) -> None:
        self.open -= 1
        self._per_client[client] -= 1
        if self._per_client[client] <= 0:
            del self._per_client[client]
        metrics.PROGRESS_STREAMS.dec()

    # ---- watching --------------------------------------------------------------------

    def watch(self, session_id: str) -> Watch:
        watch = self._watches.get(session_id)
        if watch is None:
            watch = self._watches[session_id] = Watch(session_id)
            watch.refreshing = asyncio.create_task(self._first_check(watch))
        watch.watchers += 1
        return watch

    def unwatch(self, watch: Watch) -> None:
        watch.watchers -= 1
        if watch.watchers <= 0 and self._watches.get(watch.session_id) is watch:
            del self._watches[watch.session_id]
            if watch.refreshing is not None:
                watch.refreshing.cancel()

    def offer(self, watch: Watch, verification: Verification) -> None:
        """What the endpoint read as it opened, unless the hub has read since."""
        if watch.read is None:
            watch.publish(verification)

    async def opened(
        self, watch: Watch, read: Callable[[], Coroutine[Any, Any, Verification]]
    ) -> None:
        """A state for a watch nobody in this process has read yet: one read however many
        streams open on it together (a class of students opening the page at once)."""
        if watch.read is not None:
            return
        if watch.opening is None or watch.opening.done():
            watch.opening = asyncio.create_task(read())
        first = watch.opening
        try:
            self.offer(watch, await asyncio.shield(first))
            watch.read_since_watched = True
        finally:
            if first.done() and watch.opening is first:
                watch.opening = None

    async def _first_check(self, watch: Watch) -> None:
        await asyncio.sleep(NEW_WATCH_READ_S)
        if watch.read_since_watched and not watch.dirty:
            return  # a notification meanwhile set dirty (and left it to this task)
        watch.dirty = True
        await self._refresh(watch)

    def watched(self) -> list[Watch]:
        return list(self._watches.values())

    def changed(self, session_id: str, settled: Sequence[Step] = ()) -> None:
        """A notification: that enrollment moved. Ignored unless someone watches it. With
        the steps it settled, they are shown at once and nothing is read, unless the last
        read has no such steps (then one read, which has them once the workflow runs)."""
        watch = self._watches.get(session_id)
        if watch is None:
            return
        if settled:
            watch.steps_settled(settled)
            if watch.blind:
                self._read_soon(watch, settle=False)
            return
        self._read_soon(watch, settle=True)

    def changed_all(self) -> None:
        for watch in self.watched():
            self._read_soon(watch, settle=True)

    def _read_soon(self, watch: Watch, settle: bool) -> None:
        watch.dirty = True
        watch.settle = watch.settle or settle
        if watch.refreshing is None or watch.refreshing.done():
            watch.refreshing = asyncio.create_task(self._refresh(watch))

    async def _refresh(self, watch: Watch, delay: float = 0.0) -> None:
        if delay:
            await asyncio.sleep(delay)
        while watch.dirty and watch.watchers > 0:
            watch.dirty = False
            settle, watch.settle = watch.settle, False
            moved = False
            for pause in SETTLE_PAUSES if settle else (0.0,):
                if pause:
                    await asyncio.sleep(pause)
                try:
                    state = await self._reader(watch.session_id)
                except Exception as err:  # Temporal or Stripe down: the next change retries
                    log.warning("progress read failed: %s", type(err).__name__)
                    break
                self.reads += 1
                metrics.PROGRESS_READS.inc()
                seen = watch.read.version if watch.read is not None else None
                watch.publish(state)
                if state.version != seen:
                    moved = True
                    if watch.final:
                        break
                elif moved and not watch.blind:
                    break  # moved, then held still (and showing what was notified): settled
                if watch.dirty:
                    break  # another change arrived: start over from it
            watch.read_at = time.monotonic()

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_S / 6)
            stale = time.monotonic() - RESYNC_S
            for watch in self.watched():
                if not watch.final and watch.read_at < stale:
                    watch.read_at = time.monotonic()
                    self._read_soon(watch, settle=False)


# ---- where notifications come from ---------------------------------------------------


class PostgresNotifications:
    """One LISTEN connection for the whole process (psycopg's async connection)."""

    def __init__(self, database_url: str) -> None:
        url = sa.engine.make_url(database_url).set(drivername="postgresql")
        self.conninfo = url.render_as_string(hide_password=False)

    async def run(self, hub: ProgressHub) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {repo.PROGRESS_CHANNEL}")
                    hub.changed_all()  # anything that moved while nobody listened
                    async for note in conn.notifies():
                        hub.changed(*parse_note(note.payload))
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("progress LISTEN connection lost: %s", type(err).__name__)
                await asyncio.sleep(1.0)


def parse_note(payload: str) -> tuple[str, list[Step]]:
    """`<session id>`, or `<session id> [{"key", "status", "detail"}, ...]`: the steps the
    notifying activity settled (repo.bump_progress)."""
    session_id, _, settled = payload.partition(" ")
    if not settled:
        return session_id, []
    try:
        return session_id, [
            Step(str(d["key"]), "", str(d["status"]), str(d["detail"])) for d in json.loads(settled)
        ]
    except (ValueError, KeyError, TypeError):
        log.warning("progress notification not understood; reading the enrollment instead")
        return session_id, []


class VersionPoller:
    """SQLite: every interval, the versions of all watched enrollments in one query (in a
    thread: the event loop never waits on the database)."""

    def __init__(self, engine: sa.Engine, interval_s: float) -> None:
        self.engine, self.interval_s = engine, interval_s
        self.queries = 0

    async def run(self, hub: ProgressHub) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.poll(hub)

    async def poll(self, hub: ProgressHub) -> None:
        watches = {w.session_id: w for w in hub.watched()}
        if not watches:
            return
        try:
            versions = await asyncio.to_thread(self._read, list(watches))
        except Exception as err:
            log.warning("progress poll failed: %s", type(err).__name__)
            return
        for session_id, version in versions.items():
            watch = watches[session_id]
            known, watch.db_version = watch.db_version, version
            if known is not None and known != version:
                hub.changed(session_id)

    def _read(self, session_ids: Sequence[str]) -> dict[str, int]:
        self.queries += 1
        versions: dict[str, int] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(session_ids), POLL_CHUNK):
                versions.update(repo.progress_versions(conn, session_ids[i : i + POLL_CHUNK]))
        return versions


def source_for(engine: sa.Engine, settings: Settings) -> Source:
    if engine.dialect.name == "postgresql":
        return PostgresNotifications(settings.database_url)
    return VersionPoller(engine, settings.progress_poll_interval_ms / 1000)


# ---- the event stream ----------------------------------------------------------------


def event(verification: Verification, audience: str, version: str | None = None) -> str:
    """One SSE event: `progress` while it runs; `ready` once the student can land (the page
    then calls verify-session once, which logs it in); `end` when a person must decide."""
    name = "ready" if verification.ready else "end" if verification.closed else "progress"
    version = version or verification.version
    data = {
        "version": version,
        "enrollment_status": verification.state.status,
        "progress": verification.state.progress(audience),
    }
    return f"event: {name}\nid: {version}\ndata: {json.dumps(data)}\n\n"


async def events(watch: Watch, audience: str, settings: Settings) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    closes_at = loop.time() + settings.progress_stream_max_minutes * 60
    seen: str | None = None
    while True:
        current = watch.current
        if current is not None and watch.version != seen:
            seen = watch.version
            yield watch.rendered(audience)
            if current.ready or current.closed:
                return
        left = closes_at - loop.time()
        if left <= 0:
            yield "event: end\ndata: {}\n\n"  # the page reads verify-session, then goes on
            return
        if await watch.next(seen, min(settings.progress_heartbeat_seconds, left)) is None:
            yield ": keep-alive\n\n"
