"""Prefix affinity for routing requests over replicas: which replica most likely holds a prompt's KV prefix.

Owns: `prefix_key(tokens)` -- chained hashes of a prompt's leading token blocks (block i's hash covers every
token before it, so equal hashes mean equal prefixes); `AffinityTable` -- per replica, a bounded LRU set of the
block hashes routed to it; and `prefer()`, the rule: the replica with the longest matching prefix wins unless its
queue is longer than the shortest queue by more than `imbalance`, in which case the caller falls back to the least
loaded replica.
Must not: import Ray (router.py adapts this to Ray Serve's RequestRouter) or know HTTP.
"""

from __future__ import annotations

from collections import OrderedDict

BLOCK = 16  # tokens per hashed block: a shared prefix shorter than this is not worth routing for
MAX_BLOCKS = 256  # hash at most the first 4096 prompt tokens
TABLE_SIZE = 8192  # block hashes remembered per replica (LRU)


def prefix_key(tokens, block: int = BLOCK, max_blocks: int = MAX_BLOCKS) -> list[int]:
    """Chained hashes of the complete leading blocks of `tokens` (Python's tuple-of-int hash is the same in every
    process: ints are not salted)."""
    out: list[int] = []
    h = 0
    n = min(len(tokens) // block, max_blocks)
    for i in range(n):
        h = hash((h, tuple(int(t) for t in tokens[i * block:(i + 1) * block])))
        out.append(h)
    return out


class AffinityTable:
    """replica id -> the block hashes routed to it, most recent last."""

    def __init__(self, size: int = TABLE_SIZE):
        self.size = size
        self.tables: dict[str, OrderedDict] = {}

    def record(self, replica: str, key: list[int]) -> None:
        t = self.tables.setdefault(replica, OrderedDict())
        for h in key:
            t[h] = None
            t.move_to_end(h)
        while len(t) > self.size:
            t.popitem(last=False)

    def match(self, replica: str, key: list[int]) -> int:
        """How many leading blocks of `key` this replica has seen."""
        t = self.tables.get(replica)
        if not t:
            return 0
        n = 0
        for h in key:
            if h not in t:
                break
            n += 1
        return n

    def drop(self, replica: str) -> None:
        self.tables.pop(replica, None)

    def keep_only(self, replicas) -> None:
        alive = set(replicas)
        for r in [r for r in self.tables if r not in alive]:
            del self.tables[r]


def prefer(table: AffinityTable, key: list[int], candidates: list[str], queue_len: dict, imbalance: int) -> str | None:
    """The candidate to send `key` to for its prefix, or None (no match, or the holder is overloaded: route to the
    least loaded). `queue_len[r]` may be missing (unknown: treated as not overloaded)."""
    if not key or not candidates:
        return None
    best, best_n = None, 0
    for r in candidates:
        n = table.match(r, key)
        if n > best_n:
            best, best_n = r, n
    if best is None:
        return None
    known = [queue_len[r] for r in candidates if queue_len.get(r) is not None]
    q = queue_len.get(best)
    if q is not None and known and q - min(known) > imbalance:
        return None
    return best
