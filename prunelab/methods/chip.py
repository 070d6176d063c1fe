"""``chip``: CHannel Independence-based Pruning (Sui et al., NeurIPS 2021; docs/decisions.md L21-L28).

For each training image n, the feature maps of a gated tensor form the C x (H*W) matrix A_n (row c:
channel c's map, flattened). The channel independence of channel c is how much the nuclear norm
drops when that row is zeroed,

    CI_c = (1/N) sum_{n=1..N} ( ||A_n||_* - ||A_n with row c set to 0||_* ),

averaged over the images of the first ``batches`` batches (default 5, the official ``--repeat``). A
channel whose map the others nearly span (a copy, a scaled copy, a dead channel) has a low CI and is
pruned first; a higher CI means a more important channel.

**Computation** (L28): the nuclear norm is the sum of the singular values, i.e. of the square roots of
the eigenvalues of a Gram matrix. With K = min(C, H*W), every A_n and all its C masked copies are
reduced to K x K Gram matrices in float64 (C <= H*W: G = A A^T with row and column c zeroed; C > H*W:
H = A^T A minus a_c a_c^T, a rank-one downdate), and one batched ``torch.linalg.eigvalsh`` call per
chunk of images gives every norm: N x C masked norms per call instead of the official double Python
loop over images and channels. Eigenvalues up to K * eps * the largest count as 0 (matrix_rank's rule).
In exact arithmetic this is the official quantity; in float64 it agrees with a per-channel loop of
``torch.linalg.matrix_norm(..., ord="nuc")`` to about 1e-12 of the largest CI (pinned by
tests/test_hrank_chip.py). The official code rounds the maps to 4 decimals and works in float32;
neither is done here.

**Which map, data, normalisation, ties** are those of ``hrank`` (module :mod:`.hrank`, L21-L26): ReLU of
the gated module's output in eval mode (the official ``relu1`` of the CIFAR ResNets' blocks), the first
``batches`` training batches in first-epoch order without augmentation, ``normalize: mean`` per layer
before the shared solver's global ranking, ties broken by layer then channel. The scores, the costliest
part, are computed once in the learn stage (which trains nothing; the pipeline needs ``stages: {learn:
{enabled: true}}``) and kept as the method's state: selecting at another budget reuses them.

Sources: Y. Sui, M. Yin, Y. Xie, H. Phan, S. Zonouz, B. Yuan, "CHIP: CHannel Independence-based Pruning
for Compact Neural Networks", NeurIPS 2021; official code github.com/Eclipsess/CHIP_NeurIPS2021
(``calculate_feature_maps.py``, ``calculate_ci.py``: ``ci_score``, ``mean_repeat_ci``; read at commits
57d63c5f and 7de1d5ea, the repository is not pinned).
"""

from __future__ import annotations

import torch

from . import register
from .hrank import FeatureMapScoring

CHUNK_ELEMENTS = 1 << 23  # float64 elements of the masked Gram matrices built at once (64 MiB)


def _nuclear_from_gram(g: torch.Tensor) -> torch.Tensor:
    """Sum of the square roots of the eigenvalues of the symmetric PSD matrices ``g`` (..., K, K).

    Eigenvalues up to K * eps * the largest (matrix_rank's rule) are taken as 0: a zero singular value
    (a dead or zeroed row) comes out of eigvalsh as rounding noise of about eps * lambda_max, whose square
    root (about 1e-8 sigma_max) would otherwise be added once per zero."""
    ev = torch.linalg.eigvalsh(g)
    tol = ev[..., -1:].clamp_min(0) * (g.shape[-1] * torch.finfo(g.dtype).eps)
    return torch.where(ev > tol, ev, torch.zeros_like(ev)).sqrt().sum(-1)


def channel_independence(a: torch.Tensor, chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """``(N, C)`` float64: ``||A_n||_* - ||A_n with row c zeroed||_*`` for the ``(N, C, P)`` matrices ``a``.

    Vectorised over images and channels through K x K Gram matrices (K = min(C, P)), ``chunk_elements``
    bounding the memory of one chunk of images."""
    a = a.double()
    n, c, p = a.shape
    k = min(c, p)
    step = max(1, chunk_elements // max(1, c * k * k))
    idx = torch.arange(c, device=a.device)
    out = []
    for i in range(0, n, step):
        x = a[i:i + step]
        if c <= p:
            g = x @ x.transpose(1, 2)  # (m, C, C)
            full = _nuclear_from_gram(g)
            masked = g.unsqueeze(1).repeat(1, c, 1, 1)  # masked[:, j]: G with row and column j zeroed
            masked[:, idx, idx, :] = 0
            masked[:, idx, :, idx] = 0
        else:
            h = x.transpose(1, 2) @ x  # (m, P, P)
            full = _nuclear_from_gram(h)
            masked = h.unsqueeze(1) - x.unsqueeze(3) * x.unsqueeze(2)  # (m, C, P, P): H - a_j a_j^T
        out.append(full[:, None] - _nuclear_from_gram(masked))
    return torch.cat(out)


@register("chip")
class CHIP(FeatureMapScoring):
    """Average drop of the feature matrix's nuclear norm when the channel's row is zeroed (higher: kept
    first)."""

    def channel_scores(self, maps):
        b, c = maps.shape[:2]
        return channel_independence(maps.reshape(b, c, -1))
