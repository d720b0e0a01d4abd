"""The rest of the CAM family: exact identities on GAP + linear heads, hand-computed values."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import camlens
from camlens.cams import (
    eigencam,
    gradcam,
    gradcam_elementwise,
    hirescam,
    layercam,
    xgradcam,
)
from camlens.cams.eigen import first_component_projection
from camlens.cams.finer import contrast_score
from tests.conftest import GapNet, HandNet, capture, hook_count


@pytest.fixture(scope="module", params=[True, False], ids=["post-relu", "signed"])
def setup(request):
    """A GAP + linear model (biased head) whose ``features`` are post-ReLU, or signed (no last
    ReLU: formulas that differ only where A < 0 must differ here)."""
    torch.manual_seed(3)
    model = GapNet(channels=7, classes=4, last_relu=request.param).eval()
    x = torch.randn(3, 3, 12, 12)
    target = torch.tensor([0, 3, 2])
    acts = capture(model, model.features, x)  # (3, 7, 6, 6)
    assert bool((acts < 0).any()) is not request.param
    assert bool((model.fc.bias != 0).all())
    return model, x, target, acts


def raw(model, x, method, target, **kw):
    return camlens.explain(model, x, method=method, layer="features", target=target, **kw).raw[
        "features"
    ]


def test_gap_linear_identities(setup) -> None:
    """hirescam == xgradcam == gradcam == cam / Z; layercam == sum_k ReLU(w_k) A^k / Z and
    gradcam_elementwise == sum_k ReLU(w_k A^k / Z) (the two agree when A >= 0)."""
    model, x, target, acts = setup
    z = acts.shape[-1] * acts.shape[-2]
    cam = raw(model, x, "cam", target)
    w = model.fc.weight.detach()[target]  # (B, K)
    assert torch.allclose(cam, torch.einsum("bk,bkhw->bhw", w, acts), atol=1e-5)
    for method in ("hirescam", "xgradcam", "gradcam"):
        assert torch.allclose(raw(model, x, method, target), cam / z, atol=1e-6), method
    layer = torch.einsum("bk,bkhw->bhw", w.clamp(min=0), acts) / z
    assert torch.allclose(raw(model, x, "layercam", target), layer, atol=1e-7)
    elementwise = (w[:, :, None, None] * acts / z).clamp(min=0).sum(dim=1)
    assert torch.allclose(raw(model, x, "gradcam_elementwise", target), elementwise, atol=1e-7)
    # HiResCAM's map sums to the logit minus the bias.
    logits = model(x).detach()
    hires = raw(model, x, "hirescam", target)
    rebuilt = hires.sum(dim=(1, 2)) + model.fc.bias.detach()[target]
    assert torch.allclose(rebuilt, logits.gather(1, target[:, None])[:, 0], atol=1e-5)


def test_ablation_weights_are_w_times_pooled_over_score(setup) -> None:
    model, x, target, acts = setup
    w = model.fc.weight.detach()[target]  # (B, K)
    pooled = acts.mean(dim=(2, 3))
    y = model(x).detach().gather(1, target[:, None])  # (B, 1)
    weights = w * pooled / y
    expected = torch.einsum("bk,bkhw->bhw", weights, acts)
    got = raw(model, x, "ablationcam", target, batch_size=5)  # several chunks
    assert torch.allclose(got, expected, atol=1e-5)


def test_reciprocam_is_the_softmax_of_one_position(setup) -> None:
    model, x, target, acts = setup
    z = acts.shape[-1] * acts.shape[-2]
    W, b = model.fc.weight.detach(), model.fc.bias.detach()
    logits = torch.einsum("ck,bkhw->bhwc", W, acts) / z + b  # one position kept, GAP, linear
    expected = logits.softmax(dim=-1).gather(-1, target.view(-1, 1, 1, 1).expand(-1, 6, 6, 1))
    got = raw(model, x, "reciprocam", target, batch_size=7)
    assert torch.allclose(got, expected[..., 0], atol=1e-6)


def test_scorecam_by_hand(setup) -> None:
    model, x, target, acts = setup
    from camlens.maps import minmax, upsample

    scores = torch.empty(3, 7)
    for b in range(3):
        for k in range(7):
            mask = minmax(upsample(acts[b : b + 1, k], (12, 12)))
            scores[b, k] = model(x[b : b + 1] * mask[:, None])[0, target[b]].detach()
    expected = torch.einsum("bk,bkhw->bhw", scores.softmax(dim=1), acts)
    assert torch.allclose(raw(model, x, "scorecam", target, batch_size=4), expected, atol=1e-5)


def test_iscam_with_one_step_is_scorecam_and_sscam_runs_seeded(setup) -> None:
    model, x, target, _ = setup
    sc = raw(model, x, "scorecam", target)
    assert torch.allclose(raw(model, x, "iscam", target, steps=1), sc, atol=1e-6)
    a = raw(model, x, "sscam", target, samples=3, seed=1)
    b = raw(model, x, "sscam", target, samples=3, seed=1)
    c = raw(model, x, "sscam", target, samples=3, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    d = raw(model, x, "sscam", target, samples=2, sigma=0.0, noise_on="input")
    assert torch.allclose(d, sc, atol=1e-6)  # no noise: Score-CAM


def test_constant_channels_are_skipped_with_the_black_image_score() -> None:
    model = HandNet(torch.tensor([[1.0, 2.0], [0.0, 1.0]]), bias=torch.tensor([0.75, -1.0]))
    acts = torch.stack([torch.eye(3), torch.full((3, 3), 2.0)])[None]
    ex = camlens.explain(model, acts, method="scorecam", layer="features", target=0)
    # channel 1 is constant: its mask is 0, its score the black image's: the bias, 0.75
    s0 = float(model(acts * torch.eye(3))[0, 0].detach())
    # the mask of channel 0 is eye: the masked channels are eye and 2 eye, whose means are 3/9
    # and 6/9, so S = (1 * 3 + 2 * 6) / 9 + 0.75
    assert s0 == pytest.approx(15 / 9 + 0.75)
    w = torch.tensor([s0, 0.75]).softmax(0)
    assert torch.allclose(ex.raw["features"][0], w[0] * acts[0, 0] + w[1] * acts[0, 1])
    # IS-CAM integrates the same masks: the constant channel scores the bias at every step
    ex = camlens.explain(model, acts, method="iscam", layer="features", target=0, steps=4)
    with torch.no_grad():
        s_is = sum(float(model(acts * (i / 4) * torch.eye(3))[0, 0]) for i in range(1, 5)) / 4
    w = torch.tensor([s_is, 0.75]).softmax(0)
    assert torch.allclose(ex.raw["features"][0], w[0] * acts[0, 0] + w[1] * acts[0, 1])


def test_shapleycam_equals_gradcam_on_piecewise_linear_heads(setup) -> None:
    model, x, target, _ = setup
    assert torch.allclose(raw(model, x, "shapleycam", target), raw(model, x, "gradcam", target))


class SquareHead(nn.Module):
    """S = w . mean(A^2): g = 2 w A / Z and H A = 2 w A / Z, so g - HA/2 = w A / Z."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.features = nn.Identity()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return (self.features(x).pow(2).mean(dim=(2, 3)) * self.w).sum(1, keepdim=True).repeat(1, 2)


