"""Helpers shared by the tools_app tests."""

from __future__ import annotations

from typing import Any


async def in_db_thread(fn: Any) -> Any:
    """Run ORM code from an async test in a pool thread that closes its connection after
    (Django's a* ORM methods would leave one open in asgiref's shared thread)."""
    from tools_app.agent_tools import _in_thread

    return await _in_thread(fn)()


def http_tool(url: str, **fields: Any) -> Any:
    """An HTTP tool saved through the model's own validation (`full_clean`, as the admin
    saves it), so a test that builds a forbidden tool sees the admin's refusal."""
    from tools_app.models import ToolDefinition

    tool = ToolDefinition(kind="http", http_url=url, **fields)
    tool.full_clean()
    tool.save()
    return tool


class SimulatedCrash(BaseException):
    """Stands in for a process dying mid-call: not an Exception, so nothing records it."""


class LocalToolServer:
    """A real aiohttp server on 127.0.0.1 in its own thread, playing a downstream HTTP tool.

    `script` lists what each request gets, in order (the last entry repeats): an int
    status, ("sleep", seconds), ("redirect", url), ("big", bytes) or ("retry-after", s). Every request is recorded with its headers and body.
    "Effects" count the 2xx answers, i.e. the times the downstream action happened.
    """

    def __init__(self, script: list[Any]) -> None:
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        self.effects = 0
        self.port = 0
        self._loop: Any = None
        self._runner: Any = None
        self._thread: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/tool"

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        raw = await request.read()
        body = raw.decode()
        index = len(self.requests)
        self.requests.append(
            {
                "headers": dict(request.headers),
                "body": body,
                "raw_body": raw,
                "query": dict(request.query),
                "raw_query": request.rel_url.raw_query_string,
                "method": request.method,
            }
        )
        step = self.script[min(index, len(self.script) - 1)]
        if isinstance(step, tuple) and step[0] == "redirect":
            return web.Response(status=302, headers={"Location": step[1]})
        if isinstance(step, tuple) and step[0] == "big":
            return web.Response(body=b"x" * step[1], content_type="text/plain")
        if isinstance(step, tuple) and step[0] == "retry-after":
            return web.json_response({"error": "busy"}, status=503, headers={"Retry-After": str(step[1])})
        if isinstance(step, tuple) and step[0] == "sleep":
            import asyncio

            await asyncio.sleep(step[1])
            step = 200
        if 200 <= step < 300:
            self.effects += 1
            return web.json_response({"ok": True, "effect": self.effects})
        return web.json_response({"error": f"scripted {step}"}, status=step)

    def __enter__(self) -> LocalToolServer:
        import asyncio
        import threading

        from aiohttp import web

        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            app = web.Application()
            app.router.add_route("*", "/tool", self._handle)
            self._runner = web.AppRunner(app)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            self._loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def keys(self) -> list[str | None]:
        return [r["headers"].get("Idempotency-Key") for r in self.requests]
