"""What a run learns and how it is scored: classification or reconstruction, and the backprop
baseline of a spec.

* Classification (``data.target`` set): images clamped to ``data.input``, one-hot labels to the
  target; the score is test accuracy, from a feedforward pass or from inference (``train.eval``).
* Reconstruction (``data.target: null``): the graph is a generative model whose leaves include
  ``data.input``; training clamps the pixels and infers every latent. At test time the latents are
  inferred the same way and the image is decoded from the *root* latents alone by a feedforward
  pass, so the score, MSE = mean_{samples, pixels} (x - x_hat)^2, measures the code's quality as an
  autoencoder's does (and not the intermediate states' freedom to fit the pixels).
* Completion (``data.complete`` set, e.g. ``x[32:64]``): training clamps the input (and the target,
  if any); at test time the ``complete`` neurons of the input are hidden, inferred with the rest of
  the graph, and scored by their MSE: the graph as an associative memory.

``input`` and ``target`` may name a range of a node's neurons (``x[0:64]``, ``x[64:74]``): only
those neurons are clamped (:class:`pcgraph.solver.Clamp`), the rest of the node is inferred.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pcgraph.compiler import CompiledGraph, States, build_edge
from pcgraph.data.adapter import fit, graph_dtype, samples
from pcgraph.errors import SpecError
from pcgraph.solver import Clamp
from pcgraph.solver.weight_step import weight_step
from pcgraph.spec import GraphSpec, NodeRef
from pcgraph.spec.problems import data_refs, ref_path


def labels(values: Tensor) -> Tensor:
    """Class labels (N,) of a target: the values if they are labels, else the argmax of each
    sample's values (one-hot or soft labels)."""
    return values if values.dim() == 1 and not values.is_floating_point() else values.reshape(len(values), -1).argmax(1)


def ref_shape(shape: tuple[int, ...], ref: NodeRef) -> tuple[int, ...]:
    """Per-sample shape of the data a reference takes: its node's ``shape``, or (length,) for a range."""
    return shape if ref.neurons is None else (ref.neurons.stop - ref.neurons.start,)


def root_latents(graph: CompiledGraph, data_node: str) -> list[str]:
    """The nodes without incoming edges, other than the data node: a generative model's codes."""
    return [v for v in graph.order if not graph.nodes[v].incoming and v != data_node]


