"""The app's state without a server: safe decoding, jobs, cancellation, cached re-rendering."""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

import camlens
from camlens.app.state import AppState, Limits, decode_image
from camlens.demo import CLASSES
from camlens.errors import CamlensError, InputError
from camlens.io import preprocess
from camlens.models import ModelSpec
from tests.app.conftest import png_bytes
from tests.conftest import GapNet


def test_decode_image_accepts_a_png_and_refuses_text() -> None:
    img = decode_image(png_bytes(), Limits())
    assert img.size == (96, 96) and img.mode == "RGB"
    with pytest.raises(InputError, match="not a readable image"):
        decode_image(b"this is text, renamed to .png\n" * 10, Limits())
    with pytest.raises(InputError, match="empty"):
        decode_image(b"", Limits())


def test_decode_image_refuses_too_many_bytes_and_pixels() -> None:
    with pytest.raises(InputError, match="limit"):
        decode_image(png_bytes(), Limits(max_bytes=100))
    # A decompression bomb in miniature: a small file that claims many pixels.
    buf = io.BytesIO()
    Image.new("L", (2000, 2000)).save(buf, format="PNG")
    assert len(buf.getvalue()) < 20_000
    with pytest.raises(InputError, match="2000 x 2000"):
        decode_image(buf.getvalue(), Limits(max_pixels=1_000_000))


def test_decode_image_refuses_formats_that_are_not_images() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PDF")
    with pytest.raises(InputError, match="not a readable image"):
        decode_image(buf.getvalue(), Limits())


def test_examples_come_with_masks_labels_and_predictions(state: AppState) -> None:
    assert len(state.examples) == 6
    labels = set()
    for image_id in state.examples:
        entry = state.image(image_id)
        assert entry.mask is not None and entry.mask.shape == (96, 96) and entry.mask.any()
        info = state.image_info(entry)
        assert info["has_mask"] and info["top"][0]["name"] in CLASSES
        labels.add(info["label"])
    assert labels == set(CLASSES)
    assert state.auto_layer == "features"
    assert "features" in state.layers and state.channels["features"] == 96


def test_a_job_gives_what_camlens_explain_gives(state: AppState) -> None:
    entry = state.image(state.examples[1])
    target = int(entry.probs.argsort()[-2])  # the second class, not the top one
    job = state.submit(entry.id, ["gradcam", "Grad-CAM++"], None, target)
    assert job.finished.wait(60) and job.status == "done", state.job_info(job)
    for method in ("gradcam", "gradcampp"):
        ex = camlens.explain(state.model, entry.x, method, layer="features", target=target)
        torch.testing.assert_close(job.results[method].map, ex.maps[0])
        torch.testing.assert_close(job.results[method].raw, ex.raw["features"][0])
        assert set(job.results[method].metrics) == {"pointing_game", "iou"}
    info = state.job_info(job)
    assert info["target_name"] == CLASSES[target] and info["progress"] == 1.0
    assert [r["method"] for r in info["results"]] == ["gradcam", "gradcampp"]
    assert not state.model._forward_pre_hooks and not state.model._forward_hooks


def test_one_more_method_computes_only_that_one(state: AppState) -> None:
    image = state.examples[2]
    first = state.submit(image, ["hirescam"], "features.7", 4)
    assert first.finished.wait(60) and first.status == "done"
    calls = state.explain_calls
    second = state.submit(image, ["hirescam", "xgradcam"], "features.7", 4)
    assert second.finished.wait(60) and second.status == "done"
    assert state.explain_calls == calls + 1
    assert second.results["hirescam"] is first.results["hirescam"]
    cached = {r["method"]: r["cached"] for r in state.job_info(second)["results"]}
    assert cached == {"hirescam": True, "xgradcam": False}
    other = state.submit(image, ["hirescam"], "features.7", 5)  # another class: computed
    assert other.finished.wait(60) and state.explain_calls == calls + 2
    assert not torch.equal(other.results["hirescam"].map, first.results["hirescam"].map)


