"""The label-graph head of ML-GCN (Chen et al., "Multi-Label Image Recognition with Graph Convolutional
Networks", CVPR 2019): a graph over the findings, built from their co-occurrence in the training labels, turns
one embedding per finding into one classifier per finding.

The graph (:func:`label_graph`) follows the paper's section 3.4: the conditional probabilities
``P(j | i) = count(i and j) / count(i)`` are binarised at ``tau`` (against noisy rare co-occurrences) and
re-weighted with ``p`` so that a finding keeps ``1 - p`` of its own embedding and spreads ``p`` over its
neighbours (against over-smoothing). A finding without neighbours, or without any positive in the training
split, keeps a self-loop only (its row is the identity's).

:class:`LabelGCN` runs two graph convolutions with LeakyReLU(0.2) between them over learned label embeddings
(no word vectors exist offline, so the paper's GloVe inputs become parameters) and returns the
``(C, out_dim)`` classifier matrix; the fusion head dots it with its projection of the fused input
(:class:`~hybridcxr.classify.fusion.FusionHead` with ``head="gcn"``).

>>> labels = np.array([[1, 1, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
>>> label_graph(labels, tau=0.4, p=0.2).round(2).tolist()
[[0.8, 0.2, 0.0], [0.2, 0.8, 0.0], [0.0, 0.0, 1.0]]
>>> LabelGCN(label_graph(labels), dim=8, out_dim=32)().shape  # 3 findings, each a 32-wide classifier
torch.Size([3, 32])
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

#: The paper's defaults: binarisation threshold and the weight given to the neighbours.
DEFAULT_TAU = 0.4
DEFAULT_P = 0.2


def label_graph(labels: np.ndarray, tau: float = DEFAULT_TAU, p: float = DEFAULT_P) -> np.ndarray:
    """The re-weighted co-occurrence graph ``(C, C)`` of training labels (ML-GCN's equations 7 and 8).

    Row ``i`` says how much finding ``i`` takes from each finding: ``1 - p`` from itself and ``p`` shared
    equally among the findings ``j`` with ``P(j | i) >= tau``. Rows sum to 1. A finding with no positive
    label (a zero co-occurrence row) or no neighbour above ``tau`` gets a self-loop of 1 only.

    Args:
        labels: ``(N, C)`` training labels, 0/1; NaN (not labelled) counts as negative.
        tau: threshold on ``P(j | i)`` in (0, 1].
        p: the neighbours' share in [0, 1).

    Returns:
        A float64 array whose rows sum to 1.
    """
    y = np.nan_to_num(np.asarray(labels, dtype=np.float64)) > 0.5
    if y.ndim != 2 or y.shape[1] == 0:
        raise ValueError(f"labels must be an (N, C) array with C >= 1, got shape {y.shape}")
    if not 0 < tau <= 1 or not 0 <= p < 1:
        raise ValueError(f"tau must be in (0, 1] and p in [0, 1), got {tau}, {p}")
    y = y.astype(np.float64)
    together = y.T @ y  # together[i, j]: images positive for both i and j
    positives = np.diag(together).copy()
    conditional = np.divide(together, positives[:, None], out=np.zeros_like(together),
                            where=positives[:, None] > 0)  # P(j | i), a zero row for an unseen finding
    neighbours = conditional >= tau
    np.fill_diagonal(neighbours, False)
    count = neighbours.sum(axis=1, keepdims=True)
    graph = np.where(neighbours, p / np.maximum(count, 1), 0.0)
    np.fill_diagonal(graph, np.where(count[:, 0] > 0, 1.0 - p, 1.0))
    return graph


class GraphConv(nn.Module):
    """One graph convolution ``A @ H @ W`` (Kipf and Welling's layer, without bias, as ML-GCN uses it)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_dim, out_dim))
        nn.init.uniform_(self.weight, -1 / in_dim ** 0.5, 1 / in_dim ** 0.5)

    def forward(self, adjacency: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Aggregate ``h`` (C, in_dim) over the graph into (C, out_dim)."""
        return adjacency @ (h @ self.weight)


class LabelGCN(nn.Module):
    """Learned ``dim``-wide label embeddings through two graph convolutions (``dim`` -> ``dim`` -> ``out_dim``,
    LeakyReLU(0.2) between them): one ``out_dim``-wide classifier per finding (``out_dim`` defaults to ``dim``).

    The adjacency is a buffer (it travels with the weights); the fusion head keeps a copy in its config and
    card and checks the two agree on loading.
    """

    def __init__(self, adjacency: np.ndarray | torch.Tensor, dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        a = torch.as_tensor(np.asarray(adjacency, dtype=np.float32))
        if a.ndim != 2 or a.shape[0] != a.shape[1] or not torch.isfinite(a).all():
            raise ValueError(f"the label graph must be a finite (C, C) matrix, got shape {tuple(a.shape)}")
        self.register_buffer("adjacency", a)
        self.embedding = nn.Parameter(torch.randn(a.shape[0], dim))
        self.conv1, self.conv2 = GraphConv(dim, dim), GraphConv(dim, out_dim or dim)
        self.act = nn.LeakyReLU(0.2)

    def forward(self) -> torch.Tensor:
        """The ``(C, out_dim)`` classifier matrix."""
        h = self.act(self.conv1(self.adjacency, self.embedding))
        return self.conv2(self.adjacency, h)
