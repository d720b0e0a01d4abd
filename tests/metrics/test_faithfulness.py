"""Faithfulness metrics on models whose scores can be written down."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from camlens.errors import InputError
from camlens.maps import upsample
from camlens.metrics import (
    average_drop,
    black,
    deletion,
    gaussian_blur,
    increase_in_confidence,
    insertion,
    masked_confidence,
    win_rate,
)
from camlens.metrics.perturbation import pixel_ranks
from tests.conftest import GapNet, hook_count


class SumNet(nn.Module):
    """Logits (sum of all pixels, 0): the explained logit is the sum of what is left."""

    def forward(self, x: Tensor) -> Tensor:
        s = x.flatten(1).sum(dim=1)
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def _square() -> tuple[Tensor, Tensor]:
    image = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    return image, image[:, 0]  # the map ranks pixels 4, 3, 2, 1


def test_deletion_auc_by_hand() -> None:
    image, maps = _square()
    out = deletion(SumNet(), image, maps, 0, step=1, score="logit")
    assert out.curves.tolist() == [[10.0, 6.0, 3.0, 1.0, 0.0]]
    assert out.fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    # trapezoid: 0.25 * (10/2 + 6 + 3 + 1 + 0/2) = 3.75, RISE's (sum - p0/2 - pS/2) / S
    assert out.auc.tolist() == [3.75]


def test_deletion_with_a_step_that_does_not_divide_the_image() -> None:
    image, maps = _square()
    out = deletion(SumNet(), image, maps, 0, step=3, score="logit")
    assert out.curves.tolist() == [[10.0, 1.0, 0.0]]
    assert out.fractions.tolist() == [0.0, 0.75, 1.0]
    assert out.auc.item() == pytest.approx(0.75 * 11 / 2 + 0.25 * 1 / 2)


def test_deletion_removes_to_the_baseline() -> None:
    image, maps = _square()
    out = deletion(SumNet(), image, maps, 0, step=1, score="logit", baseline=1.0)
    assert out.curves.tolist() == [[10.0, 7.0, 5.0, 4.0, 4.0]]


def test_insertion_curve_by_hand() -> None:
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 6, 5, generator=gen)
    maps = torch.rand(1, 6, 5, generator=gen)
    start = gaussian_blur(image, 3, 1.0)
    out = insertion(SumNet(), image, maps, 0, step=1, score="logit", blur_kernel=3, blur_sigma=1.0)
    gain = (image - start).sum(dim=1).flatten()[maps.flatten().argsort(descending=True)]
    expected = start.sum() + torch.cat([torch.zeros(1), gain.cumsum(0)])
    torch.testing.assert_close(out.curves[0], expected)
    torch.testing.assert_close(out.curves[0, -1], image.sum())


def test_blur_keeps_a_constant_image_and_smooths_an_impulse() -> None:
    flat = torch.full((2, 3, 9, 7), 0.3)
    torch.testing.assert_close(gaussian_blur(flat), flat)
    impulse = torch.zeros(1, 1, 21, 21)
    impulse[0, 0, 10, 10] = 1.0
    out = gaussian_blur(impulse, 11, 5.0)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert out[0, 0, 10, 10] == out.max()
    with pytest.raises(InputError, match="odd"):
        gaussian_blur(flat, 4)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), step=st.integers(1, 13))
def test_deletion_and_insertion_end_points(seed: int, step: int) -> None:
    """Deletion starts at the image's score and ends at the baseline's; insertion starts at the
    blurred image's score and ends at the image's; deletion of positive pixels never rises."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(2, 2, 7, 6, generator=gen)
    maps = torch.rand(2, 7, 6, generator=gen)
    d = deletion(SumNet(), image, maps, 0, step=step, score="logit")
    torch.testing.assert_close(d.curves[:, 0], image.flatten(1).sum(1))
    torch.testing.assert_close(d.curves[:, -1], torch.zeros(2))
    assert bool((d.curves.diff(dim=1) <= 1e-5).all())
    ins = insertion(SumNet(), image, maps, 0, step=step, score="logit")
    torch.testing.assert_close(ins.curves[:, 0], gaussian_blur(image).flatten(1).sum(1))
    torch.testing.assert_close(ins.curves[:, -1], image.flatten(1).sum(1))
    assert d.fractions[0] == 0 and d.fractions[-1] == 1