class Objective:
    """Classification, reconstruction or completion of ``spec.data``; see the module docstring."""

    def __init__(self, spec: GraphSpec, graph: CompiledGraph):
        d = spec.data
        if d is None:
            raise SpecError("training needs a data section naming the input node", "data")
        self.spec = spec
        self.inputs, self.targets = list(zip(d.names("input"), d.refs("input"))), list(zip(d.names("target"), d.refs("target")))
        self.input_ref, self.target_ref, self.hidden = self.inputs[0][1], (self.targets[0][1] if self.targets else None), d.ref("complete")
        self.input = self.input_ref.node
        self.target = self.target_ref.node if self.target_ref else None
        self.shapes = {v: graph.nodes[v].shape for v in graph.nodes}
        self.dtype, self.device = graph_dtype(graph)
        self.classify = d.target is not None and d.complete is None
        self.metric = "accuracy" if self.classify else "mse"
        self.higher_is_better = self.classify
        self.score_keys = [t for t, _ in self.targets] if self.classify else [self.inputs[0][0]]  # what scores() keys
        partial = any(ref.neurons is not None for _, ref in self.inputs + self.targets)
        if self.classify and spec.train.eval == "feedforward" and partial:
            raise SpecError("a feedforward evaluation reads whole nodes; with neuron ranges in data use "
                            "train.eval: inference", "train.eval")
        if self.classify:
            return
        if len(self.inputs) > 1:
            raise SpecError(f"{'completion' if self.hidden else 'reconstruction'} takes one input node, got "
                            f"{len(self.inputs)}: {', '.join(d.names('input'))}", "data.input")
        if self.hidden is not None:
            return
        if self.input_ref.neurons is not None:
            raise SpecError("reconstruction decodes a whole node; for part of one use data.complete",
                            "data.input")
        if not graph.acyclic:
            raise SpecError("reconstruction decodes by a feedforward pass and needs an acyclic graph", "graph.edges")
        if not graph.nodes[d.input].incoming:
            raise SpecError(f"reconstruction needs the input {d.input!r} to be predicted by the graph "
                            "(a generative model with the pixels at a leaf)", "data.input")
        self.roots = root_latents(graph, d.input)

    def data(self, x: Tensor | dict, y: Tensor | None = None) -> dict[str, Tensor]:
        """``{reference: values}``: ``x`` if it is such a dict, else one input ``x`` and target ``y``."""
        if isinstance(x, dict):
            return x
        out = {self.inputs[0][0]: x}
        if self.targets and y is not None:
            out[self.targets[0][0]] = y
        return out

    def batch(self, x: Tensor | dict, y: Tensor | None = None, check: bool = True) -> dict:
        """The clamped nodes of one training batch (:class:`Clamp` entries for neuron ranges):
        ``x`` is ``{reference: values}`` for every input and target, or the one input with the one
        target ``y``; each is fitted to its node (:func:`pcgraph.data.adapter.fit`: class labels
        one-hot, values reshaped, in the graph's dtype). ``check``: check the labels' range (a
        prepared data set's are checked once, when it is read)."""
        return self._clamp(self._fit(self.data(x, y), self.inputs + self.targets, check))

    def test_batch(self, x: Tensor | dict) -> dict:
        """The inputs alone, less the hidden neurons when completing."""
        return self._clamp(self._fit(self.data(x), self.inputs, True), self.hidden)

    def _fit(self, data: dict, refs: list, check: bool) -> list[tuple[NodeRef, Tensor]]:
        return [(ref, fit(data[text], ref_shape(self.shapes[ref.node], ref), text, self.dtype, self.device, check)) for text, ref in refs]

    def _clamp(self, parts: list[tuple[NodeRef, Tensor]], hide: NodeRef | None = None) -> dict:
        out, ranges = {}, {}
        for ref, values in parts:
            if ref.neurons is None and hide is None:
                out[ref.node] = values
                continue
            full = out.get(ref.node)
            if full is None:
                full = values.new_zeros(len(values), math.prod(self.shapes[ref.node]))
            r = ref.neurons or slice(0, full.shape[1])
            full[:, r] = values.reshape(len(values), -1)
            out[ref.node] = full
            ranges.setdefault(ref.node, []).append(torch.arange(r.start, r.stop))
        for v, pieces in ranges.items():
            index = torch.cat(pieces)
            if hide is not None and hide.node == v:
                index = index[(index < hide.neurons.start) | (index >= hide.neurons.stop)]
            out[v] = Clamp(out[v].reshape(-1, *self.shapes[v]), index)
        return out

    def states_per_sample(self, graph: CompiledGraph) -> int:
        """Values inferred per training sample: every neuron not clamped by the data or an observed role."""
        clamped = {v for v, n in graph.nodes.items() if n.spec.role == "observed"}
        refs = [ref for _, ref in self.inputs + self.targets]
        clamped |= {ref.node for ref in refs if ref.neurons is None}
        partly = sum(ref.neurons.stop - ref.neurons.start for ref in refs if ref.neurons is not None and ref.node not in clamped)
        return graph.states_per_sample(clamped) - partly

    @staticmethod
    def shape(graph: CompiledGraph, ref: NodeRef) -> tuple[int, ...]:
        """Per-sample shape of the data a reference takes: the node's, or (length,) for a range."""
        return ref_shape(graph.nodes[ref.node].shape, ref)

    @staticmethod
    def _read(states: States, ref: NodeRef) -> Tensor:
        x = states[ref.node]
        return x if ref.neurons is None else x.reshape(len(x), -1)[:, ref.neurons]

    @torch.no_grad()
    def evaluate(self, graph: CompiledGraph, solver, x: Tensor | dict, y: Tensor | None = None,
                 baseline: Backprop | None = None) -> float:
        """Test accuracy (several targets: their mean) or test MSE per pixel, over the test data
        (``x``: ``{reference: values}``, or the input with the target ``y``) in batches of
        ``data.test_batch_size`` (``baseline``: score the backprop model instead of PC)."""
        scores = self.scores(graph, solver, self.data(x, y), baseline)
        return sum(scores.values()) / len(scores)

    @torch.no_grad()
    def scores(self, graph: CompiledGraph, solver, data: dict, baseline: Backprop | None = None) -> dict[str, float]:
        """The test metric per target, ``{target: accuracy}`` (reconstruction, completion: ``{input: mse}``)."""
        size, n = self.spec.data.test_batch_size, samples(data)
        totals = dict.fromkeys(self.score_keys, 0.0)
        for i in range(0, n, size):
            part = {k: v[i: i + size] for k, v in data.items()}
            xb = part[self.inputs[0][0]]
            if self.classify:
                if baseline is not None or self.spec.train.eval == "feedforward":  # the baseline: the same graph
                    states = graph(self.test_batch(part))
                else:
                    with torch.enable_grad():
                        states = solver.relax(graph, self.test_batch(part)).states
                for text, ref in self.targets:
                    totals[text] += float((self._read(states, ref).argmax(1) == labels(part[text])).sum())
                continue
            if baseline is not None:
                out = baseline.predict(xb)
            else:
                with torch.enable_grad():
                    states = solver.relax(graph, self.test_batch(part)).states
                if self.hidden is not None:  # MSE per hidden neuron
                    start = self.hidden.neurons.start - (self.input_ref.neurons or slice(0, 0)).start
                    truth = xb.reshape(len(xb), -1)[:, start: start + self.hidden.neurons.stop - self.hidden.neurons.start]
                    totals[self.inputs[0][0]] += float(((self._read(states, self.hidden) - truth) ** 2).mean(1).sum())
                    continue
                out = self.decode(graph, states)
            totals[self.inputs[0][0]] += float(((out - xb) ** 2).sum()) / xb[0].numel()
        return {k: v / n for k, v in totals.items()}

    def decode(self, graph: CompiledGraph, states: States) -> Tensor:
        """The input node's value after a feedforward pass from the root latents alone."""
        return graph({v: states[v] for v in self.roots})[self.input]