def test_shapleycam_hessian_vector_product_by_hand() -> None:
    w = torch.tensor([1.0, -2.0])
    torch.manual_seed(0)
    acts = torch.rand(2, 2, 3, 3)
    out = camlens.explain(SquareHead(w), acts, method="shapleycam", layer="features", target=0)
    z = 9
    weights = w.view(1, 2, 1, 1) * acts.mean(dim=(2, 3), keepdim=True) / z * z / z
    expected = (weights * acts).sum(1)
    assert torch.allclose(out.raw["features"], expected, atol=1e-6)


def test_smoothgradcampp_with_zero_noise_is_gradcampp(setup) -> None:
    model, x, target, _ = setup
    ex = raw(model, x, "smoothgradcampp", target, samples=3, smooth_std=0.0)
    assert torch.allclose(ex, raw(model, x, "gradcampp", target), atol=1e-6)

    # At a GAP + linear head the gradients do not depend on the input, so noise changes
    # nothing there; at the first conv (ReLUs above it) it does.
    def shallow(**kw):
        ex = camlens.explain(
            model, x, method="smoothgradcampp", layer="features.0", target=target, **kw
        )
        return ex.raw["features.0"]

    assert not torch.allclose(
        shallow(samples=3, smooth_std=0.3), shallow(samples=3, smooth_std=0.0)
    )


def test_generic_smoothing_averages_raw_maps(setup) -> None:
    model, x, target, _ = setup
    same = raw(model, x, "gradcam", target, smooth=4, smooth_std=0.0)
    assert torch.allclose(same, raw(model, x, "gradcam", target), atol=1e-6)
    with pytest.raises(camlens.InputError, match="smooth"):
        camlens.explain(model, x, method="scorecam", smooth=2)


def test_eigencam_sign_and_rank_one() -> None:
    u = torch.rand(1, 1, 4, 4)
    v = torch.rand(1, 5, 1, 1)
    acts = u * v  # rank one: the projection is proportional to u
    out = eigencam(acts)[0]
    assert (out >= 0).all()
    assert torch.allclose(out / out.max(), u[0, 0] / u.max(), atol=1e-5)
    # The sign rule: whatever sign the SVD returns, the projection of -A sums to >= 0 too.
    assert float(first_component_projection(-acts).sum()) >= 0
    assert torch.allclose(first_component_projection(acts * 2), 2 * out, atol=1e-4)


