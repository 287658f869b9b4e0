"""The one narrow interface between callgate's service and its state (spec §5).

Everything stored goes through `Store`: settings versions and their history,
blacklist patches, compiled snapshot blobs, the owner of every phone number,
the call registry and CRM leads, the ledger with its balances, auto top-ups,
cards, documents, tokens and the audit log.  Rules that must hold across
every worker and host are the store's, in its transactions and constraints,
not only checks above it: a number has one owner, a tenant-admin's write
never creates a tenant, a token names existing tenants.  The embedded default is
`server.store.sqlite.SQLiteStore` (one SQLite file in WAL mode, shared by every
worker process); a PostgreSQL store implements the same methods.

All methods are synchronous and safe to call from several threads and
several processes at once; the async service calls them in a thread.
Money is integer micro-units (1e-6 of the currency), never float.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from server.rules.calls import Account, Call, Event, Outcome, Reply
    from server.rules.tokens import TokenRecord


class StoreError(Exception):
    """Base class of the store's refusals (each maps to one gRPC status)."""


class NotFound(StoreError):
    """No such tenant or version (gRPC NOT_FOUND)."""


class StoreUnavailable(StoreError):
    """The store cannot do it now and wrote nothing: busy, disk full, I/O, read-only (gRPC UNAVAILABLE: retry).

    `kind` is one of server.store.faults.KINDS; the message says what to do.
    """

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class StoreBusy(StoreUnavailable):
    """The store stayed locked by other writers for longer than its busy timeout (gRPC UNAVAILABLE: retry)."""

    def __init__(self, message: str):
        super().__init__("busy", message)


class StoreDamaged(StoreError):
    """The store's file is damaged or not what this code expects (gRPC INTERNAL: retrying will not help).

    `where` names the damaged tables or indexes when a check found them.
    """

    def __init__(self, kind: str, message: str, where: str = ""):
        super().__init__(message)
        self.kind, self.where = kind, where


class SnapshotDamaged(StoreError):
    """A stored snapshot blob does not match its checksum: compile the version's document again."""

    def __init__(self, tenant: str, version: int, detail: str):
        super().__init__(f"tenant {tenant!r} version {version}: the stored snapshot is damaged ({detail})")
        self.tenant, self.version = tenant, version


class StoreMissing(StoreDamaged):
    """The data directory was initialised but its store is gone or empty: restore it, never start afresh."""

    def __init__(self, message: str):
        super().__init__("missing", message)


class VersionConflict(StoreError):
    """expected_version is not the version in force (gRPC FAILED_PRECONDITION)."""

    def __init__(self, tenant: str, expected: int, actual: int):
        super().__init__(f"tenant {tenant!r} is at version {actual}, not {expected}: "
                         "read the current settings and push again")
        self.tenant, self.expected, self.actual = tenant, expected, actual


class VersionMoved(StoreError):
    """Another version came in between `prepare_patch` and `commit_patch` (no expected version was given):
    prepare the patch again on the new version."""

    def __init__(self, tenant: str, base: int, actual: int):
        super().__init__(f"tenant {tenant!r} moved from version {base} to {actual} while the patch compiled")
        self.tenant, self.base, self.actual = tenant, base, actual


class TenantMissing(NotFound):
    """The write needs a tenant that exists (a tenant-admin's push, a token's tenants, a transfer's target)."""


class NumberTaken(StoreError):
    """A document lists numbers that another tenant holds (gRPC FAILED_PRECONDITION); nothing was written.

    Names each number with its field path, never the tenant that holds it: a
    tenant learns only that the number is taken.
    """

    def __init__(self, taken: list[tuple[str, str]]):
        self.taken = taken                      # (number, field path)
        shown = "; ".join(f"{path}: {number} belongs to another tenant" for number, path in taken[:10])
        more = f"; and {len(taken) - 10} more" if len(taken) > 10 else ""
        super().__init__(f"{shown}{more} (a number belongs to one tenant at a time: an operator moves it with "
                         "`callgate numbers transfer`)")


