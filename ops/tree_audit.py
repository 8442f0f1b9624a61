"""The audit tree checked against the log itself (part of ``aimarket audit verify``).

``TreeAudit.feed`` takes every stored record of the log, in order, during the verify walk and
recomputes its leaf (``domain.model.audit_entry``): nothing here reads a read model that a
replay rebuilds. At the end, ``report`` compares

* the recomputed tree with **every signed head**: its signature under the platform key it
  names, that key's validity at the head's time (from the keyring's own events: a rotation
  starts the new key, the old one is honoured for its grace period), timestamps strictly
  increasing, sizes never decreasing, and the root the log gives at the head's size;
* the recomputed leaves with the **stored leaves** (which a replay re-verifies but never
  rebuilds), leaf by leaf, naming the first log position that differs: an edited event, a
  deleted, inserted or moved one. The stored leaves are themselves checked against the
  signed heads, so an edit of both the log and the stored tree is still caught by the heads
  (at the precision of the heads: the interval between the last matching head and the first
  failing one);
* every **sealed snapshot**: its seal, and that the log position it is bound to holds the
  event (aggregate, version) it claims to reflect.
"""

from __future__ import annotations

from typing import Any

from domain.app.eventsourcing_ext import SNAPSHOT_KEY_INFO, SnapshotRefused, open_snapshot, snapshot_records
from domain.model.audit_entry import stored_leaf_hash
from domain.model.errors import TreeHeadInvalid
from domain.model.keyring import KEYRING_ID
from domain.model.keys import VerifyKey
from domain.model.merkle import CompactRange
from domain.model.tree_head import TreeHead, check_successor, open_head
from projections.audit_tree import TreeStore

KEY_SKEW_MS = 60_000  # a head may carry a timestamp this much before its key's first event
LEAF_BATCH = 10_000


