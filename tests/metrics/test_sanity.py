"""Sanity checks: a method that ignores the model fails them, Grad-CAM passes them."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision
from torch import Tensor, nn

import camlens
from camlens.demo import load_model, shapes
from camlens.errors import InputError, LayerNotFoundError, MethodNotFoundError
from camlens.metrics import randomization_units, sanity_random_logit, sanity_randomization
from tests.conftest import GapNet, hook_count


@pytest.fixture(scope="module")
def demo() -> tuple[nn.Module, Tensor, Tensor]:
    images, labels, _ = shapes(12, seed=7)
    return load_model(), images, labels


def fixed_map(model: nn.Module, images: Tensor, ids: Tensor) -> Tensor:
    """A 'method' that ignores the model: a diagonal ramp."""
    h, w = images.shape[-2:]
    ramp = torch.linspace(0, 1, h)[:, None] + torch.linspace(0, 1, w)[None, :]
    return (ramp / 2).expand(len(images), h, w)


def test_a_method_that_ignores_the_model_fails_both_checks(demo) -> None:
    model, images, labels = demo
    mprt = sanity_randomization(model, images, fixed_map, labels)
    assert not mprt.passed
    torch.testing.assert_close(mprt.spearman, torch.ones_like(mprt.spearman))
    torch.testing.assert_close(mprt.ssim, torch.ones_like(mprt.ssim))
    logit = sanity_random_logit(model, images, fixed_map, labels)
    assert not logit.passed and logit.steps == ["random logit"]
    torch.testing.assert_close(logit.ssim, torch.ones(1, len(images)))


def test_gradcam_passes_both_checks_and_the_model_is_untouched(demo) -> None:
    model, images, labels = demo
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mprt = sanity_randomization(model, images, "gradcam", labels, "features")
    assert mprt.passed, mprt.spearman.mean(dim=1)
    assert mprt.steps[0] == "fc" and mprt.steps[-1] == "features.0"  # top down
    assert mprt.spearman.shape == mprt.ssim.shape == (len(mprt.steps), len(images))
    assert sanity_random_logit(model, images, "gradcam", labels, "features").passed
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training and hook_count(model) == 0


def test_eigencam_is_class_agnostic_so_it_fails_the_random_logit_check(demo) -> None:
    model, images, labels = demo
    check = sanity_random_logit(model, images, "eigencam", labels, "features")
    assert not check.passed
    assert check.final_spearman == pytest.approx(1.0, abs=1e-5)


def test_randomisation_changes_only_the_listed_modules_of_a_copy(demo) -> None:
    model, images, labels = demo
    seen: list[dict[str, Tensor]] = []

    def spy(m: nn.Module, x: Tensor, ids: Tensor) -> Tensor:
        seen.append({k: v.clone() for k, v in m.state_dict().items()})
        return fixed_map(m, x, ids)

    state = torch.random.get_rng_state()
    sanity_randomization(model, images[:2], spy, labels[:2], layers=["fc"])
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    original, randomised = seen
    assert not torch.equal(original["fc.weight"], randomised["fc.weight"])
    same = [k for k in original if not k.startswith("fc.")]
    assert all(torch.equal(original[k], randomised[k]) for k in same)


def test_default_units_have_one_granularity() -> None:
    assert randomization_units(load_model()) == [
        "features.0",
        "features.1",
        "features.3",
        "features.4",
        "features.6",
        "features.7",
        "fc",
    ]
    units = randomization_units(torchvision.models.resnet18(weights=None))
    assert units[:2] == ["conv1", "bn1"] and units[-1] == "fc"
    assert "layer4.1" in units and len(units) == 11


def test_bad_names_get_clear_errors(demo) -> None:
    model, images, labels = demo
    with pytest.raises(LayerNotFoundError, match="features"):
        sanity_randomization(model, images[:1], fixed_map, labels[:1], layers=["head"])
    with pytest.raises(MethodNotFoundError):
        sanity_randomization(model, images[:1], "gradcan", labels[:1])


# -- exact randomisation, seeds, targets and errors -----------------------------------------


class Scale(nn.Module):
    """A learned per-channel scale with no reset_parameters: drawn from N(0, std)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 2.0, channels))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight[:, None, None]