class AlreadyReviewed(StoreError):
    """A document set is reviewed once: pending -> approved | rejected; a new upload makes a new pending set
    (gRPC FAILED_PRECONDITION, naming the earlier review)."""

    def __init__(self, set_id: int, status: str, by: str, at: int, reason: str = ""):
        import datetime as dt

        when = dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ") if at else "earlier"
        why = f" ({reason})" if reason else ""
        super().__init__(f"document set {set_id} was already {status}{why} by {by or 'an operator'} at {when}: a set "
                         "is reviewed once; the tenant uploads a new set to be reviewed again")
        self.set_id, self.status, self.by, self.at = set_id, status, by, at


class TenantBusy(StoreError):
    """A tenant removal refused: calls in progress or money on its account (unless forced), or a top-up being
    charged on its card this moment (gRPC FAILED_PRECONDITION); nothing was removed."""


class OwnershipConflicts(StoreError):
    """The store holds numbers under more than one tenant, from before numbers had owners: resolve them first."""

    def __init__(self, conflicts: dict[str, list[str]], where: str = "DIR"):
        self.conflicts = conflicts              # number -> the tenants that list it
        shown = ", ".join(f"{n} ({', '.join(ts)})" for n, ts in list(conflicts.items())[:10])
        more = f" and {len(conflicts) - 10} more" if len(conflicts) > 10 else ""
        super().__init__(f"{len(conflicts)} number(s) are listed by more than one tenant, which callgate no longer "
                         f"allows: {shown}{more}; give each to one tenant with `callgate numbers resolve NUMBER "
                         f"--owner TENANT --data-dir {where}` (the others get a new version without it), "
                         "then start again")


@dataclass(frozen=True, slots=True)
class TenantFacts:
    """What the store keeps of a version beside its document: what the failover export needs."""

    status: str
    backup_number: str = ""
    backup_line: str = ""

    @classmethod
    def of(cls, doc: dict[str, Any]) -> TenantFacts:
        backup = doc.get("backup") if isinstance(doc.get("backup"), dict) else {}
        assert isinstance(backup, dict)
        return cls(str(doc.get("status", "")), str(backup.get("number", "")), str(backup.get("line", "")))


@dataclass(frozen=True, slots=True)
class VersionWrite:
    """One new settings version, as `commit_versions` writes it (several commit together or not at all)."""

    tenant: str
    kind: str                     # push | rollback | transfer | resolve
    document: bytes               # JSON of the whole effective document
    snapshot: bytes               # its compiled snapshot blob
    # (number, line) of every numbers[i] in document order: the numbers this version holds.  None: the store
    # reads them from the document (a parse: the service passes what the compile found instead)
    numbers: tuple[tuple[str, str], ...] | None = None
    expected_version: int | None = None   # None: no check; 0: the tenant must not exist yet
    comment: str = ""
    facts: TenantFacts | None = None      # None: read from the document (like numbers)


@dataclass(frozen=True, slots=True)
class NumberOwner:
    number: str
    tenant: str
    line: str
    version: int                  # the tenant's version that claimed it
    since: int                    # UTC seconds


@dataclass(frozen=True, slots=True)
class TenantFailover:
    tenant: str
    version: int
    status: str
    backup_number: str
    backup_line: str


@dataclass(frozen=True, slots=True)
class FailoverView:
    """Every number's holder and each tenant's backup, read at one moment (`callgate export failover`)."""

    tenants: list[TenantFailover]
    numbers: list[NumberOwner]


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    at: float
    token_id: str
    role: str
    tenant: str
    action: str
    object: str                   # what the call acted on: "version 3", "set 12", "token ab12", "number +1..."
    version_before: int
    version_after: int
    result: str                   # OK, CANCELLED (the caller left), or the gRPC status name of the refusal
    detail: str                   # the refusal's message (or what was done)
    peer: str = ""                # the caller's address, as gRPC gives it (ipv4:127.0.0.1:50000)