class TreeAudit:
    """Recomputes the tree during the walk; ``report`` compares it with heads, leaves, snapshots."""

    def __init__(self, market: Any, views: Any) -> None:
        self.market = market
        self.store = TreeStore(views)
        with self.store.view() as tree:  # read before the walk: the log only grows after it
            self.heads = tree.heads(limit=10**9)
            self.verified = tree.size()  # this pass's cursor: a failing replay stops it at the edit
            self.recorded = tree.leaf_count()  # every leaf ever recorded (a replay re-verifies, never drops them)
        self.log_tree = CompactRange()
        self.problems: list[str] = []
        self.first_difference: str | None = None
        self._stored = self._stored_leaves()
        self._next_head = 0
        self._roots: dict[int, bytes] = {}  # head size -> the root the log gives
        self.key_windows: dict[str, list[int | None]] = {}  # kid -> [valid from ms, valid until ms]

    # -- the walk ------------------------------------------------------------------------------
    def feed(self, notification: Any, event: Any | None) -> None:
        """One stored record (and its decoded event, or None when it does not decode)."""
        n = notification
        leaf = stored_leaf_hash(n.id, n.originator_id, n.originator_version, n.topic, n.state)
        index = self.log_tree.size
        self.log_tree.append(leaf)
        self._compare_with_stored(index, n.id, leaf)
        while self._next_head < len(self.heads) and int(self.heads[self._next_head]["tree_size"]) == self.log_tree.size:
            self._roots[self.log_tree.size] = self.log_tree.root()
            self._next_head += 1
        if event is not None and n.originator_id == KEYRING_ID:
            self._keyring(event)

    def _compare_with_stored(self, index: int, position: int, leaf: bytes) -> None:
        if self.first_difference is not None or index >= self.recorded:
            return
        stored = next(self._stored, None)
        if stored is None:
            return
        stored_position, stored_leaf = stored
        if stored_position != position:
            first = min(stored_position, position)
            self.first_difference = (f"position {first}: the tree recorded position {stored_position} as leaf {index}, "
                                     f"the log has position {position} there (an event deleted, inserted or moved)")
        elif stored_leaf != leaf:
            self.first_difference = f"position {position}: the event differs from the one the tree recorded as leaf {index}"

    def _keyring(self, event: Any) -> None:
        at_ms = int(event.timestamp.timestamp() * 1000)
        kind = type(event).__name__
        if kind == "Created":
            self.key_windows["signing-1"] = [at_ms, None]
        elif kind == "Rotated" and getattr(event, "purpose", "") == "signing":
            for window in self.key_windows.values():
                if window[1] is None:
                    window[1] = int(event.previous_valid_until_s) * 1000
            self.key_windows[event.new_kid] = [at_ms, None]

    def _stored_leaves(self) -> Any:
        """(position, leaf hash) of the stored leaves, one short transaction per batch."""
        for start in range(0, self.recorded, LEAF_BATCH):
            with self.store.view() as tree:
                rows = tree.tx.fetchall("SELECT position, leaf_hash FROM audit_tree_leaves WHERE leaf_index >= ?"
                                        " AND leaf_index < ? ORDER BY leaf_index",
                                        (start, min(self.recorded, start + LEAF_BATCH)))
            for r in rows:
                yield int(r["position"]), bytes(r["leaf_hash"])

    # -- the comparison ------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        previous: TreeHead | None = None
        stored_roots = self._stored_roots()
        for row in self.heads:
            previous = self._check_head(row, previous, stored_roots)
        if self.first_difference:
            self.problems.insert(0, f"audit tree: {self.first_difference}")
        snapshots = self._check_snapshots()
        last = int(self.heads[-1]["tree_size"]) if self.heads else 0
        return {"ok": not self.problems, "log_entries": self.log_tree.size, "recorded_leaves": self.recorded,
                "verified_leaves": self.verified,
                "signed_heads": len(self.heads), "signed_size": last, "unsigned_entries": max(0, self.log_tree.size - last),
                "first_difference": self.first_difference, "snapshots": snapshots, "problems": self.problems}

    def _check_head(self, row: dict[str, Any], previous: TreeHead | None, stored_roots: dict[int, bytes]
                    ) -> TreeHead | None:
        size, kid = int(row["tree_size"]), row["kid"]
        name = f"signed tree head of size {size}"
        try:
            head, _key = open_head(row["note"], [self._key(kid)])
        except TreeHeadInvalid as exc:
            self.problems.append(f"audit tree: {name}: {exc.detail} (key {kid})")
            return previous
        if head.tree_size != size or head.root_hash != bytes(row["root_hash"]):
            self.problems.append(f"audit tree: {name}: the stored row does not match its signed note")
        window = self.key_windows.get(kid)
        if window is None or head.timestamp_ms < window[0] - KEY_SKEW_MS or (window[1] is not None
                                                                              and head.timestamp_ms >= window[1]):
            self.problems.append(f"audit tree: {name}: signed by {kid}, which was not a valid signing key at "
                                 f"{head.timestamp_ms} ms")
        if previous is not None:
            try:
                check_successor(previous, head)
            except TreeHeadInvalid as exc:
                self.problems.append(f"audit tree: {name}: {exc.detail}")
        log_root = self._roots.get(size)
        if log_root is None:
            self.problems.append(f"audit tree: {name}: the log holds only {self.log_tree.size} events")
        elif log_root != head.root_hash:
            where = self.first_difference or "the stored leaves were changed too; see the heads before this one"
            self.problems.append(f"audit tree: {name}: the log no longer gives its root ({where})")
        if size in stored_roots and stored_roots[size] != head.root_hash:
            self.problems.append(f"audit tree: {name}: the stored leaves no longer give its root (the stored tree "
                                 "was edited)")
        return head

    def _stored_roots(self) -> dict[int, bytes]:
        sizes = {int(r["tree_size"]) for r in self.heads if int(r["tree_size"]) <= self.recorded}
        compact, roots = CompactRange(), {}
        for _position, leaf in self._stored_leaves_fresh():
            compact.append(leaf)
            if compact.size in sizes:
                roots[compact.size] = compact.root()
        return roots

    def _stored_leaves_fresh(self) -> Any:
        self._stored = iter(())  # the comparison pass is over
        return self._stored_leaves()

    def _key(self, kid: str) -> VerifyKey:
        return VerifyKey.from_bytes(bytes(self.market.secrets.signing_key(kid).verify_key))

    def _check_snapshots(self) -> dict[str, Any]:
        key = self.market.secrets.derive(SNAPSHOT_KEY_INFO)
        checked = 0
        for record in snapshot_records(self.market.snapshots.recorder):
            checked += 1
            name = f"snapshot of {record.originator_id} version {record.originator_version}"
            try:
                _inner, position = open_snapshot(key, record)
            except SnapshotRefused as exc:
                self.problems.append(f"{name}: refused, {exc.reason}; loads rebuild it from its events")
                continue
            found = self.market.recorder.select_notifications(start=position, limit=1, inclusive_of_start=True)
            if not found or found[0].id != position or (found[0].originator_id, found[0].originator_version) != (
                    record.originator_id, record.originator_version):
                self.problems.append(f"{name}: bound to position {position}, which holds another event")
        return {"checked": checked}