def test_eigengradcam_is_eigencam_of_gradient_times_activation(setup) -> None:
    """raw = (g * A) v_1; at a GAP + linear head g^k = w^c_k / Z, so g * A = w_k A^k / Z."""
    model, x, target, acts = setup
    z = acts.shape[-1] * acts.shape[-2]
    w = model.fc.weight.detach()[target]
    expected = first_component_projection(w[:, :, None, None] * acts / z)
    got = raw(model, x, "eigengradcam", target)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, raw(model, x, "eigencam", target), atol=1e-3)
    assert torch.allclose(raw(model, x, "eigencam", target), eigencam(acts), atol=1e-5)


def test_first_component_projection_against_a_float64_eigendecomposition() -> None:
    """X v_1 with v_1 the top eigenvector of X^T X (float64, another algorithm than the SVD),
    signed so that the projection sums to >= 0; shapes (B, K, *spatial) for images and
    volumes."""
    gen = torch.Generator().manual_seed(0)
    cases = [((3, 5, 4, 6), 1.0), ((2, 4, 2, 3, 3), 1.0), ((3, 5, 4, 6), 1e-3)]
    for shape, scale in cases:  # small activations: projections that sum to less than 1
        x = torch.randn(*shape, generator=gen) * scale
        flat = x.double().reshape(shape[0], shape[1], -1).transpose(1, 2)  # (B, N, K)
        _, vecs = torch.linalg.eigh(flat.transpose(1, 2) @ flat)
        proj = (flat @ vecs[:, :, -1:])[..., 0]  # the largest eigenvalue comes last
        proj = proj * torch.where(proj.sum(dim=1, keepdim=True) < 0, -1.0, 1.0)
        got = first_component_projection(x)
        assert got.shape == (shape[0], *shape[2:])
        assert torch.allclose(got.double().flatten(1), proj, atol=1e-4 * scale)
        assert (got.flatten(1).sum(dim=1) >= 0).all()


def test_finercam_contrast_and_gradient(setup) -> None:
    model, x, target, _ = setup
    logits = torch.tensor([[3.0, 1.0, 2.5, -1.0]])
    assert torch.allclose(contrast_score(logits, torch.tensor([0])), torch.tensor([0.5]))
    assert torch.allclose(
        contrast_score(logits, torch.tensor([0]), gamma=0.5, references=2),
        torch.tensor([3.0 - 0.5 * 1.75]),
    )
    # Grad-CAM is linear in the score: finercam == gradcam(c) - gamma * gradcam(d).
    out = model(x).detach()
    masked = out.clone().scatter_(1, target[:, None], float("-inf"))
    ref = masked.argmax(1)
    expected = raw(model, x, "gradcam", target) - 0.7 * raw(model, x, "gradcam", ref)
    assert torch.allclose(raw(model, x, "finercam", target, gamma=0.7), expected, atol=1e-6)
    # LayerCAM on the contrast: sum_k ReLU(w^c_k - gamma w^d_k) A^k / Z (not a difference of
    # two LayerCAMs: the ReLU is taken of the contrast's gradient).
    _, _, _, acts = setup
    w = model.fc.weight.detach()
    contrast = (w[target] - 0.7 * w[ref]).clamp(min=0)
    expected = torch.einsum("bk,bkhw->bhw", contrast, acts) / 36
    lay = raw(model, x, "finercam", target, base="layercam", gamma=0.7)
    assert torch.allclose(lay, expected, atol=1e-6)
    with pytest.raises(camlens.MethodNotFoundError, match="base"):
        raw(model, x, "finercam", target, base="scorecam")


def test_unknown_option_names_the_accepted_ones(setup) -> None:
    model, x, _, _ = setup
    with pytest.raises(camlens.InputError, match="gamma"):
        camlens.explain(model, x, method="finercam", gama=2)


def test_fullgrad_completeness_on_a_relu_network() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    for m in model.modules():  # non-trivial batch-norm statistics and biases
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    x = torch.randn(2, 3, 48, 48)
    ex = camlens.explain(model, x, method="fullgrad", target=[1, 4])
    total, score = ex.extras["completeness"].unbind(1)
    assert torch.allclose(total, score, atol=1e-4 * float(score.abs().max() + 1))
    assert ex.maps.shape == (2, 48, 48) and ex.raw["input"].shape == (2, 48, 48)
    assert hook_count(model) == 0


