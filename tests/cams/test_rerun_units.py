"""Score-CAM, SS-CAM, IS-CAM, Ablation-CAM and Recipro-CAM as pure functions of a Probe.

Each method is called on a hand-built probe (a GAP + biased linear head as the network) and
compared with its formula written as explicit loops over images and channels, in several
chunk sizes (the batch cuts must not matter) and in float64.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from camlens.cams import ablationcam, iscam, reciprocam, scorecam, sscam
from camlens.maps import minmax, upsample
from camlens.probe import Probe

W = torch.tensor([[1.0, -2.0, 0.5], [0.25, 1.0, -1.0], [-0.5, 0.5, 2.0]])
B = torch.tensor([0.75, -0.5, 0.25])


def head(x: Tensor) -> Tensor:
    """GAP + linear: (N, K, *s) -> (N, classes)."""
    return x.flatten(2).mean(dim=2) @ W.T.to(x.dtype) + B.to(x.dtype)


def signed_acts(dtype: torch.dtype = torch.float32) -> Tensor:
    """(3, 3, 4, 4): signed channels; channel 1 of image 1, channel 2 of images 0 and 2
    constant."""
    gen = torch.Generator().manual_seed(0)
    acts = torch.randn(3, 3, 4, 4, generator=gen, dtype=torch.float64)
    acts[1, 1] = 0.5
    acts[2, 2] = -1.0
    acts[0, 2] = 2.0  # image 0's class differs from image 2's: its own black-image score
    return acts.to(dtype)


TARGETS = torch.tensor([0, 2, 1])


def input_probe(acts: Tensor, batch_size: int, targets: Tensor = TARGETS) -> Probe:
    """Images are the activations upsampled (the network: GAP + linear on the image)."""
    images = torch.nn.functional.interpolate(acts, size=(8, 8), mode="bilinear")
    return Probe(lambda x, _o: head(x), images, acts, targets, None, batch_size=batch_size)


def score_of(x: Tensor, cls: int) -> float:
    return float(head(x[None])[0, cls])


@pytest.mark.parametrize("batch_size", [1, 2, 64])
def test_scorecam_by_loops_with_constant_channels_and_a_bias(batch_size: int) -> None:
    acts = signed_acts()
    probe = input_probe(acts, batch_size)
    expected = torch.zeros(3, 4, 4)
    for b in range(3):
        scores = torch.empty(3)
        for k in range(3):
            mask = minmax(upsample(acts[b, k][None], (8, 8)))[0]
            scores[k] = score_of(probe.images[b] * mask, int(TARGETS[b]))
        if b == 1:  # a constant channel: its mask is 0, its score the bias of class 2
            assert float(scores[1]) == pytest.approx(0.25)
        for k in range(3):
            expected[b] += scores.softmax(0)[k] * acts[b, k]
    assert torch.allclose(scorecam(acts, probe), expected, atol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 2, 64])
def test_iscam_by_loops(batch_size: int) -> None:
    acts = signed_acts()
    probe = input_probe(acts, batch_size)
    steps = 3
    expected = torch.zeros(3, 4, 4)
    for b in range(3):
        scores = torch.empty(3)
        for k in range(3):
            mask = minmax(upsample(acts[b, k][None], (8, 8)))[0]
            total = sum(
                score_of(probe.images[b] * (i / steps) * mask, int(TARGETS[b]))
                for i in range(1, steps + 1)
            )
            scores[k] = total / steps
        for k in range(3):
            expected[b] += scores.softmax(0)[k] * acts[b, k]
    assert torch.allclose(iscam(acts, probe, steps=steps), expected, atol=1e-6)


def test_sscam_noise_is_seeded_scaled_and_averaged() -> None:
    acts = signed_acts()
    # sigma = 0: every sample is the clean mask, SS-CAM is Score-CAM (both noise modes)
    for mode in ("activation", "input"):
        got = sscam(acts, input_probe(acts, 5), samples=3, sigma=0.0, noise_on=mode)
        assert torch.allclose(got, scorecam(acts, input_probe(acts, 5)), atol=1e-6), mode
    # with noise: the same seed gives the same map, the map changes with sigma
    a = sscam(acts, input_probe(acts, 4), samples=2, sigma=0.5)
    b = sscam(acts, input_probe(acts, 7), samples=2, sigma=0.5)
    assert torch.allclose(a, b, atol=1e-6)  # chunking does not change the noise drawn
    assert not torch.allclose(a, sscam(acts, input_probe(acts, 4), samples=2, sigma=1.0))
    with pytest.raises(ValueError, match="noise_on must be 'activation' or 'input', got 'x'"):
        sscam(acts, input_probe(acts, 4), noise_on="x")


def test_sscam_input_noise_by_loops() -> None:
    """SS-CAM(2): C_k = mean_n S(X + e_n) * H^k, noise drawn in build order from the probe's
    generator (seed 0), image-major, channel, then sample."""
    acts = signed_acts()[:1]
    probe = input_probe(acts, 64, TARGETS[:1])
    gen = torch.Generator().manual_seed(0)
    scores = torch.empty(3)
    x = probe.images[0]
    masks = [minmax(upsample(acts[0, k][None], (8, 8)))[0] for k in range(3)]
    noise = torch.randn((6, *x.shape), generator=gen) * 0.5  # one draw for all 6 items
    for k in range(3):
        scores[k] = sum(score_of((x + noise[2 * k + s]) * masks[k], 0) for s in range(2)) / 2
    expected = sum(scores.softmax(0)[k] * acts[0, k] for k in range(3))
    got = sscam(acts, probe, samples=2, sigma=0.5, noise_on="input")
    assert torch.allclose(got[0], expected, atol=1e-5)


class LayerRun:
    """A layer probe's network after the layer: GAP + linear, counting what it is given."""

    def __init__(self) -> None:
        self.items = 0

    def __call__(self, a: Tensor, _owner: Tensor) -> Tensor:
        self.items += a.shape[0]
        return head(a)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_ablationcam_by_loops(batch_size: int) -> None:
    acts = signed_acts()
    acts[0, 2] = 0.0  # an all-zero channel: weight 0, no pass
    y = head(acts).gather(1, TARGETS[:, None])[:, 0]
    run = LayerRun()
    probe = Probe(run, acts, acts, TARGETS, y, batch_size=batch_size)
    got = ablationcam(acts, probe)
    expected = torch.zeros(3, 4, 4)
    for b in range(3):
        for k in range(3):
            if not acts[b, k].any():
                continue
            ablated = acts[b].clone()
            ablated[k] = 0
            y_k = score_of(ablated, int(TARGETS[b]))
            expected[b] += (float(y[b]) - y_k) / float(y[b]) * acts[b, k]
    assert torch.allclose(got, expected, atol=1e-5)
    assert run.items == 8  # 9 channels, one all zero


