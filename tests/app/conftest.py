"""Fixtures of the web app's tests: one demo-model state per module, image bytes."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from camlens.app.state import AppState
from camlens.models import build_model


@pytest.fixture(scope="module")
def state() -> Iterator[AppState]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    st = AppState(build_model("demo"), batch_size=16)
    yield st
    st.close()
    torch.set_num_threads(threads)  # later tests run with the thread count they started with


def png_bytes(seed: int = 0, size: int = 96) -> bytes:
    """A noisy RGB picture as PNG bytes."""
    rng = np.random.default_rng(seed)
    arr = (rng.uniform(0, 255, (size, size, 3))).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