@dataclass(frozen=True, slots=True)
class ReplicaReport:
    """One report from a proxy's replica about one tenant: the snapshot version it installed (ACK) or refused
    (NACK), as Envoy's xDS ACK/NACK; `Store.record_replicas` keeps the latest of each (replica, tenant)."""

    replica: str                  # the replica's name (its host), 1..128 chars, as it introduced itself
    tenant: str
    version: int                  # the settings version reported on (>= 1)
    checksum: str                 # SHA-256 hex (64 chars) of the snapshot it reported on
    installed: bool               # True: installed (ACK); False: refused (NACK), the replica keeps what it had
    reason: str = ""              # why refused (clipped to 500 chars; ignored for an install)
    peer: str = ""                # the address it connected from (clipped to 128)
    token_id: str = ""            # the token it presented (clipped to 128)
    at: float | None = None       # when the server heard it (epoch seconds); None: `record_replicas`' `at`


@dataclass(frozen=True, slots=True)
class ReplicaRecord:
    """What the store knows of one replica's copy of one tenant (`Store.list_replicas`)."""

    replica: str
    tenant: str
    version: int                  # the version last INSTALLED (0: none yet)
    checksum: str                 # its snapshot's SHA-256 hex ("" with version 0)
    installed_at: float           # epoch seconds (0: never)
    refused_version: int          # the last version refused and not superseded by a later install (0: none)
    refused_checksum: str
    refused_reason: str
    refused_at: float             # epoch seconds (0: none)
    peer: str                     # of the latest report
    token_id: str                 # of the latest report
    seen_at: float                # the latest report of any kind for this row, epoch seconds


@dataclass(frozen=True, slots=True)
class VersionRecord:
    tenant: str
    version: int
    kind: str                   # "push" | "rollback" | "patch"
    created_at: int             # UTC seconds
    comment: str
    in_force: bool
    document: bytes | None = None  # JSON of the effective document, when asked for


@dataclass(frozen=True, slots=True)
class Poll:
    """What a worker checks several times a second: versions in force, balances, document changes."""

    versions: dict[str, int]
    balances: dict[str, int]      # micro-units; tenants without ledger entries are absent (0)
    documents: dict[str, int]     # a counter per tenant, bumped by every document upload or review
    reserved: dict[str, int] = field(default_factory=dict)  # micro-units held by the tenant's open calls
    # the tenants whose version, balance or documents changed since this store's previous poll (the change
    # feed); None: look at every tenant (the first poll, or the feed's rows were pruned before they were read)
    changed: frozenset[str] | None = None

    def available(self, tenant: str) -> int:
        """What the tenant may still spend: its balance less what its calls in progress hold."""
        return self.balances.get(tenant, 0) - self.reserved.get(tenant, 0)


@dataclass(frozen=True, slots=True)
class TopupPolicy:
    """Rule 7 for one tenant at one moment: top up `amount` when the balance falls below `threshold`."""

    amount_micro: int
    threshold_micro: int          # max(3.00, the next renewal amount)
    currency: str


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    id: int
    tenant: str
    kind: str                     # call | rental | topup | credit
    amount_micro: int             # + credits, - debits
    ref: str                      # the idempotency key within (tenant, kind): call id, number:date, ...
    currency: str
    created_at: int
    balance_micro: int            # the balance after this entry


@dataclass(frozen=True, slots=True)
class Topup:
    id: int
    tenant: str
    amount_micro: int
    currency: str
    status: str                   # pending | charging | charged | failed
    attempts: int
    next_attempt_at: int
    last_reason: str
    gateway_ref: str
    trigger: str                  # the ledger entry whose debit crossed the threshold
    created_at: int


@dataclass(frozen=True, slots=True)
class CardRecord:
    tenant: str
    token: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int


@dataclass(frozen=True, slots=True)
class DocumentFile:
    sha256: str
    name: str
    format: str
    width: int
    height: int
    size: int


@dataclass(frozen=True, slots=True)
class DocumentSet:
    id: int
    tenant: str
    number: str
    status: str                   # pending | approved | rejected
    reason: str
    uploaded_at: int
    due_on: str                   # ISO date
    decided_at: int
    decided_by: str
    files: tuple[DocumentFile, ...]


