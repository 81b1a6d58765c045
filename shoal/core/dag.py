"""Lazy task graphs, as ``ray.dag``: bind calls now, execute the graph later.

    with InputNode() as inp:
        dag = add.bind(double.bind(inp), 1)
    shoal.get(dag.execute(3))          # 7

``f.bind(...)`` on a remote function, ``Cls.bind(...)`` on an actor class,
``node.method.bind(...)`` on what that returns (or ``handle.method.bind``
on a live actor) build nodes; ``execute(*args, **kwargs)`` submits every
node once, passing results between them as ObjectRefs, and returns the
root's ObjectRef (an ActorHandle for a class node, a list for a
``MultiOutputNode``).
"""
from __future__ import annotations

import threading

__all__ = ["ClassMethodNode", "ClassNode", "DAGNode", "FunctionNode", "InputAttributeNode",
           "InputNode", "MultiOutputNode"]


class DAGNode:
    """A call in a graph, not yet made. ``execute()`` makes it (and those it needs)."""

    def __init__(self, args: tuple = (), kwargs: dict | None = None, options: dict | None = None):
        self._bound_args = tuple(args)
        self._bound_kwargs = dict(kwargs or {})
        self._bound_options = dict(options or {})

    def execute(self, *args, **kwargs):
        """Submit the graph with ``args`` / ``kwargs`` as the InputNode's value.

        Returns this node's result: an ObjectRef for a function or method
        node, an ActorHandle for a class node, a list for a MultiOutputNode.
        """
        return self._execute(_Run(args, kwargs))

    def _execute(self, run: "_Run"):
        hit = run.done.get(id(self), run)
        if hit is not run:
            return hit
        out = self._execute_impl(run, run.resolve(self._bound_args),
                                 run.resolve(self._bound_kwargs))
        run.done[id(self)] = out
        run.keep.append(self)   # ids stay unique while the run lasts
        return out

    def _execute_impl(self, run, args, kwargs):
        raise NotImplementedError

    def get_args(self) -> tuple:
        """The arguments bound to this node."""
        return self._bound_args

    def get_kwargs(self) -> dict:
        """The keyword arguments bound to this node."""
        return dict(self._bound_kwargs)

    def get_options(self) -> dict:
        """The options (``.options(...)``) bound to this node."""
        return dict(self._bound_options)

    def __reduce__(self):
        raise TypeError("a DAG node cannot be passed to a task; call dag.execute() and pass "
                        "the ObjectRef it returns")


class _Run:
    """One execution: each node runs once; its result stands in for it downstream."""

    def __init__(self, args, kwargs):
        self.args = args
        self.kwargs = kwargs
        self.done: dict = {}
        self.keep: list = []

    def resolve(self, value):
        if isinstance(value, DAGNode):
            return value._execute(self)
        if type(value) in (list, tuple):
            return type(value)(self.resolve(v) for v in value)
        if type(value) is dict:
            return {k: self.resolve(v) for k, v in value.items()}
        return value


class FunctionNode(DAGNode):
    """A remote function's call (``f.bind(...)``)."""

    def __init__(self, remote_function, args, kwargs, options=None):
        self._body = remote_function
        super().__init__(args, kwargs, options)

    def options(self, **opts) -> "FunctionNode":
        """The same call with task options (``num_cpus``, ``name``...)."""
        return FunctionNode(self._body, self._bound_args, self._bound_kwargs,
                            {**self._bound_options, **opts})

    def _execute_impl(self, run, args, kwargs):
        rf = self._body.options(**self._bound_options) if self._bound_options else self._body
        return rf.remote(*args, **kwargs)


class ClassNode(DAGNode):
    """An actor's creation (``Cls.bind(...)``); ``node.method.bind(...)`` calls it.

    The actor is created by the first ``execute()`` that reaches it and the
    same actor serves every later execution, so it keeps its state.
    """

    def __init__(self, actor_class, args, kwargs, options=None):
        self._body = actor_class
        self._handle = None
        self._lock = threading.Lock()
        super().__init__(args, kwargs, options)
        if _contains_input(self._bound_args) or _contains_input(self._bound_kwargs):
            raise ValueError(f"{actor_class._name}.bind(...) cannot take the InputNode: an "
                             "actor is created once, not per execution. Pass the input to a "
                             "method instead.")

    def options(self, **opts) -> "ClassNode":
        """The same actor with actor options (``num_cpus``, ``max_concurrency``...)."""
        return ClassNode(self._body, self._bound_args, self._bound_kwargs,
                         {**self._bound_options, **opts})

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._body._methods:
            raise AttributeError(f"actor class {self._body._name} has no method {name!r}")
        return _MethodBinder(self, name)

    def _execute_impl(self, run, args, kwargs):
        with self._lock:
            if self._handle is None:
                ac = self._body.options(**self._bound_options) if self._bound_options \
                    else self._body
                self._handle = ac.remote(*args, **kwargs)
            return self._handle


