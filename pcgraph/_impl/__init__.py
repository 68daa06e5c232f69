"""Private machinery behind the solver."""