@dataclass(frozen=True, slots=True)
class TenantRemoval:
    """What `remove_tenant` removed, kept and changed (or, for a dry run, would have)."""

    tenant: str
    dry_run: bool
    last_version: int                     # the version that was in force
    removed_version: int                  # the history row kind "removed" (a tenant made again goes on after it)
    versions: int                         # settings versions deleted
    numbers: int                          # numbers released
    calls: int                            # call records deleted
    calls_in_progress: int                # of those, ringing or answered
    document_sets: int
    document_files: tuple[str, ...]       # SHA-256 of the files no other tenant's set names: the caller deletes them
    balance_micro: int                    # at removal
    reserved_micro: int
    ledger_entries: int                   # kept, renamed to ledger_archive
    topups: int                           # kept, renamed to ledger_archive (pending ones failed)
    ledger_archive: str                   # "" when the tenant had no money records
    card_removed: bool
    tokens_revoked: tuple[str, ...]       # tenant-admin tokens of this tenant only
    tokens_narrowed: tuple[str, ...]      # tenant-admin tokens of several tenants, this one taken off their list


@dataclass(frozen=True, slots=True)
class PatchResult:
    version: int
    added: int                  # numbers that were not on the list
    removed: int                # numbers that were on the list
    size: int                   # entries on the list after the patch


@dataclass(frozen=True, slots=True)
class ListPatch:
    """A blacklist patch worked out on one version (`prepare_patch`), waiting for its compiled snapshot."""

    tenant: str
    list_name: str
    base_version: int                    # the version in force it was worked out on
    ops: tuple[tuple[str, str], ...]     # ("add" | "remove", number): only what changes the list
    document: bytes                      # the effective document after the patch, JSON: what to compile
    size: int                            # entries on the list after the patch
    expected_version: int | None         # the caller's compare-and-swap, if any

    @property
    def added(self) -> int:
        return sum(1 for op, _ in self.ops if op == "add")

    @property
    def removed(self) -> int:
        return len(self.ops) - self.added

    def unchanged(self) -> PatchResult:
        """The answer for a patch that changes nothing (no ops): no new version."""
        return PatchResult(version=self.base_version, added=0, removed=0, size=self.size)


