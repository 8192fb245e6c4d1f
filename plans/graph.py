"""Graph maths over step dependencies: cycles, topological order and levels, critical path.

``deps`` maps each node to the nodes it depends on (edges point at dependencies).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def strongly_connected(nodes: Sequence[str], deps: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Tarjan's components, iteratively (a long chain must not hit the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            edges = [d for d in deps.get(node, ()) if d in deps]
            if i < len(edges):
                work.append((node, i + 1))
                nxt = edges[i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                out.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return out


def cycles(nodes: Sequence[str], deps: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Every dependency cycle, one per strongly connected component, as a closed walk
    ``[a, b, ..., a]`` in which each node depends on the next; nodes in declaration order."""
    order = {n: i for i, n in enumerate(nodes)}
    found: list[list[str]] = []
    for component in strongly_connected(nodes, deps):
        members = set(component)
        start = min(component, key=order.__getitem__)
        if len(component) == 1 and start not in deps.get(start, ()):
            continue
        # walk inside the component back to the start (breadth first: the shortest cycle)
        prev: dict[str, str] = {}
        frontier = [start]
        seen = {start}
        end: str | None = None
        while frontier and end is None:
            nxt: list[str] = []
            for node in frontier:
                for d in sorted(deps.get(node, ()), key=lambda x: order.get(x, 0)):
                    if d not in members:
                        continue
                    if d == start:
                        end = node
                        break
                    if d not in seen:
                        seen.add(d)
                        prev[d] = node
                        nxt.append(d)
                if end is not None:
                    break
            frontier = nxt
        assert end is not None
        walk = [end]
        while walk[-1] != start:
            walk.append(prev[walk[-1]])
        walk.reverse()
        found.append([*walk, start])
    found.sort(key=lambda c: order[c[0]])
    return found


def topological(nodes: Sequence[str], deps: Mapping[str, Sequence[str]]) -> list[str]:
    """Nodes with every dependency first, keeping declaration order where free (acyclic input)."""
    done: set[str] = set()
    out: list[str] = []
    remaining = list(nodes)
    while remaining:
        later: list[str] = []
        for node in remaining:
            if all(d in done or d not in deps for d in deps.get(node, ())):
                done.add(node)
                out.append(node)
            else:
                later.append(node)
        if len(later) == len(remaining):
            raise ValueError(f"dependency cycle among {', '.join(later)}")
        remaining = later
    return out


def levels(order: Sequence[str], deps: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Level 1 for nodes without dependencies, else 1 + the highest level among them."""
    level: dict[str, int] = {}
    for node in order:
        level[node] = 1 + max((level[d] for d in deps.get(node, ()) if d in level), default=0)
    return level


def critical_path(order: Sequence[str], deps: Mapping[str, Sequence[str]],
                  weight: Mapping[str, int]) -> tuple[int, list[str]]:
    """The heaviest chain of dependencies (``order`` topological): its total and its nodes.

    Among equally heavy chains (nodes without a weight count 0) the longest one wins.
    """
    best: dict[str, tuple[tuple[int, int], str | None]] = {}
    for node in order:
        prev: str | None = None
        for d in deps.get(node, ()):  # the first of equally heavy dependencies wins
            if d in best and (prev is None or best[d][0] > best[prev][0]):
                prev = d
        total, length = best[prev][0] if prev is not None else (0, 0)
        best[node] = ((total + weight.get(node, 0), length + 1), prev)
    if not best:
        return 0, []
    last = max(order, key=lambda n: best[n][0])
    path = [last]
    while (prev := best[path[-1]][1]) is not None:
        path.append(prev)
    path.reverse()
    return best[last][0][0], path
