"""The HTTP side of ``camlens app``: FastAPI routes over :class:`camlens.app.state.AppState`.

Routes (all JSON unless said otherwise; errors are ``{"detail": message}`` with status 400,
404, 413 or 415):

- ``GET /``, ``/app.js``, ``/style.css``: the page (three files shipped with the package; no
  route serves any other file, and no route takes a path on disk);
- ``GET /api/info``: model, classes, layers (automatic one marked), methods, colormaps,
  examples, upload limits;
- ``POST /api/images`` (multipart ``file``): upload an image -> its id and top classes;
- ``GET /api/images/{id}``, ``GET /api/images/{id}/input.png``;
- ``POST /api/jobs`` ``{"image", "methods", "layer", "target"}`` -> a job id;
  ``GET /api/jobs/{id}`` (status, progress, per-method time and metrics);
  ``POST /api/jobs/{id}/cancel``;
- ``GET /api/jobs/{id}/{method}/{overlay|heatmap}.png?colormap=&alpha=``: rendered from the
  cached map (re-colouring never recomputes); ``GET /api/jobs/{id}/raw.npz``.
"""

import sys
from importlib import resources
from typing import Any

from camlens.app.state import COLORMAPS, AppState
from camlens.errors import CamlensError, InputError

_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}


def _static(name: str) -> bytes:
    return resources.files("camlens.app").joinpath("static", name).read_bytes()


def _limit_body(app: Any, limit: int) -> Any:
    """ASGI middleware: a request body over ``limit`` bytes ends in 413, even when it is sent
    without a Content-Length (chunked), before the multipart parser spools it anywhere."""
    from starlette.exceptions import HTTPException

    async def middleware(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(
                        413, f"the request is too large: its body passed {limit} bytes"
                    )
            return message

        await app(scope, limited, send)

    return middleware


def create_app(state: AppState) -> Any:
    """The FastAPI application serving ``state``'s model (imports FastAPI lazily)."""
    from fastapi import FastAPI, File, Request, UploadFile
    from fastapi.responses import JSONResponse, Response
    from pydantic import BaseModel
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="camlens", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_limit_body, limit=state.limits.max_bytes + 64 * 1024)
    app.state.camlens = state
    pages = {route: (_static(name), kind) for route, (name, kind) in _STATIC.items()}
    headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}

    @app.exception_handler(CamlensError)
    async def _camlens_error(_request: Request, exc: CamlensError) -> JSONResponse:
        missing = str(exc).startswith(("no image", "no job"))
        return JSONResponse({"detail": str(exc)}, status_code=404 if missing else 400)

    def page(route: str) -> Any:
        body, kind = pages[route]

        def serve() -> Response:
            # Only this server: pictures, fetches, styles; no frames, no plugins.
            csp = (
                "img-src 'self' blob: data:; connect-src 'self'; style-src 'self'; "
                "object-src 'none'; frame-ancestors 'none'; base-uri 'none'"
            )
            return Response(
                body, media_type=kind, headers={**headers, "Content-Security-Policy": csp}
            )

        return serve

    for route in pages:
        app.get(route, include_in_schema=False)(page(route))

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        spec = state.spec
        return {
            "model": spec.name,
            "size": spec.size,
            "classes": state.num_classes,
            "class_names": [state.class_name(c) for c in range(state.num_classes)],
            "layers": state.layers,
            "auto_layer": state.auto_layer,
            "methods": state.methods_info(),
            "colormaps": list(COLORMAPS),
            "examples": [state.image_info(state.image(i)) for i in state.examples],
            "limits": {
                "max_bytes": state.limits.max_bytes,
                "max_pixels": state.limits.max_pixels,
            },
        }

    @app.post("/api/images")
    async def upload(request: Request, file: UploadFile = File(...)) -> Any:  # noqa: B008
        limit = state.limits.max_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit + 64 * 1024:
            return JSONResponse(
                {"detail": f"the upload is too large; the limit is {limit / 2**20:.0f} MiB"},
                status_code=413,
            )
        data = await file.read(limit + 1)
        if len(data) > limit:
            return JSONResponse(
                {"detail": f"the upload is too large; the limit is {limit / 2**20:.0f} MiB"},
                status_code=413,
            )
        try:
            entry = await run_in_threadpool(state.add_upload, data, file.filename or "upload")
        except InputError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=415)
        return state.image_info(entry)

    @app.get("/api/images/{image_id}")
    def image(image_id: str) -> dict[str, Any]:
        return state.image_info(state.image(image_id))

    @app.get("/api/images/{image_id}/input.png")
    def image_png(image_id: str) -> Response:
        return Response(state.input_png(image_id), media_type="image/png", headers=headers)

    class JobRequest(BaseModel):
        image: str
        methods: list[str]
        layer: str | None = None
        target: int | None = None

    @app.post("/api/jobs")
    def submit(req: JobRequest) -> dict[str, Any]:
        job = state.submit(req.image, req.methods, req.layer, req.target)
        return state.job_info(job)

    @app.get("/api/jobs/{job_id}")
    def job(job_id: str) -> dict[str, Any]:
        return state.job_info(state.job(job_id))

    @app.post("/api/jobs/{job_id}/cancel")
    def cancel(job_id: str) -> dict[str, Any]:
        return state.job_info(state.cancel(job_id))

    @app.get("/api/jobs/{job_id}/raw.npz")
    def raw(job_id: str) -> Response:
        return Response(
            state.raw_npz(job_id),
            media_type="application/octet-stream",
            headers={**headers, "Content-Disposition": f'attachment; filename="{job_id}.npz"'},
        )

    @app.get("/api/jobs/{job_id}/{method}/{kind}.png")
    def render(
        job_id: str, method: str, kind: str, colormap: str = "jet", alpha: float = 0.5
    ) -> Response:
        png = state.render(job_id, method, kind, colormap, float(alpha))
        return Response(png, media_type="image/png", headers=headers)

    return app


def _listen(host: str, port: int) -> Any:
    """A listening socket on host:port, or a :class:`CamlensError` that says what to change."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CamlensError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass another --port "
            "(or --host)"
        ) from None
    sock.listen(128)
    return sock


def serve(
    model: str = "demo",
    weights: str | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    batch_size: int = 16,
    device: str = "cpu",
) -> None:
    """Build the model (from the command line only), listen, print the URL, serve until Ctrl+C.

    The port is taken before the model is built, so a busy port fails at once; the URL is
    printed once the socket listens.
    """
    import torch
    import uvicorn

    from camlens.models import build_model

    sock = _listen(host, port)
    try:
        spec = build_model(model, weights)
        try:
            spec.model.to(torch.device(device))
        except (RuntimeError, AssertionError, ValueError) as exc:
            first = str(exc).splitlines()[0][:150] if str(exc) else type(exc).__name__
            raise InputError(f"--device {device}: {first}; try --device cpu") from None
        state = AppState(spec, batch_size=batch_size)
    except BaseException:
        sock.close()
        raise
    server = uvicorn.Server(uvicorn.Config(create_app(state), log_level="warning"))
    shown = f"[{host}]" if ":" in host else host
    print(f"camlens app: {model} at http://{shown}:{port}/  (Ctrl+C to stop)", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        state.close()
        sock.close()
        sys.stdout.flush()
