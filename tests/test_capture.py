"""camlens.capture: the model given back as it came, the capture hooks, the images' checks and
SmoothGrad's noisy copies, each against what it must record or refuse, word for word."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

from camlens.capture import Capture, check_images, noisy_copies, preserved_model
from camlens.errors import InputError, LayerError
from tests.conftest import raises_whole


def hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


class Net(nn.Module):
    """conv -> ReLU(inplace) -> conv -> GAP -> linear, double everywhere."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4, 3)
        self.double()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.conv2(self.relu(self.conv1(x))).mean(dim=(2, 3)))


# -- preserved_model --


def test_preserved_model_restores_mixed_flags_and_requires_grad() -> None:
    model = Net()
    model.train()
    model.conv2.eval()
    model.fc.weight.requires_grad_(False)
    with preserved_model(model):
        assert not any(m.training for m in model.modules())  # eval for the call
        for p in model.parameters():  # the body may flip them both ways
            p.requires_grad_(not p.requires_grad)
        model.relu.train()
    assert [m.training for m in model.modules()] == [True, True, True, False, True]
    assert [p.requires_grad for p in model.parameters()] == [True, True, True, True, False, True]


def test_preserved_model_restores_after_an_exception() -> None:
    model = Net()
    model.conv1.weight.requires_grad_(False)
    with pytest.raises(KeyError), preserved_model(model):
        for p in model.parameters():
            p.requires_grad_(True)
        model.train()
        raise KeyError("boom")
    assert [m.training for m in model.modules()] == [True] * 5
    assert [p.requires_grad for p in model.parameters()] == [False] + [True] * 5


# -- Capture --


def test_capture_records_the_true_activation_and_hands_a_clone_downstream() -> None:
    model, x = Net().eval(), torch.randn(2, 2, 6, 6, dtype=torch.float64)
    expected = model.conv1(x).detach()  # the in-place ReLU after conv1 must not change it
    capture = Capture([("conv1", model.conv1)], track_grads=False, linears=[], model=model)
    assert (capture.acts, capture.calls, capture.grid_at, capture.frame) == ({}, {}, {}, None)
    assert capture.linears == [] and capture.layers == [("conv1", model.conv1)]
    with capture, torch.no_grad():
        assert hooks(model) == 3  # conv1's capture hook and the two grid hooks
        out = model(x)
    assert hooks(model) == 0
    assert torch.equal(capture.acts["conv1"], expected) and bool((expected < 0).any())
    assert not capture.acts["conv1"].requires_grad
    assert torch.allclose(out, model(x), rtol=0, atol=1e-12)  # the downstream saw the same values
    assert capture.calls == {"conv1": 1}
    assert capture.grid_at == {"conv1": None}  # no convolution ran before conv1
    assert capture.frame is None and capture.linears == []


def test_track_grads_makes_the_first_layer_a_leaf_and_turns_autograd_on() -> None:
    model, x = Net().eval(), torch.randn(2, 2, 6, 6, dtype=torch.float64)
    layers = [("conv1", model.conv1), ("conv2", model.conv2)]
    capture = Capture(layers, track_grads=True, linears=[])
    with capture, torch.no_grad():
        out = model(x)
        assert torch.is_grad_enabled()  # switched on by the first hook, under no_grad
    first, second = capture.acts["conv1"], capture.acts["conv2"]
    assert first.is_leaf and first.requires_grad
    assert not second.is_leaf and second.requires_grad  # on the graph from the first layer
    assert out.requires_grad
    (g,) = torch.autograd.grad(out[:, 1].sum(), [second])
    expected = model.fc.weight[1].view(1, 4, 1, 1).expand_as(second) / 9
    assert torch.allclose(g, expected, rtol=0, atol=1e-12)
    assert capture.calls == {"conv1": 1, "conv2": 1}
    assert capture.grid_at == {"conv1": None, "conv2": None}  # no model: no grid hooks


def test_an_output_that_already_requires_grad_is_kept_on_its_graph() -> None:
    model, x = Net().eval(), torch.randn(1, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    capture = Capture([("conv1", model.conv1)], track_grads=True, linears=[])
    with capture:
        model(x)
    act = capture.acts["conv1"]
    assert not act.is_leaf and act.grad_fn is not None  # not detached into a new leaf
    (gx,) = torch.autograd.grad(act.sum(), [x])
    assert gx.abs().sum() > 0


def test_grids_linears_and_call_counts() -> None:
    model, x = Net().eval(), torch.randn(2, 2, 6, 6, dtype=torch.float64)
    layers, heads = [("conv2", model.conv2)], [("fc", model.fc)]
    capture = Capture(layers, track_grads=False, linears=heads, model=model)
    with capture, torch.no_grad():
        out = model(x)
        model(x)
    assert capture.calls == {"conv2": 2}
    assert capture.grid_at == {"conv2": (6, 6)}  # conv1's output, the last convolution before
    assert [c.name for c in capture.linears] == ["fc", "fc"]
    call = capture.linears[0]
    assert call.module is model.fc
    assert torch.equal(call.output, out) and not call.output.requires_grad
    assert torch.equal(call.input, model.conv2(model.conv1(x).relu()).mean(dim=(2, 3)))
    assert capture._grid == (3, 3)  # conv2's own output, for a layer after it


def test_no_grid_hooks_without_grids_and_one_dimensional_grids() -> None:
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Conv1d(3, 4, 3)).double()
    x = torch.randn(1, 2, 9, dtype=torch.float64)
    capture = Capture([("1", model[1])], track_grads=False, linears=[], model=model, grids=False)
    with capture, torch.no_grad():
        assert hooks(model) == 1
        model(x)
    assert capture.grid_at == {"1": None}
    capture = Capture([("1", model[1])], track_grads=False, linears=[], model=model)
    with capture, torch.no_grad():
        model(x)
    assert capture.grid_at == {"1": (7,)}


