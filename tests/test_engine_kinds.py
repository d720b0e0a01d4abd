"""Every kind of method input through the engine, compared with the method's pure function on
activations and gradients captured by hand (tests/engine_models.py): gradients, exact
derivatives, Hessian-vector products, noisy samples, class weights, activations alone, input and
layer probes, model-level and black-box methods."""

from __future__ import annotations

import pytest
import torch

import camlens
from camlens.cams.finer import contrast_score
from camlens.capture import noisy_copies
from camlens.maps import minmax, to_heatmap, upsample
from camlens.registry import get_method
from tests.conftest import HandNet
from tests.engine_models import CubeNet, Net, acts_and_grads, class_score, images

IDS = torch.tensor([4, 0, 2])


def check_contract(ex, x, ids, logits, method: str) -> None:
    """The fields every one-layer explanation of ``Net`` carries."""
    assert ex.layers == ["features"] and list(ex.raw) == ["features"]
    assert ex.method == method
    assert ex.images is x
    assert torch.equal(ex.targets, ids) and ex.targets.dtype == torch.long
    assert torch.allclose(ex.logits, logits, atol=1e-6) and not ex.logits.requires_grad
    assert not ex.scores.requires_grad and ex.extras == {}
    raw = ex.raw["features"]
    assert raw.dtype == torch.float32
    assert torch.allclose(ex.maps, to_heatmap(raw, tuple(x.shape[2:])), atol=1e-6)


@pytest.mark.parametrize(
    "method",
    ["gradcam", "gradcampp", "layercam", "hirescam", "xgradcam", "gradcam_elementwise"],
)
def test_gradient_methods_are_their_function_of_captured_acts_and_grads(method: str) -> None:
    model, x = Net().eval(), images()
    ex = camlens.explain(model, x, method, "features", target=IDS.tolist())
    acts, grads, logits = acts_and_grads(model, x, class_score(IDS))
    expected = get_method(method).fn(acts, grads)
    assert torch.allclose(ex.raw["features"], expected, atol=1e-6)
    assert torch.allclose(ex.scores, logits.gather(1, IDS[:, None])[:, 0], atol=1e-6)
    check_contract(ex, x, IDS, logits, method)


def test_default_method_and_target() -> None:
    """explain(model, x) is Grad-CAM of each image's top class; so is Explainer(model)(x)."""
    model, x = Net().eval(), images()
    ids = model(x).argmax(1)
    acts, grads, logits = acts_and_grads(model, x, class_score(ids))
    for ex in (camlens.explain(model, x), camlens.Explainer(model)(x)):
        assert ex.method == "gradcam"
        assert torch.allclose(ex.raw["features"], get_method("gradcam").fn(acts, grads), atol=1e-6)
        check_contract(ex, x, ids, logits, "gradcam")


def test_finercam_scores_its_contrast_with_its_options() -> None:
    """gamma and references go to the score, base to the map function."""
    model, x = Net().eval(), images()
    opts = {"gamma": 0.5, "references": 2}
    ex = camlens.explain(model, x, "finercam", "features", IDS.tolist(), base="layercam", **opts)
    acts, grads, logits = acts_and_grads(model, x, lambda lg: contrast_score(lg, IDS, **opts))
    assert torch.allclose(ex.scores, contrast_score(logits, IDS, **opts), atol=1e-6)
    assert torch.allclose(ex.raw["features"], get_method("layercam").fn(acts, grads), atol=1e-6)
    check_contract(ex, x, IDS, logits, "finercam")


def cube_derivatives(model: CubeNet, x, ids):
    """(A, g, d2, d3, logits) of S = w_c . mean(A^3) + b_c, analytically."""
    with torch.no_grad():
        acts = model.features(x)
        logits = model.head(acts)
    z = acts.shape[2] * acts.shape[3]
    w = model.fc.weight[ids][:, :, None, None].detach()
    return acts, 3 * w * acts**2 / z, 6 * w * acts / z, (6 * w / z).expand_as(acts), logits


