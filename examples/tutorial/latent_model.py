"""The tutorial's generative model, the smallest predictive coding graph: one latent, one observation.

    z ~ N(m, s_z^2),        y | z ~ N(w z, s_y^2)

As a pcgraph spec: a node ``z`` with a Gaussian prior, an observed node ``y`` with a Gaussian
energy of variance s_y^2, and one bias-free linear edge z -> y of weight w. The graph's energy is
the negative log joint density up to its normalising constant:

    E(z, y) = (z - m)^2 / (2 s_z^2) + (y - w z)^2 / (2 s_y^2) = -log p(y, z) - log(2 pi s_z s_y)

Being linear-Gaussian, the exact posterior and the evidence are closed forms:

    p(z | y) = N(mu*, s*^2),   1/s*^2 = 1/s_z^2 + w^2/s_y^2,   mu* = s*^2 (m/s_z^2 + w y/s_y^2)
    p(y)     = N(y; w m, w^2 s_z^2 + s_y^2)

The posterior mean mu* is also the MAP state, the minimum of E over z that PC inference finds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from gaussian_maths import entropy, expectation
from torch import Tensor

import pcgraph


@dataclass(frozen=True)
class LatentModel:
    """z ~ N(prior_mean, prior_std^2), y | z ~ N(weight z, obs_std^2)."""

    prior_mean: float = 1.0
    prior_std: float = 1.0
    weight: float = 1.0
    obs_std: float = 0.7

    def spec(self, steps: int = 20, lr: float = 0.2) -> pcgraph.GraphSpec:
        """The two-node graph (the weight as the edge's initial value), inferred by ``steps`` plain
        gradient steps of size ``lr`` from the prior mean."""
        return pcgraph.spec_from_dict({
            "name": "latent-observation",
            "graph": {
                "nodes": {
                    "z": {"shape": [1], "prior": {"mean": self.prior_mean, "covariance": self.prior_std**2}},
                    "y": {"shape": [1], "role": "observed",
                          "energy": {"kind": "gaussian", "covariance": self.obs_std**2}},
                },
                "edges": [{"from": "z", "to": "y", "fn": [{"kind": "linear", "bias": False,
                                                           "weight": [[self.weight]]}]}],
            },
            "inference": {"steps": steps, "init": "prior", "optimizer": {"kind": "sgd", "lr": lr}},
        })

    def graph(self) -> pcgraph.CompiledGraph:
        """The compiled graph, in float64."""
        return pcgraph.compile(self.spec(), dtype=torch.float64)

    def posterior(self, y: float) -> tuple[Tensor, Tensor]:
        """(mu*, s*): 1/s*^2 = 1/s_z^2 + w^2/s_y^2, mu* = s*^2 (m/s_z^2 + w y/s_y^2)."""
        precision = 1 / self.prior_std**2 + self.weight**2 / self.obs_std**2
        mean = (self.prior_mean / self.prior_std**2 + self.weight * y / self.obs_std**2) / precision
        return torch.tensor(mean, dtype=torch.float64), torch.tensor(precision**-0.5, dtype=torch.float64)

    def log_evidence(self, y: float) -> Tensor:
        """log p(y) = log N(y; w m, w^2 s_z^2 + s_y^2)."""
        var = self.weight**2 * self.prior_std**2 + self.obs_std**2
        return torch.tensor(-0.5 * (math.log(2 * math.pi * var) + (y - self.weight * self.prior_mean) ** 2 / var),
                            dtype=torch.float64)

    def energy(self, graph: pcgraph.CompiledGraph, z: Tensor, y: float) -> Tensor:
        """E(z, y) by the compiled graph, one value per element of ``z`` (same shape)."""
        zs = z.reshape(-1, 1)  # (B, 1): every z value is one sample of the batch
        states = {"z": zs, "y": torch.full_like(zs, y)}
        with torch.no_grad():
            return sum(graph.node_energies(states).values()).reshape(z.shape)

    def free_energy(self, y: float, mean, std, graph: pcgraph.CompiledGraph | None = None) -> Tensor:
        """F(q) = E_q[-log p(y, z)] - H(q) for q = N(mean, std^2), with the expected energy E_q[E(z, y)]
        from the graph's own energy (Gauss-Hermite quadrature, exact here: E is quadratic in z);
        F = KL(q || p(z | y)) - log p(y) >= -log p(y), with equality at q = p(z | y)."""
        graph = graph or self.graph()
        log_normaliser = math.log(2 * math.pi * self.prior_std * self.obs_std)
        return expectation(lambda z: self.energy(graph, z, y), mean, std) + log_normaliser - entropy(std)
