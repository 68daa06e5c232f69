"""The neuron-level view of a compiled graph (``pcgraph show``): who predicts whom, degree
statistics, and a drawing for graphs of up to a few hundred neurons.

A connection j -> i means neuron j of the source node enters the prediction mu_i of neuron i of
the target. An edge whose only neuron-mixing op is one sparse op has exactly its listed
connections; any other edge (linear, conv, a sparse op after a linear one, ...) is counted as
connecting every source neuron to every target neuron, its dependency structure for a linear map
(an over-count for convolutions, whose neurons see only a window).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pcgraph.compiler import CompiledGraph
from pcgraph.ops import OpModule


@dataclass
class Block:
    """The connections of one edge: (source, target) neuron indices, or ``dense`` (all pairs)."""

    edge: int
    source: str
    target: str
    src: Tensor | None
    dst: Tensor | None

    @property
    def dense(self) -> bool:
        return self.src is None


def blocks(graph: CompiledGraph) -> list[Block]:
    """One :class:`Block` per (edge, source node); delayed sources count as their node."""
    out = []
    for i, e in enumerate(graph.edges):
        sparse = [m for m in e.pipeline if isinstance(m, OpModule) and m.connections() is not None]
        if sparse and not all(m is sparse[0] or getattr(m, "elementwise", False) for m in e.pipeline):
            sparse = []  # another op mixes neurons (a linear layer, a second sparse op): count it dense
        start = 0
        for s in e.sources:
            node, n = graph.delayed.get(s, s), math.prod(graph.nodes[s].shape)
            if sparse and (len(e.sources) == 1 or e.combine == "concat"):  # concat: consecutive neurons
                src, dst = sparse[0].connections()
                mine = (src >= start) & (src < start + n)
                out.append(Block(i, node, e.target, src[mine] - start, dst[mine]))
            else:
                out.append(Block(i, node, e.target, None, None))
            start += n
    return out


def degree_stats(graph: CompiledGraph) -> dict:
    """Neurons, connections, self-loops, density, and in-/out-degree min / mean / max over all
    neurons, computed from index arrays (no networkx), so it scales to 1e7 connections."""
    sizes = {v: math.prod(n.shape) for v, n in graph.nodes.items() if v not in graph.delayed}
    offset, total = {}, 0
    for v, n in sizes.items():
        offset[v], total = total, total + n
    d_in, d_out = torch.zeros(total, dtype=torch.long), torch.zeros(total, dtype=torch.long)
    connections, loops = 0, 0
    for b in blocks(graph):
        s0, t0, ns, nt = offset[b.source], offset[b.target], sizes[b.source], sizes[b.target]
        if b.dense:
            d_in[t0: t0 + nt] += ns
            d_out[s0: s0 + ns] += nt
            connections += ns * nt
            loops += min(ns, nt) if b.source == b.target else 0
        else:
            d_in += torch.bincount(b.dst + t0, minlength=total)
            d_out += torch.bincount(b.src + s0, minlength=total)
            connections += len(b.src)
            loops += int((b.src == b.dst).sum()) if b.source == b.target else 0
    row = {"neurons": total, "connections": connections, "self_loops": loops,
           "density": connections / max(total * total, 1)}
    for name, d in (("in_degree", d_in), ("out_degree", d_out)):
        row |= {f"{name}_min": int(d.min()), f"{name}_mean": float(d.float().mean()), f"{name}_max": int(d.max())}
    return row


def draw(graph: CompiledGraph, path: str, max_neurons: int = 300) -> None:
    """Draw the neuron-level graph to a PNG: neurons coloured by node, one ring per node (at most
    ``max_neurons`` neurons: a larger drawing is unreadable; use :func:`degree_stats`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    from pcgraph.errors import UsageError
    from pcgraph.tasks.plots import save

    stats = degree_stats(graph)
    if stats["neurons"] > max_neurons:
        raise UsageError(f"the graph has {stats['neurons']:,} neurons, over the drawing limit of {max_neurons}")
    g = nx.DiGraph()
    nodes = [v for v in graph.nodes if v not in graph.delayed]
    for v in nodes:
        g.add_nodes_from((v, k) for k in range(math.prod(graph.nodes[v].shape)))
    for b in blocks(graph):
        ns = math.prod(graph.nodes[b.source].shape)
        nt = math.prod(graph.nodes[b.target].shape)
        pairs = ((j, i) for j in range(ns) for i in range(nt)) if b.dense else zip(b.src.tolist(), b.dst.tolist())
        g.add_edges_from(((b.source, j), (b.target, i)) for j, i in pairs)
    shells = [[(v, k) for k in range(math.prod(graph.nodes[v].shape))] for v in nodes]
    pos = nx.shell_layout(g, shells) if len(shells) > 1 else nx.circular_layout(g)
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(7, 7))
    arrows = {"arrows": True, "arrowsize": 6} if g.number_of_edges() <= 400 else {"arrows": False}
    nx.draw_networkx_edges(g, pos, ax=ax, alpha=min(0.6, 30 / max(g.number_of_edges(), 1) ** 0.5),
                           width=0.5, node_size=30, **arrows)
    for c, v in enumerate(nodes):
        observed = graph.nodes[v].spec.role == "observed"
        nx.draw_networkx_nodes(g, pos, nodelist=shells[c], ax=ax, node_size=30, node_color=[colours(c % 10)],
                               label=f"{v} ({len(shells[c])}{', observed' if observed else ''})")
    ax.set_title(f"{graph.spec.name}: {stats['neurons']} neurons, {stats['connections']:,} connections")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_axis_off()
    save(fig, path)
