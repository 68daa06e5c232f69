"""The Python API checks its arguments as the YAML path does: a bad state optimizer or solver
setting is a ValueError naming the argument, before any work (issue 15, item 13)."""

import math

import pytest

import pcgraph
from pcgraph.solver import StateAdam, StateSGD


@pytest.mark.parametrize(("make", "name"), [
    (lambda: StateSGD(lr=-1), "lr"), (lambda: StateSGD(lr=0), "lr"), (lambda: StateSGD(lr=math.inf), "lr"),
    (lambda: StateSGD(lr=math.nan), "lr"), (lambda: StateSGD(momentum=1.5), "momentum"),
    (lambda: StateSGD(momentum=-0.1), "momentum"), (lambda: StateAdam(lr=-0.01), "lr"),
    (lambda: StateAdam(betas=(0.9, 1.0)), r"betas\[1\]"), (lambda: StateAdam(eps=0), "eps"),
    (lambda: pcgraph.Solver(steps=-1), "steps"),
    (lambda: pcgraph.Solver(steps=2.5), "steps"), (lambda: pcgraph.Solver(check_every=0), "check_every"),
    (lambda: pcgraph.Solver(tol=-1.0), "tol"),
])
def test_bad_arguments_are_refused_by_name(make, name):
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        make()


def test_good_arguments_pass():
    assert StateSGD(0.1, momentum=0.9).momentum == 0.9 and StateAdam(0.01, (0.0, 0.5), 1e-6).eps == 1e-6
    assert pcgraph.Solver(steps=1, tol=1e-6, check_every=1).steps == 1
    assert pcgraph.Solver(steps=0).steps == 0  # no inference step: learning at the starting states