def test_pixel_ranks_are_by_decreasing_value_with_stable_ties() -> None:
    maps = torch.tensor([[[0.5, 0.0], [0.9, 0.0]]])
    assert pixel_ranks(maps).tolist() == [[1, 2, 0, 3]]


def test_average_drop_and_increase_by_hand() -> None:
    image = torch.rand(3, 1, 4, 4) + 0.1
    half = torch.full((3, 4, 4), 0.5)
    torch.testing.assert_close(
        average_drop(SumNet(), image, half, 0, score="logit"), torch.full((3,), 50.0)
    )
    assert increase_in_confidence(SumNet(), image, half, 0, score="logit").tolist() == [0.0] * 3
    ones = torch.ones(3, 4, 4)
    torch.testing.assert_close(
        average_drop(SumNet(), image, ones, 0, score="logit"), torch.zeros(3)
    )
    # with a baseline of 2 the dimmed image is brighter: no drop, an increase
    conf = masked_confidence(SumNet(), image, half, 0, score="logit", baseline=2.0)
    torch.testing.assert_close(conf.masked, (1.0 + 0.5 * image).flatten(1).sum(1))
    assert conf.drop.tolist() == [0.0] * 3
    assert conf.increase.tolist() == [100.0] * 3


def test_black_is_zero_after_denormalising() -> None:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    b = black(mean, std)
    assert b.shape == (3, 1, 1)
    torch.testing.assert_close(
        b * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1), torch.zeros(3, 1, 1)
    )
    image = torch.rand(2, 3, 5, 5)
    conf = masked_confidence(SumNet(), image, torch.zeros(2, 5, 5), 0, score="logit", baseline=b)
    torch.testing.assert_close(conf.masked, b.expand(3, 5, 5).sum().repeat(2))


def test_win_rate_shares_ties() -> None:
    wins = win_rate({"a": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([2.0, 2.0, 1.0])})
    assert wins == {"a": pytest.approx(50.0), "b": pytest.approx(50.0)}
    assert win_rate({}) == {}
    # rounding noise is a tie, not a win
    near = win_rate({"cam": torch.tensor([5.0]), "gradcam": torch.tensor([5.0 + 1e-5])})
    assert near == {"cam": pytest.approx(50.0), "gradcam": pytest.approx(50.0)}


def test_batch_size_does_not_change_results_and_probabilities_are_used() -> None:
    torch.manual_seed(0)
    model = GapNet()
    images = torch.randn(3, 3, 10, 10)
    maps = torch.rand(3, 10, 10)
    a = deletion(model, images, maps, step=7, batch_size=1)
    b = deletion(model, images, maps, step=7, batch_size=100)
    torch.testing.assert_close(a.curves, b.curves)
    with torch.no_grad():
        probs = model(images).softmax(1)
    torch.testing.assert_close(a.curves[:, 0], probs.max(1).values)
    assert a.targets.tolist() == probs.argmax(1).tolist()


def test_low_resolution_maps_are_upsampled() -> None:
    torch.manual_seed(0)
    model = GapNet()
    images = torch.randn(2, 3, 12, 12)
    raw = torch.rand(2, 3, 3)
    a = deletion(model, images, raw, 1, step=10)
    b = deletion(model, images, upsample(raw, (12, 12)), 1, step=10)
    torch.testing.assert_close(a.auc, b.auc)


