"""Search spaces with Ray Tune's names: ``uniform``, ``loguniform``, ``choice``,
``grid_search``, ``sample_from``... and their resolution into concrete configs.

A space is a (nested) dict whose leaves are constants, Domains or
``grid_search`` markers. ``sample_from(fn)`` values are resolved last, with
``fn(spec)`` seeing the rest of the config as ``spec.config`` (attribute or
key access), so one value can depend on another.
"""
from __future__ import annotations

import itertools
import math
import random as _random

from shoal.exceptions import SearchSpaceError


class Domain:
    """A set of values to sample from (one leaf of a search space)."""

    kind = "float"  # "float", "int" or "categorical": how searchers such as Optuna see it

    def sample(self, rng: _random.Random):
        """One value drawn with ``rng``."""
        raise NotImplementedError

    def is_valid(self, value) -> bool:
        """Whether ``value`` lies in the domain (points_to_evaluate are checked with it)."""
        return True


class Float(Domain):
    """Real values in [lower, upper): uniform, log-uniform, normal; optionally rounded to ``q``."""

    kind = "float"

    def __init__(self, lower: float | None, upper: float | None, *, log: bool = False,
                 base: float = 10, q: float | None = None, normal: tuple | None = None):
        self.lower, self.upper, self.log, self.base, self.q = lower, upper, log, base, q
        self.normal = normal  # (mean, sd) for randn/qrandn

    def sample(self, rng):
        if self.normal is not None:
            v = rng.gauss(*self.normal)
        elif self.log:
            lo, hi = math.log(self.lower, self.base), math.log(self.upper, self.base)
            v = self.base ** rng.uniform(lo, hi)
        else:
            v = rng.uniform(self.lower, self.upper)
        if self.q is not None:
            v = round(v / self.q) * self.q
            if self.normal is None:  # rounding must not leave the range
                v = min(max(v, self.lower), self.upper)
        return float(v)

    def is_valid(self, value) -> bool:
        return self.normal is not None or self.lower <= value <= self.upper

    def __repr__(self):
        if self.normal is not None:
            return f"randn(mean={self.normal[0]}, sd={self.normal[1]}, q={self.q})"
        return f"{'log' if self.log else ''}uniform({self.lower}, {self.upper}, q={self.q})"


class Integer(Domain):
    """Integers in [lower, upper) (``upper`` included for the ``q`` forms, as Ray Tune)."""

    kind = "int"

    def __init__(self, lower: int, upper: int, *, log: bool = False, base: float = 10,
                 q: int = 1, inclusive: bool = False):
        self.lower, self.upper, self.log, self.base, self.q = lower, upper, log, base, q
        self.inclusive = inclusive
        self.high = upper if inclusive else upper - 1  # largest value that can come out

    def sample(self, rng):
        if self.log:
            lo, hi = math.log(self.lower, self.base), math.log(self.upper, self.base)
            v = int(round(self.base ** rng.uniform(lo, hi)))
        else:
            v = rng.randint(self.lower, self.high)
        if self.q != 1:
            v = int(round(v / self.q) * self.q)
        return int(min(max(v, self.lower), self.high))

    def is_valid(self, value) -> bool:
        return self.lower <= value <= self.high

    def __repr__(self):
        return f"{'log' if self.log else ''}randint({self.lower}, {self.upper}, q={self.q})"


class Categorical(Domain):
    """One of a list of values."""

    kind = "categorical"

    def __init__(self, categories):
        self.categories = list(categories)

    def sample(self, rng):
        return self.categories[rng.randrange(len(self.categories))]

    def is_valid(self, value) -> bool:
        return value in self.categories

    def __repr__(self):
        return f"choice({self.categories!r})"


class Function(Domain):
    """A value computed by ``fn(spec)`` once the rest of the config is known (``sample_from``)."""

    kind = "function"

    def __init__(self, fn):
        self.fn = fn

    def sample(self, rng, spec=None):
        try:
            return self.fn(spec)
        except TypeError as e:
            if "positional argument" not in str(e):
                raise
            return self.fn()  # Ray Tune accepts functions of no argument too

    def __repr__(self):
        return f"sample_from({getattr(self.fn, '__name__', self.fn)!r})"