def test_guided_gradcam_does_not_touch_modules() -> None:
    torch.manual_seed(0)
    model = torchvision.models.vgg11(weights=None, num_classes=3).eval()
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    x = torch.randn(1, 3, 32, 32)
    ex = camlens.explain(model, x, method="guided_gradcam", target=2)
    ggc = ex.extras["guided_gradcam"]
    assert ggc.shape == (1, 3, 32, 32)
    cam = camlens.explain(model, x, method="gradcam", target=2)
    assert torch.allclose(ggc, ex.extras["guided_backprop"] * cam.maps[:, None])
    from camlens.maps import minmax

    assert torch.allclose(ex.maps, minmax(ggc.abs().sum(dim=1)), atol=1e-6)
    assert torch.allclose(ex.scores, model(x)[:, 2].detach(), atol=1e-5)
    assert ex.targets.tolist() == [2]
    assert [m for m in model.modules() if isinstance(m, nn.ReLU)] == relus
    assert all(m.inplace for m in relus)
    # A normal forward after the call still uses plain ReLU gradients.
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg)[0, 2], xg)
    assert not torch.allclose(g, ex.extras["guided_backprop"])


def test_rerun_methods_leave_the_model_as_it_came_after_an_exception() -> None:
    class Fragile(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = GapNet()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if x.sum() > -1e9 and self.calls > 2:  # data-dependent: not traced by torch.fx
                raise RuntimeError("boom in pass 3")
            return self.net(x)

    for method in ("scorecam", "ablationcam"):
        model = Fragile().train()
        relus = [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)]
        with pytest.raises(RuntimeError, match="boom"):
            camlens.explain(model, torch.randn(2, 3, 8, 8), method=method, batch_size=1)
        assert hook_count(model) == 0 and all(m.training for m in model.modules())
        assert [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)] == relus


def test_layer_probe_falls_back_when_fx_cannot_trace(setup) -> None:
    class Dynamic(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            if x.sum() > -1e9:  # data-dependent control flow: not traceable by torch.fx
                return self.inner(x)
            return self.inner(-x)

    model, x, target, _ = setup
    wrapped = Dynamic(model)
    got = camlens.explain(wrapped, x, method="ablationcam", layer="inner.features", target=target)
    assert torch.allclose(
        got.raw["inner.features"], raw(model, x, "ablationcam", target), atol=1e-5
    )


def test_pure_functions_shapes() -> None:
    a, g = torch.rand(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    for fn in (gradcam, hirescam, xgradcam, gradcam_elementwise, layercam):
        assert fn(a, g).shape == (2, 4, 5)
    assert torch.allclose(gradcam_elementwise(a, g), layercam(a, g))  # A >= 0


class SmoothHead(nn.Module):
    """A head that is not piecewise linear: flatten -> linear -> GELU -> linear."""

    def __init__(self):
        super().__init__()
        self.features = nn.Identity()
        self.fc1 = nn.Linear(18, 4)
        self.fc2 = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc2(torch.nn.functional.gelu(self.fc1(self.features(x).flatten(1))))


def test_gradcampp_exact_eq10_matches_full_derivatives() -> None:
    from camlens.cams.gradient import _gradcampp_map

    torch.manual_seed(0)
    model = SmoothHead().eval()
    x = torch.rand(2, 2, 3, 3)
    target = [0, 2]
    ex = camlens.explain(
        model, x, method="gradcampp", layer="features", target=target, exact=True, exact_chunk=5
    )
    expected = []
    for b, c in enumerate(target):

        def f(a, c=c):
            return model(a.view(1, 2, 3, 3))[0, c]

        a0 = x[b].flatten()
        g = torch.autograd.functional.jacobian(f, a0)
        d2 = torch.diagonal(torch.autograd.functional.hessian(f, a0))
        d3 = torch.diagonal(
            torch.autograd.functional.jacobian(
                lambda a: torch.diagonal(
                    torch.autograd.functional.hessian(f, a, create_graph=True)
                ),
                a0,
            )
        )
        shape = (1, 2, 3, 3)
        expected.append(
            _gradcampp_map(
                x[b : b + 1],
                g.view(shape),
                (g**2 + d2).view(shape),
                (g**3 + 3 * g * d2 + d3).view(shape),
            )[0]
        )
    assert torch.allclose(ex.raw["features"], torch.stack(expected), atol=1e-6)
    closed = camlens.explain(model, x, method="gradcampp", layer="features", target=target)
    assert not torch.allclose(closed.raw["features"], ex.raw["features"], atol=1e-4)


def test_gradcampp_exact_equals_eq19_on_piecewise_linear_heads(setup) -> None:
    model, x, target, _ = setup
    exact = raw(model, x, "gradcampp", target, exact=True)
    assert torch.allclose(exact, raw(model, x, "gradcampp", target), atol=1e-6)
    with pytest.raises(camlens.InputError, match="exact"):
        camlens.explain(model, x, method="gradcam", exact=True)