class Gate(nn.Module):
    """A custom module with its own reset_parameters, a weight and a batch-norm child."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bn = nn.BatchNorm2d(channels)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(x) * self.weight[:, None, None]


class OwnNet(nn.Module):
    """Holds parameters itself (as a ViT holds its class token) besides four children."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(100)  # not a seed the steps use: each step must change its unit
        self.pos = nn.Parameter(torch.tensor([0.1, 0.5, 1.3]).view(3, 1, 1))  # std 0.6110
        self.pair = nn.Parameter(torch.tensor([0.2, 0.8]))  # two values: std 0.4243
        self.one = nn.Parameter(torch.tensor(0.7))  # one value: no std, drawn with 0.02
        self.flat = nn.Parameter(torch.full((4,), 0.4))  # constant: std 0, drawn with 0.02
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.scale = Scale(4)
        self.gate = Gate(4)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.gate.bn.running_mean.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
            self.gate.bn.running_var.fill_(2.0)
            self.gate.bn.weight.fill_(3.0)

    def forward(self, x: Tensor) -> Tensor:
        h = self.gate(self.scale(self.conv(x + self.pos)))
        return self.fc(h.mean(dim=(2, 3)))


def _normal(seed: int, params: list[tuple[torch.Size, float]]) -> list[Tensor]:
    """What N(0, std) draws from a generator seeded ``seed`` give, one parameter after another."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.empty(shape).normal_(0.0, std, generator=gen) for shape, std in params]


def _states(model: nn.Module, images: Tensor, ids: Tensor, **kwargs) -> tuple[list, list]:
    seen: list[dict[str, Tensor]] = []
    calls: list[Tensor] = []

    def spy(m: nn.Module, x: Tensor, ids: Tensor) -> Tensor:
        seen.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        calls.append(ids.clone())
        return fixed_map(m, x, ids)

    check = sanity_randomization(model, images, spy, ids, **kwargs)
    return check, seen, calls


def test_each_step_draws_exactly_its_own_modules_from_its_seed() -> None:
    """Step k re-initialises its unit from seed + k (default seed 0): modules with
    reset_parameters by it (buffers kept), others from N(0, std of the trained values) (0.02 when
    that std is 0 or undefined); the model's own parameters go with the last, input-side step."""
    model = OwnNet()
    images = torch.rand(2, 3, 11, 11)
    check, seen, _ = _states(model, images, torch.tensor([0, 2]))
    assert check.steps == ["fc", "gate", "scale", "conv"]
    before, after_fc, after_gate, after_scale, after_conv = seen
    own = ["pos", "pair", "one", "flat"]

    def changed(a: dict[str, Tensor], b: dict[str, Tensor]) -> set[str]:
        return {k for k in a if not torch.equal(a[k], b[k])}

    assert changed(before, after_fc) == {"fc.weight", "fc.bias"}
    assert changed(after_fc, after_gate) == {"gate.weight", "gate.bn.weight"}
    assert changed(after_gate, after_scale) == {"scale.weight"}
    assert changed(after_scale, after_conv) == {"conv.weight", "conv.bias", *own}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        fc = nn.Linear(4, 3)  # its constructor draws by reset_parameters
        torch.manual_seed(3)
        conv = nn.Conv2d(3, 4, 3, padding=1)
    torch.testing.assert_close(after_fc["fc.weight"], fc.weight.detach(), rtol=0, atol=0)
    torch.testing.assert_close(after_fc["fc.bias"], fc.bias.detach(), rtol=0, atol=0)
    torch.testing.assert_close(after_conv["conv.weight"], conv.weight.detach(), rtol=0, atol=0)
    (gate,) = _normal(1, [(torch.Size([4]), 1.0)])  # Gate.reset_parameters: N(0, 1)
    torch.testing.assert_close(after_gate["gate.weight"], gate, rtol=0, atol=0)
    # batch norm's reset_parameters sets weight 1, bias 0; its running statistics are kept
    assert after_gate["gate.bn.weight"].tolist() == [1.0] * 4
    for k in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(after_gate[f"gate.bn.{k}"], before[f"gate.bn.{k}"])
    (scale,) = _normal(2, [(torch.Size([4]), float(model.scale.weight.std()))])
    torch.testing.assert_close(after_scale["scale.weight"], scale, rtol=0, atol=0)
    stds = [float(model.pos.std()), float(model.pair.std()), 0.02, 0.02]
    expected = _normal(3, [(before[k].shape, s) for k, s in zip(own, stds, strict=True)])
    for k, value in zip(own, expected, strict=True):
        torch.testing.assert_close(after_conv[k], value, rtol=0, atol=0)
    # the seed shifts every step's draw
    _, seen5, _ = _states(model, images, torch.tensor([0, 2]), seed=5)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        fc5 = nn.Linear(4, 3)
    torch.testing.assert_close(seen5[1]["fc.weight"], fc5.weight.detach(), rtol=0, atol=0)


