"""The store owner's HTTP query API (docs/architecture.md, "Serving queries").

- :mod:`trackstream.api.wire` — the JSON form of query arguments and results (exact floats, entity references);
- :mod:`trackstream.api.owner` — ``<data_dir>/owner.json`` and the per-store token file ``<data_dir>/api.token``;
- :mod:`trackstream.api.client` — :class:`~trackstream.api.client.HttpQueryClient` and ``owner_client``;
- :mod:`trackstream.api.app` — the ASGI app (FastAPI), one per owner: query routes under ``/api/v1/``;
- :mod:`trackstream.api.server` — :class:`~trackstream.api.server.QueryServer`, the app on uvicorn in a thread.

Light: this package, ``wire``, ``owner`` and ``client`` import only the standard library and orjson; ``app`` and
``server`` need the ``server`` extra (FastAPI, uvicorn), imported when they are used.
"""
