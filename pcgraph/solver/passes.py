"""Graph rewrites for inductor when it compiles a relaxation on CPU (:mod:`pcgraph.solver.aot`, and
``torch.compile`` in :class:`pcgraph.solver.loop.Captured`).

:class:`SplitAddmm`: addmm(c, a, b) = c + a b  ->  add(mm(a, b), c) on CPU. Inductor fuses a bias
or residual add into the product (aten's addmm) on every device, but on CPU that addmm first
copies c into its output and then runs the product with beta = 1: for the MNIST MLP's
128 x 128 x 128 products, 23 us against 15 us for mm alone on this project's machines. Split, the
add joins the elementwise kernel that already reads the product (the error x - mu, an activation),
where it costs one more read of c. The sum is the same up to its last rounding (addmm adds c
inside the product's kernel): the tests of compiled against eager relaxations
(``tests/solver/test_aot.py``, ``test_compiled.py``) hold with or without the split.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass

aten = torch.ops.aten


class SplitAddmm(CustomGraphPass):
    """aten.addmm(c, a, b) with alpha = beta = 1 on CPU tensors -> aten.add(aten.mm(a, b), c)."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        for node in list(graph.nodes):
            if not _splittable(node):
                continue
            c, a, b = node.args[:3]
            with graph.inserting_before(node):
                product = graph.call_function(aten.mm.default, (a, b))
                total = graph.call_function(aten.add.Tensor, (product, c))
            va, vb = a.meta["val"], b.meta["val"]
            with getattr(va, "fake_mode", None) or contextlib.nullcontext():  # inductor's values are fake
                product.meta["val"] = aten.mm.default(va, vb)
            total.meta.update(node.meta)
            node.replace_all_uses_with(total)
            graph.erase_node(node)

    def uuid(self) -> str:
        """Changes with this module's source, so that inductor's caches never mix the two graphs."""
        return hashlib.sha256(inspect.getsource(inspect.getmodule(SplitAddmm)).encode()).hexdigest()


def cpu_options() -> dict:
    """Inductor's options for a relaxation compiled on CPU (this module imports torch._inductor,
    0.8 s: callers import it when they compile, not at start-up)."""
    return {"post_grad_custom_post_pass": SplitAddmm()}


def _splittable(node: torch.fx.Node) -> bool:
    if node.op != "call_function" or node.target is not aten.addmm.default:
        return False
    if node.kwargs.get("alpha", 1) != 1 or node.kwargs.get("beta", 1) != 1 or len(node.args) != 3:
        return False
    vals = [arg.meta.get("val") if isinstance(arg, torch.fx.Node) else None for arg in node.args]
    return all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in vals)