class Store(Protocol):
    # -- settings ----------------------------------------------------------
    def current_versions(self) -> dict[str, int]:
        """Tenant -> version in force, for every tenant.  Cheap: workers poll it."""
        ...

    def prune_changes(self, keep: int = 100_000) -> int:
        """Delete the change feed's rows but the newest `keep` (a worker that had not read them reads every
        tenant again); returns how many went."""
        ...

    def snapshot_sizes(self) -> dict[str, tuple[int, int]]:
        """Tenant -> (version in force, bytes of its compiled snapshot), for the metrics."""
        ...

    def poll(self) -> Poll | None:
        """Versions and balances without waiting on a lock: None if the store is busy this instant.

        Called from the worker's event loop, several times a second, so it
        must cost microseconds when nothing changed and never block.
        """
        ...

    def commit_version(self, tenant: str, kind: str, document: bytes, snapshot: bytes,
                       expected_version: int | None, comment: str = "", *,
                       numbers: tuple[tuple[str, str], ...] | None = None, may_create: bool = True,
                       facts: TenantFacts | None = None) -> int:
        """Store a whole effective document (JSON bytes) and its compiled snapshot as the next version.

        Atomic: checks `expected_version` (None: no check; 0: the tenant must
        have no version yet) against the version in force, inserts version
        N+1 and puts it in force, or raises VersionConflict and changes nothing.
        Number ownership moves in the same transaction: the tenant releases
        the numbers it no longer lists and claims the new ones, or the whole
        write is refused with NumberTaken.  `may_create=False`: a tenant with
        no version yet is refused with TenantMissing (only operators and
        owners create tenants).  The one-write case of `commit_versions`.
        """
        ...

    def commit_versions(self, writes: list[VersionWrite], *, may_create: bool = True) -> list[int]:
        """Several tenants' new versions in one transaction, all or none (a number transfer is two)."""
        ...

    def number_owner(self, number: str) -> NumberOwner | None:
        """Who holds an E.164 number now, if anyone."""
        ...

    def number_owners(self, tenant: str = "") -> list[NumberOwner]:
        """Every held number (of one tenant, or of all), by number."""
        ...

    def failover_view(self) -> FailoverView:
        """The ownership table and each tenant's version, status and backup, in one consistent read."""
        ...

    def check_ownership(self) -> list[str]:
        """Compare the owners with the numbers the documents in force list; record what disagrees as conflicts
        (offline: it parses every document).  Returns the findings in words."""
        ...

    def ownership_conflicts(self) -> dict[str, list[tuple[str, str]]]:
        """Numbers found under several tenants when ownership was introduced: number -> [(tenant, line)]."""
        ...

    def resolve_conflict(self, number: str, owner: str, releases: list[VersionWrite]) -> list[int]:
        """Give a conflicting number to `owner`; `releases` are the other claimants' new versions without it
        (one per other claimant, all committed in the same transaction)."""
        ...

    def prepare_patch(self, tenant: str, list_name: str, add: list[str], remove: list[str],
                      expected_version: int | None) -> ListPatch:
        """Work out adding and removing E.164 numbers on "blacklist" or "offhours_blacklist" of the version in
        force: the changes that change something (removes first, then adds: a number in both ends up listed)
        and the document after them, for the caller to compile (outside any lock: a big list takes a second).
        A patch without ops changes nothing and makes no version (`ListPatch.unchanged`).
        Raises NotFound if the tenant has no settings, VersionConflict as above.  Writes nothing.
        """
        ...

    def commit_patch(self, patch: ListPatch, blob: bytes) -> PatchResult:
        """Store a prepared patch, with its compiled snapshot, as the version after its base.

        The patch is stored as rows (not a copy of the document); the
        effective document of the new version is the previous one with the
        patch applied.  If another version came in since `prepare_patch`:
        VersionConflict when the patch had an expected version (the caller's
        race to resolve), else VersionMoved (prepare again).  A failure
        changes nothing.
        """
        ...

    def get_version(self, tenant: str, version: int | None = None) -> VersionRecord:
        """One version with its effective document (None: the version in force); NotFound if absent."""
        ...

    def list_versions(self, tenant: str, limit: int = 50) -> list[VersionRecord]:
        """Newest first, without documents; NotFound if the tenant has none."""
        ...

    def snapshot(self, tenant: str, version: int) -> bytes | None:
        """The compiled snapshot blob stored with that version, if still kept; SnapshotDamaged when the blob
        read back is not the one written (its checksum)."""
        ...

    def replace_snapshot(self, tenant: str, version: int, blob: bytes) -> bool:
        """Store a recompiled blob in place of a damaged one; False if that version's blob is no longer kept."""
        ...

    def probe(self) -> None:
        """A small real write (this process's row of a probe table): raises as any write would; health uses it."""
        ...

    # -- calls -----------------------------------------------------------------
    def call_event(self, tenant: str, call_id: str, event: Event,
                   rules: Callable[[Call | None, Account], Outcome], topup: TopupPolicy | None,
                   currency: str) -> Reply:
        """Apply one call event atomically: a recorded event key returns its recorded reply (a replay);
        otherwise `rules(call, account)` (server.rules.calls.apply) gives the call's new record, the reply, the
        charge and the change of held credit, all committed in one transaction with the ledger debit, the
        account's holds, the CRM lead and any top-up it triggers (a crossing of the available credit).
        Raises server.rules.calls.EventRefused (nothing written) when the event cannot apply."""
        ...

    def submit_call_event(self, tenant: str, call_id: str, event: Event,
                          rules: Callable[[Call | None, Account], Outcome], topup: TopupPolicy | None,
                          currency: str) -> Future[Reply]:
        """call_event without waiting: the future is done once the event is committed (or refused)."""
        ...

    def ringing_calls(self, tenant: str, since: int = 0) -> list[tuple[str, str, int]]:
        """(call_id, user, since) of the tenant's calls ringing and unanswered since `since` or later,
        oldest first (what pickup may take: a call that rang before the ring timeout is not offered)."""
        ...

    def calls(self, tenant: str, states: tuple[str, ...], limit: int = 100) -> list[Call]:
        """The tenant's calls in those states, oldest first."""
        ...

    def expire_calls(self, ring_cutoff: int, talk_cutoff: int, quiet_cutoff: int,
                     rules: Callable[[Call], Outcome], topup: Callable[[str], TopupPolicy | None],
                     currency: Callable[[str], str]) -> list[Call]:
        """End the calls no ENDED came for: ringing since before ring_cutoff, or answered since before
        talk_cutoff, and nothing recorded for them since quiet_cutoff (a replay in progress is never cut).
        `rules(call)` (server.rules.calls.expire) gives each its end; the charge, the released hold and any top-up
        are committed with it.  Returns the expired calls."""
        ...

    def account(self, tenant: str) -> Account:
        """The tenant's balance and the credit its open calls hold (micro-units)."""
        ...

    def lead_count(self, tenant: str, call_id: str) -> int:
        """CRM leads recorded for a call (0 or 1)."""
        ...

    # -- money -----------------------------------------------------------------
    def balance(self, tenant: str) -> int:
        """The tenant's balance in micro-units (0 without ledger entries)."""
        ...

    def ledger_sum(self, tenant: str) -> int:
        """The sum of the tenant's ledger, computed afresh (the balance must always equal it)."""
        ...

    def ledger_counts(self) -> dict[str, int]:
        """Ledger entries ever written, by kind, over every tenant (for the metrics: one small read)."""
        ...

    def credit(self, tenant: str, amount_micro: int, kind: str, ref: str, currency: str = "",
               topup: TopupPolicy | None = None) -> bool:
        """Add a ledger entry, idempotent on (tenant, kind, ref); False if it was already there.
        A debit that takes the balance across `topup.threshold_micro` opens one top-up."""
        ...

    def ledger(self, tenant: str, limit: int = 50, before_id: int = 0) -> list[LedgerEntry]:
        """The tenant's ledger entries, newest first (before_id > 0: older than that entry)."""
        ...

    def claim_topup(self, now: int, stale_s: int) -> tuple[Topup, CardRecord | None] | None:
        """Take the next due top-up for charging (or one whose charging worker died), with the card."""
        ...

    def finish_topup(self, topup_id: int, attempt: int, ok: bool, gateway_ref: str, reason: str,
                     retry_at: int | None) -> None:
        """Record the gateway's answer: credit the ledger once, or schedule a retry (None: give up)."""
        ...

    def topups(self, tenant: str, limit: int = 20) -> list[Topup]:
        ...

    def set_card(self, card: CardRecord) -> None:
        ...

    def card(self, tenant: str) -> CardRecord | None:
        ...

    def sandbox_charge(self, key: str, tenant: str, card_token: str, amount_micro: int, currency: str,
                       ok: bool, reason: str) -> tuple[bool, str, str]:
        """The sandbox gateway's record: the first outcome stored under `key` wins."""
        ...

    def rentals_since(self, tenant: str, numbers: list[str], today: str) -> dict[str, str]:
        """When each rented number was first seen in force (recorded now for new ones), ISO dates."""
        ...

    # -- documents ---------------------------------------------------------------
    def add_document_set(self, tenant: str, number: str, files: list[DocumentFile], uploaded_at: int,
                         due_on: str) -> DocumentSet:
        ...

    def review_document_set(self, set_id: int, approve: bool, reason: str, by: str, at: int) -> DocumentSet:
        """Approve or reject a pending set; NotFound if there is none, AlreadyReviewed if it was reviewed."""
        ...

    def document_sets(self, tenant: str, number: str = "", status: str = "", limit: int = 100
                      ) -> list[DocumentSet]:
        ...

    def approved_numbers(self, tenant: str) -> list[str]:
        """Numbers of the tenant with an approved document set."""
        ...

    def rejected_numbers(self, tenant: str) -> dict[str, str]:
        """Numbers of the tenant whose latest document set was rejected, and none approved: number -> the reason."""
        ...

    # -- security ----------------------------------------------------------------
    def add_token(self, ident: str, token_hash: str, role: str, tenants: list[str], expires_at: int,
                  comment: str) -> TokenRecord:
        ...

    def get_token(self, ident: str) -> TokenRecord | None:
        ...

    def list_tokens(self) -> list[TokenRecord]:
        ...

    def revoke_token(self, ident: str) -> TokenRecord:
        ...

    def add_audit(self, row: dict[str, Any]) -> None:
        """One audit row: token_id, role, tenant, action, object, version_before/after, result, detail."""
        ...

    def audit_rows(self, tenant: str = "", since: float = 0.0, limit: int = 100, action: str = "",
                   before_id: int = 0) -> list[AuditRow]:
        """Audit rows newest first, filtered by tenant, time, action; before_id > 0: older than that row."""
        ...

    # -- replicas ----------------------------------------------------------------
    def record_replicas(self, reports: Sequence[ReplicaReport], at: float | None = None) -> None:
        """Record replicas' reports, all in ONE write transaction (the gRPC side batches them); `at` is when
        they came (epoch seconds; None: now).

        Per (replica, tenant) row: an install sets version, checksum and
        installed_at and clears a refusal of that version or an older one; a
        refusal sets refused_version, refused_checksum, refused_reason and
        refused_at (the replica keeps what it had); both set peer, token_id
        and seen_at.  Reports may arrive late or twice, so recording is
        idempotent and never moves a row back: a report about a version older
        than the row's installed one changes no version (nor does a refusal of
        the installed version or of one older than the refusal recorded); a
        replay of the same report changes nothing but seen_at; an install of
        the installed version with another checksum (a rebuilt snapshot)
        takes that checksum.  peer, token_id and seen_at are the latest
        report's (one with an `at` before the row's seen_at leaves them).
        A report for a tenant that does not exist (no version in force) is
        ignored, not an error: the tenant may have just been removed.
        Every field is validated first (ValueError naming the field; nothing
        written): replica 1..128 characters without control characters, tenant
        a tenant id, version >= 1, checksum 64 hex digits (stored in lower
        case), installed a bool; reason clipped to 500 characters, peer and
        token_id to 128 (a NUL or a lone surrogate in them, which neither
        database stores, becomes U+FFFD).
        """
        ...

    def forget_replicas(self, replica: str, tenants: Sequence[str]) -> None:
        """The replica dropped these tenants (they were removed, or it no longer asks for them): their rows go
        (rows that are not there: nothing to do).  One write transaction."""
        ...

    def list_replicas(self, tenant: str = "", replica: str = "") -> list[ReplicaRecord]:
        """Rows filtered by tenant and/or replica ("" = any), ordered by replica then tenant, at most 10,000."""
        ...

    # -- tenants -----------------------------------------------------------------
    def remove_tenant(self, tenant: str, *, force: bool = False, dry_run: bool = False,
                      comment: str = "") -> TenantRemoval:
        """Remove a tenant for good, in one transaction (README "Removing a tenant").

        Deleted: settings versions, patches, snapshots, the version in force
        and the failover facts; number ownership (and conflicts); calls, their
        events and leads; rental dates; document sets (the caller deletes the
        files `document_files` names); the card on file; the account row;
        the replicas' rows (`list_replicas`).
        Kept: the ledger and the top-ups, renamed to `ledger_archive` (a name
        no tenant can have, so that a tenant made again with this id starts
        with no money and no references of the old one's); the audit log.
        Tenant-admin tokens lose the tenant (a token left with none is
        revoked).  One history row is written: version last + 1, kind
        "removed", no document, so that the version numbers of a tenant made
        again with this id go on from there and no worker can mistake its
        new versions for the old ones.

        NotFound when the tenant has no settings; TenantBusy (nothing
        changed) while it has calls ringing or answered or a balance that is
        not 0, unless `force`, and always while a top-up is being charged.
        `dry_run`: every check, and what would go, without writing.
        """
        ...

    def sweep_removed(self, tenant: str, removed_version: int) -> tuple[int, tuple[str, ...]]:
        """Some seconds after a removal: sweep, as the removal did, what workers that had not yet polled wrote for
        the tenant meanwhile (nothing if it was made again).  Returns (rows swept, document files no set names
        any more: the caller deletes them)."""
        ...

    def document_file_named(self, sha256: str) -> bool:
        """Whether any tenant's document set names this file (a removal deletes the files no set names)."""
        ...

    def close(self) -> None:
        ...