def test_the_model_comes_back_as_it_came() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(), nn.LazyLinear(3)
    )
    model(torch.randn(2, 3, 8, 8))
    model.train()
    model[1].eval()
    flags = [m.training for m in model.modules()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, maps = torch.randn(2, 3, 8, 8), torch.rand(2, 8, 8)
    a = deletion(model, images, maps, 0, step=16)
    b = deletion(model, images, maps, 0, step=16)
    torch.testing.assert_close(a.curves, b.curves)  # eval mode inside: dropout is off
    average_drop(model, images, maps, 0)
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert hook_count(model) == 0
    assert all(p.grad is None for p in model.parameters())


def test_bad_inputs_say_what_would_work() -> None:
    model, images = SumNet(), torch.rand(2, 1, 4, 4)
    with pytest.raises(InputError, match=r"\(B, H, W\) with B=2"):
        deletion(model, images, torch.rand(3, 4, 4), 0)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        average_drop(model, images, torch.rand(2, 4, 4) * 3, 0)
    with pytest.raises(InputError, match="'prob' or 'logit'"):
        deletion(model, images, torch.rand(2, 4, 4), 0, score="probability")
    with pytest.raises(InputError, match="class ids"):
        deletion(model, images, torch.rand(2, 4, 4), lambda out: out[:, 0])
    with pytest.raises(InputError, match="NaN"):
        deletion(model, images, torch.full((2, 4, 4), float("nan")), 0)
    with pytest.raises(InputError, match="broadcast"):
        deletion(model, images, torch.rand(2, 4, 4), 0, baseline=torch.zeros(5))


def test_perturbed_images_go_through_in_batches_of_batch_size() -> None:
    """Memory is bounded by batch_size: no forward sees more perturbed images than that."""
    seen: list[int] = []

    class Spy(SumNet):
        def forward(self, x: Tensor) -> Tensor:
            seen.append(x.shape[0])
            return super().forward(x)

    images, maps = torch.rand(3, 1, 6, 6), torch.rand(3, 6, 6)
    out = deletion(Spy(), images, maps, 0, step=2, batch_size=7, score="logit")
    assert out.curves.shape == (3, 19)
    assert seen[0] == 3 and max(seen[1:]) == 7 and sum(seen[1:]) == 3 * 19


# -- options reach the computation; edges; whole messages ----------------------------------


class DiffNet(nn.Module):
    """Logits (s, -s) with s the pixel sum: dimming the image raises class 1's logit."""

    def forward(self, x: Tensor) -> Tensor:
        s = x.flatten(1).sum(dim=1)
        return torch.stack([s, -s], dim=1)


class Spy(SumNet):
    """SumNet that records the batch size of every forward."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(x.shape[0])
        return super().forward(x)


def _raises(msg: str):
    return pytest.raises(InputError, match="^" + re.escape(msg) + "$")


def test_targets_and_options_reach_average_drop_and_increase() -> None:
    image = torch.rand(2, 1, 3, 3) + 0.1
    half = torch.full((2, 3, 3), 0.5)
    # class 1's logit -s rises to -s/2: no drop, an increase; the top class 0 drops by 50 %
    assert average_drop(DiffNet(), image, half, 1, score="logit").tolist() == [0.0, 0.0]
    torch.testing.assert_close(
        average_drop(DiffNet(), image, half, score="logit"), torch.full((2,), 50.0)
    )
    assert increase_in_confidence(DiffNet(), image, half, 1, score="logit").tolist() == [100.0] * 2
    assert increase_in_confidence(DiffNet(), image, half, score="logit").tolist() == [0.0] * 2
    # a baseline of 2 brightens the image: an increase of the sum's logit, by the option only
    assert increase_in_confidence(SumNet(), image, half, 0, baseline=2.0).tolist() == [100.0] * 2
    conf = masked_confidence(DiffNet(), image, half, torch.tensor([1, 0]), score="logit")
    assert conf.targets.tolist() == [1, 0]
    s = image.flatten(1).sum(1)
    torch.testing.assert_close(conf.full, torch.stack([-s[0], s[1]]))
    torch.testing.assert_close(conf.masked, conf.full / 2)


def test_masked_confidence_per_image_baselines_in_batches_of_one() -> None:
    model = Spy()
    images = torch.rand(3, 1, 4, 4)
    maps = torch.rand(3, 4, 4)
    base = torch.rand(3, 1, 4, 4) * 3
    conf = masked_confidence(model, images, maps, 0, score="logit", baseline=base, batch_size=1)
    expected = (base + maps[:, None] * (images - base)).flatten(1).sum(1)
    torch.testing.assert_close(conf.masked, expected)
    assert model.seen == [1] * 6  # 3 to resolve the targets, 3 masked images


def test_the_default_batch_is_64_images() -> None:
    images, maps = torch.rand(65, 1, 2, 2), torch.rand(65, 2, 2)
    model = Spy()
    masked_confidence(model, images, maps, 0)
    assert model.seen == [64, 1, 64, 1]
    model.seen.clear()
    deletion(model, images, maps, 0)  # 4 pixels: 5 points each, 325 perturbed images
    assert model.seen == [64, 1] + [64] * 5 + [5]
    model.seen.clear()
    insertion(model, images, maps, 0)
    assert model.seen == [64, 1] + [64] * 5 + [5]


def test_curves_resolve_targets_in_batches_too() -> None:
    model = Spy()
    deletion(model, torch.rand(3, 1, 2, 2), torch.rand(3, 2, 2), 0, step=4, batch_size=2)
    assert model.seen == [2, 1, 2, 2, 2]  # targets: 2 + 1; then 3 images x 2 points


def test_only_the_curves_show_a_progress_bar_named_after_them(capsys) -> None:
    images, maps = torch.rand(2, 1, 4, 4), torch.rand(2, 4, 4)
    deletion(SumNet(), images, maps, 0)
    insertion(SumNet(), images, maps, 0)
    masked_confidence(SumNet(), images, maps, 0)
    assert capsys.readouterr().err == ""
    deletion(SumNet(), images, maps, 0, progress=True)
    err = capsys.readouterr().err  # tqdm's line: "\rdeletion:   0%|..."
    assert "\rdeletion: " in err and "insertion" not in err
    insertion(SumNet(), images, maps, 0, progress=True)
    err = capsys.readouterr().err
    assert "\rinsertion: " in err and "deletion" not in err


def test_map_range_errors_in_full() -> None:
    model, images = SumNet(), torch.rand(2, 1, 4, 4)
    msg = (
        "maps must lie in [0, 1] to multiply the image; pass Explanation.maps (normalised), "
        "not the raw maps"
    )
    with _raises(msg):
        average_drop(model, images, torch.full((2, 4, 4), -0.1), 0)
    with _raises(msg):
        average_drop(model, images, torch.full((2, 4, 4), 1.5), 0)
    with _raises("score must be 'prob' or 'logit', got 'probability'"):
        average_drop(model, images, torch.rand(2, 4, 4), 0, score="probability")


def test_win_rate_exact_ties_without_tolerance() -> None:
    wins = win_rate({"a": torch.tensor([1.0, 3.0]), "b": torch.tensor([1.0, 2.0])}, tol=0.0)
    assert wins == {"a": pytest.approx(25.0), "b": pytest.approx(75.0)}


def test_gaussian_blur_matches_scipy() -> None:
    """scipy's gaussian_filter with mode 'nearest' (edge replication) and radius kernel // 2."""
    ndimage = pytest.importorskip("scipy.ndimage")
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 13, 16, generator=gen, dtype=torch.float64)
    for kernel, sigma in ((11, 5.0), (5, 1.3), (3, 0.5)):
        r = kernel // 2
        ref = ndimage.gaussian_filter(
            images.numpy(), sigma=(0, 0, sigma, sigma), mode="nearest", radius=(0, 0, r, r)
        )
        out = gaussian_blur(images, kernel, sigma)
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, torch.from_numpy(ref), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gaussian_blur(images, 1, 2.0), images)  # one tap: the image