def _check_range(name, lower, upper):
    if not lower < upper:
        raise SearchSpaceError(f"{name}({lower}, {upper}): lower must be less than upper")


def _check_q(name, q):
    if q is not None and not q > 0:
        raise SearchSpaceError(f"{name}(..., q={q}): q must be > 0")


def uniform(lower: float, upper: float) -> Float:
    """A float drawn uniformly from [lower, upper)."""
    _check_range("uniform", lower, upper)
    return Float(lower, upper)


def quniform(lower: float, upper: float, q: float) -> Float:
    """``uniform`` rounded to a multiple of ``q`` (e.g. q=0.1)."""
    _check_range("quniform", lower, upper)
    _check_q("quniform", q)
    return Float(lower, upper, q=q)


def loguniform(lower: float, upper: float, base: float = 10) -> Float:
    """A float whose logarithm is uniform in [log lower, log upper); both bounds > 0."""
    if not lower > 0:
        raise SearchSpaceError(f"loguniform({lower}, {upper}): lower must be > 0 (a log scale "
                               "cannot reach 0); use e.g. loguniform(1e-6, ...)")
    _check_range("loguniform", lower, upper)
    return Float(lower, upper, log=True, base=base)


def qloguniform(lower: float, upper: float, q: float, base: float = 10) -> Float:
    """``loguniform`` rounded to a multiple of ``q``."""
    loguniform(lower, upper, base)
    _check_q("qloguniform", q)
    return Float(lower, upper, log=True, base=base, q=q)


def randn(mean: float = 0.0, sd: float = 1.0) -> Float:
    """A float drawn from the normal distribution N(mean, sd**2)."""
    if not sd > 0:
        raise SearchSpaceError(f"randn(mean={mean}, sd={sd}): sd must be > 0")
    return Float(None, None, normal=(mean, sd))


def qrandn(mean: float, sd: float, q: float) -> Float:
    """``randn`` rounded to a multiple of ``q``."""
    randn(mean, sd)
    _check_q("qrandn", q)
    return Float(None, None, normal=(mean, sd), q=q)


def randint(lower: int, upper: int) -> Integer:
    """An integer drawn uniformly from [lower, upper) (upper excluded, as Ray Tune)."""
    _check_range("randint", lower, upper)
    return Integer(int(lower), int(upper))


def qrandint(lower: int, upper: int, q: int = 1) -> Integer:
    """An integer in [lower, upper] (upper included) rounded to a multiple of ``q``."""
    _check_range("qrandint", lower, upper)
    _check_q("qrandint", q)
    return Integer(int(lower), int(upper), q=int(q), inclusive=True)


def lograndint(lower: int, upper: int, base: float = 10) -> Integer:
    """An integer in [lower, upper) whose logarithm is uniform; lower > 0."""
    if not lower > 0:
        raise SearchSpaceError(f"lograndint({lower}, {upper}): lower must be > 0")
    _check_range("lograndint", lower, upper)
    return Integer(int(lower), int(upper), log=True, base=base)


def qlograndint(lower: int, upper: int, q: int, base: float = 10) -> Integer:
    """``lograndint`` with ``upper`` included, rounded to a multiple of ``q``."""
    lograndint(lower, upper, base)
    _check_q("qlograndint", q)
    return Integer(int(lower), int(upper), log=True, base=base, q=int(q), inclusive=True)


def choice(categories) -> Categorical:
    """One of ``categories`` (a non-empty list), each equally likely."""
    categories = list(categories)
    if not categories:
        raise SearchSpaceError("choice([]): give at least one category")
    return Categorical(categories)


def sample_from(func) -> Function:
    """A value computed by ``func(spec)``; ``spec.config`` holds the rest of the config,
    e.g. ``sample_from(lambda spec: spec.config.width * 2)``."""
    if not callable(func):
        raise SearchSpaceError(f"sample_from takes a function, got {type(func).__name__}")
    return Function(func)


def grid_search(values) -> dict:
    """Every one of ``values`` is tried (times ``num_samples``); combinations of several
    grid_search entries are all tried (their product)."""
    values = list(values)
    if not values:
        raise SearchSpaceError("grid_search([]): give at least one value")
    return {"grid_search": values}