def test_ablationcam_guards_a_zero_score_with_its_sign() -> None:
    acts = signed_acts()[:2]
    targets = TARGETS[:2]
    cases = [([0.0, -1e-9], 1e-7, [1e-7, -1e-7]), ([1e-9, -0.0], 1e-3, [1e-3, 1e-3])]
    cases.append(([2e-3, -5e-3], 1e-3, [2e-3, -5e-3]))  # |y| >= eps: y itself
    for values, eps, denoms in cases:
        base = torch.tensor(values)
        probe = Probe(LayerRun(), acts, acts, targets, base, batch_size=4)
        got = ablationcam(acts, probe, eps=eps)
        for b in range(2):
            denom = denoms[b]
            expected = torch.zeros(4, 4)
            for k in range(3):
                ablated = acts[b].clone()
                ablated[k] = 0
                y_k = score_of(ablated, int(targets[b]))
                expected += (float(base[b]) - y_k) / denom * acts[b, k]
            assert torch.allclose(got[b], expected, rtol=1e-5), (base, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_reciprocam_by_loops(dtype: torch.dtype, batch_size: int) -> None:
    acts = signed_acts(dtype)
    run = LayerRun()
    probe = Probe(run, acts, acts, TARGETS, None, batch_size=batch_size)
    got = reciprocam(acts, probe)
    expected = torch.empty(3, 4, 4)
    for b in range(3):
        for i in range(4):
            for j in range(4):
                kept = torch.zeros_like(acts[b])
                kept[:, i, j] = acts[b, :, i, j]
                expected[b, i, j] = head(kept[None]).softmax(1)[0, TARGETS[b]]
    assert got.dtype == torch.float32
    assert torch.allclose(got, expected, atol=1e-6)
    assert run.items == 3 * 16


def test_informative_channels_are_decided_per_image_and_channel_relatively() -> None:
    from camlens.cams.score import _informative

    acts = torch.zeros(2, 3, 2, 2)
    acts[0, 0] = torch.tensor([[1.0, 2.0], [1.5, 1.0]])  # range 1, max 2: 1 > 0.5 * 2? no
    acts[0, 1] = torch.tensor([[1.0, 2.5], [1.5, 1.0]])  # range 1.5 > 0.5 * 2.5
    acts[0, 2] = 3.0  # constant
    acts[1, 0] = torch.tensor([[-4.0, -1.0], [-2.0, -3.0]])  # range 3 > 0.5 * 4
    acts[1, 1] = torch.tensor([[-4.0, -2.0], [-2.0, -3.0]])  # range 2 = 0.5 * 4: not >
    acts[1, 2] = torch.tensor([[0.0, 0.0], [0.0, 1e-30]])  # tiny but not constant
    got = _informative(acts, rel_eps=0.5)
    assert got.tolist() == [[False, True, False], [True, False, True]]
    assert _informative(acts).tolist() == [[True, True, False], [True, True, True]]


def test_several_targets_per_image_equal_one_call_per_target() -> None:
    """(B, T) targets: each masked image is scored once for all T classes; the maps (B, T, h, w)
    equal T separate calls, constant channels included."""
    acts = signed_acts()
    both = torch.stack([TARGETS, torch.tensor([1, 0, 2])], dim=1)  # (3, 2)
    for method, kw in ((scorecam, {}), (iscam, {"steps": 2}), (sscam, {"samples": 2})):
        many = method(acts, input_probe(acts, 4, both), **kw)
        assert many.shape == (3, 2, 4, 4)
        for t in range(2):
            one = method(acts, input_probe(acts, 4, both[:, t].contiguous()), **kw)
            assert torch.allclose(many[:, t], one, atol=1e-6), (method.__name__, t)


def test_sscam_activation_noise_by_loops_scores_constant_channels_too() -> None:
    """SS-CAM(1): C_k = mean_n S(X * minmax(upsample(A^k) + e_n)); noise makes a constant
    channel informative, so it is scored like the others (not with the black image)."""
    acts = signed_acts()[1:2]  # channel 1 is constant
    probe = input_probe(acts, 64, TARGETS[1:2])
    gen = torch.Generator().manual_seed(0)
    x = probe.images[0]
    noise = torch.randn((6, 8, 8), generator=gen) * 0.5
    scores = torch.empty(3)
    for k in range(3):
        up = upsample(acts[0, k][None], (8, 8))[0]
        total = sum(score_of(x * minmax((up + noise[2 * k + s])[None])[0], 2) for s in range(2))
        scores[k] = total / 2
    expected = sum(scores.softmax(0)[k] * acts[0, k] for k in range(3))
    got = sscam(acts, probe, samples=2, sigma=0.5)
    assert torch.allclose(got[0], expected, atol=1e-5)


def test_paper_defaults() -> None:
    """SS-CAM: N = 10 samples, sigma = 2, noise on the activation; IS-CAM: N = 10 steps."""
    import inspect

    ss = inspect.signature(sscam).parameters
    assert (ss["samples"].default, ss["sigma"].default) == (10, 2.0)
    assert ss["noise_on"].default == "activation"
    assert inspect.signature(iscam).parameters["steps"].default == 10
    assert inspect.signature(ablationcam).parameters["eps"].default == 1e-7


def test_default_sample_and_step_counts_are_run() -> None:
    """SS-CAM scores every channel N = 10 times with sigma = 2 by default; IS-CAM takes 10
    steps for each informative channel."""
    acts = signed_acts()[:1]
    run = LayerRun()
    probe = Probe(run, input_probe(acts, 64, TARGETS[:1]).images, acts, TARGETS[:1], None)
    default = sscam(acts, probe)
    assert run.items == 3 * 10
    probe2 = Probe(LayerRun(), probe.images, acts, TARGETS[:1], None)
    assert torch.allclose(default, sscam(acts, probe2, samples=10, sigma=2.0), atol=1e-6)
    run = LayerRun()
    iscam(acts, Probe(run, probe.images, acts, TARGETS[:1], None))
    assert run.items == 2 * 10 + 1  # channel 2 is constant: not scored, one black image