def test_gaussian_blur_errors_in_full() -> None:
    image = torch.rand(1, 1, 5, 5)
    for kernel, sigma in ((4, 5.0), (0, 5.0), (-1, 5.0), (3, 0.0), (3, -1.0)):
        msg = f"blur kernel must be odd and >= 1 and sigma > 0, got {kernel}, {sigma}"
        with _raises(msg):
            gaussian_blur(image, kernel, sigma)


def test_default_step_is_one_percent_of_the_pixels_rounded_up() -> None:
    out = deletion(SumNet(), torch.rand(1, 1, 4, 4), torch.rand(1, 4, 4), 0)
    assert len(out.fractions) == 17  # 16 pixels: step 1
    out = deletion(SumNet(), torch.rand(1, 1, 1, 101), torch.rand(1, 1, 101), 0)
    assert len(out.fractions) == 52  # 101 pixels: step 2, 51 steps (the last one pixel)
    assert out.fractions[-1] == 1 and out.fractions[1] == pytest.approx(2 / 101)
    images, maps = torch.rand(1, 1, 11, 11), torch.rand(1, 11, 11)
    assert len(insertion(SumNet(), images, maps, 0).fractions) == 62  # 121 pixels: step 2
    assert len(insertion(SumNet(), images, maps, 0, step=1).fractions) == 122
    with _raises("step must be at least 1 pixel, got 0"):
        deletion(SumNet(), images, maps, 0, step=0)


