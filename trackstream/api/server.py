"""The query API of a store's owner, served by uvicorn in a daemon thread (docs/architecture.md).

:class:`QueryServer` listens on ``host:port`` (default ``127.0.0.1`` and a free port), makes the store's token
if there is none yet (``<data_dir>/api.token``, 0600), and records its address in ``<data_dir>/owner.json``
(0600) once it answers. Other processes of the same account find both there (``owner_client``).

Needs the ``server`` extra (FastAPI, uvicorn).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
from pathlib import Path
from typing import Any, Final

from trackstream.api.owner import ensure_token, token_path, withdraw_owner, write_owner
from trackstream.schemas.errors import ConfigError, TrackstreamError, require

log = logging.getLogger(__name__)

LOOPBACK_NAMES: Final = ("localhost", "127.0.0.1", "::1")


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address."""
    address = _address(host)
    return host.lower() == "localhost" if address is None else address.is_loopback


def _wildcard(host: str) -> bool:
    address = _address(host)
    return address is not None and address.is_unspecified


def netloc(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    address = _address(host)
    return f"[{address}]:{port}" if address is not None and address.version == 6 else f"{host}:{port}"


def allowed_hosts(host: str, port: int) -> list[str]:
    """The ``Host`` values a server bound to ``host:port`` accepts.

    The bound address; on loopback also ``localhost``, ``127.0.0.1`` and ``[::1]``; bound to all interfaces
    (``0.0.0.0``, ``::``), also this machine's name, its FQDN and the addresses they resolve to; bound to
    another address, also the machine's name and FQDN.
    """
    names = {host.strip("[]").lower()}
    if is_loopback(host) or _wildcard(host):
        names.update(LOOPBACK_NAMES)
    if not is_loopback(host):
        for name in {socket.gethostname(), socket.getfqdn()}:
            names.add(name.lower())
            if _wildcard(host):
                with contextlib.suppress(OSError):
                    names.update(str(info[4][0]).split("%")[0] for info in socket.getaddrinfo(name, None))
    names.discard("")
    hosts = {netloc(name, port) for name in names}
    if port == 80:
        hosts.update(f"[{name}]" if ":" in name else name for name in names)
    return sorted(hosts)


def _bind(host: str, port: int) -> socket.socket:
    try:
        family, _type, _proto, _name, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        return socket.create_server(address, family=family)
    except OSError as exc:
        raise ConfigError(f"the query API cannot listen on {netloc(host, port)}: {exc.strerror or exc}; choose "
                          "another --host or --port") from None


class QueryServer:
    """Serves ``service``'s read methods on ``host:port`` and advertises the address in ``data_dir``.

    Raises :class:`MissingDependencyError` naming the ``server`` extra when FastAPI or uvicorn is missing.
    """

    def __init__(self, service: Any, data_dir: Path, *, host: str = "127.0.0.1", port: int = 0,
                 advertise: bool = True) -> None:
        require("fastapi", "server")
        require("uvicorn", "server")
        self.service = service
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.advertise = advertise  # False: no owner.json (a page over a ClickHouse server owns no store)
        self.url: str | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    def __repr__(self) -> str:
        return f"QueryServer({str(self.data_dir)!r}, url={self.url!r})"

    @property
    def token_file(self) -> Path:
        """``<data_dir>/api.token``: the token every request must carry."""
        return token_path(self.data_dir)

    def start(self, *, timeout_s: float = 30.0) -> str:
        """Serve in a daemon thread, record the address in ``<data_dir>/owner.json``; returns the URL.

        Raises :class:`ConfigError` when the address cannot be bound or the token file is unsafe (the message
        says how to fix it), :class:`TrackstreamError` when uvicorn does not start within ``timeout_s``.
        """
        if self._thread is not None:
            raise RuntimeError("this QueryServer was started already")
        import uvicorn

        from trackstream.api.app import create_app

        token = ensure_token(self.data_dir)
        sock = _bind(self.host, self.port)
        try:
            port = int(sock.getsockname()[1])
            reach = "127.0.0.1" if self.host == "0.0.0.0" else "::1" if _wildcard(self.host) else self.host
            url = f"http://{netloc(reach, port)}"
            app = create_app(self.service, token=token, allowed_hosts=allowed_hosts(self.host, port), port=port)
            # log_config=None: uvicorn's records go through the process's own logging setup, untouched;
            # proxy_headers=False: no X-Forwarded-* header is believed.
            config = uvicorn.Config(app, host=self.host, port=port, log_level="warning", log_config=None,
                                    lifespan="off", access_log=False, proxy_headers=False, server_header=False,
                                    timeout_graceful_shutdown=5)
            ready = threading.Event()
            server = _ready_server(config, ready)

            def serve() -> None:
                try:
                    server.run(sockets=[sock])
                finally:
                    ready.set()

            thread = threading.Thread(target=serve, name="trackstream-query-api", daemon=True)
            thread.start()
            if not ready.wait(timeout_s) or not server.started:
                server.should_exit = True
                thread.join(timeout_s)
                raise TrackstreamError(f"the query API did not start on {netloc(self.host, port)} within "
                                       f"{timeout_s:g} s", retriable=True)
        except BaseException:
            sock.close()
            raise
        self._server, self._thread, self._socket, self.url = server, thread, sock, url
        try:
            if self.advertise:
                write_owner(self.data_dir, url=url, host=self.host, port=port)
        except BaseException:
            self.stop()
            raise
        if not is_loopback(self.host):
            log.warning("the query API of %s listens on %s and is reachable from the network: every request needs "
                        "the token in %s (mode 0600, readable only by this account), and anyone holding it can "
                        "read the store", self.data_dir, netloc(self.host, port), self.token_file)
        log.info("serving the query API for %s at %s/api/v1 (token in %s)", self.data_dir, url, self.token_file)
        return url

    def stop(self, *, timeout_s: float = 30.0) -> None:
        """Withdraw ``owner.json``, stop serving (requests in flight get up to 5 s), join the thread."""
        if self.advertise:
            withdraw_owner(self.data_dir)
        server, thread, sock = self._server, self._thread, self._socket
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout_s)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("the query API thread of %s did not stop within %g s", self.data_dir, 2 * timeout_s)
        if sock is not None:
            sock.close()
        self._server = self._thread = self._socket = None


def _ready_server(config: Any, ready: threading.Event) -> Any:
    """A uvicorn server that sets ``ready`` once it listens (or failed to)."""
    import uvicorn

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            try:
                await super().startup(sockets=sockets)
            finally:
                ready.set()

    return _Server(config)
