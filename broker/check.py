"""Whether a Redis URL can work, asked before a process starts on it: kombu reads any string
as some URL (``notaurl`` becomes ``amqp://guest@notaurl:5672``) and then retries for ever."""

from __future__ import annotations

from urllib.parse import urlsplit

import redis

SCHEMES = ("redis", "rediss", "unix")
CONNECT_TIMEOUT_S = 2.0


def redis_url_problem(url: str) -> str | None:
    """Why ``url`` is not a Redis URL, or None."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is not a number
    except ValueError as exc:
        return f"not a Redis URL ({exc}); use redis://[:password@]host[:port][/db]"
    if parts.scheme not in SCHEMES:
        return "not a Redis URL; use redis://[:password@]host[:port][/db] (or rediss://, unix://)"
    if parts.scheme != "unix" and not parts.hostname:
        return "no host in it; use redis://[:password@]host[:port][/db]"
    if port is not None and not 0 < port < 65536:
        return f"port {port} is out of range"
    return None


def redis_unreachable(url: str, timeout_s: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why Redis at ``url`` does not answer a PING now, or None when it does."""
    client = redis.Redis.from_url(
        url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, retry_on_timeout=False
    )
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        return f"Redis refused the credentials ({exc}); check the password in the URL"
    except (redis.RedisError, OSError) as exc:
        return f"no Redis answers there ({exc}); start it, or fix the host and port"
    finally:
        client.close()
    return None