def test_a_linear_hook_ignores_calls_without_a_tensor() -> None:
    capture = Capture([], track_grads=False, linears=[])
    hook = capture._linear_hook("fc")
    x, y = torch.ones(1, 2), torch.zeros(1, 3)
    hook(None, (), y)
    hook(None, ([x],), y)
    hook(None, (x,), (y,))
    assert capture.linears == []
    hook(None, (x, 5), y)
    assert len(capture.linears) == 1 and capture.linears[0].input is not x


def test_the_grid_hook_ignores_non_maps() -> None:
    capture = Capture([], track_grads=False, linears=[])
    capture._grid_hook(None, (), torch.zeros(2, 3))
    capture._grid_hook(None, (), (torch.zeros(1, 2, 3, 4),))
    assert capture._grid is None
    capture._grid_hook(None, (), torch.zeros(1, 2, 5))
    assert capture._grid == (5,)


def test_a_tuple_output_stays_a_tuple() -> None:
    class Block(nn.Module):
        def forward(self, x: Tensor) -> tuple[Tensor, str, int]:
            return x * 2, "attn", 3

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = Block()

        def forward(self, x: Tensor) -> Tensor:
            y, name, n = self.block(x)
            assert (name, n) == ("attn", 3)
            return y.add_(1)  # in place, downstream: the capture keeps the true output

    model, x = Model(), torch.randn(1, 2, 3, 3)
    capture = Capture([("block", model.block)], track_grads=False, linears=[])
    with capture:
        out = model(x)
    assert torch.equal(capture.acts["block"], x * 2) and torch.equal(out, x * 2 + 1)


class Flat(nn.Module):
    def __init__(self, output: object) -> None:
        super().__init__()
        self.output = output

    def forward(self, x: Tensor) -> object:
        return self.output


@pytest.mark.parametrize(
    ("output", "shape"),
    [
        (torch.zeros(2, 3), "(2, 3)"),
        ((torch.zeros(4),), "(4,)"),
        ({"a": 1}, "dict"),
        ((), "tuple"),
        (("x", torch.zeros(1, 2, 3)), "tuple"),
    ],
)
def test_a_layer_that_is_no_map_is_refused(output, shape) -> None:
    module = Flat(output)
    capture = Capture([("head.out", module)], track_grads=True, linears=[])
    message = (
        f"layer 'head.out' outputs {shape}, not a feature map, channels-last map or tokens; pick "
        "a convolutional layer, block or transformer norm, or pass layer=None to use the "
        "automatic one"
    )
    with raises_whole(LayerError, message), capture:
        module(torch.zeros(1))
    assert hooks(module) == 0 and capture.calls == {}


def test_hooks_are_removed_when_registration_fails() -> None:
    model = Net()
    capture = Capture(
        [("conv1", model.conv1)], track_grads=False, linears=[("oops", object())], model=model
    )
    with pytest.raises(AttributeError), capture:
        pass
    assert hooks(model) == 0 and capture._handles == []


def test_hooks_are_removed_after_an_exception_in_the_forward() -> None:
    model = Net()
    capture = Capture(
        [("conv1", model.conv1)], track_grads=True, linears=[("fc", model.fc)], model=model
    )
    with pytest.raises(RuntimeError), capture:
        model(torch.zeros(1, 5, 4, 4, dtype=torch.float64))  # wrong channel count
    assert hooks(model) == 0 and capture._handles == []


class Resize(nn.Module):
    """A detector's transform: pads to 8 x 12, the first image resized to 7 x 10."""

    def postprocess(self) -> None:  # what detector_transform looks for
        pass

    def forward(self, x: Tensor) -> object:
        if x.shape[-1] == 1:
            return x  # no ImageList: the frame is kept
        batch = SimpleNamespace(tensors=torch.zeros(1, 3, 8, 12), image_sizes=[(7, 10), (5, 5)])
        return batch, None


class Detector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.transform = Resize()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        self.transform(x)
        return self.conv(x)


