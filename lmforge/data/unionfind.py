"""Union-find (disjoint sets) over the integers 0..n-1: the clustering step of fuzzy dedup.

MinHash-LSH yields *pairs* of near-duplicate documents; the duplicate *clusters* are the connected
components of those pairs (single linkage: a ~ b and b ~ c put a, b and c in one cluster even when
a and c are less similar than the threshold). Union by size plus path halving keeps every
operation nearly O(1) (inverse Ackermann amortised; Tarjan 1975), so clustering costs about one
list access per pair. Parents live in a Python list (indexing a list is ~5x faster than indexing
a numpy array element by element, and each union depends on the previous ones, so the loop cannot
be vectorised); `roots` converts to numpy for the vectorised grouping at the end.

>>> uf = UnionFind(5)
>>> uf.union(0, 3), uf.union(3, 4), uf.union(0, 4)
(True, True, False)
>>> uf.same(0, 4), uf.same(1, 2)
(True, False)
>>> uf.groups()
[[0, 3, 4]]
"""

from __future__ import annotations

import numpy as np


class UnionFind:
    """Disjoint sets over 0..n-1, all singletons at first."""

    def __init__(self, n: int) -> None:
        if n < 0:
            raise ValueError(f"UnionFind needs a non-negative number of elements, got {n}")
        self.parent = list(range(n))
        self.size = [1] * n

    def __len__(self) -> int:
        return len(self.parent)

    def find(self, x: int) -> int:
        """The representative of `x`'s set (path halving shortens the path as it walks)."""
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, x: int, y: int) -> bool:
        """Merge the sets of `x` and `y`; False when they were already one set."""
        rx, ry = self.find(x), self.find(y)
        if rx == ry:
            return False
        if self.size[rx] < self.size[ry]:
            rx, ry = ry, rx
        self.parent[ry] = rx
        self.size[rx] += self.size[ry]
        return True

    def same(self, x: int, y: int) -> bool:
        """Whether `x` and `y` are in the same set."""
        return self.find(x) == self.find(y)

    def roots(self) -> np.ndarray:
        """(n,) int64: the representative of every element, fully compressed (vectorised)."""
        parent = np.array(self.parent, dtype=np.int64)
        while True:
            grand = parent[parent]  # pointer jumping: each round halves every path
            if np.array_equal(grand, parent):
                return parent
            parent = grand

    def groups(self, min_size: int = 2) -> list[list[int]]:
        """Sets with at least `min_size` members, each sorted, ordered by their smallest member.

        >>> uf = UnionFind(6); _ = uf.union(5, 1); _ = uf.union(2, 4)
        >>> uf.groups(), len(uf.groups(min_size=1))
        ([[1, 5], [2, 4]], 4)
        """
        roots = self.roots()
        order = np.argsort(roots, kind="stable")  # members of a set become adjacent, ascending
        sorted_roots = roots[order]
        starts = np.flatnonzero(np.r_[True, sorted_roots[1:] != sorted_roots[:-1]])
        members = np.split(order, starts[1:]) if len(order) else []
        groups = [m.tolist() for m in members if len(m) >= min_size]
        return sorted(groups, key=lambda g: g[0])
