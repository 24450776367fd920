"""A small HTTP backend for demos and tests: answers every path with its name.

    python -m simulations.backend --port 9001 --name server-a [--host 127.0.0.1]

``/healthz`` answers 200 ``ok``; every other path answers 200 with the server's name, the path
and the X-Forwarded-For header it saw, as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from aiohttp import web

__all__ = ["make_app"]


def make_app(name: str) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def anything(request: web.Request) -> web.Response:
        body = {"server": name, "path": request.path, "x_forwarded_for": request.headers.get("X-Forwarded-For")}
        return web.Response(text=json.dumps(body) + "\n", content_type="application/json")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m simulations.backend")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    args = parser.parse_args()

    async def serve() -> None:
        runner = web.AppRunner(make_app(args.name), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, args.host, args.port, reuse_address=True).start()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
