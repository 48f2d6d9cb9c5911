"""Run any ASGI app with uvicorn in a background thread (tests, local tools)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from types import TracebackType
from typing import Any, Self

import httpx
import uvicorn

logger = logging.getLogger(__name__)


class BackgroundServer:
    """Serve an ASGI app on `host`:`port` (a free port when `port` is None or 0) until stopped.

    The port is bound at construction, so `.url` is known before the app exists (an app that
    must know its own URL is assigned to `.app` afterwards). `start()` returns once the server
    answers HTTP:

        server = BackgroundServer()
        server.app = create_app(public_url=server.url, ...)
        with server:
            httpx.get(f"{server.url}/_sandbox/health")

    Extra keyword arguments go to `uvicorn.Config`.
    """

    def __init__(
        self,
        app: Any = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_level: str = "warning",
        startup_timeout: float = 10.0,
        shutdown_timeout: float = 10.0,
        **config: Any,
    ) -> None:
        self.app = app
        self.host = host
        self._log_level = log_level
        self._startup_timeout = startup_timeout
        self._shutdown_timeout = shutdown_timeout
        config.setdefault("lifespan", "on")
        config.setdefault("timeout_graceful_shutdown", 5)
        self._config_kwargs = config
        # Handing uvicorn a bound socket means nothing else can take the port meanwhile.
        # proto must be TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only
        # then, and without it keep-alive requests stall ~40 ms on delayed ACKs.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket: socket.socket | None = socket.socket(
            family, socket.SOCK_STREAM, socket.IPPROTO_TCP
        )
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port or 0))
        except OSError:
            self._socket.close()
            raise
        self.port: int = self._socket.getsockname()[1]
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> Self:
        if self.app is None:
            raise RuntimeError("assign an ASGI app to .app before start()")
        if self._socket is None or self._thread is not None:
            raise RuntimeError("a BackgroundServer can be started once")
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            log_level=self._log_level,
            **self._config_kwargs,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name=f"uvicorn-{self.port}",
            daemon=True,
        )
        self._thread.start()
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        logger.debug("serving %s on %s", type(self.app).__name__, self.url)
        return self

    def _wait_until_ready(self) -> None:
        assert self._server is not None and self._thread is not None
        deadline = time.monotonic() + self._startup_timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"server on port {self.port} failed to start (see log)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server on port {self.port} did not start in time")
            time.sleep(0.01)
        with httpx.Client(trust_env=False, timeout=1.0) as client:
            while True:
                try:
                    client.get(f"{self.url}/")
                    return
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"server on port {self.port} does not answer") from None
                    time.sleep(0.01)

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(self._shutdown_timeout)
            if thread.is_alive():
                logger.warning("server on port %s did not stop in time; forcing", self.port)
                server.force_exit = True
                thread.join(self._shutdown_timeout)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = None
        self._socket = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
