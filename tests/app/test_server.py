"""The app over HTTP (FastAPI's TestClient, and a real uvicorn server for concurrency)."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

import camlens
from camlens.app.state import AppState, Limits
from camlens.cli import main
from camlens.demo import CLASSES
from tests.app.conftest import png_bytes

pytest.importorskip("fastapi", reason="the app's optional extra (camlens[app]) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is needed by FastAPI's TestClient")
from fastapi.testclient import TestClient  # noqa: E402

from camlens.app.server import create_app  # noqa: E402


@pytest.fixture(scope="module")
def client(state: AppState) -> Iterator[TestClient]:
    with TestClient(create_app(state)) as c:
        yield c


def wait(client: Any, job_id: str) -> dict[str, Any]:
    for _ in range(600):
        info = client.get(f"/api/jobs/{job_id}").json()
        if info["status"] not in ("queued", "running"):
            return info
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {info}")


def test_the_page_and_its_files_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and 'type="file"' in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from the network
    assert client.get("/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/style.css").status_code == 200


@pytest.mark.parametrize(
    "path",
    ["/static/../state.py", "/..%2Fstate.py", "/api/images/..%2F..%2Fetc%2Fpasswd", "/docs"],
)
def test_no_route_reads_a_path(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 404


def test_info_lists_methods_layers_examples(client: TestClient) -> None:
    info = client.get("/api/info").json()
    assert [m["name"] for m in info["methods"]] == camlens.methods()
    assert {m["name"] for m in info["methods"] if m["slow"]} >= {"scorecam", "sscam", "iscam"}
    assert info["auto_layer"] == "features" and "features" in info["layers"]
    assert info["classes"] == 6 and info["class_names"] == list(CLASSES)
    assert len(info["examples"]) == 6 and all(e["has_mask"] for e in info["examples"])


def test_upload_explain_render_download(client: TestClient) -> None:
    r = client.post("/api/images", files={"file": ("noise.png", png_bytes(3), "image/png")})
    assert r.status_code == 200, r.text
    image = r.json()
    assert len(image["top"]) == 5 and not image["has_mask"]
    assert abs(sum(t["prob"] for t in image["top"]) - 1) < 1e-4  # 6 classes: top 5 ~ all
    target = image["top"][2]["class"]
    job = client.post(
        "/api/jobs",
        json={"image": image["id"], "methods": ["gradcam", "xgradcam"], "target": target},
    ).json()
    info = wait(client, job["id"])
    assert info["status"] == "done" and info["target"] == target
    assert all(r["ok"] and r["metrics"] == {} for r in info["results"])
    png = client.get(f"/api/jobs/{job['id']}/xgradcam/overlay.png?colormap=viridis&alpha=0.3")
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    raw = np.load(io.BytesIO(client.get(f"/api/jobs/{job['id']}/raw.npz").content))
    assert sorted(raw.files) == ["gradcam", "gradcam_map", "xgradcam", "xgradcam_map"]
    bad = client.get(f"/api/jobs/{job['id']}/xgradcam/overlay.png?alpha=2")
    assert bad.status_code == 400 and "opacity" in bad.json()["detail"]


def test_a_bad_upload_gets_an_error_and_the_app_keeps_working(client: TestClient) -> None:
    r = client.post("/api/images", files={"file": ("notes.png", b"just some text\n", "image/png")})
    assert r.status_code == 415 and "not a readable image" in r.json()["detail"]
    r = client.post("/api/images", files={"file": ("ok.png", png_bytes(4), "image/png")})
    assert r.status_code == 200


def test_uploads_over_the_limit_are_refused(state: AppState) -> None:
    small = AppState(state.spec, limits=Limits(max_bytes=2000), examples=0)
    try:
        with TestClient(create_app(small)) as c:
            r = c.post("/api/images", files={"file": ("big.png", png_bytes(5), "image/png")})
            assert r.status_code == 413 and "limit" in r.json()["detail"]
    finally:
        small.close()


def test_bad_job_requests(client: TestClient) -> None:
    info = client.get("/api/info").json()
    image = info["examples"][0]["id"]
    r = client.post("/api/jobs", json={"image": image, "methods": ["gradcam"], "layer": "x"})
    assert r.status_code == 400 and "unknown layer" in r.json()["detail"]
    r = client.post("/api/jobs", json={"image": "nope", "methods": ["gradcam"]})
    assert r.status_code == 404
    assert client.get("/api/jobs/nope").status_code == 404


def test_cancel_endpoint(client: TestClient, state: AppState) -> None:
    """While the model is busy (its lock held here) the job stays queued; cancelling it then
    must cancel it: it never runs, has no results, and the app goes on serving jobs."""
    image = client.get("/api/info").json()["examples"][0]["id"]
    with state.lock:
        job = client.post("/api/jobs", json={"image": image, "methods": ["gradcam"]}).json()
        assert job["status"] == "queued"
        info = client.post(f"/api/jobs/{job['id']}/cancel").json()
        assert info["status"] == "cancelled"
    info = wait(client, job["id"])
    assert info["status"] == "cancelled" and info["results"] == [] and info["passes"] == 0
    again = client.post("/api/jobs", json={"image": image, "methods": ["gradcam"]}).json()
    assert wait(client, again["id"])["status"] == "done"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_concurrent_requests_get_their_own_answers(state: AppState) -> None:
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(state), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        plans = [(image, c) for image in state.examples[:3] for c in (0, 3)]

        def one(plan: tuple[str, int]) -> tuple[str, int, dict[str, np.ndarray]]:
            image, target = plan
            with httpx.Client(base_url=base, timeout=60) as c:
                job = c.post(
                    "/api/jobs",
                    json={"image": image, "methods": ["gradcam", "scorecam"], "target": target},
                ).json()
                assert wait(c, job["id"])["status"] == "done"
                raw = np.load(io.BytesIO(c.get(f"/api/jobs/{job['id']}/raw.npz").content))
                return image, target, {k: raw[k] for k in raw.files}

        with ThreadPoolExecutor(len(plans)) as pool:
            answers = list(pool.map(one, plans))
        for image, target, arrays in answers:
            x = state.image(image).x
            for method in ("gradcam", "scorecam"):
                ex = camlens.explain(state.model, x, method, "features", target, batch_size=16)
                np.testing.assert_allclose(arrays[f"{method}_map"], ex.maps[0].numpy(), atol=1e-5)
        assert len({a[2]["gradcam_map"].tobytes() for a in answers}) == len(plans)
    finally:
        server.should_exit = True
        thread.join(10)


def test_cli_app_warns_when_not_local(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    calls: list[tuple] = []
    monkeypatch.setattr("camlens.app.server.serve", lambda *a: calls.append(a))
    assert main(["app"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["app", "--host", "0.0.0.0", "--port", "8000", "--model", "demo"]) == 0
    assert "reachable from other machines" in capsys.readouterr().err
    assert calls == [
        ("demo", None, "127.0.0.1", 7860, 16, "cpu"),
        ("demo", None, "0.0.0.0", 8000, 16, "cpu"),
    ]


def test_cli_app_reports_a_bad_model(capsys: Any) -> None:
    assert main(["app", "--model", "resnet5O"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_a_chunked_upload_over_the_limit_is_cut_off(state: AppState) -> None:
    small = AppState(state.spec, limits=Limits(max_bytes=1000), examples=0)
    body = b"--b\r\nContent-Disposition: form-data; name=file; filename=a.png\r\n\r\n"
    body += b"x" * 300_000 + b"\r\n--b--\r\n"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the body arrives in pieces
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]

    try:
        with TestClient(create_app(small)) as c:
            r = c.post(
                "/api/images",
                content=chunks(),
                headers={"Content-Type": "multipart/form-data; boundary=b"},
            )
            # Cut off by the body limit, not by the endpoint after parsing everything.
            assert r.status_code == 413 and "its body passed" in r.json()["detail"]
            assert c.get("/api/info").status_code == 200
    finally:
        small.close()


def test_cli_app_says_when_the_port_is_taken(capsys: Any) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["app", "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_cli_app_reports_a_bad_device(capsys: Any) -> None:
    assert main(["app", "--port", str(_free_port()), "--device", "nodevice"]) == 2
    assert "--device nodevice" in capsys.readouterr().err
