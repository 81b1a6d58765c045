"""The logical plan of a Dataset: an immutable tree of nodes.

Building a Dataset only adds nodes; nothing runs until a consumer asks.
One-to-one transforms fuse into the MapNode below them when they run on
the same kind of compute with the same resources, and a MapNode over a
ReadNode reads and transforms in the same task.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pyarrow as pa

from shoal.data._block import BlockMeta
from shoal.data._read import ReadTask
from shoal.data._transforms import (AddColumn, BlockTransform, DropColumns, RenameColumns,
                                    SelectColumns)

Bundle = tuple  # (ObjectRef of a pa.Table, BlockMeta)


@dataclass(frozen=True)
class ActorCompute:
    """Run a stage on a pool of ``size`` actors (callable classes load once per actor)."""

    size: int

    def __post_init__(self):
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"concurrency={self.size!r} must be a positive number of actors")


class Node:
    name = "node"
    children: tuple = ()


class ReadNode(Node):
    def __init__(self, tasks: list[ReadTask], name: str):
        self.tasks = list(tasks)
        self.name = name


class BlocksNode(Node):
    """Materialized blocks already in the object store."""

    def __init__(self, bundles: list[Bundle], name: str = "blocks"):
        self.bundles = list(bundles)
        self.name = name


class MapNode(Node):
    def __init__(self, child: Node, chain: tuple, compute: ActorCompute | None = None,
                 options: dict | None = None):
        self.child = child
        self.children = (child,)
        self.chain = tuple(chain)
        self.compute = compute
        self.options = dict(options or {})
        self.name = "->".join(t.name for t in self.chain)


class AllToAllNode(Node):
    """A barrier: ``fn(bundles, executor) -> bundles`` over the whole child output."""

    def __init__(self, child: Node, fn: Callable[[list, Any], list], name: str):
        self.child = child
        self.children = (child,)
        self.fn = fn
        self.name = name


class BinaryNode(Node):
    """A barrier over two inputs: ``fn(left_bundles, right_bundles, executor) -> bundles``."""

    def __init__(self, left: Node, right: Node, fn: Callable[[list, list, Any], list], name: str):
        self.children = (left, right)
        self.fn = fn
        self.name = name


class LimitNode(Node):
    def __init__(self, child: Node, n: int):
        self.child = child
        self.children = (child,)
        self.n = n
        self.name = f"limit({n})"


class UnionNode(Node):
    def __init__(self, children: list[Node]):
        self.children = tuple(children)
        self.name = "union"


def add_transform(node: Node, transform: BlockTransform, compute: ActorCompute | None = None,
                  options: dict | None = None) -> Node:
    """``node`` followed by ``transform``, fused into the stage below where possible."""
    options = dict(options or {})
    if isinstance(node, MapNode):
        same_tasks = compute is None and node.compute is None and node.options == options
        # A plain function after an actor stage runs in the same actor call.
        into_actor = compute is None and not options and node.compute is not None
        if same_tasks or into_actor:
            return MapNode(node.child, node.chain + (transform,), node.compute, node.options)
        # An actor stage takes over the plain tasks before it, so no task stage
        # competes with the pool for CPUs (a pool as large as the cluster would
        # otherwise starve the stage that feeds it).
        if compute is not None and node.compute is None and not node.options:
            return MapNode(node.child, node.chain + (transform,), compute, options)
    return MapNode(node, (transform,), compute, options)


_ROW_PRESERVING = (SelectColumns, DropColumns, RenameColumns, AddColumn)


def known_num_rows(node: Node) -> int | None:
    """The row count if it is known without running anything, else None."""
    if isinstance(node, BlocksNode):
        return sum(m.num_rows for _, m in node.bundles)
    if isinstance(node, ReadNode):
        rows = [t.num_rows for t in node.tasks]
        return None if any(r is None for r in rows) else sum(rows)
    if isinstance(node, MapNode):
        if all(isinstance(t, _ROW_PRESERVING) for t in node.chain):
            return known_num_rows(node.child)
        return None
    if isinstance(node, LimitNode):
        rows = known_num_rows(node.child)
        return None if rows is None else min(rows, node.n)
    if isinstance(node, UnionNode):
        rows = [known_num_rows(c) for c in node.children]
        return None if any(r is None for r in rows) else sum(rows)
    return None


def known_schema(node: Node) -> pa.Schema | None:
    """The schema if it is known without running anything, else None."""
    if isinstance(node, BlocksNode):
        metas: list[BlockMeta] = [m for _, m in node.bundles]
        for m in metas:
            if m.num_rows:
                return m.schema
        return metas[0].schema if metas else None
    if isinstance(node, (LimitNode, UnionNode)):
        return known_schema(node.children[0])
    return None


def known_num_blocks(node: Node) -> int | None:
    if isinstance(node, BlocksNode):
        return len(node.bundles)
    if isinstance(node, ReadNode):
        return sum(t.num_blocks for t in node.tasks)
    if isinstance(node, MapNode):
        return known_num_blocks(node.child)
    if isinstance(node, UnionNode):
        counts = [known_num_blocks(c) for c in node.children]
        return None if any(c is None for c in counts) else sum(counts)
    return None


def describe(node: Node, indent: int = 0) -> str:
    """The plan as indented text, output first."""
    line = " " * indent + node.name
    if isinstance(node, MapNode) and node.compute is not None:
        line += f" [actors={node.compute.size}]"
    if isinstance(node, MapNode) and isinstance(node.child, ReadNode):
        return line + " <- " + node.child.name + f" ({len(node.child.tasks)} read tasks)"
    if isinstance(node, ReadNode):
        line += f" ({len(node.tasks)} read tasks)"
    if isinstance(node, BlocksNode):
        line += f" ({len(node.bundles)} blocks)"
    return "\n".join([line] + [describe(c, indent + 2) for c in node.children])
