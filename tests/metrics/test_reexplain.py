"""map_fn and chunked_maps: a method name becomes one Explainer per model; chunks are invisible."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import camlens
from camlens.metrics.reexplain import chunked_maps, map_fn
from tests.conftest import GapNet


def test_a_callable_is_returned_as_it_is() -> None:
    def fn(model: nn.Module, images: Tensor, ids: Tensor) -> Tensor:
        return images[:, 0]

    assert map_fn(fn, "features.0", {"smooth": 3}) is fn


def test_an_unknown_name_is_refused_before_any_work() -> None:
    with pytest.raises(camlens.MethodNotFoundError):
        map_fn("nosuchcam", None, {})


def test_a_name_explains_with_its_layer_options_and_classes(gapnet, images) -> None:
    # features.0 is not the automatic layer ("features"), class 0 is not the top class (1),
    # and smooth= changes the maps: each argument is seen in the result
    ids = torch.tensor([0, 2, 0, 4])
    options = {"smooth": 2, "smooth_std": 0.5}
    want = camlens.explain(gapnet, images, "gradcam", "features.0", ids, **options).maps
    got = map_fn("gradcam", "features.0", options)(gapnet, images, ids)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    for other in (
        camlens.explain(gapnet, images, "gradcam", None, ids, **options).maps,
        camlens.explain(gapnet, images, "gradcam", "features.0", ids).maps,
        camlens.explain(gapnet, images, "gradcam", "features.0", None, **options).maps,
    ):
        assert (other - want).abs().max() > 0.05


def test_one_explainer_per_model(images) -> None:
    torch.manual_seed(0)
    first = GapNet().eval()
    torch.manual_seed(5)
    second = GapNet().eval()
    ids = torch.tensor([1, 0, 3, 2])
    fn = map_fn("gradcam", "features.0", {})
    for model in (first, second, first):
        want = camlens.explain(model, images, "gradcam", "features.0", ids).maps
        torch.testing.assert_close(fn(model, images, ids), want, atol=0, rtol=0)
    a = camlens.explain(first, images, "gradcam", "features.0", ids).maps
    b = camlens.explain(second, images, "gradcam", "features.0", ids).maps
    assert (a - b).abs().max() > 0.05  # the two models do give different maps


@pytest.mark.parametrize(("size", "chunks"), [(2, [2, 2, 1]), (1, [1] * 5), (0, [1] * 5)])
def test_chunked_maps_runs_size_images_at_a_time(size: int, chunks: list[int]) -> None:
    seen: list[tuple[int, list[int]]] = []

    def spy(model: nn.Module, images: Tensor, ids: Tensor) -> Tensor:
        seen.append((images.shape[0], ids.tolist()))
        return images[:, 0].double()  # float64 comes back as float32

    images = torch.rand(5, 3, 4, 4)  # B=5 images of C=3 channels
    ids = torch.tensor([4, 3, 2, 1, 0])
    out = chunked_maps(spy, nn.Identity(), images, ids, size)
    assert [n for n, _ in seen] == chunks
    assert [i for _, chunk in seen for i in chunk] == ids.tolist()
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, images[:, 0], atol=0, rtol=0)
