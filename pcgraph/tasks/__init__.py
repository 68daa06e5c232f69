"""Tasks: what the CLI runs (training and evaluation for now)."""

from pcgraph.tasks.train import TrainResult, evaluate, train

__all__ = ["TrainResult", "evaluate", "train"]
