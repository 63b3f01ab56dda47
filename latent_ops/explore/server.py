"""The explorer's web server: Starlette routes that translate requests into ``Explorer`` calls, and nothing else.

No request can name a path on disk: sprite sheets are asked for by number, static files are served from the
package's ``static/`` folder only, and saves go to new folders under the explorer's output folder. Request bodies
are size-limited (an upload to ``pictures.MAX_BYTES``, the rest to ``MAX_JSON``). A person's mistake (a bad
expression, a file that is not a picture) is answered with status 400 and ``{"error": message}``; the server keeps
running after any failure. Work on the networks runs in the thread pool, so the page stays responsive.

Example: ``python -m latent_ops.explore --run models/pegasus-cifar10`` (``latent_ops.explore.__main__``)
"""
from __future__ import annotations

import json
import traceback
from pathlib import Path
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from autoencoder.cli import UserError
from latent_ops.explore.map_cache import map_points
from latent_ops.explore.session import Explorer
from latent_ops.pictures import MAX_BYTES

STATIC = Path(__file__).resolve().parent / "static"
MAX_JSON = 64 * 1024  # bytes of a JSON request: an edit is a few hundred


class TooLarge(UserError):
    pass


async def read_body(request: Request, limit: int, what: str) -> bytes:
    """The request's body, refused past ``limit`` bytes (the declared length is checked before reading)."""
    declared = request.headers.get("content-length", "")
    too_large = TooLarge(f"{what} is larger than {limit // 2**20 or 1} MiB{'' if limit >= 2**20 else ' (64 KiB)'}; "
                         f"pictures up to {MAX_BYTES // 2**20} MiB are read: save a smaller copy")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


async def read_json(request: Request) -> dict:
    try:
        value = json.loads(await read_body(request, MAX_JSON, "the request"))
    except (ValueError, UnicodeDecodeError):
        raise UserError("the request is not JSON; reload the page") from None
    if not isinstance(value, dict):
        raise UserError("the request must be a JSON object; reload the page")
    return value


def answer(call):
    """A route from ``call(request)`` (async): its value as JSON; a UserError as 400 with its message; anything
    else as 500 with a line (and the traceback on the server's console)."""
    async def route(request: Request) -> Response:
        try:
            return JSONResponse(await call(request))
        except UserError as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        except Exception as error:  # the page shows it; the server keeps running
            traceback.print_exc()
            return JSONResponse({"error": f"the server failed: {type(error).__name__}: {error}"}, status_code=500)
    return route


def make_app(explorer: Explorer) -> Starlette:
    points = map_points(explorer.map)  # made once: the map never changes while the server runs

    async def state(request: Request) -> dict:
        return explorer.state()

    async def map_(request: Request) -> dict:
        return points

    async def sprites(request: Request) -> Response:
        sheet = request.path_params["sheet"]
        if not 0 <= sheet < explorer.map.sheets:
            return JSONResponse({"error": f"no sprite sheet {sheet}"}, status_code=404)
        return FileResponse(explorer.map.sheet_file(sheet), media_type="image/png",
                            headers={"Cache-Control": "max-age=3600"})

    async def render(request: Request) -> dict:
        return await run_in_threadpool(explorer.render, await read_json(request))

    async def upload(request: Request) -> dict:
        name = unquote(request.headers.get("x-file-name", "picture"))[:100]
        data = await read_body(request, MAX_BYTES, name)
        return await run_in_threadpool(explorer.upload, data, name)

    async def compose(request: Request) -> dict:
        return await run_in_threadpool(explorer.compose, await read_json(request))

    async def compose_status(request: Request) -> dict:
        return await run_in_threadpool(explorer.compose_status, request.path_params["job"])

    async def save(request: Request) -> dict:
        return await run_in_threadpool(explorer.save, await read_json(request))

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    routes = [
        Route("/", index),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Route("/api/state", answer(state)),
        Route("/api/map", answer(map_)),
        Route("/api/sprites/{sheet:int}.png", sprites),
        Route("/api/render", answer(render), methods=["POST"]),
        Route("/api/upload", answer(upload), methods=["POST"]),
        Route("/api/compose", answer(compose), methods=["POST"]),
        Route("/api/compose/{job:int}", answer(compose_status)),
        Route("/api/save", answer(save), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes)
