"""RFC 9162 Merkle tree hashing, proofs and proof verification: pure functions, no I/O.

A node (level, k) is the root of the complete subtree over leaves [k·2^level, (k+1)·2^level).
The log stores each complete subtree's hash once it exists (about two per leaf), so any proof
for any tree size is assembled from O(log n) stored hashes: `inclusion_ranges` and
`consistency_ranges` name the subtrees a proof is made of (RFC 9162 §2.1.3.1 and §2.1.4.1),
`nodes_for` lists the stored hashes they need, and `range_hash` folds those into each subtree's
hash. Verification (§2.1.3.2 and §2.1.4.2) is written from the RFC's text and shares nothing
with the generation side.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()  # MTH({}) of RFC 9162 §2.1.1

Node = tuple[int, int]  # (level, k)
Range = tuple[int, int]  # leaves [lo, hi)


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Return the largest power of two smaller than n (n > 1): where MTH splits n leaves."""
    return 1 << ((n - 1).bit_length() - 1)


def subtrees(lo: int, hi: int) -> list[Node]:
    """Cover leaves [lo, hi) with maximal complete subtrees, left to right.

    For a range that is itself a subtree of some tree (lo a multiple of the split of hi - lo),
    these are the pieces MTH splits it into, so folding them right to left gives its hash.
    """
    out = []
    while lo < hi:
        level = (hi - lo).bit_length() - 1
        if lo:
            level = min(level, (lo & -lo).bit_length() - 1)  # lo's alignment
        out.append((level, lo >> level))
        lo += 1 << level
    return out


def range_hash(lo: int, hi: int, hashes: Mapping[Node, bytes]) -> bytes:
    """Return MTH of leaves [lo, hi) from the stored hashes of its complete subtrees."""
    nodes = subtrees(lo, hi)
    h = hashes[nodes[-1]]
    for node in reversed(nodes[:-1]):
        h = node_hash(hashes[node], h)
    return h


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """Return the subtrees whose hashes make the audit path PATH(index, D[0:size]), leaf upward."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size}")
    path, lo, hi = [], 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append((lo + k, hi))
            hi = lo + k
        else:
            path.append((lo, lo + k))
            lo += k
    return path[::-1]


def consistency_ranges(first: int, second: int) -> list[Range]:
    """Return the subtrees whose hashes make PROOF(first, D[0:second]), innermost first."""
    if not 0 < first <= second:
        raise ValueError(f"no consistency proof from {first} to {second}")
    path, lo, hi, whole = [], 0, second, True  # whole: SUBPROOF's b, "the old tree is a whole subtree"
    while first - lo != hi - lo:
        k = _split(hi - lo)
        if first - lo <= k:
            path.append((lo + k, hi))
            hi = lo + k
        else:
            path.append((lo, lo + k))
            lo += k
            whole = False
    if not whole:
        path.append((lo, hi))
    return path[::-1]


def nodes_for(ranges: Iterable[Range]) -> set[Node]:
    """Return every stored hash needed to compute the hashes of these ranges."""
    return {node for lo, hi in ranges for node in subtrees(lo, hi)}


def hashes_of(ranges: Sequence[Range], hashes: Mapping[Node, bytes]) -> list[bytes]:
    return [range_hash(lo, hi, hashes) for lo, hi in ranges]


class Frontier:
    """The right edge of a tree: the hashes of the complete subtrees that make up [0, size).

    Appending a leaf only touches this edge, so the log grows in O(1) amortised hashing and
    returns the new complete subtrees to store.
    """

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if len(hashes) != bin(size).count("1"):
            raise ValueError(f"a tree of {size} leaves has {bin(size).count('1')} edge subtrees, not {len(hashes)}")
        self.size, self.hashes = size, list(hashes)

    def append(self, leaf: bytes) -> list[tuple[Node, bytes]]:
        """Add a leaf hash; return the complete subtrees it completes, the leaf itself first."""
        k, h = self.size, leaf
        new = [((0, k), h)]
        level = 0
        while k & 1:  # a complete left sibling of the same height is waiting on the edge
            h = node_hash(self.hashes.pop(), h)
            level, k = level + 1, k >> 1
            new.append(((level, k), h))
        self.hashes.append(h)
        self.size += 1
        return new

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        h = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            h = node_hash(left, h)
        return h


# --- verification: RFC 9162 §2.1.3.2 and §2.1.4.2, step by step ---------------------------


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> bool:
    """Return whether `proof` shows the leaf hash `leaf` at `index` in the tree (`size`, `root`)."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]) -> bool:
    """Return whether `proof` shows the tree (`first`, `first_root`) is a prefix of (`second`, `second_root`)."""
    if first == second:
        return not proof and first_root == second_root
    if not 0 < first < second or not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:  # first is a power of two: the old root is a node of the new tree
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr == first_root and sr == second_root and sn == 0
