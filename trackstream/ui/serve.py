"""Where the live page runs (docs/ui.md): ``trackstream ui``, and the line every serving command prints.

- Embedded store with an owner (``trackstream local``, a chDB sink worker): the owner already serves the page; ``ui``
  prints its address and exits.
- Embedded store without one: ``ui`` becomes its owner like ``trackstream local`` (ingesting the spool, so runs
  logging now show up live) and serves the page until stopped.
- ClickHouse server: ``ui`` serves the page from the server's data (the workers write it); its token lives in
  ``<data dir>/ui-server/api.token`` and it does not advertise itself as an owner (SDK reads go to the server).

The printed line carries the access token, as a notebook server's does: it goes to the terminal (stdout), never
to the logs.
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from typing import Any

from trackstream.api.owner import ensure_token, read_owner
from trackstream.ui import page_url

log = logging.getLogger(__name__)


def announce(api_url: str, data_dir: Path) -> str:
    """Print ``trackstream UI: <url with token>`` on stdout (one line) and return that URL."""
    url = page_url(api_url, ensure_token(data_dir))
    sys.stdout.write(f"trackstream UI: {url}\n")
    sys.stdout.flush()
    return url


def run_ui(store: Any, *, host: str = "127.0.0.1", port: int = 0, stop: threading.Event | None = None,
           on_ready: Any = None) -> int:
    """Serve the page for ``store`` (a ``StoreSettings``) until ``stop`` is set (or SIGINT/SIGTERM); returns 0.

    ``on_ready(url)`` is called with the page's URL (token included) once it answers.
    """
    if store.url:
        return _serve_server(store, host=host, port=port, stop=stop, on_ready=on_ready)
    data_dir = store.data_path
    owner = read_owner(data_dir)
    if owner is not None:
        log.info("process %d owns %s and serves its page", owner.pid, data_dir)
        url = announce(owner.url, data_dir)
        if on_ready is not None:
            on_ready(url)
        return 0
    from trackstream.local_serve import run_local

    def ready(api_url: str) -> None:
        url = announce(api_url, data_dir)
        if on_ready is not None:
            on_ready(url)

    run_local(data_dir=data_dir, host=host, port=port, stop=stop, on_ready=ready)
    return 0


def _serve_server(store: Any, *, host: str, port: int, stop: threading.Event | None, on_ready: Any) -> int:
    from trackstream.api.server import QueryServer
    from trackstream.local_serve import stop_on_signals
    from trackstream.sinks.query import QueryService

    state = store.data_path / "ui-server"
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    stop = stop or stop_on_signals()
    service = QueryService(store)
    server = QueryServer(service, state, host=host, port=port, advertise=False)
    try:
        url = announce(server.start(), state)
        if on_ready is not None:
            on_ready(url)
        stop.wait()
    finally:
        server.stop()
        service.close()
    return 0
