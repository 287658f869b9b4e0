"""Decisions from a replica directory (engine/replica.py has the files): `LocalDecisions`, for a proxy's worker.

Split from engine/replica.py, which writes and reads the files, the status
page and the policy; this module decides from them and is what a SIP worker
imports (`from engine.replica import LocalDecisions` re-exports it).
"""

from __future__ import annotations

import math
import mmap
import os
import time
from collections.abc import Callable
from pathlib import Path

from ._core import CoreSnapshot, LocalAnswer, LocalFast
from .replica import (
    FILE_SUFFIX,
    INDEX_S,
    Policy,
    _numbers_of,
    _open,
    file_name,
    read_behind,
    read_policy,
)
from .replica_status import MAX_OFFSET_S, STATUS, STATUS_BYTES, STATUS_MAGIC, _status_of, clock_offset

__all__ = ["LocalAnswer", "LocalDecisions"]

_TIME = time.time   # the clock LocalFast reads in C when given this one

_RETRY = (-1, -1, -1, -1)  # a stat key no file has
PAGE_LOOK_S = 1.0         # a page not fresh is looked for (os.stat) at most this often
PAGE_FRESH_S = 2.5        # a status page heard from within this is the live one (the replica writes it each 1 s)


class _Held:
    """One tenant as a worker holds it: the mapped snapshot (None: no usable file) and when to look again."""

    __slots__ = ("backup", "checked", "checksum", "gen", "key", "snap", "until", "version")

    def __init__(self, snap: CoreSnapshot | None, version: int, checksum: str,
                 key: tuple[int, int, int, int] | None, now: float, until: float) -> None:
        self.snap, self.version, self.checksum, self.key = snap, version, checksum, key
        self.checked, self.until = now, until
        self.gen = -2                      # the status page's generation when this was looked at (-2: never)
        self.backup: tuple[str, str] | None = None
        if snap is not None:
            meta = snap.meta
            if meta["backup_line"] >= 0 and meta["backup_number"] > 0:  # both in range: the core checked them
                self.backup = ("+" + str(meta["backup_number"]), meta["lines"][meta["backup_line"]])


