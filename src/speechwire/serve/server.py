"""Run the app under uvicorn: on a socket we bind ourselves (so port 0 works), or in a background thread.

    with BackgroundServer(create_app(model, run)) as server:     # a notebook, a test, a benchmark
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
"""

from __future__ import annotations

import socket
import threading
import time


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 lets the system pick a free one."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class BackgroundServer:
    """uvicorn serving `app` from a daemon thread on (host, port); port 0 picks a free port.

    Use as a context manager: entering waits until the server accepts connections, leaving
    stops it (the app's lifespan stops its batcher).
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        import uvicorn

        self.sock = bind(host, port)
        self.url = url_of(self.sock)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="speechwire-server", daemon=True)

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start (see the log above)")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()
