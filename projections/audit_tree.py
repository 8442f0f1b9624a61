"""The audit tree: an RFC 9162 Merkle tree with one leaf per event of the log, in log order.

The leaf of an event is the hash of its entry as stored (``domain.model.audit_entry``): the
runner hands this projection the stored records (``reads_stored_events``), never decoded
events, so the tree does not depend on the code that reads the log.

Storage, in the read-model database:

* ``audit_tree_leaves``: one row per leaf (index, log position, leaf hash, and the
  originator and actor ``GET /v1/audit`` selects an account's entries by). Leaves 256k ..
  256k + 255 form the level-0 tile k of C2SP tlog-tiles.
* ``audit_tree_nodes``: the hash of every complete 256-leaf tile (level 8), of every
  complete 256-tile block of those (level 16), and so on: the upper tile levels. Any perfect
  subtree is folded from at most 128 rows of one level, so a proof reads O(log n) rows.
* ``audit_tree_heads``: the signed tree heads (``domain.app.audit_trail`` signs them).
* ``audit_tree_cursor``: how many leaves this pass over the log has verified (the tree size).

A rebuild (``aimarket audit replay``, a version bump) drops only the cursor. Leaves, nodes and
heads are the tree's memory of the log and are never rebuilt: the new pass recomputes every
leaf and compares it with the stored one, and the first event that differs (an edited byte,
a deleted, inserted or swapped event) stops the projection with ``tree_inconsistent`` naming
its position. So an edit of the log can never be folded into a new tree, and no head
inconsistent with an earlier one can be signed over it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from domain.model.audit_entry import stored_leaf_hash
from domain.model.errors import TreeInconsistent
from domain.model.merkle import EMPTY_ROOT, CompactRange, consistency_proof, inclusion_proof, range_hash
from domain.model.ports import Tx, ViewDB
from projections.base import Projection, lock_ddl

TILE_WIDTH = 256
TILE_HEIGHT = 8  # 2**8 = 256 hashes per tile
HEADS_LOCK_KEY = 7_346_112_014  # serialises head signing across hosts (PostgreSQL advisory lock)
APPEND = "INSERT INTO audit_tree_leaves VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
#: The buffered flush's new leaves: checked against every stored leaf they could meet (their
#: index and position ranges), so no conflict clause, and a long run goes by COPY (coalesce).
APPEND_NEW = "INSERT INTO audit_tree_leaves VALUES (?, ?, ?, ?, ?)"
PG_APPEND = (f"WITH appended AS ({APPEND} RETURNING leaf_index) UPDATE audit_tree_cursor SET tree_size = ?"  # noqa: S608 - constants only
             " WHERE id = 1 RETURNING (SELECT count(*) FROM appended) AS inserted")


class AuditTree(Projection):
    name = "audit_tree"
    version = 1
    event_types = ()  # every event
    tables = ("audit_tree_cursor",)  # the only table a rebuild drops (see the module docstring)
    reads_stored_events = True

    def __init__(self) -> None:
        self._tx: Tx | None = None  # the transaction the cached size belongs to
        self._size = 0
        self._held: list[tuple[Any, ...]] = []  # buffered only: the batch's leaf rows, not yet checked

    def ddl(self, dialect: str) -> list[str]:
        blob = "BYTEA" if dialect == "postgres" else "BLOB"
        return [
            "CREATE TABLE IF NOT EXISTS audit_tree_cursor (id INTEGER PRIMARY KEY, tree_size BIGINT NOT NULL)",
            "INSERT INTO audit_tree_cursor VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
            f"CREATE TABLE IF NOT EXISTS audit_tree_leaves (leaf_index BIGINT PRIMARY KEY, position BIGINT NOT NULL"
            f" UNIQUE, leaf_hash {blob} NOT NULL, originator_id TEXT NOT NULL, actor TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS audit_tree_leaves_actor ON audit_tree_leaves (actor, leaf_index)",
            "CREATE INDEX IF NOT EXISTS audit_tree_leaves_originator ON audit_tree_leaves (originator_id, leaf_index)",
            f"CREATE TABLE IF NOT EXISTS audit_tree_nodes (level INTEGER NOT NULL, node_index BIGINT NOT NULL,"
            f" hash {blob} NOT NULL, PRIMARY KEY (level, node_index))",
            f"CREATE TABLE IF NOT EXISTS audit_tree_heads (tree_size BIGINT PRIMARY KEY, timestamp_ms BIGINT NOT NULL"
            f" UNIQUE, root_hash {blob} NOT NULL, kid TEXT NOT NULL, note TEXT NOT NULL)",
        ]

    def process(self, event: Any, tx: Tx, position: int) -> None:  # every stored record, one handler
        if self._tx is not tx:  # a new transaction: read the size once, then keep it (write-through)
            self._tx, self._size, self._held = tx, tree_size(tx), []
        index = self._size
        leaf = stored_leaf_hash(position, event.originator_id, event.originator_version, event.topic, event.state)
        row = (index, position, leaf, str(event.originator_id), _actor(event.state))
        if self.buffered:  # checked and written with the batch's others in flush
            self._held.append(row)
            self._size = index + 1
            return
        if tx.dialect == "postgres":  # one round trip: the leaf and the cursor in one statement
            found = tx.fetchone(PG_APPEND, (*row, index + 1))
            inserted = int(found["inserted"]) if found else 0
        else:
            inserted = tx.execute(APPEND, row)
            tx.execute("UPDATE audit_tree_cursor SET tree_size = ? WHERE id = 1", (index + 1,))
        if inserted != 1:
            _check_stored_leaf(tx, index, position, leaf)
        self._size = index + 1
        _complete_tiles(tx, self._size)


    def flush(self, tx: Tx) -> None:
        """The batch's leaves (``buffered``): the stored leaves and tile hashes they meet read in
        one query each and checked in log order, as :func:`_check_stored_leaf` and
        :func:`_complete_tiles` check one; the new ones written in one run each at the end, the
        cursor moved once. A tile wholly in the batch is hashed from memory (each held leaf then
        equals the stored one, checked or to be written); any other tile, and a tile completing
        an upper level, first writes what is held back and takes the per-tile path."""
        held, self._held = self._held, []
        if not held or self._tx is not tx:
            return
        first, last = held[0][0], held[-1][0]
        stored = tx.fetchall("SELECT leaf_index, position, leaf_hash FROM audit_tree_leaves WHERE"
                             " (leaf_index >= ? AND leaf_index <= ?) OR (position >= ? AND position <= ?)",
                             (first, last, held[0][1], held[-1][1]))
        by_index = {int(r["leaf_index"]): r for r in stored}
        by_position = {int(r["position"]): int(r["leaf_index"]) for r in stored}
        nodes = {int(r["node_index"]): bytes(r["hash"]) for r in tx.fetchall(
            "SELECT node_index, hash FROM audit_tree_nodes WHERE level = ? AND node_index >= ? AND node_index <= ?",
            (TILE_HEIGHT, first // TILE_WIDTH, last // TILE_WIDTH))}
        new: list[tuple[Any, ...]] = []
        new_nodes: list[tuple[int, int, bytes]] = []
        for row in held:
            index, position, leaf = row[0], row[1], row[2]
            if index in by_index or position in by_position:  # an insert would conflict: must be this event
                _verify_leaf(by_index.get(index), by_position.get(position), index, position, leaf)
            else:
                new.append(row)
            size = index + 1
            if size % TILE_WIDTH:
                continue
            if size - TILE_WIDTH >= first and size % (TILE_WIDTH * TILE_WIDTH):
                tile = [r[2] for r in held[size - TILE_WIDTH - first:size - first]]
                _check_tile(nodes.get(size // TILE_WIDTH - 1), size // TILE_WIDTH - 1, tile, new_nodes)
            else:  # the tile reads stored leaves, or an upper level reads stored tiles: all written first
                _write_held(tx, new, new_nodes)
                tile = [r[2] for r in held[size - TILE_WIDTH - first:size - first]] \
                    if size - TILE_WIDTH >= first else None
                _complete_tiles(tx, size, tile)
        _write_held(tx, new, new_nodes)
        tx.execute("UPDATE audit_tree_cursor SET tree_size = ? WHERE id = 1", (last + 1,))


def _check_tile(stored: bytes | None, node_index: int, tile: list[bytes], new_nodes: list[tuple[int, int, bytes]]
                ) -> None:
    """A level-0 tile hashed from memory: equal to its stored hash, or held back to be written."""
    digest = CompactRange.of(tile).root()
    if stored is None:
        new_nodes.append((TILE_HEIGHT, node_index, digest))
    elif stored != digest:
        raise TreeInconsistent(f"the stored tile hash at level {TILE_HEIGHT}, index {node_index} differs from its "
                               "leaves")


def _write_held(tx: Tx, leaves: list[tuple[Any, ...]], nodes: list[tuple[int, int, bytes]]) -> None:
    """Write (and empty) the held-back new leaves and tile hashes, none stored yet (checked)."""
    if leaves:
        tx.executemany(APPEND_NEW, leaves)
        leaves.clear()
    if nodes:
        tx.executemany("INSERT INTO audit_tree_nodes VALUES (?, ?, ?) ON CONFLICT DO NOTHING", nodes)
        nodes.clear()


def _actor(state: bytes) -> str:
    """``meta.actor`` read from the stored JSON (no decoding of the event), or ''."""
    try:
        meta = json.loads(state).get("meta")
        actor = meta.get("actor") if isinstance(meta, dict) else ""
    except (ValueError, AttributeError, TypeError):
        return ""
    return actor if isinstance(actor, str) else ""


def _check_stored_leaf(tx: Tx, index: int, position: int, leaf: bytes) -> None:
    """The leaf exists from an earlier pass: it must be this very event."""
    row = tx.fetchone("SELECT position, leaf_hash FROM audit_tree_leaves WHERE leaf_index = ?", (index,))
    other = None
    if row is None:
        found = tx.fetchone("SELECT leaf_index FROM audit_tree_leaves WHERE position = ?", (position,))
        other = None if found is None else int(found["leaf_index"])
    _verify_leaf(row, other, index, position, leaf)


def _verify_leaf(row: dict[str, Any] | None, other_index: int | None, index: int, position: int,
                 leaf: bytes) -> None:
    """Leaf ``index`` is stored as ``row`` (or not, and ``position`` is leaf ``other_index``):
    it must be this very event, else the first difference is named (the one decision both the
    per-event and the batch path take)."""
    if row is None:  # the position is taken by another leaf index: an event was inserted before it
        raise TreeInconsistent(f"position {position}: the tree recorded this position as leaf "
                               f"{other_index if other_index is not None else '?'}, the log now has it as leaf "
                               f"{index}", position=position)
    if int(row["position"]) != position:
        stored = int(row["position"])
        raise TreeInconsistent(
            f"position {min(stored, position)}: the tree recorded position {stored} as leaf {index}, the log now "
            f"has position {position} there (an event deleted, inserted or moved)", position=min(stored, position))
    if bytes(row["leaf_hash"]) != leaf:
        raise TreeInconsistent(f"position {position}: the event differs from the one the tree recorded as leaf "
                               f"{index}", position=position)


def _complete_tiles(tx: Tx, size: int, leaves: list[bytes] | None = None) -> None:
    """When ``size`` completes a tile (and maybe the tiles above it), store its hash
    (``leaves``: the hashes of its last 256 leaves, when the caller holds them)."""
    level, width = TILE_HEIGHT, TILE_WIDTH
    while size % width == 0:
        node_index = size // width - 1
        below = leaves if level == TILE_HEIGHT and leaves is not None else \
            _hashes(tx, level - TILE_HEIGHT, node_index * TILE_WIDTH, TILE_WIDTH)
        digest = CompactRange.of(below).root()
        if tx.execute("INSERT INTO audit_tree_nodes VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                      (level, node_index, digest)) != 1:
            row = tx.fetchone("SELECT hash FROM audit_tree_nodes WHERE level = ? AND node_index = ?", (level, node_index))
            if row is None or bytes(row["hash"]) != digest:
                raise TreeInconsistent(f"the stored tile hash at level {level}, index {node_index} differs from its "
                                       "leaves")
        level, width = level + TILE_HEIGHT, width * TILE_WIDTH


def _hashes(tx: Tx, level: int, start: int, count: int) -> list[bytes]:
    """``count`` consecutive hashes of one stored level (0: the leaves) from ``start``."""
    if level == 0:
        rows = tx.fetchall("SELECT leaf_hash AS h FROM audit_tree_leaves WHERE leaf_index >= ? AND leaf_index < ?"
                           " ORDER BY leaf_index", (start, start + count))
    else:
        rows = tx.fetchall("SELECT hash AS h FROM audit_tree_nodes WHERE level = ? AND node_index >= ?"
                           " AND node_index < ? ORDER BY node_index", (level, start, start + count))
    if len(rows) != count:
        raise TreeInconsistent(f"the stored tree lacks hashes at level {level} from index {start}")
    return [bytes(r["h"]) for r in rows]


def tree_size(tx: Tx) -> int:
    row = tx.fetchone("SELECT tree_size FROM audit_tree_cursor WHERE id = 1")
    return int(row["tree_size"]) if row else 0


class TreeView:
    """The stored tree inside one transaction: sizes, roots, proofs, leaves and heads."""

    def __init__(self, tx: Tx) -> None:
        self.tx = tx

    def size(self) -> int:
        return tree_size(self.tx)

    def leaf_count(self) -> int:
        """Every leaf ever recorded (past the cursor while a rebuild re-verifies them)."""
        row = self.tx.fetchone("SELECT MAX(leaf_index) AS top FROM audit_tree_leaves")
        return 0 if row is None or row["top"] is None else int(row["top"]) + 1

    def perfect(self, level: int, index: int) -> bytes:
        stratum = level - level % TILE_HEIGHT
        rise = level - stratum
        return CompactRange.of(_hashes(self.tx, stratum, index << rise, 1 << rise)).root()

    def root(self, size: int) -> bytes:
        return EMPTY_ROOT if size == 0 else range_hash(self.perfect, 0, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return inclusion_proof(self.perfect, index, size)

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        return consistency_proof(self.perfect, size1, size2)

    def leaf_at(self, position: int) -> dict[str, Any] | None:
        return self.tx.fetchone("SELECT * FROM audit_tree_leaves WHERE position = ?", (position,))

    def leaves(self, *, after_position: int, limit: int, actors: Sequence[str] | None = None,
               originator_id: str | None = None, below_index: int | None = None) -> list[dict[str, Any]]:
        """Leaves in log order after a position; ``actors``/``originator_id`` select an account's
        own (either matches); ``below_index`` stops at a tree size."""
        sql, params = "SELECT * FROM audit_tree_leaves WHERE position > ?", [after_position]
        if below_index is not None:
            sql += " AND leaf_index < ?"
            params.append(below_index)
        if actors is not None:
            marks = ", ".join("?" for _ in actors) or "NULL"
            sql += f" AND (actor IN ({marks}) OR originator_id = ?)"
            params += [*actors, originator_id or ""]
        return self.tx.fetchall(sql + " ORDER BY leaf_index LIMIT ?", (*params, limit))

    def all_leaf_hashes(self, size: int, batch: int = 10_000) -> Iterator[tuple[int, bytes]]:
        """(position, leaf hash) of leaves 0 .. size - 1, in order."""
        for start in range(0, size, batch):
            rows = self.tx.fetchall("SELECT position, leaf_hash FROM audit_tree_leaves WHERE leaf_index >= ?"
                                    " AND leaf_index < ? ORDER BY leaf_index", (start, min(size, start + batch)))
            for r in rows:
                yield int(r["position"]), bytes(r["leaf_hash"])

    def heads(self, *, after_size: int = -1, limit: int = 1000) -> list[dict[str, Any]]:
        return self.tx.fetchall("SELECT * FROM audit_tree_heads WHERE tree_size > ? ORDER BY tree_size LIMIT ?",
                                (after_size, limit))

    def head(self, size: int) -> dict[str, Any] | None:
        return self.tx.fetchone("SELECT * FROM audit_tree_heads WHERE tree_size = ?", (size,))

    def latest_head(self) -> dict[str, Any] | None:
        return self.tx.fetchone("SELECT * FROM audit_tree_heads ORDER BY tree_size DESC LIMIT 1")

    def add_head(self, size: int, timestamp_ms: int, root: bytes, kid: str, note: str) -> None:
        self.tx.execute("INSERT INTO audit_tree_heads VALUES (?, ?, ?, ?, ?)", (size, timestamp_ms, root, kid, note))


class TreeStore:
    """Opens :class:`TreeView` transactions on the read-model database (what the audit service uses)."""

    def __init__(self, views: ViewDB) -> None:
        self.views = views  # nothing is opened here: resources are built before any request
        self._ready = False

    def _create(self) -> None:
        """The tables exist even before the runner first ran (idempotent, once per store)."""
        with self.views.transaction() as tx:
            lock_ddl(tx)
            for statement in AuditTree().ddl(tx.dialect):
                tx.execute(statement)
        self._ready = True

    @contextmanager
    def view(self, *, lock_heads: bool = False) -> Iterator[TreeView]:
        """One transaction; ``lock_heads`` serialises head signing across hosts."""
        if not self._ready:
            self._create()
        with self.views.transaction() as tx:
            if lock_heads and tx.dialect == "postgres":
                tx.execute("SELECT pg_advisory_xact_lock(?)", (HEADS_LOCK_KEY,))
            yield TreeView(tx)