class LocalDecisions(LocalFast):
    """Decisions from a replica directory, for a proxy worker process.

    Keeps each tenant's snapshot and the directory's status page mapped; reads the page at every decision (the
    generation and the heartbeat: memory reads), and looks at a tenant's file again (os.stat: device, inode,
    size, mtime_ns) when the generation moved or `recheck_s` passed, and at the policy when the generation
    moved; so a decision costs a clock read, the page, a dict lookup and the core call.  That usual case runs
    compiled (`inbound` is LocalFast's: engine/_core_local.pxi), everything else here (`_inbound_slow`).  A file
    replaced by the writer is a new inode: the next look maps it, and the old mapping goes when nothing uses
    it.  A file that fails its checks is not opened again until it changes.  A clock that goes back makes
    every cached look due at once.  Not thread-safe: one per worker process (or per thread), made after the
    fork.  On CPython before 3.13 each mapped tenant also holds one file descriptor (mmap keeps a dup).

    `copy=True` reads each file whole into this process's own memory and decides from that copy instead of the
    shared mapping, so every worker holds a private copy of every tenant it decided for (the same checks, the
    same answers): for the memory benchmark's comparison (`loadtest.sip_bench --memory`); never faster.

    inbound(tenant, caller, called, at=0): the local answer to an inbound call at `at` (0: now by the server's
    clock, as the replica measured it against this host's: what the RPC's at=0 means, so that a host whose clock
    is wrong decides off-hours as the server would), or None: no usable file for `tenant` (absent, removed,
    damaged), ask the server.  Fresh, or stale under "stale-ok": action "decide".  Stale under "fail-closed":
    "reject".  Stale under "backup": "backup" (or "reject" without a backup configured).
    """

    def __init__(self, directory: Path | str, recheck_s: float = 30.0, clock: Callable[[], float] = time.time,
                 copy: bool = False) -> None:
        if not (recheck_s >= 0 and math.isfinite(recheck_s)):
            raise ValueError(f"recheck_s must be a finite number >= 0, not {recheck_s!r:.40}")
        # time.time is read in C (CLOCK_REALTIME, as time.time reads it); any other clock through Python (a
        # time.time patched by a test is another clock: compared with the one this module found)
        super().__init__(STATUS_MAGIC, PAGE_FRESH_S, MAX_OFFSET_S, None if clock is _TIME else clock, INDEX_S)
        self.directory = Path(directory)
        self.recheck_s = float(recheck_s)
        self._clock = clock
        self._copy = bool(copy)
        self._held: dict[str, _Held] = {}
        self._policy = Policy()
        self._behind: dict[str, float] = {}   # tenants the replica could not bring to the version in force: since
        self._status_checked = -math.inf
        self._status_until = -math.inf
        self._page: mmap.mmap | None = None   # the status page, mapped (None: none yet, or not readable)
        self._page_key: tuple[int, int] | None = None
        self._policy_gen = -2
        # each file's (key, tenant, numbers) as last read: `_scan` makes LocalFast's index of them (`tenant_of`:
        # number -> tenant) and sets when (`_scanned`)
        self._headers: dict[str, tuple[tuple[int, int, int, int], str, tuple[str, ...]]] = {}
        # why each tenant's file was refused at its last look (none while it is usable or absent): for the proxy's
        # log, as its calls then go to the server
        self.refusals: dict[str, str] = {}

    @property
    def recheck_s(self) -> float:
        """How long a look at a tenant's file holds (and tenant_of's index, while the live status page says nothing
        changed)."""
        return self._index_live_s

    @recheck_s.setter
    def recheck_s(self, seconds: float) -> None:
        self._index_live_s = float(seconds)

    @property
    def policy(self) -> Policy:
        """The directory's policy as last read (its defaults until one is)."""
        return self._policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        self._policy = policy
        self._drop_fast()   # (the compiled path's entries hold the last policy's max_staleness_s)

    @property
    def behind(self) -> dict[str, float]:
        """Tenants the replica could not bring to the version in force, and since when (time.time())."""
        return self._behind

    @behind.setter
    def behind(self, behind: dict[str, float]) -> None:
        self._behind = behind
        self._drop_fast()   # (a tenant behind is never answered by the compiled path)

    def _inbound_slow(self, tenant: str, caller: str, called: str, at: int, now: float) -> LocalAnswer | None:
        """`inbound` when its compiled path cannot answer, at `now` (read there); puts the entry it answers
        from next time when the tenant is in step."""
        gen, heard, offset = self._read_page()
        # The page is looked for again (os.stat) only when it says nothing fresh: none mapped yet, or its
        # heartbeat older than PAGE_FRESH_S (the replica writes it every second while in step), as a page
        # replaced by a new one (the directory made again) stops being written.  A page that is being written
        # is the live one: no syscall on the decision's path.
        if (heard is None or not -PAGE_FRESH_S <= now - heard <= PAGE_FRESH_S) and \
                not self._status_checked <= now < self._status_until:
            self._look_status(now)
            gen, heard, offset = self._read_page()
        if gen != self._policy_gen:
            self._read_policy(gen)
        h = self._held.get(tenant)
        # its file truncated or rewritten in place under the mapping (the core's guard, engine/_core_guard.pxi):
        # opened again now, whatever its key says
        faulted = h is not None and h.snap is not None and h.snap.faulted
        if faulted:   # (an I/O error of the disk too: the file is hashed with pread, so a page it still cannot give
            h = None  # is an OSError there, the file refused and tried again at the next look)
        # looked at again when the replica says the directory changed (the page's generation), and at the
        # latest every recheck_s (a change made without the writer, a page gone)
        if h is None or h.gen != gen or not h.checked <= now < h.until:
            h = self._look(tenant, h, now)
            h.gen = gen
            if faulted and tenant in self.refusals:
                self.refusals[tenant] = ("truncated or rewritten in place under this worker's mapping; as it now "
                                         f"is: {self.refusals[tenant]}")
        snap = h.snap
        if snap is None:
            return None
        age = now - heard if heard is not None else math.inf
        if age < -PAGE_FRESH_S:
            # heard in the future: this host's clock was stepped back since, and how old the replica is cannot be
            # told (taken as fresh, a stale replica would pass): as never heard, the tenant's stale policy, until
            # the replica's next heartbeat (a second away while the server answers it) says it again
            age = math.inf
        policy = self.policy
        since = self.behind.get(tenant)
        if since is not None:   # the replica failed to install this tenant's version in force: as old as that
            behind_s = now - since
            if behind_s < -PAGE_FRESH_S:   # behind since a time still to come (the clock stepped back since): for
                behind_s = math.inf        # how long cannot be told
            if behind_s > policy.max_staleness_s and age <= policy.max_staleness_s:
                return None   # too old, and the server answers the replica: ask the server, not the policy
            age = max(age, behind_s)
        stale = age > policy.max_staleness_s
        if stale:
            word = policy.tenants.get(tenant, policy.default)
            if word == "fail-closed" or (word == "backup" and h.backup is None):
                return LocalAnswer("reject", None, h.version, h.checksum, age, True)
            if word == "backup":
                assert h.backup is not None
                return LocalAnswer("backup", None, h.version, h.checksum, age, True, h.backup[0], h.backup[1])
        elif since is None and gen >= 0 and type(tenant) is str:   # in step: the compiled path answers the next
            self._put_fast(tenant, snap, h.version, h.checksum, gen, h.checked, h.until, policy.max_staleness_s)
        if not at:
            at = int(now + offset)
        try:
            decision = snap.inbound(caller, called, at)
        except OSError:   # its file truncated as it decided (the core's guard): the next call opens it again
            self._drop_fast(tenant)
            return None
        return LocalAnswer("decide", decision, h.version, h.checksum, age, stale)

    def prepare(self, limit: int) -> int:
        """Map and check the files of up to `limit` tenants of the directory now (a SIP worker's start), and make
        the compiled path ready for each, so that no call waits for it: a worker's first decision for a tenant
        otherwise maps and checks its file (0.7 ms for a small tenant, 50-75 ms for a 15 MB file).  Before
        Python 3.13 each mapped tenant holds a file descriptor: keep `limit` well under the process's.  The
        tenants it now holds; a file that fails its checks is skipped as a decision would skip it."""
        now = self._clock()
        self._scan(now)
        for tenant in sorted({tenant for _, tenant, _ in self._headers.values()})[:max(0, limit)]:
            self._inbound_slow(tenant, "", "", 0, now)   # the looks a decision makes (its answer is no call's)
        return sum(h.snap is not None for h in self._held.values())

    def _scan(self, now: float) -> None:
        """LocalFast's index of numbers (`_owners`), from the files' headers; `_index_whole` when every file was
        read (else looked at again within INDEX_S: a file damaged, or a descriptor short for a moment)."""
        self._scanned = now
        seen: dict[str, tuple[tuple[int, int, int, int], str, tuple[str, ...]]] = {}
        try:
            entries = list(os.scandir(self.directory))
        except OSError:   # (no descriptor left for a moment, ...): the last index and mappings stand, tried again
            self._index_whole = False
            return
        self._index_whole = True
        present: set[str] = set()
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.endswith(FILE_SUFFIX):
                continue
            present.add(entry.name)
            try:
                st = entry.stat()
            except OSError:
                self._index_whole = False
                continue
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            known = self._headers.get(entry.name)
            if known is not None and known[0] == key:
                seen[entry.name] = known
                continue
            found = _numbers_of(Path(entry.path))
            if found is not None:
                seen[entry.name] = (key, *found)
            else:
                self._index_whole = False
        self._headers = seen
        # tenants whose file is gone: their mapping (and, before Python 3.13, its descriptor) is let go now,
        # not at their next decision, which may never come
        names = {file_name(t): t for t in self._held}
        for name, tenant in names.items():
            if name not in present and self._held[tenant].snap is not None:
                del self._held[tenant]
                self._drop_fast(tenant)
        owners: dict[str, str] = {}
        for _, tenant, numbers in seen.values():
            for number in numbers:
                owners[number] = "" if owners.get(number, tenant) != tenant else tenant  # "": listed twice
        self._owners = owners

    def snapshot(self, tenant: str) -> tuple[CoreSnapshot, int, str] | None:
        """(snapshot, version, checksum) of `tenant`'s file as this worker holds it, or None."""
        now = self._clock()
        h = self._held.get(tenant)
        if h is None or not h.checked <= now < h.until:
            h = self._look(tenant, h, now)
        return None if h.snap is None else (h.snap, h.version, h.checksum)

    def close(self) -> None:
        """Drop every mapping (each is unmapped once no decision made from it is left either)."""
        self._held.clear()
        self.refusals.clear()
        self._drop_fast()

    def _look(self, tenant: str, h: _Held | None, now: float) -> _Held:
        self._drop_fast(tenant)   # whatever the look finds, the compiled path answers from it only once put again
        path = self.directory / file_name(tenant)
        until = now + self.recheck_s
        try:
            st = os.stat(path)
            key: tuple[int, int, int, int] | None = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        except (OSError, ValueError):  # ValueError: a name with NUL can never be a file (file_name never makes one)
            key = None
        if h is not None and key == h.key:
            h.checked, h.until = now, until  # the same file (or still none): nothing to open
            return h
        fresh = _Held(None, 0, "", key, now, until)  # absent, or damaged: not opened again until it changes
        if key is not None:
            mapped: list[tuple[int, int, int, int]] = []
            try:
                snap, version, checksum, _ = _open(path, tenant, key=mapped, copy=self._copy)
            except Exception as exc:  # every fault of the file: the caller asks the server instead
                self.refusals[tenant] = f"{exc}"[:300] or type(exc).__name__
                # a file refused for what it holds is not read again until it changes; any other failure (out
                # of descriptors or memory, a permission) is no verdict on the file: tried again at the next look
                fresh.key = mapped[0] if mapped and isinstance(exc, ValueError) else _RETRY
            else:
                fresh = _Held(snap, version, checksum, mapped[0], now, until)
                self.refusals.pop(tenant, None)
        else:
            self.refusals.pop(tenant, None)
        self._held[tenant] = fresh
        return fresh

    def _look_status(self, now: float) -> None:
        """Map the status page again when it is new or was replaced (at most every recheck_s)."""
        # (a page looked for and not found is looked for again within a second: a directory being made)
        self._status_checked, self._status_until = now, now + min(self.recheck_s, PAGE_LOOK_S)
        try:
            st = os.stat(self.directory / STATUS)
            key: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            key = None
        if key == self._page_key and (key is None or self._page is not None):
            return
        page, self._page, self._page_key = self._page, None, key
        for h in self._held.values():   # another page's generations say nothing of what this worker holds
            h.gen = -2
        self._drop_fast()
        self._map_page(None)   # (an mmap whose buffer is held cannot be closed)
        if page is not None:
            page.close()
        if key is not None:
            try:
                with open(self.directory / STATUS, "rb") as f:
                    page = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):
                return
            if len(page) < STATUS_BYTES:   # not a page the replica wrote: as none
                page.close()
                return
            self._page = page
            self._map_page(page)
        self._policy_gen = -2   # read the policy again too

    def _read_page(self) -> tuple[int, float | None, float]:
        """(generation, heard, the server's clock offset) from the mapped status page as a decision reads it (memory
        reads, no syscall, under the core's SIGBUS guard); (-1, None, 0.0) without one.  A page that faulted
        (truncated in place, a disk's I/O error) is unmapped by the read, and looked for again at once."""
        raw = self._page_words()
        if self._page_faulted:
            self._page_faulted = False
            self._page_key = None   # (whatever its inode says: at the next look, mapped again or refused when short)
        if raw is None:
            return -1, None, 0.0
        generation, heard = _status_of(raw)
        return (generation, heard, clock_offset(raw) if generation >= 0 else 0.0)

    def _read_policy(self, gen: int) -> None:
        self._policy_gen = gen   # (setting policy and behind drops the compiled path's entries: they hold the last)
        try:
            self.policy = read_policy(self.directory)
        except (OSError, ValueError):
            pass  # a damaged policy file: the last good one stays in force (the defaults if none was ever read)
        try:
            self.behind = read_behind(self.directory)
        except (OSError, ValueError):
            pass  # the same