def test_gradcampp_exact_uses_the_true_second_and_third_derivatives() -> None:
    model, x = CubeNet().eval(), images()
    acts, g, d2, d3, logits = cube_derivatives(model, x, IDS)
    fn = get_method("gradcampp").fn
    ex = camlens.explain(model, x, "gradcampp", "features", IDS, exact=True, exact_chunk=5)
    assert torch.allclose(ex.raw["features"], fn(acts, g, d2, d3), atol=1e-6)
    check_contract(ex, x, IDS, logits, "gradcampp")
    plain = camlens.explain(model, x, "gradcampp", "features", IDS, exact=False)
    assert torch.allclose(plain.raw["features"], fn(acts, g), atol=1e-6)
    assert not torch.allclose(plain.raw["features"], ex.raw["features"], atol=1e-3)


def test_shapleycam_gets_the_hessian_vector_product() -> None:
    model, x = CubeNet().eval(), images()
    acts, g, d2, _, logits = cube_derivatives(model, x, IDS)
    ex = camlens.explain(model, x, "shapleycam", "features", IDS)
    expected = get_method("shapleycam").fn(acts, g, d2 * acts)
    assert torch.allclose(ex.raw["features"], expected, atol=1e-6)
    assert not torch.allclose(expected, get_method("shapleycam").fn(acts, g, 0 * acts))
    check_contract(ex, x, IDS, logits, "shapleycam")


def noisy_grads(model: Net, x, copies: int, std: float, seed: int, ids):
    """Activations and gradients of the clean images followed by their noisy copies."""
    gen = torch.Generator().manual_seed(seed)
    batch = torch.cat([x, noisy_copies(x, copies, std, gen)])
    every = torch.cat([ids, ids.repeat_interleave(copies)])
    acts, grads, _ = acts_and_grads(model, batch, class_score(every))
    return acts, grads


def test_smoothgradcampp_samples_noisy_copies_from_the_seed() -> None:
    model, x = CubeNet().eval(), images()  # gradients that vary with the input
    ex = camlens.explain(
        model, x, "smoothgradcampp", "features", IDS, samples=3, smooth_std=0.3, seed=4
    )
    acts, grads = noisy_grads(model, x, 3, 0.3, 4, IDS)
    expected = get_method("smoothgradcampp").fn(acts[:3], grads[3:].view(3, 3, *grads.shape[1:]))
    assert torch.allclose(ex.raw["features"], expected, atol=1e-6)
    _, _, logits = acts_and_grads(model, x, class_score(IDS))
    check_contract(ex, x, IDS, logits, "smoothgradcampp")
    # the defaults: 8 samples, std 0.15, seed 0
    ex = camlens.explain(model, x, "smoothgradcampp", "features", IDS)
    acts, grads = noisy_grads(model, x, 8, 0.15, 0, IDS)
    expected = get_method("smoothgradcampp").fn(acts[:3], grads[3:].view(3, 8, *grads.shape[1:]))
    assert torch.allclose(ex.raw["features"], expected, atol=1e-6)


@pytest.mark.parametrize(("kwargs", "copies", "std", "seed"), [({}, 0, 0, 0), (None, 3, 0.3, 2)])
def test_smooth_averages_the_raw_maps_of_noisy_copies(kwargs, copies, std, seed) -> None:
    """smooth=n: the mean of the method's raw maps over n noisy copies (the clean image is not
    one of them); the defaults are smooth_std=0.15 and seed=0."""
    model, x = Net().eval(), images()
    if kwargs is None:
        kwargs = {"smooth": copies, "smooth_std": std, "seed": seed}
    else:
        kwargs, copies, std, seed = {"smooth": 2}, 2, 0.15, 0
    ex = camlens.explain(model, x, "layercam", "features", IDS, **kwargs)
    acts, grads = noisy_grads(model, x, copies, std, seed, IDS)
    per_copy = get_method("layercam").fn(acts[3:], grads[3:]).view(3, copies, 4, 4)
    assert torch.allclose(ex.raw["features"], per_copy.mean(dim=1), atol=1e-6)
    _, _, logits = acts_and_grads(model, x, class_score(IDS))
    check_contract(ex, x, IDS, logits, "layercam")


