"""Tasks: what the CLI runs (training, evaluation, the backprop check)."""

from pcgraph.tasks.train import TrainResult, evaluate, train
from pcgraph.tasks.verify import BPCheck, ParamCheck, bp_gradients, verify_bp

__all__ = ["BPCheck", "ParamCheck", "TrainResult", "bp_gradients", "evaluate", "train", "verify_bp"]
