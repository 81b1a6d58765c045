"""Lazy task graphs (``ray.dag``'s names): ``InputNode``, ``MultiOutputNode``, the node types.

``f.bind(...)``, ``Cls.bind(...)`` and ``node.method.bind(...)`` build a
graph; ``dag.execute(...)`` runs it. See ``shoal.core.dag``.
"""
from shoal.core.dag import (ClassMethodNode, ClassNode, DAGNode, FunctionNode,
                            InputAttributeNode, InputNode, MultiOutputNode)

__all__ = ["ClassMethodNode", "ClassNode", "DAGNode", "FunctionNode", "InputAttributeNode",
           "InputNode", "MultiOutputNode"]
