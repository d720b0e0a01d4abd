"""KPCA-CAM and Seg-Eigen-CAM: float64 references, identities, and the peers' maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import camlens
from camlens.cams import eigencam, kpcacam, segeigencam
from camlens.cams.eigen import positive_peak
from camlens.cams.kpca import KERNELS, kernel_matrix
from tests.conftest import GapNet, capture


def reference_kpca(
    acts: torch.Tensor, kernel: str, gamma=None, degree: int = 3, coef0: float = 1.0
) -> torch.Tensor:
    """Kernel PCA written out in float64, one image at a time (Schölkopf et al. 1998): centred
    positions, the Gram matrix, its feature-space centring (I - 1/n) G (I - 1/n), the top
    eigenpair, sqrt(lambda) alpha, the larger of |max| and |min| made positive."""
    out = []
    for a in acts.double():
        x = a.reshape(a.shape[0], -1).T
        x = x - x.mean(0)
        n, k = x.shape
        g = 1.0 / k if gamma is None else gamma
        if kernel == "linear":
            gram = x @ x.T
        elif kernel == "poly":
            gram = (g * x @ x.T + coef0) ** degree
        elif kernel == "sigmoid":
            gram = torch.tanh(g * x @ x.T + coef0)
        elif kernel == "rbf":
            gram = torch.exp(-g * torch.cdist(x, x) ** 2)
        else:
            xn = x / x.norm(dim=1, keepdim=True)
            gram = xn @ xn.T
        one = torch.full((n, n), 1.0 / n, dtype=torch.float64)
        gc = gram - one @ gram - gram @ one + one @ gram @ one
        vals, vecs = torch.linalg.eigh(gc)
        p = vecs[:, -1] * vals[-1].clamp(min=0).sqrt()
        if p.min().abs() > p.max().abs():
            p = -p
        out.append(p.reshape(a.shape[1:]))
    return torch.stack(out)


def _peer_model():
    """A model and layer list to construct a pytorch-grad-cam class (only get_cam_image runs)."""
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1))
    return net, [net[0]]


@pytest.fixture(scope="module")
def acts():
    torch.manual_seed(4)
    model = GapNet(channels=9, classes=3).eval()
    return capture(model, model.features, torch.randn(3, 3, 14, 14))  # (3, 9, 7, 7)


@pytest.mark.parametrize("kernel", KERNELS)
def test_kpcacam_matches_a_float64_reference(acts, kernel: str) -> None:
    got = kpcacam(acts.double(), kernel=kernel).double()
    assert torch.allclose(got, reference_kpca(acts, kernel), atol=1e-4, rtol=1e-4)


def test_kpcacam_gamma_changes_the_kernel(acts) -> None:
    got = kpcacam(acts, kernel="rbf", gamma=0.5).double()
    assert torch.allclose(got, reference_kpca(acts, "rbf", 0.5), atol=1e-4)
    assert not torch.allclose(got, kpcacam(acts, kernel="rbf").double(), atol=1e-3)


def test_linear_kpcacam_is_pca_of_the_centred_activations(acts) -> None:
    b, k = acts.shape[:2]
    x = acts.double().reshape(b, k, -1).transpose(1, 2)
    xc = x - x.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(xc)
    pca = positive_peak((xc @ vh[:, 0, :, None])[:, :, 0]).reshape(b, *acts.shape[2:])
    assert torch.allclose(kpcacam(acts.double(), kernel="linear"), pca, atol=1e-8)


def test_uncentred_linear_kpcacam_is_eigencam(acts) -> None:
    ours = kpcacam(acts.double(), kernel="linear", centre=False)
    assert torch.allclose(ours, eigencam(acts.double()).double(), atol=1e-5)


def test_kpcacam_agrees_with_scikit_learn_and_pytorch_grad_cam(acts) -> None:
    decomposition = pytest.importorskip("sklearn.decomposition")
    from sklearn.utils.extmath import svd_flip  # noqa: F401  (the sign rule we follow)

    for kernel in ("sigmoid", "rbf", "poly", "cosine"):
        for a, ours in zip(acts.double(), kpcacam(acts.double(), kernel=kernel), strict=True):
            x = a.reshape(a.shape[0], -1).T.numpy()
            x = x - x.mean(0)
            ref = decomposition.KernelPCA(1, kernel=kernel, eigen_solver="dense").fit_transform(x)
            ref = ref[:, 0]
            assert np.allclose(ours.flatten().numpy(), ref, atol=1e-6), kernel
    pgc = pytest.importorskip("pytorch_grad_cam")
    theirs = pgc.KPCA_CAM(*_peer_model()).get_cam_image(None, None, None, acts.numpy(), None, False)
    assert np.allclose(kpcacam(acts).numpy(), theirs, atol=1e-4)


def test_kpcacam_rejects_an_unknown_kernel(acts) -> None:
    with pytest.raises(ValueError, match="kernel must be one of"):
        kernel_matrix(acts.flatten(2).transpose(1, 2), "laplacian", None, 3, 1.0)


def _reference_segeigen(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    out = []
    for a, g in zip(acts.double(), grads.double(), strict=True):
        x = (g.abs() * a).reshape(a.shape[0], -1).T
        x = x - x.mean(0)
        # first principal axis: top eigenvector of the scatter matrix
        _, vecs = torch.linalg.eigh(x.T @ x)
        p = x @ vecs[:, -1]
        out.append((p if p.max().abs() >= p.min().abs() else -p).reshape(a.shape[1:]))
    return torch.stack(out)


def test_segeigencam_matches_a_float64_reference_and_the_peer(acts) -> None:
    torch.manual_seed(5)
    grads = torch.randn_like(acts)
    ours = segeigencam(acts.double(), grads.double())
    assert torch.allclose(ours, _reference_segeigen(acts, grads), atol=1e-8)
    # the absolute value matters: g and -g give the same map, g * A alone does not
    assert torch.allclose(segeigencam(acts.double(), -grads.double()), ours, atol=1e-10)
    # the sign rule: the peak magnitude is positive in every image
    assert bool((ours.flatten(1).amax(1) >= ours.flatten(1).amin(1).abs()).all())
    pgc = pytest.importorskip("pytorch_grad_cam")
    theirs = pgc.SegEigenCAM(*_peer_model()).get_cam_image(
        None, None, None, acts.double().numpy(), grads.double().numpy(), False
    )
    assert np.allclose(ours.numpy(), theirs, atol=1e-5)


def test_segeigencam_through_explain_uses_the_target_gradient() -> None:
    torch.manual_seed(6)
    model = GapNet(channels=6, classes=4).eval()
    x = torch.randn(2, 3, 16, 16)
    acts = capture(model, model.features, x)
    ex = camlens.explain(model, x, "segeigencam", layer="features", target=[1, 2])
    # GAP + linear: dS/dA^k_ij = w^c_k / (h*w)
    g = model.fc.weight.detach()[[1, 2]][:, :, None, None].expand_as(acts) / 64
    assert torch.allclose(ex.raw["features"], segeigencam(acts, g.contiguous()), atol=1e-5)
    multi = camlens.explain(model, x, "segeigencam", layer="features", target=[[1, 0], [2, 3]])
    assert torch.allclose(multi.raw["features"][:, 0], ex.raw["features"], atol=1e-5)