def test_cam_weighs_the_activations_with_the_class_weights() -> None:
    model, x = Net().eval(), images()
    ex = camlens.explain(model, x, "cam", "features", IDS)
    acts, _, logits = acts_and_grads(model, x, class_score(IDS))
    w = model.fc.weight.detach()[IDS]
    assert torch.allclose(ex.raw["features"], (w[:, :, None, None] * acts).sum(1), atol=1e-6)
    assert torch.allclose(ex.scores, logits.gather(1, IDS[:, None])[:, 0], atol=1e-6)
    check_contract(ex, x, IDS, logits, "cam")


@pytest.mark.parametrize(
    ("method", "options", "fn_options"),
    [
        ("eigencam", {}, {}),
        ("fem", {"k": 1.5}, {"k": 1.5}),
        ("randomcam", {}, {"seed": 0}),
        ("randomcam", {"seed": 7}, {"seed": 7}),
    ],
)
def test_activation_methods_are_their_function_of_the_activations(
    method, options, fn_options
) -> None:
    model, x = Net().eval(), images()
    ex = camlens.explain(model, x, method, "features", IDS, **options)
    acts, _, logits = acts_and_grads(model, x, class_score(IDS))
    expected = get_method(method).fn(acts, **fn_options)
    assert torch.allclose(ex.raw["features"], expected, atol=1e-6)
    check_contract(ex, x, IDS, logits, method)


def test_randomcam_seeds_differ() -> None:
    model, x = Net().eval(), images()
    a = camlens.explain(model, x, "randomcam", "features", seed=1).raw["features"]
    b = camlens.explain(model, x, "randomcam", "features", seed=2).raw["features"]
    assert not torch.allclose(a, b)


W = torch.tensor([[1.0, -2.0, 0.5], [0.25, 1.0, -1.0], [-0.5, 0.5, 2.0]])
BIAS = torch.tensor([0.75, -0.5, 0.25])
HAND_IDS = torch.tensor([0, 2, 1])


def hand_images() -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    return torch.randn(3, 3, 4, 4, generator=gen)


def test_scorecam_by_loops_through_the_engine() -> None:
    """HandNet's activation is its input: Score-CAM masks the image with each channel."""
    model, x = HandNet(W, BIAS).eval(), hand_images()
    ex = camlens.explain(model, x, "scorecam", "features", HAND_IDS)
    expected = torch.zeros(3, 4, 4)
    for b in range(3):
        scores = torch.empty(3)
        for k in range(3):
            mask = minmax(upsample(x[b, k][None], (4, 4)))[0]
            with torch.no_grad():
                scores[k] = model((x[b] * mask)[None])[0, HAND_IDS[b]]
        expected[b] = (scores.softmax(0)[:, None, None] * x[b]).sum(0)
    assert torch.allclose(ex.raw["features"], expected, atol=1e-5)
    logits = model(x).detach()
    assert torch.allclose(ex.scores, logits.gather(1, HAND_IDS[:, None])[:, 0])
    assert torch.equal(ex.targets, HAND_IDS) and ex.layers == ["features"]


def test_iscam_steps_option_reaches_the_method() -> None:
    model, x = HandNet(W, BIAS).eval(), hand_images()
    two = camlens.explain(model, x, "iscam", "features", HAND_IDS, steps=2).raw["features"]
    expected = torch.zeros(3, 4, 4)
    for b in range(3):
        scores = torch.zeros(3)
        for k in range(3):
            mask = minmax(upsample(x[b, k][None], (4, 4)))[0]
            with torch.no_grad():
                for i in (1, 2):
                    scores[k] += model((x[b] * mask * i / 2)[None])[0, HAND_IDS[b]] / 2
        expected[b] = (scores.softmax(0)[:, None, None] * x[b]).sum(0)
    assert torch.allclose(two, expected, atol=1e-5)