def test_given_layers_leave_the_models_own_parameters_alone() -> None:
    model = OwnNet()
    images = torch.rand(1, 3, 11, 11)
    check, seen, _ = _states(model, images, torch.tensor([1]), layers=["conv"])
    assert check.steps == ["conv"]
    changed = {k for k in seen[0] if not torch.equal(seen[0][k], seen[1][k])}
    assert changed == {"conv.weight", "conv.bias"}


def test_a_block_is_randomised_with_everything_inside_it(demo) -> None:
    model, images, labels = demo
    _, seen, _ = _states(model, images[:1], labels[:1], layers=["features.1"])
    original, randomised = seen
    inside = [k for k in original if k.startswith("features.1.")]
    params = {"features.1.0.weight", "features.1.1.weight", "features.1.1.bias"}
    assert {k for k in inside if not torch.equal(original[k], randomised[k])} == params
    assert all(torch.equal(original[k], randomised[k]) for k in original if k not in params)


def test_the_map_function_gets_the_given_class_ids(demo) -> None:
    model, images, labels = demo
    ids = (labels[:3] + 1) % 6  # not the top classes
    _, _, calls = _states(model, images[:3], ids, layers=["fc", "features.7"])
    assert len(calls) == 3 and all(c.tolist() == ids.tolist() for c in calls)


def test_a_model_that_holds_all_its_parameters_is_one_step() -> None:
    class Bare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.linspace(-1.0, 1.0, 363).view(3, 121))

        def forward(self, x: Tensor) -> Tensor:
            return x.flatten(1) @ self.weight.T

    assert randomization_units(Bare()) == [""]
    check, seen, _ = _states(Bare(), torch.rand(2, 1, 11, 11), torch.tensor([0, 1]))
    assert check.steps == [""]
    (expected,) = _normal(0, [(torch.Size([3, 121]), float(Bare().weight.std()))])
    torch.testing.assert_close(seen[1]["weight"], expected, rtol=0, atol=0)


def test_max_units_is_the_most_steps_allowed(demo) -> None:
    model, images, labels = demo
    seven = randomization_units(model, max_units=7)
    assert len(seven) == 7 and seven == randomization_units(model)
    assert randomization_units(model, max_units=6) == ["features", "fc"]
    check, _, _ = _states(model, images[:1], labels[:1], max_steps=6)
    assert check.steps == ["fc", "features"]


def _spy_logit(model, images, ids_, **kwargs):
    calls: list[Tensor] = []

    def spy(m: nn.Module, x: Tensor, ids: Tensor) -> Tensor:
        calls.append(ids.clone())
        return fixed_map(m, x, ids)

    return sanity_random_logit(model, images, spy, ids_, **kwargs), calls


