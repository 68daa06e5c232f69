"""A small Python API that emits the same :class:`GraphSpec` a YAML file loads to.

    g = Graph("mnist-mlp")
    x = g.node("image", 784, observed=True)
    h = g.node("h1", 128)
    g.edge(x, h, "linear", "leaky_relu")
    spec = g.spec()

The builder only collects plain data; validation is the spec's (``SpecError`` with YAML paths).
"""

from __future__ import annotations

from typing import Any

from pcgraph.ops import Op
from pcgraph.spec import GraphSpec, spec_from_dict


class Graph:
    """Collects nodes, edges and run settings; :meth:`spec` validates them into a GraphSpec."""

    def __init__(self, name: str, description: str = ""):
        self.name, self.description = name, description
        self._nodes: dict[str, dict] = {}
        self._edges: list[dict] = []
        self._sections: dict[str, dict] = {}

    def node(self, name: str, shape: int | tuple[int, ...] | list[int], *, observed: bool = False,
             energy: str | dict = "gaussian", prior: dict | None = None) -> str:
        """Declare a value node; returns its name, to pass to :meth:`edge`. A name is declared once."""
        if name in self._nodes:
            raise ValueError(f"node {name!r} is declared twice (YAML refuses a repeated key too); give it one "
                             "g.node(...) call")
        node: dict[str, Any] = {"shape": [shape] if isinstance(shape, int) else list(shape)}
        if observed:
            node["role"] = "observed"
        if energy != "gaussian":
            node["energy"] = energy
        if prior is not None:
            node["prior"] = prior
        self._nodes[name] = node
        return name

    def edge(self, source: str | list[str], target: str, *ops: str | dict | Op, combine: str = "concat",
             delay: int = 0, scale: float | str = 1.0) -> None:
        """Add the prediction ``target += scale * ops(combine(source))``; ops are names, dicts or Op
        objects (``{"kind": "sparse", "generator": "watts_strogatz_graph", "args": {"k": 4, "p": 0.1}}``);
        ``delay=1`` reads the sources at the previous time step; ``scale`` is a number or a muPC
        form (``"1/sqrt(fan_in)"``, ``"1/sqrt(fan_in*depth)"``, ``"1/fan_in"``)."""
        edge: dict[str, Any] = {"from": source, "to": target,
                                "fn": [op.model_dump() if isinstance(op, Op) else op for op in ops] or ["identity"]}
        if combine != "concat":
            edge["combine"] = combine
        if delay:
            edge["delay"] = delay
        if scale != 1:
            edge["scale"] = scale
        self._edges.append(edge)

    def inference(self, **settings: Any) -> Graph:
        return self._section("inference", settings)

    def learning(self, **settings: Any) -> Graph:
        return self._section("learning", settings)

    def data(self, **settings: Any) -> Graph:
        return self._section("data", settings)

    def train(self, **settings: Any) -> Graph:
        return self._section("train", settings)

    def _section(self, key: str, settings: dict) -> Graph:
        """Settings of a section; a later call adds to (and overrides keys of) an earlier one."""
        self._sections[key] = {**self._sections.get(key, {}), **settings}
        return self

    def spec(self) -> GraphSpec:
        """The validated :class:`GraphSpec`; raises :class:`SpecError` with YAML paths."""
        data: dict[str, Any] = {"name": self.name, "graph": {"nodes": self._nodes, "edges": self._edges}}
        if self.description:
            data["description"] = self.description
        return spec_from_dict({**data, **self._sections})
