"""``inbox-classifier serve``: the web app under uvicorn."""

from __future__ import annotations

import logging
import threading
import time

import uvicorn

from contract import events
from contract.settings import Settings
from db import migrate
from web.app import create_app
from web.security import RefusedBind, check_bind

log = logging.getLogger(__name__)


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> int:
    """Serve until interrupted; returns the exit status (2: refused to start)."""
    host = host or settings.web_host
    port = port or settings.web_port
    token = settings.web_token.get_secret_value() if settings.web_token else None
    try:
        check_bind(host, token)
    except RefusedBind as exc:
        log.error("%s", exc)
        return 2
    migrate.upgrade(settings.db_url)
    shown = f"[{host}]" if ":" in host else host
    log.info("web: http://%s:%d", shown, port)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, host),
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            proxy_headers=False,
            server_header=False,
        )
    )
    url = f"http://{shown}:{port}"
    threading.Thread(target=_announce, args=(server, url), name="ready", daemon=True).start()
    server.run()
    return 0


def _announce(server: uvicorn.Server, url: str) -> None:
    """Say ready once the socket listens (uvicorn sets ``started`` then), not before."""
    while not server.started and not server.should_exit:
        time.sleep(0.05)
    if server.started:
        events.emit(events.Ready(role="web", detail=url))
