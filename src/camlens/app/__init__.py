"""``camlens app``: a local web page to explore explanations (optional extra ``camlens[app]``).

The page is a thin layer over :func:`camlens.explain` and :mod:`camlens.viz`:
:mod:`camlens.app.state` holds the model, the images and the explanation jobs (plain Python and
torch, no web framework), and :mod:`camlens.app.server` exposes them over HTTP with FastAPI.
Importing this package imports neither FastAPI nor uvicorn.
"""

from camlens.app.state import AppState, Limits

__all__ = ["AppState", "Limits"]
