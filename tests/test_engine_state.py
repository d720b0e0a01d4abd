"""The engine's refusals and warnings by their whole messages, the model left as it came (also
after an exception, for every method kind), bound targets, autocast, progress and batch size."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn

import camlens
from camlens.registry import get_method
from camlens.targets import Target, select_scores
from camlens.targets_output import counterfactual
from camlens.wrappers import aug_smooth
from tests.conftest import HandNet, hook_count, whole
from tests.engine_models import CubeNet, Net, acts_and_grads, class_score, images


@pytest.mark.parametrize("method", ["gradcam", "fullgrad"])
def test_inference_mode_refuses_methods_that_need_gradients(method) -> None:
    msg = (
        f"{method!r} needs gradients, which torch.inference_mode() forbids; call it outside "
        "inference_mode (torch.no_grad() is fine), or use a gradient-free method (cam, "
        "scorecam, ablationcam, eigencam, reciprocam)"
    )
    model = Net().eval()
    with torch.inference_mode(), pytest.raises(camlens.GradientUnavailableError) as err:
        camlens.explain(model, images(), method)
    assert re.match(whole(msg), str(err.value))
    assert hook_count(model) == 0


def test_a_list_for_a_model_that_takes_a_tensor() -> None:
    model, x = Net().eval(), images()
    with pytest.raises(TypeError) as direct:
        model(list(x))
    first = str(direct.value).splitlines()[0]
    msg = (
        f"Net does not take a list of images ({first}); pass a (B, C, H, W) tensor (lists are "
        "for torchvision detectors)"
    )
    with pytest.raises(camlens.InputError, match=whole(msg)):
        camlens.explain(model, list(x), "gradcam", "features")
    assert hook_count(model) == 0


def test_a_type_error_of_the_model_on_a_tensor_is_its_own() -> None:
    class Fails(Net):
        def head(self, a):
            raise TypeError("the model's own type error")

    with pytest.raises(TypeError, match=whole("the model's own type error")) as err:
        camlens.explain(Fails(), images(), "gradcam", "features")
    assert not isinstance(err.value, camlens.InputError)


def test_a_list_of_several_sizes_is_for_detectors() -> None:
    msg = (
        "a list of images of different sizes [(3, 8, 8), (3, 12, 12)] is for detectors "
        "(torchvision detectors, Ultralytics YOLO); resize them to one size and pass a "
        "(B, C, H, W) tensor"
    )
    with pytest.raises(camlens.InputError, match=whole(msg)):
        camlens.explain(Net(), [torch.randn(3, 8, 8), torch.randn(3, 12, 12)], target=1)


def test_a_layer_that_does_not_run_and_a_shared_layer() -> None:
    model = Net()
    model.unused = nn.Conv2d(3, 3, 1)
    msg = (
        "layer 'unused' did not run during the forward pass, so it cannot be explained; pick a "
        "layer on the path from the input to the output"
    )
    with pytest.raises(camlens.LayerError, match=whole(msg)):
        camlens.explain(model, images(), "gradcam", "unused")

    class Twice(Net):
        def forward(self, x):
            return self.head(self.features[1](self.features[1](self.features(x))))

    msg = (
        "layer 'features.1' ran 3 times in one forward pass (a shared module); its activation "
        "is ambiguous, pick a layer that runs once"
    )
    with pytest.raises(camlens.LayerError, match=whole(msg)):
        camlens.explain(Twice(), images(), "gradcam", "features.1")


def test_cam_needs_class_ids() -> None:
    msg = "CAM explains a class of a classifier: pass class ids as target"
    with pytest.raises(camlens.TargetError, match=whole(msg)):
        camlens.explain(Net(), images(), "cam", "features", lambda out: out[:, 0])


def test_counterfactual_negates_the_gradient_and_is_refused_where_ignored() -> None:
    model, x = Net().eval(), images()
    ids = torch.tensor([1, 2, 3])
    ex = camlens.explain(model, x, "gradcam", "features", counterfactual(ids.tolist()))
    acts, grads, logits = acts_and_grads(model, x, class_score(ids))
    assert torch.allclose(ex.raw["features"], get_method("gradcam").fn(acts, -grads), atol=1e-6)
    assert torch.allclose(ex.scores, -logits.gather(1, ids[:, None])[:, 0], atol=1e-6)
    msg = (
        "counterfactual(None) negates the score, which 'eigencam' ignores (it scores class ids "
        "or reads no gradient); use a gradient method such as gradcam, gradcampp or layercam"
    )
    with pytest.raises(camlens.TargetError, match=whole(msg)):
        camlens.explain(model, x, "eigencam", "features", counterfactual())


def test_a_zero_gradient_warns_once_by_its_whole_message() -> None:
    model, x = Net().eval(), images()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a gradient that is not zero: no warning
        camlens.explain(model, x, "gradcam", "features", [0, 1, 2])
    with torch.no_grad():
        model.fc.weight.zero_()
    msg = (
        "the gradient of the target score with respect to layer(s) ['features'] is zero "
        "everywhere, so every gradient map is empty: the score does not vary with the layer (an "
        "untrained head initialised to zero, as torchvision's ViT heads are, or a saturated "
        "target)"
    )
    with pytest.warns(UserWarning, match=whole(msg)) as record:
        ex = camlens.explain(model, x, "gradcam", "features", [0, 1, 2])
    assert len(record) == 1 and not ex.maps.any()


def test_a_map_below_zero_everywhere_warns_where() -> None:
    """HandNet with one channel, class 0 weight +1, class 1 weight -1: on negative images the
    Grad-CAM of class 0 is < 0 everywhere (empty after the ReLU), that of class 1 > 0."""
    model = HandNet(torch.tensor([[1.0], [-1.0]])).eval()
    x = -1 - torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    msg = (
        "the gradcam raw map of layer 'features' is <= 0 everywhere at (image[, target]) "
        "[[0, 0], [2, 0]], so its map is empty after the ReLU: nothing in the layer speaks for "
        "the target (untrained weights, or a target the image speaks against: try "
        "targets.counterfactual, another layer or method)"
    )
    with pytest.warns(UserWarning, match=whole(msg)):
        ex = camlens.explain(model, x, "gradcam", "features", [[0, 1], [1, 1], [0, 1]])
    assert not ex.maps[0, 0].any() and ex.maps[0, 1].any()


class BoomError(Exception):
    pass


class ExplodesLater(Net):
    """Raises at its ``fuse``-th forward pass (the engine's own passes, hooks installed)."""

    def __init__(self, fuse: int):
        super().__init__()
        self.fuse = fuse

    def forward(self, x):
        if self.calls + 1 >= self.fuse:
            raise BoomError("boom")
        return super().forward(x)


CASES = [
    ("gradcam", {}),
    ("gradcam", {"smooth": 2}),
    ("gradcampp", {"exact": True}),
    ("scorecam", {"batch_size": 4}),
    ("ablationcam", {}),
    ("fullgrad", {}),
    ("occlusion", {"window": 4, "stride": 4}),
]


@pytest.mark.parametrize(("method", "options"), CASES, ids=[c[0] + str(c[1]) for c in CASES])
@pytest.mark.parametrize("fuse", [1, 2, 3])
def test_the_model_is_left_as_it_came_after_an_exception(method, options, fuse) -> None:
    model = ExplodesLater(fuse).train()
    model.features[0].eval()
    model.features[2].weight.requires_grad_(False)
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    layer = None if method in ("fullgrad", "occlusion") else "features"
    table = [[0, 1], [1, 2], [2, 3]]
    for target in (None, table):
        model.calls = 0
        try:
            camlens.explain(model, images(), method, layer, target, **options)
        except BoomError:
            pass
        assert [m.training for m in model.modules()] == modes
        assert [p.requires_grad for p in model.parameters()] == flags
        assert hook_count(model) == 0 and all(p.grad is None for p in model.parameters())
        assert torch.is_grad_enabled()


class Doubled(nn.Module):
    """A bound model: the target's own module around the user's (whose submodules it runs)."""

    def __init__(self, inner: Net):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return 2 * self.inner(x)


class Bound(Target):
    def __init__(self, ids, fail: bool = False):
        self.ids, self.fail, self.bound = ids, fail, []

    def bind(self, model):
        self.bound.append(model)
        return Doubled(model)

    def select(self, output, batch, copies=0, score=None):
        if self.fail:
            raise BoomError("boom")
        return select_scores(self.ids, output, batch, copies, score)


def test_a_bound_target_runs_its_module_for_one_call() -> None:
    model, x = Net().eval(), images()
    ids = torch.tensor([1, 2, 3])
    explainer = camlens.Explainer(model, "gradcam", "features")
    target = Bound(ids.tolist())
    ex = explainer(x, target)
    assert target.bound == [model] and explainer.model is model
    acts, grads, logits = acts_and_grads(model, x, lambda lg: 2 * class_score(ids)(lg))
    assert torch.allclose(ex.scores, 2 * logits.gather(1, ids[:, None])[:, 0], atol=1e-6)
    assert torch.allclose(ex.raw["features"], get_method("gradcam").fn(acts, grads), atol=1e-6)
    model.train()
    with pytest.raises(BoomError):
        explainer(x, Bound(ids.tolist(), fail=True))
    assert explainer.model is model and model.training and hook_count(model) == 0


def test_autocast_reaches_the_probe_and_the_maths_stay_float32() -> None:
    model, x = Net().eval(), images()
    dtypes: list[torch.dtype] = []
    handle = model.fc.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ex = camlens.explain(model, x, "scorecam", "features", [1, 2, 3])
            grad = camlens.explain(model, x, "gradcampp", "features", [1, 2, 3])
    finally:
        handle.remove()
    assert len(dtypes) >= 3 and set(dtypes) == {torch.bfloat16}
    assert ex.raw["features"].dtype == torch.float32
    assert grad.raw["features"].dtype == torch.float32


def test_progress_bar_names_the_method_and_layer(capsys) -> None:
    model, x = Net().eval(), images()
    camlens.explain(model, x, "scorecam", "features", [1, 2, 3])
    assert capsys.readouterr().err == ""
    camlens.explain(model, x, "scorecam", "features", [1, 2, 3], progress=True)
    assert "scorecam features" in capsys.readouterr().err


def test_batch_size_cuts_the_probe_passes() -> None:
    """7 channels x 3 images = 21 masked images: 1 forward + ceil(21 / 5) passes."""
    model, x = Net().eval(), images()
    full = camlens.explain(model, x, "scorecam", "features", [1, 2, 3])
    model.calls = 0
    cut = camlens.explain(model, x, "scorecam", "features", [1, 2, 3], batch_size=5)
    assert model.calls == 1 + 5
    assert torch.allclose(cut.raw["features"], full.raw["features"], atol=1e-6)


def test_the_probe_passes_hold_64_images_by_default() -> None:
    """10 images x 7 channels = 70 masked images: the clean pass, then 64 and 6."""
    sizes: list[int] = []

    class Sized(Net):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            sizes.append(x.shape[0])
            return super().forward(x)

    camlens.explain(Sized().eval(), images(batch=10), "scorecam", "features", 1)
    assert sizes == [10, 64, 6]


def test_the_seed_reaches_the_probe() -> None:
    model, x = Net().eval(), images()

    def run(seed):
        return camlens.explain(model, x, "sscam", "features", 1, seed=seed, samples=2)

    assert torch.allclose(run(3).raw["features"], run(3).raw["features"])
    assert not torch.allclose(run(3).raw["features"], run(4).raw["features"])


def test_aug_smooth_wraps_the_plain_explanation() -> None:
    model, x = CubeNet().eval(), images(size=16)
    ex = camlens.explain(model, x, "gradcam", "features", [1, 2, 3], aug_smooth=True)
    plain = camlens.Explainer(model, "gradcam", "features")
    expected = aug_smooth(plain, x, [1, 2, 3])
    assert torch.allclose(ex.maps, expected.maps, atol=1e-6)
    assert not torch.allclose(ex.maps, plain(x, [1, 2, 3]).maps, atol=1e-3)


def test_a_map_below_zero_warns_where_with_one_target_per_image() -> None:
    """(B,) raw maps: each image's map on its own (images 0 and 2 empty, image 1 not)."""
    model = HandNet(torch.tensor([[1.0], [-1.0]])).eval()
    x = 0.5 + torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    x[[0, 2]] *= -1
    msg = (
        "the gradcam raw map of layer 'features' is <= 0 everywhere at (image[, target]) "
        "[[0], [2]], so its map is empty after the ReLU: nothing in the layer speaks for the "
        "target (untrained weights, or a target the image speaks against: try "
        "targets.counterfactual, another layer or method)"
    )
    with pytest.warns(UserWarning, match=whole(msg)) as record:
        ex = camlens.explain(model, x, "gradcam", "features", 0)
    assert len(record) == 1
    assert not ex.maps[0].any() and ex.maps[1].any() and not ex.maps[2].any()


class Odd(nn.Module):
    """A layer of 7 tokens of width 5 on an 8 x 8 input: no grid of patches to read them as."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        return self.fc(self.features(x.flatten(1)[:, :35].view(-1, 7, 5)).mean(1))


class MaxHead(nn.Module):
    """conv -> global *max* pooling -> linear: no GAP + linear head for CAM."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.features(x).amax(dim=(2, 3)))


def test_an_unreadable_layout_and_a_head_that_is_not_gap_linear_name_the_layer() -> None:
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    msg = (
        "cannot tell how to read layer 'features' with output (2, 7, 5): 7 tokens are not a "
        "grid of patches of the (8, 8) input (plus at most 16 prefix tokens). Say it with "
        "layout='nchw' (B, C, h, w), 'nhwc' (B, h, w, C), 'tokens' (B, N, C) or a callable "
        "activation -> (B, C, h, w) (like pytorch-grad-cam's reshape_transform)"
    )
    with pytest.raises(camlens.LayerError, match=whole(msg)):
        camlens.explain(Odd().eval(), x, "gradcam", "features", 0)
    msg = (
        "CAM needs layer 'features' to be followed by global average pooling and a single "
        "linear layer (as in torchvision ResNet, EfficientNet or camlens' demo model), but here "
        "the input of linear 'fc' is not the global average of 'features'. Use method='gradcam' "
        "instead: it works on any CNN and equals CAM / (h*w) on GAP + linear heads."
    )
    with pytest.raises(camlens.UnsupportedModelError, match=whole(msg)):
        camlens.explain(MaxHead().eval(), x, "cam", "features", 0)
