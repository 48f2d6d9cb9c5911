"""A lean HTTP/1.1 keep-alive client for the load phases: a pool of plain connections.

Why not httpx: with 200 connections in one process its pool cost the load generator more
than the API spent answering. Measured with 200 pollers at one poll a second: the
generator used 0.75 of a core while the API used 0.36; the client saw a 1.25 s mean, the
API's own `onramp_http_request_seconds` a 0.11 s mean. The bench was timing itself. Each
connection here is one simulated browser: a request, its response, the next request.
"""

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import urlencode, urlsplit


class Unanswered(EOFError):
    """The connection closed before a status line came back."""


# What a failed request raises (refused, reset, closed early, timed out).
HTTPError = (OSError, EOFError, TimeoutError)


@dataclass
class Response:
    status_code: int
    headers: dict[str, str] = field(default_factory=dict)  # names lower-cased
    content: bytes = b""

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Response:
        head = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(body)}")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        # A kept-alive connection the server closed while idle fails before any answer:
        # that one case is sent again on a fresh connection (nothing reached the app).
        reused = self._writer is not None
        try:
            return await self._exchange(data)
        except Unanswered:
            await self.close()
            if not reused:
                raise
            return await self._exchange(data)

    async def _exchange(self, data: bytes) -> Response:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        try:
            self._writer.write(data)
            await self._writer.drain()
            status_line = await self._reader.readline()
        except ConnectionError:
            status_line = b""
        if not status_line:
            raise Unanswered("the connection closed before the response")
        response = Response(int(status_line.split(b" ", 2)[1]))
        while (line := await self._reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            response.headers[name.strip().lower()] = value.strip()
        if "content-length" in response.headers:
            response.content = await self._reader.readexactly(
                int(response.headers["content-length"])
            )
        elif response.headers.get("transfer-encoding", "").lower() == "chunked":
            response.content = await self._read_chunked()
        if response.headers.get("connection", "").lower() == "close":
            await self.close()
        return response

    async def _read_chunked(self) -> bytes:
        assert self._reader is not None
        chunks: list[bytes] = []
        while size := int((await self._reader.readline()).split(b";")[0], 16):
            chunks.append(await self._reader.readexactly(size))
            await self._reader.readline()
        while await self._reader.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(chunks)

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass


class Pool:
    """`size` connections to `base_url`; each request borrows one (waits when all are busy)."""

    def __init__(self, base_url: str, size: int = 1, timeout: float = 60.0) -> None:
        parts = urlsplit(base_url)
        assert parts.hostname and parts.port, base_url
        self.timeout = timeout
        self._idle: asyncio.LifoQueue[Connection] = asyncio.LifoQueue()
        self._all = [Connection(parts.hostname, parts.port) for _ in range(size)]
        for conn in self._all:
            self._idle.put_nowait(conn)

    async def request(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        content: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> Response:
        target = f"{path}?{urlencode(params)}" if params else path
        conn = await self._idle.get()
        try:
            async with asyncio.timeout(self.timeout):
                return await conn.request(method, target, content, headers)
        except BaseException:
            await conn.close()  # its state is unknown: the next user reconnects
            raise
        finally:
            self._idle.put_nowait(conn)

    async def get(self, path: str, params: dict[str, str] | None = None) -> Response:
        return await self.request("GET", path, params=params)

    async def post(
        self, path: str, content: bytes = b"", headers: dict[str, str] | None = None
    ) -> Response:
        return await self.request("POST", path, content=content, headers=headers)

    async def close(self) -> None:
        await asyncio.gather(*(conn.close() for conn in self._all))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