def test_ablationcam_by_loops_through_the_engine() -> None:
    model, x = HandNet(W, BIAS).eval(), hand_images()
    ex = camlens.explain(model, x, "ablationcam", "features", HAND_IDS)
    with torch.no_grad():
        y = model(x).gather(1, HAND_IDS[:, None])[:, 0]
        expected = torch.zeros(3, 4, 4)
        for b in range(3):
            for k in range(3):
                ablated = x[b].clone()
                ablated[k] = 0
                y_k = model(ablated[None])[0, HAND_IDS[b]]
                expected[b] += (y[b] - y_k) / y[b] * x[b, k]
    assert torch.allclose(ex.raw["features"], expected, atol=1e-5)
    assert torch.allclose(ex.scores, y) and torch.equal(ex.targets, HAND_IDS)


@pytest.mark.parametrize("method", ["fullgrad", "guided_gradcam", "occlusion", "reciprocam"])
def test_model_level_and_probe_methods_explain_the_given_classes(method: str) -> None:
    model, x = Net().eval(), images()
    layer = None if method in ("fullgrad", "occlusion") else "features"
    options = {"window": 4, "stride": 2} if method == "occlusion" else {}
    explainer = camlens.Explainer(model, method, layer, **options)
    ex = explainer(x, IDS.tolist())
    logits = model(x).detach()
    assert torch.equal(ex.targets, IDS)
    assert torch.allclose(ex.scores, logits.gather(1, IDS[:, None])[:, 0], atol=1e-6)
    assert ex.maps.shape == (3, 8, 8) and ex.method == method and ex.images is x
    if method == "reciprocam":
        assert torch.allclose(ex.logits, logits, atol=1e-6)
    if method == "occlusion":  # a black box has no layer, none is searched for
        assert explainer.layers is None and ex.layers == ["input"]
    elif method == "reciprocam":
        assert ex.layers == ["features"]
    # another class gives another map
    other = explainer(x, [1, 1, 1])
    assert not torch.allclose(other.maps, ex.maps, atol=1e-4)


@pytest.mark.parametrize(
    ("target", "extra"), [(IDS, {"smooth": 2}), (torch.tensor([[4, 1], [0, 3], [2, 2]]), {})]
)
def test_finercam_base_reaches_the_smooth_and_table_paths(target, extra) -> None:
    """With gamma = 0 the contrast is y^c: Finer-CAM on base B is B itself."""
    model, x = CubeNet().eval(), images()
    fine = camlens.explain(
        model, x, "finercam", "features", target, base="layercam", gamma=0.0, **extra
    )
    base = camlens.explain(model, x, "layercam", "features", target, **extra)
    other = camlens.explain(model, x, "gradcam", "features", target, **extra)
    assert torch.allclose(fine.raw["features"], base.raw["features"], atol=1e-6)
    assert not torch.allclose(base.raw["features"], other.raw["features"], atol=1e-4)


def test_finercam_scores_its_contrast_column_by_column() -> None:
    """smooth= and a table: one run per column, each scored by Finer-CAM's contrast (gamma and
    references included), as that column given alone."""
    model, x = Net().eval(), images()
    table = torch.tensor([[4, 1], [0, 3], [2, 2]])
    opts = {"gamma": 0.5, "references": 2, "smooth": 2}
    ex = camlens.explain(model, x, "finercam", "features", table, **opts)
    logits = model(x).detach()
    for t in range(2):
        col = camlens.explain(model, x, "finercam", "features", table[:, t], **opts)
        assert torch.allclose(ex.raw["features"][:, t], col.raw["features"], atol=1e-6)
        expected = contrast_score(logits, table[:, t], gamma=0.5, references=2)
        assert torch.allclose(ex.scores[:, t], expected, atol=1e-6)
        assert not torch.allclose(expected, logits.gather(1, table[:, t : t + 1])[:, 0])