def test_rerendering_reads_the_cache(state: AppState) -> None:
    job = state.submit(state.examples[0], ["layercam"], "features.6", None)
    assert job.finished.wait(60) and job.status == "done"
    calls = state.explain_calls
    a = state.render(job.id, "layercam", "overlay", "jet", 0.2)
    b = state.render(job.id, "layercam", "overlay", "jet", 0.9)
    c = state.render(job.id, "layercam", "heatmap", "viridis", 0.5)
    assert state.explain_calls == calls
    pics = [np.asarray(Image.open(io.BytesIO(p))) for p in (a, b, c)]
    assert all(p.shape == (96, 96, 3) for p in pics)
    assert not np.array_equal(pics[0], pics[1])
    with pytest.raises(InputError, match="colormap"):
        state.render(job.id, "layercam", "overlay", "no-such-map", 0.5)
    with pytest.raises(InputError, match="opacity"):
        state.render(job.id, "layercam", "overlay", "jet", 1.5)
    with pytest.raises(InputError, match="no map"):
        state.render(job.id, "gradcam", "overlay", "jet", 0.5)
    arrays = np.load(io.BytesIO(state.raw_npz(job.id)))
    assert arrays["layercam"].shape == (12, 12) and arrays["layercam_map"].shape == (96, 96)


def test_bad_requests_say_what_would_work(state: AppState) -> None:
    image = state.examples[0]
    with pytest.raises(CamlensError, match="Registered methods"):
        state.submit(image, ["nope"], None, None)
    with pytest.raises(InputError, match="unknown layer"):
        state.submit(image, ["gradcam"], "/etc/passwd", None)
    with pytest.raises(InputError, match="out of range"):
        state.submit(image, ["gradcam"], None, 6)
    with pytest.raises(InputError, match="at least one"):
        state.submit(image, [], None, None)
    with pytest.raises(InputError, match="no image"):
        state.submit("../../etc/passwd", ["gradcam"], None, None)


def test_a_method_that_fails_is_reported_and_the_rest_runs(state: AppState) -> None:
    # CAM needs the GAP + linear head right after the layer: at features.3 it is not there.
    job = state.submit(state.examples[0], ["cam", "gradcam"], "features.3", None)
    assert job.finished.wait(60) and job.status == "done"
    assert job.results["cam"].error and job.results["cam"].map is None
    assert job.results["gradcam"].map is not None


class _Gate:
    """Two events; a deep copy (the app's predictor) gets an always-open gate."""

    def __init__(self, open_: bool = False) -> None:
        self.started, self.gate = threading.Event(), threading.Event()
        if open_:
            self.gate.set()

    def __deepcopy__(self, memo: dict) -> _Gate:
        return _Gate(open_=True)


