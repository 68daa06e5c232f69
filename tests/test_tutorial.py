"""The tutorial figures (examples/tutorial): their maths against independent references (scipy's
quadrature and densities, numerical Bayes on a grid, hand-written gradients), and each script
writing its PNG."""

import importlib
import math
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from scipy import integrate, stats

TUTORIAL = Path(__file__).resolve().parents[1] / "examples" / "tutorial"
MODULES = ("gaussian_maths", "latent_model", "fig1_gaussians", "fig2_free_energy", "fig4_inference_learning")


@pytest.fixture(scope="module")
def tut():
    """The tutorial's modules, imported as the scripts import each other (from their folder)."""
    sys.path.insert(0, str(TUTORIAL))
    try:
        yield SimpleNamespace(**{name: importlib.import_module(name) for name in MODULES})
    finally:
        sys.path.remove(str(TUTORIAL))
        for name in MODULES:
            sys.modules.pop(name, None)


def quad(f, lo=-math.inf, hi=math.inf) -> float:
    return integrate.quad(f, lo, hi, epsabs=1e-12, epsrel=1e-12, limit=200)[0]


PAIRS = [(0.0, 1.0, 0.0, 1.0), (0.3, 0.5, -1.2, 2.0), (2.0, 1.7, 1.5, 0.4), (-1.0, 0.2, -0.9, 0.25)]  # (m_p, s_p, m_q, s_q)


# --- Figure 1: entropy and cross-entropy -------------------------------------------------------------

@pytest.mark.parametrize("std", [0.05, 0.3, 1.0, 4.0])
def test_entropy_is_the_integral_of_minus_p_log_p(tut, std):
    p = stats.norm(0.7, std)
    reference = quad(lambda x: -p.pdf(x) * p.logpdf(x), 0.7 - 40 * std, 0.7 + 40 * std)
    assert tut.gaussian_maths.entropy(std).item() == pytest.approx(reference, abs=1e-9)
    assert (tut.gaussian_maths.entropy(std).item() < 0) == (std**2 < 1 / (2 * math.pi * math.e))


def test_entropy_grows_with_the_variance(tut):
    h = tut.gaussian_maths.entropy(torch.linspace(0.01, 10, 500, dtype=torch.float64))
    assert bool((h.diff() > 0).all())


@pytest.mark.parametrize("mp, sp, mq, sq", PAIRS)
def test_cross_entropy_is_the_integral_of_minus_p_log_q(tut, mp, sp, mq, sq):
    p, q = stats.norm(mp, sp), stats.norm(mq, sq)
    reference = quad(lambda x: -p.pdf(x) * q.logpdf(x), mp - 40 * sp, mp + 40 * sp)
    assert tut.gaussian_maths.cross_entropy(mp, sp, mq, sq).item() == pytest.approx(reference, abs=1e-9)
    # Figure 1's second route: pcgraph's Gaussian energy averaged under p, plus the normaliser
    assert tut.fig1_gaussians.cross_entropy_by_energy(mp, sp, mq, sq).item() == pytest.approx(reference, abs=1e-9)


def test_cross_entropy_is_at_least_the_entropy_with_equality_only_at_q_equal_p(tut):
    g = tut.gaussian_maths
    means = torch.linspace(-3, 3, 61, dtype=torch.float64)[:, None]  # (61, 1), includes 0
    stds = torch.linspace(0.2, 3, 57, dtype=torch.float64)[None, :]  # (1, 57), includes 1
    gap = g.cross_entropy(0.0, 1.0, means, stds) - g.entropy(1.0)  # (61, 57)
    at_p = (means.abs() < 1e-12) & ((stds - 1).abs() < 1e-12)
    assert at_p.sum() == 1 and gap[at_p].abs().item() < 1e-12
    assert bool((gap[~at_p] > 1e-6).all())


def test_fig1_reference_minimises_the_cross_entropy(tut):
    r = tut.fig1_gaussians.compute()
    assert all(h > r["reference_entropy"] for h in r["cross_entropies"])
    assert r["grid_minimum"] == pytest.approx(r["reference_entropy"], abs=1e-12)
    assert r["grid_argmin"] == pytest.approx(tut.fig1_gaussians.REFERENCE, abs=1e-9)


