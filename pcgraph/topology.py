"""Neuron-level connectivity of a ``sparse`` edge: an edge list, a networkx generator or a
registered topology, turned into index tensors ``(source neuron, target neuron)``.

Vertex numbering. From a node to itself (also across time, ``delay: 1``) the generator's graph
has N vertices and vertex k is neuron k; an undirected edge {u, v} gives the two connections
u -> v and v -> u, a directed one only u -> v, and loops (k -> k) are kept only with
``self_loops: true``. Between two different nodes the graph has N_source + N_target vertices,
source neurons first, and the edges joining the two parts are used (from the source part to the
target part).

A spec can name only a registered topology (:func:`register_topology`, :data:`TOPOLOGIES`) or a
networkx generator function (``networkx.generators``, and the bipartite ones as
``complete_bipartite_graph`` or ``bipartite.random_graph``); their arguments come from the spec
as plain data. ``n`` (the vertex count) and ``seed`` are filled in when the generator takes them;
a bipartite generator gets its two part sizes (``n1, n2`` or ``n, m``).

Listed order (of a sparse op's ``weight`` values and ``SparseLinear.listed_connections``): an
``edges`` list as listed; a graph (networkx or registered) in its ``G.edges()`` order, an undirected
edge {u, v} giving u -> v then v -> u (between two nodes only its source -> target one); a tensor's
columns in order. Loops not asked for are left out, a repeat keeps its first place.
:func:`connections` sorts them by target, then source (the module's storage order).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable

import networkx as nx
import torch
from torch import Tensor

from pcgraph.errors import SpecError

Topology = Callable[..., "nx.Graph | Tensor"]
TOPOLOGIES: dict[str, Topology] = {}
_NOT_FROM_SPECS = {"create_using", "backend"}  # networkx arguments that take Python objects
# generators whose n is not the vertex count (2^n, 3^n, n^4, ... vertices): n must be given, and
# their size is checked like every other's before building
_N_IS_NOT_THE_SIZE = {"hypercube_graph", "binomial_tree", "dorogovtsev_goltsev_mendes_graph", "mycielski_graph",
                      "sudoku_graph", "kneser_graph", "margulis_gabber_galil_graph", "random_cograph",
                      "random_lobster", "random_lobster_graph", "random_unlabeled_tree", "random_unlabeled_rooted_tree",
                      "random_unlabeled_rooted_forest", "prefix_tree", "prefix_tree_recursive", "nonisomorphic_trees",
                      "number_of_nonisomorphic_trees", "graph_atlas"}


def register_topology(name: str) -> Callable[[Topology], Topology]:
    """Register ``fn(n_source, n_target, seed, **args)`` under ``name``; it returns a networkx
    graph (numbered as in the module docstring) or a ``(2, E)`` tensor of (source, target) pairs.
    It may take ``self_loops`` (the op's setting: whether k -> k pairs are wanted)."""
    def add(fn: Topology) -> Topology:
        TOPOLOGIES[name] = fn
        if "_generate" in globals():  # a name registered again must not answer with the old graph
            forget()
        return fn
    return add


def known_generator(name: str) -> bool:
    """True for a registered topology or a networkx generator function."""
    return name in TOPOLOGIES or _networkx(name) is not None


def _networkx(name: str) -> Callable | None:
    from networkx.algorithms.bipartite import generators as bipartite

    if name.startswith("_"):
        return None
    if name.startswith("bipartite."):
        fn = getattr(bipartite, name.removeprefix("bipartite."), None)
    else:
        fn = getattr(nx.generators, name, None) or getattr(nx, name, None)
    home = getattr(fn, "__module__", "") or ""
    ok = inspect.isfunction(fn) and home.startswith(("networkx.generators", bipartite.__name__))
    return fn if ok and not name.removeprefix("bipartite.").startswith("_") else None


@register_topology("random")
def random_edges(n_source: int, n_target: int, seed: int = 0, edges: int | None = None, p: float | None = None,
                 self_loops: bool = True) -> Tensor:
    """``edges`` distinct connections drawn uniformly (or each pair with probability ``p``),
    in O(E) time and memory: for graphs too large for networkx (1e7 edges). ``self_loops=False``
    (a node to itself, loops not asked for) leaves out the pairs k -> k."""
    if (edges is None) == (p is None):
        raise ValueError("give exactly one of edges (a count) or p (a probability)")
    square = not self_loops
    pairs = n_source * n_target - (n_source if square else 0)
    if p is not None:
        if not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p}")
        gen = torch.Generator().manual_seed(seed)
        edges = int(torch.binomial(torch.tensor(float(pairs)), torch.tensor(float(p)), generator=gen))
    if not 0 <= edges <= pairs:
        raise ValueError(f"edges must be between 0 and {pairs} (the possible connections), got {edges}")
    gen = torch.Generator().manual_seed(seed)
    ids = torch.empty(0, dtype=torch.long)
    while len(ids) < edges:  # draw with replacement, drop repeats and loops, top up
        more = torch.randint(0, n_source * n_target, (edges - len(ids) + edges // 10 + 16,), generator=gen)
        if square:
            more = more[more // n_target != more % n_target]
        ids = torch.unique(torch.cat([ids, more]))
    ids = ids[torch.randperm(len(ids), generator=gen)[:edges]]
    return torch.stack([ids // n_target, ids % n_target])


def connections(edges: list | None, generator: str | None, args: dict, seed: int, self_loops: bool,
                n_source: int, n_target: int, same_node: bool) -> tuple[Tensor, Tensor]:
    """(source index, target index), sorted by target then source, no repeats. SpecErrors name
    the op's field (``edges[3]``, ``args``, ``generator``) relative to the op."""
    listed = listed_connections(edges, generator, args, seed, self_loops, n_source, n_target, same_node)
    return tuple(_sorted(*listed, n_source))


def listed_connections(edges: list | None, generator: str | None, args: dict, seed: int, self_loops: bool,
                       n_source: int, n_target: int, same_node: bool) -> tuple[Tensor, Tensor]:
    """(source index, target index) in the listed order (module docstring), no repeats; the
    arguments and SpecErrors are those of :func:`connections`."""
    if edges is not None:
        pairs = _from_list(edges, self_loops or not same_node, n_source, n_target)
    else:
        pairs = _generate(generator, _frozen(args), seed, self_loops or not same_node, n_source, n_target, same_node)
    return pairs[0], pairs[1]


def forget() -> None:
    """Drop the cached generated graphs (the op's build calls it: the module keeps its own copy)."""
    _generate.cache_clear()


def _from_list(edges: list, self_loops: bool, n_source: int, n_target: int) -> Tensor:
    seen: dict[tuple[int, int], int] = {}
    for k, (j, i) in enumerate(edges):
        if j >= n_source or i >= n_target:
            side, value, n = ("source", j, n_source) if j >= n_source else ("target", i, n_target)
            raise SpecError(f"{side} neuron {value} is out of range: the {side} node has {n} neurons "
                            f"(indices 0..{n - 1})", f"edges[{k}]")
        if j == i and not self_loops:
            raise SpecError(f"[{j}, {i}] is a self-loop; set self_loops: true to keep it", f"edges[{k}]")
        if (j, i) in seen:
            raise SpecError(f"[{j}, {i}] repeats edges[{seen[j, i]}]", f"edges[{k}]")
        seen[j, i] = k
    return torch.tensor(list(seen), dtype=torch.long).reshape(-1, 2).T  # as listed


@functools.lru_cache(maxsize=2)  # param_count and build both ask for it; build then forgets it
def _generate(name: str, args: tuple, seed: int, self_loops: bool, n_source: int, n_target: int,
              square: bool) -> Tensor:
    vertices = n_source if square else n_source + n_target
    kwargs = {k: _thawed(v) for k, v in args}
    try:
        fn = TOPOLOGIES[name] if name in TOPOLOGIES else _networkx(name)
        params = dict(inspect.signature(fn).parameters)
        if name in TOPOLOGIES:  # (n_source, n_target, seed, ...) come from the op, not from args
            params = {k: v for k, v in list(params.items())[3:] if k != "self_loops"}
        params = {k: v for k, v in params.items()
                  if k not in _NOT_FROM_SPECS and v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)}
        if "self_loops" in kwargs:
            raise SpecError("self_loops is the op's own setting (self_loops: true next to generator)",
                            "args.self_loops")
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise SpecError(f"{name} has no argument {unknown[0]!r} (its arguments: {', '.join(params)})",
                            f"args.{unknown[0]}")
        if name in TOPOLOGIES:
            extra = {"self_loops": self_loops} if "self_loops" in inspect.signature(fn).parameters else {}
            out = fn(n_source, n_target, seed, **kwargs, **extra)
        else:
            first_two = tuple(params)[:2]
            if not square and first_two in (("n1", "n2"), ("n", "m")) and "bipartite" in fn.__module__:
                kwargs.setdefault(first_two[0], n_source)
                kwargs.setdefault(first_two[1], n_target)
            if "n" in params and name not in _N_IS_NOT_THE_SIZE:
                kwargs.setdefault("n", vertices)
            if "seed" in params:
                kwargs.setdefault("seed", seed)
            _check_size(name, kwargs)
            out = fn(**kwargs)
    except SpecError:
        raise
    except MemoryError:
        raise SpecError(f"{name}({_show(kwargs)}) ran out of memory building the graph", "args") from None
    except (TypeError, ValueError, nx.NetworkXException, ZeroDivisionError, OverflowError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SpecError(f"{name}({_show(kwargs)}) failed: {first}", "args") from None
    if isinstance(out, Tensor):
        return _check_pairs(out, name, self_loops, n_source, n_target)
    if not isinstance(out, nx.Graph):
        raise SpecError(f"expected a generator that returns a graph, {name!r} returned {type(out).__name__}",
                        "generator")
    if out.number_of_nodes() != vertices:
        what = (f"{n_source} neurons (a node to itself)" if square
                else f"{n_source} + {n_target} neurons (source, then target)")
        raise SpecError(f"{name}({_show(kwargs)}) made a graph of {out.number_of_nodes()} vertices, expected "
                        f"{vertices} for {what}; set its size arguments in args", "args")
    index = {v: k for k, v in enumerate(out.nodes)}
    uv = torch.tensor([(index[u], index[v]) for u, v in out.edges()], dtype=torch.long).reshape(-1, 2).T
    u, v = uv[0], uv[1]
    if not out.is_directed():  # both directions, u -> v then v -> u for each edge
        u, v = torch.stack([u, v], 1).reshape(-1), torch.stack([v, u], 1).reshape(-1)
    if square:
        keep = (u != v) | self_loops
    else:  # edges between the parts, oriented source -> target
        u, v = torch.where(u < n_source, u, v), torch.where(u < n_source, v, u)
        keep = (u < n_source) & (v >= n_source)
        v = v - n_source
    return _first_occurrences(u[keep], v[keep], n_source)


NETWORKX_MAX_EDGES = 5_000_000  # networkx keeps ~0.3 kB per edge in Python dicts


def networkx_edges(name: str, kwargs: dict) -> float | None:
    """Edges (or vertices, whichever is larger) a networkx generator will build, where its
    arguments say it; None where they do not."""
    n, p, m = kwargs.get("n"), kwargs.get("p"), kwargs.get("m")
    n1, n2 = kwargs.get("n1"), kwargs.get("n2")
    with contextlib.suppress(TypeError, ValueError, OverflowError):
        if name == "complete_graph" and isinstance(n, int):
            return n * (n - 1) / 2
        if name in ("erdos_renyi_graph", "gnp_random_graph", "fast_gnp_random_graph", "binomial_graph"):
            return float(p) * n * (n - 1) / 2
        if name in ("gnm_random_graph", "dense_gnm_random_graph"):
            return float(m)
        if name == "complete_bipartite_graph" and isinstance(n1, int) and isinstance(n2, int):
            return float(n1 * n2)
        if name in ("hypercube_graph", "binomial_tree", "random_cograph") and isinstance(n, int):
            return float(2 ** min(n, 1000)) * max(n, 1)
        if name == "dorogovtsev_goltsev_mendes_graph" and isinstance(n, int):
            return float(3 ** min(n, 1000))
        if name == "mycielski_graph" and isinstance(n, int):
            return float(3 * 2 ** min(n, 1000))
        if name == "sudoku_graph" and isinstance(n, int):
            return float(n) ** 6
        if name == "margulis_gabber_galil_graph" and isinstance(n, int):
            return 8.0 * n * n
    return None


def estimate_connections(generator: str, args: dict, seed: int, n_source: int, n_target: int,
                         same_node: bool) -> float | None:
    """Connections a generator will make, from its arguments alone (for the memory limit, before
    anything is built); None when only building it would tell."""
    if generator == "random":
        if isinstance(args.get("edges"), int):
            return float(args["edges"])
        with contextlib.suppress(TypeError, ValueError, KeyError):
            return float(args["p"]) * n_source * n_target
        return None
    if generator in TOPOLOGIES:
        return None
    kwargs = dict(args)
    kwargs.setdefault("n", n_source if same_node else n_source + n_target)
    edges = networkx_edges(generator, kwargs)
    return None if edges is None else 2 * edges  # an undirected edge is two connections


def _check_size(name: str, kwargs: dict) -> None:
    """Refuse, before building, a networkx graph too large to build in Python (where its size
    follows from the arguments: complete and G(n, p) / G(n, m) graphs)."""
    estimate = networkx_edges(name, kwargs)
    if estimate is not None and estimate > NETWORKX_MAX_EDGES:
        raise SpecError(f"{name} would build about {estimate:.3g} edges in networkx (limit "
                        f"{NETWORKX_MAX_EDGES:.0e}); for graphs this large use generator: random (O(E) in torch) "
                        "or register a fast topology (pcgraph.register_topology)", "generator")


def _check_pairs(pairs: Tensor, name: str, self_loops: bool, n_source: int, n_target: int) -> Tensor:
    pairs = pairs.to(torch.long)
    if pairs.dim() != 2 or pairs.shape[0] != 2:
        raise SpecError(f"topology {name!r} returned a tensor of shape {list(pairs.shape)}, expected [2, E]",
                        "generator")
    if len(pairs[0]) and (pairs.min() < 0 or pairs[0].max() >= n_source or pairs[1].max() >= n_target):
        raise SpecError(f"topology {name!r} returned a neuron index out of range", "generator")
    if not self_loops:
        pairs = pairs[:, pairs[0] != pairs[1]]
    return _first_occurrences(pairs[0], pairs[1], n_source)


def _sorted(src: Tensor, dst: Tensor, n_source: int) -> Tensor:
    key = torch.unique(dst * n_source + src)  # sorted by target, then source; repeats merged
    return torch.stack([key % n_source, key // n_source])


def _first_occurrences(src: Tensor, dst: Tensor, n_source: int) -> Tensor:
    """The pairs in their given order, each repeat dropped after its first occurrence (O(E log E))."""
    key = dst * n_source + src
    unique, which = torch.unique(key, return_inverse=True)
    if len(unique) == len(key):
        return torch.stack([src, dst])
    first = torch.full((len(unique),), len(key)).scatter_reduce_(0, which, torch.arange(len(key)), "amin")
    keep = first.sort().values
    return torch.stack([src[keep], dst[keep]])


def _frozen(value):
    """A hashable copy of the spec's arguments (lists become tuples), for the cache."""
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


def _thawed(value):
    return [_thawed(v) for v in value] if isinstance(value, tuple) else value


def _show(kwargs: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