class GatedNet(nn.Module):
    """GapNet whose batched forward passes wait for ``gate``: a slow model on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.net = GapNet(channels=8, classes=4)
        self.events = _Gate()

    @property
    def started(self) -> threading.Event:
        return self.events.started

    @property
    def gate(self) -> threading.Event:
        return self.events.gate

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] > 1:  # the scorecam chunks (batch 2), not the one-image passes
            self.started.set()
            assert self.gate.wait(30)
        return self.net(x)


def test_a_long_job_reports_progress_and_stops_when_cancelled() -> None:
    model = GatedNet()
    spec = ModelSpec(model, "gated", ["a", "b", "c", "d"], size=32, resize=None, preset="none")
    st = AppState(spec, batch_size=2, examples=1)
    try:
        training = [m.training for m in model.modules()]
        job = st.submit(st.examples[0], ["scorecam", "gradcam"], "net.features", 1)
        assert model.started.wait(30)
        assert job.status == "running" and job.current == "scorecam"
        st.cancel(job.id)
        model.gate.set()
        assert job.finished.wait(30)
        assert job.status == "cancelled" and "gradcam" not in job.results
        assert st.job_info(job)["progress"] == 1.0
        assert not model._forward_pre_hooks and not model._forward_hooks
        assert [m.training for m in model.modules()] == training
        # The state keeps working after a cancellation.
        again = st.submit(st.examples[0], ["scorecam"], "net.features", 1)
        assert again.finished.wait(30) and again.status == "done"
        assert again.passes >= 4  # 8 channels in batches of 2, and the plain forward
    finally:
        model.gate.set()
        st.close()


def test_uploads_are_capped_in_number(state: AppState) -> None:
    small = AppState(state.spec, limits=Limits(max_images=2), examples=1)
    try:
        ids = [small.add_upload(png_bytes(i), f"u{i}.png").id for i in range(4)]
        kept = [k for k, v in small.images.items() if not v.example]
        assert kept == ids[-2:] and len(small.examples) == 1
    finally:
        small.close()


def test_an_upload_is_answered_while_a_long_job_runs() -> None:
    model = GatedNet()
    spec = ModelSpec(model, "gated", ["a", "b", "c", "d"], size=32, resize=None, preset="none")
    st = AppState(spec, batch_size=2, examples=1)
    try:
        job = st.submit(st.examples[0], ["scorecam"], "net.features", 1)
        assert model.started.wait(30)  # the job holds the model, waiting on the gate
        queued = st.submit(st.examples[0], ["gradcam"], None, 0)
        entry = st.add_upload(png_bytes(9, size=32), "during.png")  # no deadlock, no wait
        assert entry.probs.shape == (4,) and job.status == "running"
        st.cancel(queued.id)
        assert queued.status == "cancelled" and queued.finished.is_set()
        model.gate.set()
        assert job.finished.wait(30) and job.status == "done"
        assert "gradcam" not in queued.results
    finally:
        model.gate.set()
        st.close()


@dataclass
class _StatsSpec(ModelSpec):
    """A spec with its own mean/std and preprocess (as camlens.models gives timm models)."""

    mean: tuple[float, ...] = (0.5, 0.4, 0.3)
    std: tuple[float, ...] = (0.2, 0.25, 0.3)

    def preprocess(self, images: list[Image.Image]) -> Tensor:
        x = preprocess(images, self.size, None, "none")
        return (x - torch.tensor(self.mean)[:, None, None]) / torch.tensor(self.std)[:, None, None]


def test_a_spec_with_its_own_normalisation_is_used_both_ways() -> None:
    spec = _StatsSpec(GapNet(classes=3), "stats", [], size=32, resize=None, preset="imagenet")
    st = AppState(spec, examples=0)
    try:
        pic = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8))
        buf = io.BytesIO()
        pic.save(buf, format="PNG")
        entry = st.add_upload(buf.getvalue(), "p.png")
        assert st.image_info(entry)["top"][0]["name"].startswith("class ")
        back = np.asarray(Image.open(io.BytesIO(st.input_png(entry.id))), dtype=np.int16)
        assert np.abs(back - np.asarray(pic, dtype=np.int16)).max() <= 1
    finally:
        st.close()


class _Fragile(GapNet):
    """Fails on batched passes, as a model might run out of memory on Score-CAM's chunks."""

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] > 1:
            raise RuntimeError("out of memory (pretend)")
        return super().forward(x)


def test_an_unexpected_failure_stays_in_its_method() -> None:
    spec = ModelSpec(_Fragile(classes=3), "fragile", [], size=32, resize=None, preset="none")
    st = AppState(spec, batch_size=4, examples=1)
    try:
        job = st.submit(st.examples[0], ["scorecam", "gradcam"], "features", 0)
        assert job.finished.wait(30) and job.status == "done"
        assert job.results["scorecam"].error == "RuntimeError: out of memory (pretend)"
        assert job.results["gradcam"].map is not None
        again = st.submit(st.examples[0], ["scorecam"], "features", 0)
        assert again.finished.wait(30) and "scorecam" not in again.cached  # not kept
    finally:
        st.close()