# ------------------------------------------------------------------ resolution
def _is_grid(v) -> bool:
    return isinstance(v, dict) and len(v) == 1 and "grid_search" in v


def leaves(space, path=()):
    """(path, value) of every leaf of a nested dict/list space; a grid is a leaf."""
    if _is_grid(space) or isinstance(space, Domain):
        yield path, space
    elif isinstance(space, dict):
        for k, v in space.items():
            yield from leaves(v, path + (k,))
    elif isinstance(space, (list, tuple)) and any(
            isinstance(x, (dict, list, tuple, Domain)) for x in space):
        for i, v in enumerate(space):
            yield from leaves(v, path + (i,))
    else:
        yield path, space


def set_path(config, path, value):
    """Set ``config[path[0]][path[1]]... = value``, making dicts on the way."""
    for k in path[:-1]:
        if isinstance(config, dict):
            config = config.setdefault(k, {})
        else:
            config = config[k]
    config[path[-1]] = value


def get_path(config, path):
    for k in path:
        config = config[k]
    return config


def _copy_structure(space):
    if isinstance(space, dict) and not _is_grid(space):
        return {k: _copy_structure(v) for k, v in space.items()}
    if isinstance(space, list) and any(isinstance(x, (dict, list, Domain)) for x in space):
        return [_copy_structure(v) for v in space]
    return space


def grid_variants(space) -> list[dict]:
    """The space with each combination of its ``grid_search`` values filled in."""
    grids = [(p, v["grid_search"]) for p, v in leaves(space) if _is_grid(v)]
    if not grids:
        return [_copy_structure(space)]
    out = []
    for combo in itertools.product(*(vals for _, vals in grids)):
        cfg = _copy_structure(space)
        for (path, _), value in zip(grids, combo):
            set_path(cfg, path, value)
        out.append(cfg)
    return out


class _AttrDict(dict):
    """A dict whose keys read as attributes (``spec.config.lr``), as in Ray Tune."""

    def __getattr__(self, item):
        try:
            v = self[item]
        except KeyError:
            raise AttributeError(item) from None
        if isinstance(v, Domain):
            raise _Unresolved(item)
        return _AttrDict(v) if isinstance(v, dict) and not isinstance(v, _AttrDict) else v

    def __getitem__(self, item):
        v = dict.__getitem__(self, item)
        if isinstance(v, Domain):
            raise _Unresolved(item)
        return _AttrDict(v) if isinstance(v, dict) and not isinstance(v, _AttrDict) else v


class _Unresolved(Exception):
    pass


class _Spec:
    def __init__(self, config):
        self.config = _AttrDict(config)


def resolve(config, rng: _random.Random) -> dict:
    """Sample every Domain of ``config`` (a grid variant) in place; returns it.

    Plain domains are drawn first, then ``sample_from`` functions in an order
    in which each sees the values it reads (SearchSpaceError on a cycle).
    """
    pending = []
    for path, v in leaves(config):
        if isinstance(v, Function):
            pending.append((path, v))
        elif isinstance(v, Domain):
            set_path(config, path, v.sample(rng))
    while pending:
        left = []
        for path, fn in pending:
            try:
                value = fn.sample(rng, _Spec(config))
            except _Unresolved:
                left.append((path, fn))
                continue
            if isinstance(value, Domain):  # sample_from may return a domain to draw from
                value = value.sample(rng)
            set_path(config, path, value)
        if len(left) == len(pending):
            names = [".".join(map(str, p)) for p, _ in left]
            raise SearchSpaceError(f"sample_from values {names} depend on each other (or on "
                                   "themselves); break the cycle")
        pending = left
    return config


def validate(space) -> None:
    """Raise SearchSpaceError unless ``space`` is a dict (of constants, domains and grids)."""
    if space is None:
        return
    if not isinstance(space, dict):
        raise SearchSpaceError(f"param_space must be a dict, got {type(space).__name__}")
    for path, v in leaves(space):
        if _is_grid(v) and not isinstance(v["grid_search"], (list, tuple)):
            raise SearchSpaceError(f"{'.'.join(map(str, path))}: grid_search takes a list")


def flatten(config, prefix="") -> dict:
    """{"a/b": 1} for {"a": {"b": 1}} (result tables and searchers use flat names)."""
    out = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and not _is_grid(v):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v
    return out