# --- KL, the posterior, the evidence and the free energy (Figure 2) ---------------------------------

@pytest.mark.parametrize("mp, sp, mq, sq", PAIRS)
def test_kl_is_the_integral_of_q_log_q_over_p_and_is_nonnegative(tut, mp, sp, mq, sq):
    p, q = stats.norm(mp, sp), stats.norm(mq, sq)
    reference = quad(lambda x: q.pdf(x) * (q.logpdf(x) - p.logpdf(x)), mq - 40 * sq, mq + 40 * sq)
    value = tut.gaussian_maths.kl(mq, sq, mp, sp).item()
    assert value == pytest.approx(reference, abs=1e-9)
    assert value >= 0 and (value < 1e-14) == ((mp, sp) == (mq, sq))


MODELS = [((1.0, 1.0, 1.0, 0.7), 2.5), ((-0.5, 1.5, -1.3, 0.6), 0.4), ((2.0, 0.8, 0.4, 2.0), -1.0)]


@pytest.mark.parametrize("params, y", MODELS)
def test_graph_energy_is_the_negative_log_joint_up_to_its_normaliser(tut, params, y):
    model = tut.latent_model.LatentModel(*params)
    z = torch.linspace(-4, 4, 17, dtype=torch.float64)
    energy = model.energy(model.graph(), z, y)
    log_joint = stats.norm.logpdf(z.numpy(), model.prior_mean, model.prior_std) + stats.norm.logpdf(
        y, model.weight * z.numpy(), model.obs_std)
    normaliser = math.log(2 * math.pi * model.prior_std * model.obs_std)
    assert torch.allclose(energy, torch.from_numpy(-log_joint) - normaliser, atol=1e-12)


@pytest.mark.parametrize("params, y", MODELS)
def test_posterior_and_evidence_match_numerical_bayes_on_a_grid(tut, params, y):
    model = tut.latent_model.LatentModel(*params)
    z = torch.linspace(-15, 15, 30001, dtype=torch.float64)
    joint = torch.from_numpy(stats.norm.pdf(z.numpy(), model.prior_mean, model.prior_std)
                             * stats.norm.pdf(y, model.weight * z.numpy(), model.obs_std))
    evidence = torch.trapezoid(joint, z)
    posterior = joint / evidence
    mean = torch.trapezoid(z * posterior, z)
    std = torch.trapezoid((z - mean) ** 2 * posterior, z).sqrt()
    closed_mean, closed_std = model.posterior(y)
    assert closed_mean.item() == pytest.approx(mean.item(), abs=1e-8)
    assert closed_std.item() == pytest.approx(std.item(), abs=1e-8)
    assert model.log_evidence(y).item() == pytest.approx(math.log(evidence.item()), abs=1e-8)


@pytest.mark.parametrize("params, y", MODELS)
def test_free_energy_is_never_below_minus_log_evidence_and_tight_at_the_posterior(tut, params, y):
    model = tut.latent_model.LatentModel(*params)
    graph = model.graph()
    mean, std = model.posterior(y)
    log_evidence = model.log_evidence(y)
    mus = torch.linspace(-6, 6, 49, dtype=torch.float64)[:, None] + mean  # (49, 1), includes mean
    sigmas = std * torch.logspace(-1, 1, 41, dtype=torch.float64)[None, :]  # (1, 41), includes std
    free = model.free_energy(y, mus, sigmas, graph)  # (49, 41)
    gap = free + log_evidence  # F + log p(y) = KL(q || p(z | y)); ELBO convention: log p(y) - (-F)
    at_posterior = ((mus - mean).abs() < 1e-12) & ((sigmas - std).abs() < 1e-12)
    assert at_posterior.sum() == 1 and gap[at_posterior].abs().item() < 1e-10
    assert bool((gap[~at_posterior] > 1e-6).all())
    assert torch.allclose(gap, tut.gaussian_maths.kl(mus, sigmas, mean, std), atol=1e-10)