class _MethodBinder:
    """``node.method`` before ``.bind(...)``."""

    def __init__(self, target, name, options=None):
        self._target = target
        self._name = name
        self._options = options or {}

    def bind(self, *args, **kwargs) -> "ClassMethodNode":
        """A node calling this method with these arguments."""
        return ClassMethodNode(self._target, self._name, args, kwargs, self._options)

    def options(self, **opts) -> "_MethodBinder":
        """The same method with call options (``num_returns``, ``name``)."""
        return _MethodBinder(self._target, self._name, {**self._options, **opts})


class ClassMethodNode(DAGNode):
    """An actor method's call (``class_node.method.bind(...)`` or ``handle.method.bind(...)``)."""

    def __init__(self, target, method_name, args, kwargs, options=None):
        self._target = target      # a ClassNode or a live ActorHandle
        self._method_name = method_name
        super().__init__(args, kwargs, options)

    def _execute_impl(self, run, args, kwargs):
        handle = run.resolve(self._target)
        m = getattr(handle, self._method_name)
        if self._bound_options:
            m = m.options(**self._bound_options)
        return m.remote(*args, **kwargs)


class InputNode(DAGNode):
    """The graph's input: stands for the value(s) passed to ``execute``.

    With one positional argument and no keywords it is that argument; with
    more, index it: ``inp[0]`` (positional), ``inp.name`` / ``inp["name"]``
    (keyword). Use it as a context manager (``with InputNode() as inp:``),
    as in Ray.
    """

    def __enter__(self) -> "InputNode":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def __getitem__(self, key) -> "InputAttributeNode":
        return InputAttributeNode(self, key, "item")

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return InputAttributeNode(self, name, "attr")

    def _execute_impl(self, run, args, kwargs):
        if len(run.args) == 1 and not run.kwargs:
            return run.args[0]
        if not run.args and not run.kwargs:
            raise ValueError("the DAG reads its InputNode but execute() got no arguments")
        return _InputData(run.args, run.kwargs)


class _InputData:
    def __init__(self, args, kwargs):
        self.args = args
        self.kwargs = kwargs


class InputAttributeNode(DAGNode):
    """One part of the input: ``inp[0]``, ``inp["key"]`` or ``inp.key``."""

    def __init__(self, input_node: InputNode, key, how: str):
        self._input = input_node
        self._key = key
        self._how = how
        super().__init__()

    def _execute_impl(self, run, args, kwargs):
        value = self._input._execute(run)
        key = self._key
        if isinstance(value, _InputData):
            if isinstance(key, int):
                if key >= len(value.args):
                    raise IndexError(f"the DAG reads input [{key}] but execute() got "
                                     f"{len(value.args)} positional arguments")
                return value.args[key]
            if key not in value.kwargs:
                raise KeyError(f"the DAG reads input {key!r} but execute() got no keyword "
                               f"argument {key!r} (got {sorted(value.kwargs)})")
            return value.kwargs[key]
        return getattr(value, key) if self._how == "attr" else value[key]


class MultiOutputNode(DAGNode):
    """Several nodes as one graph: ``execute`` returns the list of their results."""

    def __init__(self, nodes: list):
        nodes = list(nodes)
        for n in nodes:
            if not isinstance(n, DAGNode):
                raise TypeError(f"MultiOutputNode takes DAG nodes, got {type(n).__name__}")
        super().__init__((nodes,))

    def _execute_impl(self, run, args, kwargs):
        return list(args[0])


def _contains_input(value) -> bool:
    if isinstance(value, (InputNode, InputAttributeNode)):
        return True
    if isinstance(value, (list, tuple)):
        return any(_contains_input(v) for v in value)
    if isinstance(value, dict):
        return any(_contains_input(v) for v in value.values())
    if isinstance(value, DAGNode):
        return _contains_input(value._bound_args) or _contains_input(value._bound_kwargs)
    return False
