"""Variational inference on one Gaussian latent: the free energy bounds the KL and the log-evidence
(the lecture notes' Figure 2, eqs. 9-16).

    python examples/tutorial/fig2_free_energy.py [--out fig2_free_energy.png]

Model (``latent_model.py``): z ~ N(1, 1), y | z ~ N(z, 0.7^2), one observation y = 2.5; being
linear-Gaussian, its posterior p(z | y) and evidence p(y) are closed forms. A Gaussian variational
posterior q(z) = N(mu, sigma^2) has the free energy (the notes' sign: F is minimised)

    F(mu, sigma) = E_q[-log p(y, z)] - H(q) = KL(q || p(z | y)) - log p(y),

whose expected-energy term is pcgraph's energy of the two-node graph averaged under q. So
F >= -log p(y) for every q (equivalently, in the ELBO convention, -F <= log p(y)), with equality
exactly at q = p(z | y); and F >= KL(q || p(z | y)) as long as -log p(y) >= 0, which holds here
(the evidence is a density, so that part is not guaranteed in general). Panels: (a) prior,
likelihood and posterior; (b) a q away from the posterior and the integrand of their KL;
(c) F, KL and -log p(y) across mu; (d) the ELBO -F across mu for several sigma, under log p(y).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from gaussian_maths import density, kl
from latent_model import LatentModel

MODEL = LatentModel(prior_mean=1.0, prior_std=1.0, weight=1.0, obs_std=0.7)
Y = 2.5
MUS = torch.linspace(-1.0, 5.0, 241, dtype=torch.float64)  # variational means
SIGMA_FACTORS = (0.5, 1.0, 2.0)  # variational std as multiples of the posterior std


def compute(model: LatentModel = MODEL, y: float = Y) -> dict:
    """Posterior, evidence, and F and KL on the mu grid for each sigma (F from the graph's energy)."""
    graph = model.graph()
    mean, std = model.posterior(y)
    log_evidence = model.log_evidence(y)
    sigmas = [f * std for f in SIGMA_FACTORS]
    free = {f: model.free_energy(y, MUS, s, graph) for f, s in zip(SIGMA_FACTORS, sigmas)}
    divergence = {f: kl(MUS, s, mean, std) for f, s in zip(SIGMA_FACTORS, sigmas)}
    gap = min((free[f] + log_evidence).min().item() for f in SIGMA_FACTORS)
    identity = max((free[f] - divergence[f] + log_evidence).abs().max().item() for f in SIGMA_FACTORS)
    return {"posterior": (mean.item(), std.item()), "log_evidence": log_evidence.item(), "free": free,
            "kl": divergence, "min_gap": gap, "identity_error": identity,
            "free_at_posterior": model.free_energy(y, mean, std, graph).item()}


def plot(result: dict, path: str | Path, model: LatentModel = MODEL, y: float = Y) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    (mean, std), log_ev = result["posterior"], result["log_evidence"]
    z = torch.linspace(-2.5, 5.5, 801, dtype=torch.float64)
    prior = density(z, model.prior_mean, model.prior_std)
    likelihood = density(y, model.weight * z, model.obs_std)
    posterior = density(z, mean, std)
    fig, ((ax_a, ax_b), (ax_c, ax_d)) = plt.subplots(2, 2, figsize=(13, 9))

    ax_a.plot(z, prior, color="tab:blue", label=f"prior p(z) = N({model.prior_mean:g}, {model.prior_std:g}$^2$)")
    ax_a.plot(z, likelihood, color="tab:green",
              label=f"likelihood p(y = {y:g} | z), y | z ~ N({model.weight:g} z, {model.obs_std:g}$^2$)")
    ax_a.plot(z, posterior, color="black", lw=2, label=f"exact posterior p(z | y) = N({mean:.2f}, {std:.2f}$^2$)")
    ax_a.axvline(y / model.weight, color="tab:green", ls=":", lw=1)
    ax_a.set(title="(a) a Gaussian latent z and one observation y", xlabel="latent z", ylabel="density")
    ax_a.legend(fontsize=9)

    q_mean, q_std = mean - 1.2, 1.4 * std
    q = density(z, q_mean, q_std)
    integrand = q * torch.log(q / posterior)
    ax_b.plot(z, posterior, color="black", lw=2, label="exact posterior p(z | y)")
    ax_b.plot(z, q, color="tab:purple", lw=2, label=f"variational q(z) = N({q_mean:.2f}, {q_std:.2f}$^2$)")
    ax_b.fill_between(z, 0, integrand, color="red", alpha=0.35,
                      label=f"q log(q / p): its area is KL(q || p) = {kl(q_mean, q_std, mean, std).item():.3f}")
    ax_b.axhline(0, color="grey", lw=0.8)
    ax_b.set(title="(b) the KL divergence from q to the exact posterior", xlabel="latent z",
             ylabel="density / integrand")
    ax_b.legend(fontsize=9)

    styles = {0.5: ":", 1.0: "-", 2.0: "--"}
    for f in SIGMA_FACTORS:
        ax_c.plot(MUS, result["free"][f], color="tab:red", ls=styles[f])
        ax_c.plot(MUS, result["kl"][f], color="tab:purple", ls=styles[f])
        ax_d.plot(MUS, -result["free"][f], color="tab:red", ls=styles[f])
    ax_c.axhline(-log_ev, color="black", lw=1.5)
    ax_d.axhline(log_ev, color="black", lw=1.5)
    ax_c.plot(mean, -log_ev, "k*", markersize=14)
    ax_d.plot(mean, log_ev, "k*", markersize=14)
    sigma_keys = [Line2D([], [], color="grey", ls=styles[f], label=f"$\\sigma$ = {f:g} s* = {f * std:.2f}")
                  for f in SIGMA_FACTORS]
    ax_c.legend(handles=[Line2D([], [], color="tab:red", label="free energy F"),
                         Line2D([], [], color="tab:purple", label="KL(q || p(z | y))"),
                         Line2D([], [], color="black", label=f"$-$log p(y) = {-log_ev:.3f}"),
                         Line2D([], [], color="black", marker="*", ls="", markersize=12,
                                label="q = p(z | y): F = $-$log p(y), KL = 0"), *sigma_keys],
                fontsize=8, loc="upper center", ncol=2)
    ax_d.legend(handles=[Line2D([], [], color="tab:red", label="ELBO $-$F"),
                         Line2D([], [], color="black", label=f"log p(y) = {log_ev:.3f}"),
                         Line2D([], [], color="black", marker="*", ls="", markersize=12,
                                label="q = p(z | y): $-$F = log p(y)"), *sigma_keys],
                fontsize=8, loc="lower center")
    ax_c.set(title="(c) F = KL $-$ log p(y) bounds both from above", xlabel="variational mean $\\mu$",
             ylabel="nats", ylim=(-0.3, 10))
    ax_d.set(title="(d) ELBO convention: $-$F bounds the log-evidence from below", xlabel="variational mean $\\mu$",
             ylabel="nats", ylim=(-9, 0.3 + log_ev))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(out: str | Path | None = None) -> dict:
    """Compute, plot to ``out`` (default: next to this script) and print a one-line summary."""
    out = Path(out) if out is not None else Path(__file__).with_suffix(".png")
    result = compute()
    plot(result, out)
    (mean, std), log_ev = result["posterior"], result["log_evidence"]
    print(f"posterior N({mean:.4f}, {std:.4f}^2), log p(y) = {log_ev:.4f}; min over the (mu, sigma) grid of "
          f"F + log p(y) = {result['min_gap']:.2e} >= 0; F at the posterior + log p(y) = "
          f"{result['free_at_posterior'] + log_ev:.1e}; |F - KL + log p(y)| <= {result['identity_error']:.0e}; "
          f"saved {out}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="PNG to write (default: next to this script)")
    main(parser.parse_args().out)
