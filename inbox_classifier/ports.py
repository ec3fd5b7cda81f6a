"""Where `up`'s servers listen: the web app's port (moved when taken) and one metrics port per
classify worker."""

from __future__ import annotations

import socket

from contract.settings import Settings
from inbox_classifier.redis_server import free_port


class PortError(ValueError):
    """The ports asked for cannot be assigned."""


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            # As the servers bind (http.server sets it): a port in TIME_WAIT is free to them.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError:
        return False
    return True


def metrics_ports(settings: Settings, count: int, avoid: set[int]) -> list[int]:
    """One metrics port per classify worker: ``metrics_port``, ``metrics_port + 1``, ... when
    set (as given: a worker that finds its port taken says so and runs without metrics), else
    free ports, distinct and not in ``avoid``."""
    if settings.metrics_port is not None:
        last = settings.metrics_port + count - 1
        if last > 65535:
            raise PortError(
                f"{count} workers need metrics ports {settings.metrics_port}-{last}: "
                "past 65535; lower METRICS_PORT"
            )
        return list(range(settings.metrics_port, last + 1))
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports and port not in avoid:
            ports.append(port)
    return ports


def web_port(settings: Settings, avoid: set[int]) -> tuple[int, str]:
    """``web_port`` if it is free, else a free port; and a note saying why it moved."""
    wanted = settings.web_port
    if wanted not in avoid and port_is_free(settings.web_host, wanted):
        return wanted, ""
    while (port := free_port()) in avoid:
        pass
    why = "a worker's metrics port" if wanted in avoid else "in use"
    return port, f" (port {wanted} is {why})"


def url_host(host: str) -> str:
    """``host`` as it goes into a URL a person can open on this machine."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