@pytest.mark.parametrize("mu, sigma", [(0.0, 0.3), (2.0, 0.57), (3.5, 1.5)])
def test_free_energy_is_the_integral_of_q_log_q_over_the_joint(tut, mu, sigma):
    model, y = tut.fig2_free_energy.MODEL, tut.fig2_free_energy.Y
    q = stats.norm(mu, sigma)

    def integrand(z):
        log_joint = stats.norm.logpdf(z, model.prior_mean, model.prior_std) + stats.norm.logpdf(
            y, model.weight * z, model.obs_std)
        return q.pdf(z) * (q.logpdf(z) - log_joint)

    reference = quad(integrand, mu - 40 * sigma, mu + 40 * sigma)
    assert model.free_energy(y, mu, sigma).item() == pytest.approx(reference, abs=1e-9)


def test_fig2_bounds_hold_on_its_own_curves(tut):
    r = tut.fig2_free_energy.compute()
    assert r["log_evidence"] < 0  # so that F >= KL too, as panel (c) shows
    assert r["min_gap"] >= 0 and r["identity_error"] < 1e-12
    assert r["free_at_posterior"] == pytest.approx(-r["log_evidence"], abs=1e-12)
    for f in tut.fig2_free_energy.SIGMA_FACTORS:
        assert bool((r["free"][f] >= r["kl"][f]).all()) and bool((r["kl"][f] >= 0).all())


# --- Figure 4: inference then learning with pcgraph's solver -----------------------------------------

def test_fig4_inference_reaches_the_closed_form_map_state(tut):
    fig4 = tut.fig4_inference_learning
    model = replace(fig4.MODEL, weight=-0.8, obs_std=0.5)
    r = fig4.run(model=model, rounds=1, steps=200, state_lr=0.1)
    (first,) = r["rounds"]
    # the MAP state by hand: dE/dz = (z - m)/s_z^2 - w (y - w z)/s_y^2 = 0
    m, sz, w, sy, y = model.prior_mean, model.prior_std, model.weight, model.obs_std, fig4.Y
    z_map = (m / sz**2 + w * y / sy**2) / (1 / sz**2 + w**2 / sy**2)
    assert first["z_map"] == pytest.approx(z_map, abs=1e-12)
    assert first["z"] == pytest.approx(z_map, abs=1e-9)


def test_fig4_one_step_calls_follow_the_same_path_as_one_relaxation(tut):
    import pcgraph

    fig4 = tut.fig4_inference_learning
    steps = 7
    traced = fig4.run(rounds=1, steps=steps)["path"]["z"][steps]  # the state after the 7th step
    spec = fig4.MODEL.spec(steps=steps, lr=fig4.STATE_LR)
    relaxed = pcgraph.Solver.from_spec(spec).relax(fig4.MODEL.graph(), {"y": torch.tensor([[fig4.Y]],
                                                                                            dtype=torch.float64)})
    assert relaxed.steps == steps and traced == pytest.approx(relaxed.states["z"].item(), abs=1e-14)


def test_fig4_learning_step_is_the_hand_written_weight_gradient(tut):
    fig4 = tut.fig4_inference_learning
    model, eta, y = replace(fig4.MODEL, obs_std=0.8), 0.05, fig4.Y
    r = fig4.run(model=model, rounds=3, weight_lr=eta)
    for round_ in r["rounds"]:
        z, w = round_["z"], round_["w_before"]
        d_energy_d_w = -(y - w * z) * z / model.obs_std**2  # E = ... + (y - w z)^2 / (2 s_y^2)
        assert round_["w_after"] == pytest.approx(w - eta * d_energy_d_w, abs=1e-12)
        assert round_["w_after"] > w  # w z was below y: learning raises w


def test_fig4_both_phases_descend_the_energy(tut):
    path = tut.fig4_inference_learning.run()["path"]
    energy = torch.tensor(path["energy"])
    assert bool((energy.diff() <= 1e-12).all()) and energy[-1] < 0.1 * energy[0]
    assert [p for p in path["phase"] if p == "learn"] == ["learn"] * tut.fig4_inference_learning.ROUNDS


# --- the scripts --------------------------------------------------------------------------------------

@pytest.mark.parametrize("script", ["fig1_gaussians", "fig2_free_energy", "fig4_inference_learning"])
def test_script_writes_its_png_and_one_summary_line(tut, script, tmp_path, capsys):
    out = tmp_path / f"{script}.png"
    getattr(tut, script).main(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0]
