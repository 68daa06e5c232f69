"""Neuron-level connections: ``mu_i = sum_{j -> i} w_ij x_j + b_i`` over an edge list."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, NonNegativeInt, PrivateAttr, field_validator, model_validator
from torch import nn

from pcgraph.errors import SpecError
from pcgraph.ops import Op, Shape, register_op
from pcgraph.topology import estimate_connections, forget, known_generator, listed_connections


@register_op
class Sparse(Op):
    """mu_i = sum_{j -> i} w_ij x_j + b_i over given connections (one weight each), by message passing.

    The connections are an ``edges`` list of ``[source neuron, target neuron]`` pairs or a
    ``generator``: a networkx generator (``erdos_renyi_graph``, ``watts_strogatz_graph``, ...) or a
    registered topology (``random``), called with ``args`` (its ``n`` and ``seed`` are filled in);
    see :mod:`pcgraph.topology` for how vertices map to neurons (a node to itself: vertex k is
    neuron k; between two nodes: source neurons, then target neurons). Put an activation before it for
    ``sum_j w_ij f(x_j)``: ``fn: [tanh, sparse]``.

    ``weight`` gives the starting w_k, one per connection in the listed order: ``edges[k]`` gets
    ``weight[k]``; a generator's order is defined in :mod:`pcgraph.topology` (its graph's
    ``edges()``, an undirected edge as u -> v then v -> u). ``bias`` may list the starting b_i.
    The built module (:class:`~pcgraph.ops.message_passing.SparseLinear`) reads and sets them in the
    same order: ``listed_connections()``, ``listed_weights()``, ``set_listed_weights(w)``.
    """

    kind = "sparse"
    edges: list[tuple[NonNegativeInt, NonNegativeInt]] | None = Field(
        None, description="Connections as [source neuron, target neuron] pairs.")
    generator: str | None = Field(
        None, description="A networkx generator function or a registered topology, e.g. erdos_renyi_graph.")
    args: dict[str, Any] = Field(
        default_factory=dict, description="The generator's arguments (n and seed are filled in when it has them).")
    seed: int = Field(0, description="Seed of a random generator.")
    self_loops: bool = Field(False, description="Keep neuron k -> neuron k (a node to a node of its size).")
    bias: bool | list[float] = Field(
        True, description="Add a learnt bias b_i per target neuron (starting at 0), or its starting values b_i.")
    init: Literal["fan_in", "zeros"] = Field(
        "fan_in", description="fan_in: w ~ U(-1/sqrt(d_i), 1/sqrt(d_i)), d_i = in-degree of neuron i; or zeros.")
    weight: list[float] | None = Field(
        None, description="Starting weights, one per connection in the listed order (edges[k] gets weight[k]; "
        "a generator's order: pcgraph.topology); replaces init.")

    _same_node: bool = PrivateAttr(False)

    def for_edge(self, same_node: bool) -> Sparse:
        op = self.model_copy()
        op._same_node = same_node
        return op

    @field_validator("generator")
    @classmethod
    def _known(cls, name: str | None) -> str | None:
        if name is not None and not known_generator(name):
            raise ValueError(f"unknown generator {name!r}: expected a function of networkx.generators "
                             "(e.g. erdos_renyi_graph, watts_strogatz_graph, complete_graph) or a registered "
                             "topology (pcgraph.topology.register_topology)")
        return name

    @model_validator(mode="after")
    def _one_source(self) -> Sparse:
        if (self.edges is None) == (self.generator is None):
            raise ValueError("give exactly one of edges (a list of [source, target] pairs) or generator")
        if self.args and self.generator is None:
            raise ValueError("args are for a generator")
        return self

    @property
    def has_params(self) -> bool:
        return True

    def _pairs(self, in_shape: Shape, target_shape: Shape):
        if len(in_shape) != 1 or len(target_shape) != 1:
            raise ValueError(f"sparse connects flat nodes; got input shape {list(in_shape)} and target "
                             f"shape {list(target_shape)} (add a flatten op or give the nodes 1-D shapes)")
        return listed_connections(self.edges, self.generator, self.args, self.seed, self.self_loops,
                                  in_shape[0], target_shape[0], self._same_node)

    def param_count(self, in_shape: Shape, target_shape: Shape) -> int:
        if len(in_shape) != 1 or len(target_shape) != 1:
            return 0
        if self.edges is not None:
            n = len(self.edges)
        else:  # from the arguments where they tell, so the memory limit is checked before building
            n = estimate_connections(self.generator, self.args, self.seed, in_shape[0], target_shape[0],
                                     self._same_node)
            n = len(self._pairs(in_shape, target_shape)[0]) if n is None else n
        return int(n) + (math.prod(target_shape) if self.bias is not False else 0)

    def build(self, in_shape: Shape, target_shape: Shape) -> nn.Module:
        from pcgraph.ops.message_passing import SparseLinear  # torch-geometric loads only when needed

        src, dst = self._pairs(in_shape, target_shape)
        forget()
        given = self.weight is not None
        module = SparseLinear(src, dst, in_shape[0], target_shape[0], bias=self.bias is not False,
                              init="zeros" if given else self.init)
        if given:
            if len(self.weight) != len(src):
                listed = "edges" if self.edges is not None else f"the connections {self.generator} makes"
                raise SpecError(f"expected {len(src)} weights, one per connection in the order of {listed}, "
                                f"got {len(self.weight)}", "weight")
            module.set_listed_weights(self.weight)  # in the graph's dtype: float64 keeps every digit
        if isinstance(self.bias, list):
            if len(self.bias) != target_shape[0]:
                raise SpecError(f"expected {target_shape[0]} biases, one per target neuron, got {len(self.bias)}",
                                "bias")
            with torch.no_grad():
                module.bias.copy_(torch.tensor(self.bias, dtype=module.bias.dtype))
        return module
