"""The audit trail (issue 13): signed tree heads over the audit tree, proofs and exports.

The tree itself is a projection (``projections/audit_tree.py``), reached here through the
store handed in (typed by :class:`TreeStorePort`, so this floor imports no projection). This
service adds what needs the platform key or the log:

* ``sign_head``: every ``every_events`` new leaves or ``every_s`` seconds (whichever first),
  a head over the whole verified tree, signed with the platform's current Ed25519 signing
  key (a rotation switches heads to the new key at once; earlier heads stay valid under the
  key that signed them). Before it signs, the tree must still give the root of the last head
  (never two inconsistent heads), and the timestamp is strictly later than the last one.
  One signer at a time across hosts (an advisory lock on PostgreSQL, SQLite's single writer).
* proofs: an entry's inclusion proof against the latest head, consistency between two
  heads, an account's own entries with their proofs; each one a self-contained bundle a
  third party checks with the hub's public key only (``domain.model.audit_entry``).
* ``export``: every entry up to the latest head, read from the event store, with every head.

Entries are read from the event store, not from a read model: a proof of an entry that was
edited after the tree recorded it fails at the verifier.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import structlog

from domain.app.service import Service
from domain.model.audit_entry import (
    BUNDLE_VERSION,
    EXPORT_TYPE,
    consistency_bundle,
    entry_of,
    inclusion_bundle,
)
from domain.model.errors import NotFound, TreeHeadNotFound, TreeInconsistent, Unavailable
from domain.model.keys import SigningKey, VerifyKey
from domain.model.tree_head import SignedTreeHead, TreeHead, parse_checkpoint, sign_head, split_note, verifier_key

if TYPE_CHECKING:
    from domain.app.marketplace import Marketplace

log = structlog.get_logger("audit")
PAGE_MAX = 100
PENDING_TYPE = "aimarket.audit.pending_entry"  # an entry the latest head does not cover yet
READ_BATCH = 1000


@dataclass(frozen=True)
class HeadPolicy:
    """When to sign: after ``every_events`` new entries or ``every_s`` seconds with new entries."""

    every_events: int = 1000
    every_s: int = 60


class TreeViewPort(Protocol):
    """What this service reads and writes of the stored tree, in one transaction."""

    def size(self) -> int: ...
    def leaf_count(self) -> int: ...
    def root(self, size: int) -> bytes: ...
    def inclusion_proof(self, index: int, size: int) -> list[bytes]: ...
    def consistency_proof(self, size1: int, size2: int) -> list[bytes]: ...
    def leaf_at(self, position: int) -> dict[str, Any] | None: ...
    def leaves(self, *, after_position: int, limit: int, actors: list[str] | None = None,
               originator_id: str | None = None, below_index: int | None = None) -> list[dict[str, Any]]: ...
    def heads(self, *, after_size: int = -1, limit: int = 1000) -> list[dict[str, Any]]: ...
    def head(self, size: int) -> dict[str, Any] | None: ...
    def latest_head(self) -> dict[str, Any] | None: ...
    def add_head(self, size: int, timestamp_ms: int, root: bytes, kid: str, note: str) -> None: ...


class TreeStorePort(Protocol):
    def view(self, *, lock_heads: bool = False) -> AbstractContextManager[TreeViewPort]: ...


def signed_head_of(row: dict[str, Any]) -> SignedTreeHead:
    """A stored head row as a :class:`SignedTreeHead` (its note is re-parsed, not trusted)."""
    text, _ = split_note(row["note"])
    return SignedTreeHead(head=parse_checkpoint(text), note=row["note"], kid=row["kid"])


class AuditTrail(Service):
    """Heads, proofs and exports over the audit tree (see the module docstring)."""

    def __init__(self, market: Marketplace, store: TreeStorePort, policy: HeadPolicy | None = None) -> None:
        super().__init__(market)
        self.store = store
        self.policy = policy or HeadPolicy()

    # -- keys ------------------------------------------------------------------------------
    @property
    def origin(self) -> str:
        """The log's name in its checkpoints: the hub's host (and port) and ``/audit``."""
        parts = urlsplit(self.hub_url)
        return f"{parts.netloc or parts.path}/audit"

    def public_key(self, kid: str) -> VerifyKey:
        return VerifyKey.from_bytes(bytes(self.secrets.signing_key(kid).verify_key))

    def signing_keys(self) -> dict[str, VerifyKey]:
        """Every platform signing key so far (``signing-1`` .. the current one), by key id."""
        current = self.keyring(fresh=True).current("signing")
        count = int(current.rsplit("-", 1)[1])
        return {f"signing-{n}": self.public_key(f"signing-{n}") for n in range(1, count + 1)}

    def key_document(self) -> dict[str, Any]:
        """What a verifier needs: each key id with its multibase key and C2SP verifier key."""
        return {kid: {"public_key": key.to_multibase(), "verifier_key": verifier_key(self.origin, key)}
                for kid, key in self.signing_keys().items()}

    # -- heads -----------------------------------------------------------------------------
    def sign_head(self, *, force: bool = False) -> SignedTreeHead | None:
        """Sign a head over the whole tree if one is due (or ``force``); None if nothing to sign.

        Raises:
            TreeInconsistent: the tree no longer gives the last head's root (nothing is signed).
        """
        now_ms = int(self.clock().timestamp() * 1000)
        kid = self.keyring(fresh=True).current("signing")
        with self.store.view(lock_heads=True) as tree:
            size, last = tree.size(), tree.latest_head()
            last_size = int(last["tree_size"]) if last else 0
            if size == 0 or size <= last_size:
                return None  # nothing new (or a rebuild has not caught up with the last head yet)
            if last is not None and not force and not self._due(size - last_size, now_ms - int(last["timestamp_ms"])):
                return None
            if last is not None and tree.root(last_size) != bytes(last["root_hash"]):
                raise TreeInconsistent(f"the tree no longer gives the root of the signed head of size {last_size}")
            timestamp_ms = max(now_ms, int(last["timestamp_ms"]) + 1) if last else now_ms
            head = TreeHead(origin=self.origin, tree_size=size, root_hash=tree.root(size), timestamp_ms=timestamp_ms)
            signed = sign_head(head, SigningKey.from_seed(bytes(self.secrets.signing_key(kid))), kid)
            tree.add_head(size, timestamp_ms, head.root_hash, kid, signed.note)
        log.info("audit.tree_head_signed", tree_size=size, kid=kid, timestamp_ms=timestamp_ms)
        return signed

    def _due(self, new_entries: int, elapsed_ms: int) -> bool:
        return new_entries >= self.policy.every_events or elapsed_ms >= self.policy.every_s * 1000

    def heads(self, *, after_size: int = -1, limit: int = PAGE_MAX) -> list[SignedTreeHead]:
        with self.store.view() as tree:
            return [signed_head_of(r) for r in tree.heads(after_size=after_size, limit=limit)]

    def latest_head(self) -> SignedTreeHead:
        with self.store.view() as tree:
            row = tree.latest_head()
        if row is None:
            raise TreeHeadNotFound("no tree head has been signed yet")
        return signed_head_of(row)

    # -- proofs ----------------------------------------------------------------------------
    def consistency(self, size1: int, size2: int) -> dict[str, Any]:
        """The consistency bundle between the signed heads of ``size1`` and ``size2``."""
        with self.store.view() as tree:
            first, second = tree.head(size1), tree.head(size2)
            if first is None or second is None:
                raise TreeHeadNotFound(f"no signed tree head of size {size1 if first is None else size2}")
            if size1 > size2:
                first, second, size1, size2 = second, first, size2, size1
            self._check_covered(tree, size2)
            proof = tree.consistency_proof(size1, size2) if size1 < size2 else []
        return consistency_bundle(signed_head_of(first), signed_head_of(second), proof)

    def proof(self, position: int) -> dict[str, Any]:
        """The inclusion bundle of the entry at ``position`` against the latest head."""
        head = self.latest_head()
        with self.store.view() as tree:
            leaf = tree.leaf_at(position)
            if leaf is None or int(leaf["leaf_index"]) >= head.head.tree_size:
                raise NotFound(f"no entry at position {position} under the latest signed head")
            self._check_covered(tree, head.head.tree_size)
            proof = tree.inclusion_proof(int(leaf["leaf_index"]), head.head.tree_size)
        return inclusion_bundle(self._entry(position), int(leaf["leaf_index"]), head, proof)

    def entries(self, *, actors: list[str] | None, originator_id: str | None, after_position: int,
                limit: int) -> dict[str, Any]:
        """A page of entries in log order, each with its inclusion bundle against the latest
        head (entries after it have ``proof: null`` until the next head). ``actors`` None: all."""
        try:
            head: SignedTreeHead | None = self.latest_head()
        except TreeHeadNotFound:
            head = None
        size = head.head.tree_size if head else 0
        items = []
        with self.store.view() as tree:
            rows = tree.leaves(after_position=after_position, limit=min(limit, PAGE_MAX), actors=actors,
                               originator_id=originator_id)
            covered = [r for r in rows if int(r["leaf_index"]) < size]
            if covered:
                self._check_covered(tree, size)
            proofs = {int(r["leaf_index"]): tree.inclusion_proof(int(r["leaf_index"]), size) for r in covered}
        for row in rows:
            index, position = int(row["leaf_index"]), int(row["position"])
            entry = self._entry(position)
            if index in proofs and head is not None:
                items.append({"position": position, **inclusion_bundle(entry, index, head, proofs[index])})
            else:
                items.append({"position": position, "type": PENDING_TYPE, "version": BUNDLE_VERSION, "entry": entry,
                              "leaf_index": index, "proof": None})
        return {"tree_head": head.as_dict() if head else None, "items": items,
                "next_after": items[-1]["position"] if items else after_position}

    def _check_covered(self, tree: TreeViewPort, size: int) -> None:
        # Stored leaves are never rewritten (a rebuild re-verifies them), so proofs up to a
        # signed size come from them even while a rebuild's cursor is behind.
        if tree.leaf_count() < size:
            raise Unavailable("the audit tree does not hold the leaves of its latest head yet; retry shortly")

    def _entry(self, position: int) -> dict[str, Any]:
        found = self.market.recorder.select_notifications(start=position, limit=1, inclusive_of_start=True)
        if not found or found[0].id != position:
            raise NotFound(f"the event at position {position} is no longer in the log")
        n = found[0]
        return entry_of(n.id, n.originator_id, n.originator_version, n.topic, n.state)

    # -- export ----------------------------------------------------------------------------
    def export(self, write: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Write the header, every entry up to the latest head (from the event store) and
        every head right after the entry that completes it; return what was written."""
        heads = self._all_heads()
        if not heads:
            raise TreeHeadNotFound("no tree head has been signed yet: nothing to export")
        target = heads[-1].head.tree_size
        write({"type": EXPORT_TYPE, "version": BUNDLE_VERSION, "origin": self.origin, "hub_url": self.hub_url,
               "tree_size": target, "keys": self.key_document()})
        pending = iter(heads)
        upcoming = next(pending, None)
        count = 0
        for n in self._log():
            if count >= target:
                break
            write({"type": "entry", "leaf_index": count,
                   "entry": entry_of(n.id, n.originator_id, n.originator_version, n.topic, n.state)})
            count += 1
            while upcoming is not None and upcoming.head.tree_size == count:
                write({"type": "tree_head", **upcoming.as_dict()})
                upcoming = next(pending, None)
        return {"entries": count, "heads": len(heads), "tree_size": target}

    def _all_heads(self) -> list[SignedTreeHead]:
        heads, after = [], -1
        while page := self.heads(after_size=after, limit=1000):
            heads += page
            after = page[-1].head.tree_size
        return heads

    def _log(self) -> Iterator[Any]:
        position = 0
        while batch := self.market.recorder.select_notifications(start=position, limit=READ_BATCH,
                                                                 inclusive_of_start=False):
            yield from batch
            position = batch[-1].id


def run_head_signer(trail: AuditTrail, stop: threading.Event, poll_s: float = 1.0) -> None:
    """Sign heads as they fall due until ``stop`` (a worker's thread); never dies on an error."""
    while not stop.is_set():
        try:
            trail.sign_head()
        except TreeInconsistent as exc:
            log.error("audit.tree_head_refused", error=exc.detail)
        except Exception as exc:  # noqa: BLE001 - the next round retries; the error is logged
            log.warning("audit.tree_head_failed", error=repr(exc))
        stop.wait(poll_s)