def test_a_detectors_frame_is_recorded_and_kept() -> None:
    model = Detector()
    capture = Capture([("conv", model.conv)], track_grads=False, linears=[], model=model)
    with capture, torch.no_grad():
        assert hooks(model) == 3  # capture, grid, frame
        model(torch.zeros(1, 3, 4, 4))
        assert capture.frame == ((8, 12), (7, 10))
        model(torch.zeros(1, 3, 4, 1))
    assert capture.frame == ((8, 12), (7, 10)) and hooks(model) == 0
    capture = Capture(
        [("conv", model.conv)], track_grads=False, linears=[], model=model, grids=False
    )
    with capture, torch.no_grad():
        assert hooks(model) == 2  # the frame is read without grids too
        model(torch.zeros(1, 3, 4, 4))
    assert capture.frame == ((8, 12), (7, 10)) and capture.grid_at == {"conv": None}


# -- check_images --


def test_a_tensor_is_both_the_images_and_the_model_input() -> None:
    x = torch.zeros(2, 3, 4, 4)
    images, given = check_images(Net(), x)
    assert images is x and given is x
    video = torch.zeros(1, 1, 2, 3, 3, dtype=torch.float16)
    assert check_images(nn.Identity(), video)[0] is video  # no parameter: no device check


@pytest.mark.parametrize("wrap", [list, tuple])
def test_a_list_of_images_is_stacked_and_passed_as_given(wrap) -> None:
    given = wrap([torch.zeros(3, 4, 5), torch.ones(3, 4, 5)])
    images, model_input = check_images(Net(), given)
    assert torch.equal(images, torch.stack(list(given))) and model_input is given


def _refused(images: object, message: str, model: nn.Module | None = None) -> None:
    with raises_whole(InputError, message):
        check_images(model or Net(), images)


def test_images_of_several_sizes_are_refused() -> None:
    _refused(
        [torch.zeros(3, 4, 5), torch.zeros(3, 5, 4), torch.zeros(3, 4, 5)],
        "a list of images must hold images of one size, got sizes [(3, 4, 5), (3, 5, 4)]; "
        "resize them first or explain them one at a time",
    )


@pytest.mark.parametrize(
    ("images", "kind"),
    [([], "list"), ((), "tuple"), ([torch.zeros(3, 4, 4), 1], "list"), (None, "NoneType")],
)
def test_what_is_no_tensor_is_refused(images, kind) -> None:
    _refused(
        images,
        "images must be a torch.Tensor of shape (B, C, H, W) (or (B, C, D, H, W) for volumes and "
        f"video), or a list of (C, H, W) tensors, got {kind}; load and preprocess them first "
        "(camlens.io.load_image, camlens.io.preprocess)",
    )


@pytest.mark.parametrize(
    ("shape", "hint"),
    [
        ((3, 4, 4), " (add a batch dimension: images.unsqueeze(0))"),
        ((4, 4), ""),
        ((1, 1, 1, 1, 1, 1), ""),
    ],
)
def test_the_number_of_dimensions_is_checked(shape, hint) -> None:
    _refused(
        torch.zeros(shape),
        "images must be 4-D (B, C, H, W) or, for volumes and video, 5-D (B, C, D, H, W); "
        f"got shape {shape}{hint}",
    )


def test_integer_images_are_refused() -> None:
    _refused(
        torch.zeros(1, 3, 4, 4, dtype=torch.uint8),
        "images must be a float tensor (preprocessed), got dtype torch.uint8; convert with "
        "images.float() / 255 and normalise as the model expects",
    )


def test_an_empty_batch_is_refused() -> None:
    _refused(torch.zeros(0, 3, 4, 4), "images is an empty batch (B=0)")


def test_images_on_another_device_are_refused() -> None:
    _refused(
        torch.zeros(1, 3, 4, 4),
        "images are on cpu but the model is on meta; move them with images.to('meta')",
        Net().to("meta"),
    )


# -- noisy_copies --


def test_noisy_copies_are_the_images_plus_seeded_noise_scaled_by_each_images_range() -> None:
    images = torch.stack(
        [
            torch.linspace(-1, 3, 2 * 3 * 4, dtype=torch.float64).view(2, 3, 4),  # range 4
            torch.linspace(0, 0.5, 2 * 3 * 4, dtype=torch.float64).view(2, 3, 4),  # range 0.5
        ]
    )
    out = noisy_copies(images, 3, 0.2, torch.Generator().manual_seed(7))
    noise = torch.randn(
        2, 3, 2, 3, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64
    )
    span = torch.tensor([4.0, 0.5], dtype=torch.float64).view(2, 1, 1, 1, 1)
    expected = images[:, None] + noise * 0.2 * span
    assert out.dtype == torch.float64 and out.shape == (6, 2, 3, 4)
    assert torch.allclose(out, expected.reshape(6, 2, 3, 4), rtol=0, atol=1e-12)
    for b in range(2):  # image-major: copies b*3 .. b*3+2 are image b's
        for s in range(3):
            delta = (out[b * 3 + s] - images[b]) / (0.2 * span[b, 0])
            assert torch.allclose(delta, noise[b, s], rtol=0, atol=1e-9)


def test_noisy_copies_of_volumes_and_zero_noise() -> None:
    images = torch.rand(2, 1, 2, 3, 3)
    out = noisy_copies(images, 2, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(out, images.repeat_interleave(2, dim=0))
