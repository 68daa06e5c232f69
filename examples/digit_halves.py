"""Write the digits as an npz data set of two input nodes and two target nodes.

    python examples/digit_halves.py halves      # writes halves/train.npz, halves/test.npz
    pcgraph train examples/digit_halves.yaml --data-root halves

Each file holds one array per data node, under the node's name: ``left`` (the top four rows of
each 8x8 image, 32 pixels in [-1, 1]), ``right`` (the bottom four rows, as 4x8), and the labels
``digit`` (0..9) and ``parity`` (0 even, 1 odd) as integers, which training clamps one-hot.
"""

import sys
from pathlib import Path

import numpy as np

import pcgraph


def write(folder: str | Path) -> Path:
    """``folder``/train.npz and test.npz from pcgraph's split of the embedded digits."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    d = pcgraph.load_dataset("digits")
    for split, x, y in (("train", d.x_train, d.y_train), ("test", d.x_test, d.y_test)):
        x, y = ((x - 0.5) / 0.5).numpy(), y.numpy()  # (N, 64) in [-1, 1], (N,) int64
        np.savez(folder / f"{split}.npz", left=x[:, :32], right=x[:, 32:].reshape(-1, 4, 8), digit=y, parity=y % 2)
    return folder


if __name__ == "__main__":
    print(f"wrote {write(sys.argv[1] if len(sys.argv) > 1 else 'halves')}/{{train,test}}.npz")