def test_the_random_logit_is_another_class_drawn_from_the_seed() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(121, 7))
    images = torch.rand(20, 1, 11, 11)
    ids = torch.arange(20) % 7
    for seed, kwargs in ((0, {}), (4, {"seed": 4})):
        check, (first, other) = _spy_logit(model, images, ids, **kwargs)
        shift = torch.randint(1, 7, (20,), generator=torch.Generator().manual_seed(seed))
        assert first.tolist() == ids.tolist()
        assert other.tolist() == ((ids + shift) % 7).tolist()
        assert bool((other != ids).all())
        torch.testing.assert_close(check.ssim, torch.ones(1, 20))
    # two classes: the other class is always the other one
    two = nn.Sequential(nn.Flatten(), nn.Linear(121, 2))
    _, (first, other) = _spy_logit(two, images, ids % 2)
    assert other.tolist() == (1 - ids % 2).tolist()


def test_random_logit_needs_two_classes() -> None:
    one = nn.Sequential(nn.Flatten(), nn.Linear(121, 1))
    msg = "the random-logit check needs a model with at least 2 classes"
    with pytest.raises(InputError, match="^" + re.escape(msg) + "$"):
        sanity_random_logit(one, torch.rand(2, 1, 11, 11), fixed_map, 0)


def test_registered_methods_get_the_layer_and_the_options() -> None:
    torch.manual_seed(0)
    model = GapNet().eval()
    images = torch.randn(3, 3, 14, 14)
    ids = torch.tensor([1, 0, 3])
    opts = {"eigen_smooth": True}

    def by_hand(m: nn.Module, x: Tensor, i: Tensor) -> Tensor:
        return camlens.explain(m, x, "gradcam", "features.0", i, **opts).maps

    named = sanity_randomization(model, images, "gradcam", ids, "features.0", layers=["fc"], **opts)
    ref = sanity_randomization(model, images, by_hand, ids, layers=["fc"])
    torch.testing.assert_close(named.spearman, ref.spearman)
    torch.testing.assert_close(named.ssim, ref.ssim)
    plain = sanity_randomization(model, images, "gradcam", ids, layers=["fc"])
    assert not torch.allclose(plain.spearman, ref.spearman)
    named = sanity_random_logit(model, images, "gradcam", ids, "features.0", **opts)
    ref = sanity_random_logit(model, images, by_hand, ids)
    torch.testing.assert_close(named.spearman, ref.spearman)
    assert not torch.allclose(
        sanity_random_logit(model, images, "gradcam", ids).spearman, ref.spearman
    )


def test_the_default_method_is_gradcam_on_the_top_classes() -> None:
    torch.manual_seed(0)
    model = GapNet().eval()
    images = torch.randn(2, 3, 14, 14)
    a = sanity_randomization(model, images)
    b = sanity_randomization(model, images, "gradcam", model(images).argmax(1))
    torch.testing.assert_close(a.spearman, b.spearman)
    assert a.steps == ["fc", "features.2", "features.0"]
    a = sanity_random_logit(model, images)
    b = sanity_random_logit(model, images, "gradcam", model(images).argmax(1))
    torch.testing.assert_close(a.spearman, b.spearman)


def test_errors_name_what_would_work() -> None:
    model = torchvision.models.resnet18(weights=None)
    near = (
        "conv1, bn1, relu, maxpool, layer1, layer1.0, layer1.0.conv1, layer1.0.bn1, "
        "layer1.0.relu, layer1.0.conv2, layer1.0.bn2, layer1.1"
    )
    msg = f"no module named 'head' to randomise; modules include: {near}"
    image = torch.rand(1, 3, 32, 32)
    with pytest.raises(LayerNotFoundError, match="^" + re.escape(msg) + "$"):
        sanity_randomization(model, image, fixed_map, 0, layers=["head"])
    msg = "nothing to randomise: give at least one module name in layers"
    with pytest.raises(InputError, match="^" + re.escape(msg) + "$"):
        sanity_randomization(model, image, fixed_map, 0, layers=[])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_callers_cuda_rng_is_untouched() -> None:
    """Initialisers on a CUDA model draw from the CUDA generator: it is forked too."""
    model = OwnNet().cuda()
    images = torch.rand(2, 3, 11, 11, device="cuda")
    state = torch.cuda.get_rng_state()
    sanity_randomization(model, images, fixed_map, 0)
    assert torch.equal(torch.cuda.get_rng_state(), state)
