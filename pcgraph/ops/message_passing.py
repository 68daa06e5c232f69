"""The ``sparse`` op's module: message passing batched over samples, never a dense N x N matrix.

The batch is the feature dimension of the message passing: states ``x`` of shape (B, N_source)
are passed as N_source vertices with B features, so one sparse-matrix product
``mu^T = A x^T`` (A: N_target x N_source in CSR form, values w) serves the whole batch. The
closed-form local rule (:meth:`SparseLinear.local_vjp`) uses ``dE/dx = (A^T g^T)^T`` and
``dE/dw_ij = sum_b g_bi x_bj`` (a sampled product on A's pattern), so an inference step costs
O(E B) time and O(N B + E) memory.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from pcgraph.ops import OpModule

with warnings.catch_warnings():  # torch-geometric's import-time deprecation notices
    warnings.simplefilter("ignore")
    from torch_geometric.nn import MessagePassing
    from torch_geometric.utils import spmm


_optimizer_steps = [0]  # bumped after every torch.optim step: fused optimizers leave _version alone


def _count_step(optimizer, args, kwargs) -> None:
    _optimizer_steps[0] += 1


register_optimizer_step_post_hook(_count_step)


def _csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


def _crow(rows: Tensor, n: int) -> Tensor:
    return torch.ops.aten._convert_indices_from_coo_to_csr(rows, n)


class SparseLinear(MessagePassing, OpModule):
    r"""mu_i = \sum_{j \to i} w_{ij} x_j + b_i, one weight per connection, batched over samples.

    ``src`` and ``dst`` are the connections j -> i in the *listed order* (a spec's ``edges`` list
    as listed, a generator's as :mod:`pcgraph.topology` defines; no repeats). Learning changes
    exactly these weights: there is no weight for an absent connection.

    Storage is sorted by target, then source (``edge_index``, ``weight``: the CSR order, for
    speed). In the listed order: :meth:`listed_connections` gives row k = [j_k, i_k],
    :meth:`listed_weights` gives w_k (a copy) and :meth:`set_listed_weights` sets them, so
    ``listed_weights()[k]`` is the weight of ``listed_connections()[k]``. ``listed_position[s]``
    is the listed place of stored connection s.
    """

    propagate_type = {"x": Tensor, "edge_weight": Tensor | None}  # both paths' arguments
    has_local_rule = True

    def __init__(self, src: Tensor, dst: Tensor, n_source: int, n_target: int, bias: bool = True,
                 init: str = "fan_in"):
        super().__init__(aggr="add", node_dim=0)
        self.n_source, self.n_target = n_source, n_target
        listed = torch.argsort(dst * n_source + src, stable=True)  # stored s <- listed listed[s]
        src, dst = src[listed], dst[listed]
        key = dst * n_source + src
        if bool((key[1:] == key[:-1]).any()):
            raise ValueError("a connection is repeated: give each (source, target) pair once")
        self.register_buffer("listed_position", listed, persistent=False)  # from the spec: not saved
        self.register_buffer("edge_index", torch.stack([src, dst]))  # saved: checked when loaded
        self.register_buffer("crow", _crow(dst, n_target), persistent=False)  # derived: not saved
        t = torch.argsort(src * n_target + dst)  # the transpose's CSR order
        self.register_buffer("t_perm", t, persistent=False)
        self.register_buffer("t_crow", _crow(src[t], n_source), persistent=False)
        self.register_buffer("t_col", dst[t], persistent=False)
        self.weight = nn.Parameter(torch.zeros(len(src)))
        self.bias = nn.Parameter(torch.zeros(n_target)) if bias else None
        if init == "fan_in" and len(src):
            degree = torch.bincount(dst, minlength=n_target).clamp_min(1).to(torch.float32)
            with torch.no_grad():
                self.weight.uniform_(-1, 1).mul_(degree[dst].rsqrt())
        self._transposed: tuple | None = None

    def adjacency(self) -> Tensor:
        """A (N_target x N_source, CSR) with the weights as values (differentiable in them)."""
        return _csr(self.crow, self.edge_index[0], self.weight, (self.n_target, self.n_source))

    def refresh(self) -> None:
        """Forget the cached A^T (the solver calls it at the start of every relaxation)."""
        self._transposed = None

    def connections(self) -> tuple[Tensor, Tensor]:
        """(source, target) neuron indices in the storage order (sorted by target, then source)."""
        return self.edge_index[0], self.edge_index[1]

    def listed_connections(self) -> Tensor:
        """(E, 2): row k is [source neuron j_k, target neuron i_k] of the k-th listed connection."""
        out = torch.empty_like(self.edge_index.T)
        out[self.listed_position] = self.edge_index.T
        return out

    def listed_weights(self) -> Tensor:
        """(E,): w_k, the weight of ``listed_connections()[k]`` (a detached copy)."""
        out = torch.empty_like(self.weight.detach())
        out[self.listed_position] = self.weight.detach()
        return out

    def set_listed_weights(self, values) -> None:
        """Set w_k for every listed connection k (``values``: E finite numbers, a list or a
        tensor), in place and without rounding beyond the module's dtype."""
        w = torch.as_tensor(values, dtype=self.weight.dtype, device=self.weight.device)
        if w.shape != self.weight.shape:
            raise ValueError(f"expected {len(self.weight)} weights (one per connection), got shape {list(w.shape)}")
        if not bool(torch.isfinite(w).all()):
            raise ValueError("the weights must be finite numbers (got inf or nan)")
        with torch.no_grad():
            self.weight.copy_(w[self.listed_position])

    def adjacency_t(self) -> Tensor:
        """A^T in CSR form, cached within a relaxation and rebuilt when the weights may have
        changed: an in-place edit (the version counter), a move, or any optimizer step (iPC steps
        the weights inside a relaxation); :meth:`refresh` clears it before each relaxation."""
        key = (self.weight._version, self.weight.data_ptr(), self.weight.dtype, _optimizer_steps[0])
        if self._transposed is None or self._transposed[0] != key:
            values = self.weight.detach()[self.t_perm]
            self._transposed = (key, _csr(self.t_crow, self.t_col, values, (self.n_source, self.n_target)))
        return self._transposed[1]

    def forward(self, x: Tensor) -> Tensor:
        """(B, N_source) -> (B, N_target): the fused message-and-aggregate kernel, called directly
        (``propagate`` gives the same result but first converts the CSR matrix back to an edge list
        on every call, an O(E) copy that costs more than the product itself)."""
        out = self.message_and_aggregate(self.adjacency(), x.T.contiguous()).T
        return out + self.bias if self.bias is not None else out

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        saved = state_dict.get(prefix + "edge_index")
        if saved is not None and not torch.equal(saved.to(self.edge_index.device), self.edge_index):
            error_msgs.append(f"{prefix}edge_index: the saved connections differ from the ones the spec builds "
                              "here (another networkx version or topology code?); the weights would not fit them")
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def message(self, x_j: Tensor, edge_weight: Tensor) -> Tensor:  # the unfused (edge-list) path
        return edge_weight[:, None] * x_j

    def message_and_aggregate(self, adj_t: Tensor, x: Tensor) -> Tensor:  # the fused path
        return spmm(adj_t, x, reduce="sum")

    def local_vjp(self, x: Tensor, g: Tensor, grads: dict | None, need_input: bool) -> Tensor | None:
        """dE/dx = g A (as (A^T g^T)^T); with ``grads``, add dE/dw = sum_b g_bi x_bj and dE/db."""
        if grads is not None:
            pattern = _csr(self.crow, self.edge_index[0], self.weight.detach(), (self.n_target, self.n_source))
            dw = torch.sparse.sampled_addmm(pattern, g.T.contiguous(), x.contiguous(), beta=0.0).values()
            grads[self.weight] = grads[self.weight] + dw if self.weight in grads else dw
            if self.bias is not None:
                db = g.sum(0)
                grads[self.bias] = grads[self.bias] + db if self.bias in grads else db
        return (self.adjacency_t() @ g.T.contiguous()).T if need_input else None

    def dense(self) -> Tensor:
        """The weights as a dense N_target x N_source matrix (for tests and small graphs only)."""
        w = torch.zeros(self.n_target, self.n_source, dtype=self.weight.dtype, device=self.weight.device)
        w[self.edge_index[1], self.edge_index[0]] = self.weight.detach()
        return w

    def __repr__(self) -> str:
        return (f"SparseLinear({self.n_source} -> {self.n_target}, {len(self.weight):,} connections, "
                f"bias={self.bias is not None})")