class Backprop(nn.Module):
    """The backprop baseline of a spec (its ``bp`` section).

    Without an encoder: the same graph, loss = the clamped outputs' energies at the feedforward
    pass (:meth:`CompiledGraph.bp_loss`). With ``bp.encoder``: an autoencoder, z = encoder(x), loss
    = the input node's energy 1/2 ||x - decoder(z)||^2 under the graph's edges, batch-averaged.
    """

    def __init__(self, spec: GraphSpec, graph: CompiledGraph):
        super().__init__()
        self.graph = graph
        self.encoder = None
        if not graph.acyclic:
            raise SpecError("backprop needs a feedforward pass, and this graph has a cycle", "graph.edges")
        d = spec.data
        for field, i, ref, text in data_refs(d, ("input", "target")) if d is not None else ():
            if ref.neurons is not None:
                raise SpecError(f"the backprop baseline clamps whole nodes; {text} is a range of neurons",
                                ref_path(d, field, i))
        enc = spec.bp.encoder
        if enc is None:
            return
        d = spec.data
        if d is None or d.target is not None:
            raise SpecError("an encoder is for reconstruction specs (data.target: null)", "bp.encoder")
        if enc.source != [d.input]:
            raise SpecError(f"the encoder must read the data input {d.input!r}, got {enc.source}", "bp.encoder.from")
        roots = root_latents(graph, d.input)
        if roots != [enc.to]:
            raise SpecError(f"the encoder must predict the graph's root latent {roots}, got {enc.to!r}",
                            "bp.encoder.to")
        self.encoder = build_edge(enc, spec.graph.nodes, "bp.encoder")

    def trained_parameters(self) -> list[Tensor]:
        """What backprop trains: the graph's parameters and the encoder's, without the graph's
        amortised-init encoders (``graph.encoders``, part of PC's inference, unused here)."""
        skip = {id(p) for p in self.graph.encoders.parameters()}
        return [p for p in self.parameters() if id(p) not in skip]

    def loss(self, batch: States) -> Tensor:
        if self.encoder is None:
            return self.graph.bp_loss(batch)
        return self.graph.bp_loss({**batch, self.encoder.target: self.encoder(batch)})

    def predict(self, x: Tensor) -> Tensor:
        """The classifier's output node, or the autoencoder's reconstruction of ``x``."""
        d = self.graph.spec.data
        if self.encoder is None:
            return self.graph({d.input: x})[d.target]
        return self.graph({self.encoder.target: self.encoder({d.input: x})})[d.input]

    def step(self, batch: States, optimizer: torch.optim.Optimizer) -> Tensor:
        """One update by autograd; returns the loss before it."""
        optimizer.zero_grad(set_to_none=True)
        loss = self.loss(batch)
        loss.backward()
        weight_step(optimizer)
        return loss.detach()