def test_deletion_to_a_channel_or_per_image_baseline() -> None:
    images, maps = torch.rand(2, 3, 4, 4), torch.rand(2, 4, 4)
    b = black((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # (3, 1, 1)
    out = deletion(SumNet(), images, maps, 0, step=4, score="logit", baseline=b, batch_size=3)
    torch.testing.assert_close(out.curves[:, -1], (16 * b.sum()).repeat(2))
    per = torch.rand(2, 1, 4, 4)  # one baseline image per image, one channel
    out = deletion(SumNet(), images[:, :1], maps, 0, step=4, score="logit", baseline=per,
                   batch_size=3)  # fmt: skip
    torch.testing.assert_close(out.curves[:, -1], per.flatten(1).sum(1))


def test_insertion_targets_and_default_probabilities() -> None:
    torch.manual_seed(0)
    images, maps = torch.rand(2, 1, 3, 3), torch.rand(2, 3, 3)
    out = insertion(DiffNet(), images, maps, 1, score="logit")
    assert out.targets.tolist() == [1, 1]
    torch.testing.assert_close(out.curves[:, -1], -images.flatten(1).sum(1))
    model = GapNet(in_ch=1)
    images = torch.randn(2, 1, 6, 6)
    out = insertion(model, images, torch.rand(2, 6, 6), 2)
    with torch.no_grad():
        torch.testing.assert_close(out.curves[:, -1], model(images).softmax(1)[:, 2])


def test_masked_confidence_with_the_callers_logits_skips_the_clean_pass() -> None:
    calls: list[int] = []

    class Counting(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape[0])
            s = x.flatten(1).sum(dim=1)
            return torch.stack([s, -s, 0.5 * s], dim=1)

    model = Counting()
    x = torch.rand(3, 1, 4, 4)
    maps = torch.rand(3, 4, 4)
    plain = masked_confidence(model, x, maps, None)
    assert calls == [3, 3]
    calls.clear()
    given = masked_confidence(model, x, maps, None, logits=model(x))
    assert calls == [3, 3]  # the caller's pass and the masked one
    torch.testing.assert_close(given.full, plain.full, rtol=0, atol=0)
    torch.testing.assert_close(given.masked, plain.masked, rtol=0, atol=0)
    assert given.targets.tolist() == plain.targets.tolist()
    msg = (
        "logits must be (B, K) for the 3 images, got (2, 3); pass the model's logits on these "
        "images, or none"
    )
    with pytest.raises(InputError, match="^" + re.escape(msg) + "$"):
        masked_confidence(model, x, maps, None, logits=torch.zeros(2, 3))
