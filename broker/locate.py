"""Finding the broker: the configured URL, or the private Redis that `up` started (it leaves
the URL in ``<data_dir>/redis/redis.url`` while it runs)."""

from __future__ import annotations

from pathlib import Path

from contract.settings import Settings

URL_FILE = "redis.url"


class BrokerNotFound(LookupError):
    """No Redis URL is configured and no `up` is running."""


def url_file(settings: Settings) -> Path:
    return settings.data_dir / "redis" / URL_FILE


def with_broker(settings: Settings, required: bool = True) -> Settings:
    """``settings`` with ``redis_url`` filled in from a running `up`, when not configured.
    Raises :class:`BrokerNotFound` when ``required`` and there is none."""
    if settings.redis_url:
        return settings
    path = url_file(settings)
    if path.is_file():
        return settings.model_copy(update={"redis_url": path.read_text().strip()})
    if required:
        raise BrokerNotFound(
            "no Redis: set INBOX_CLASSIFIER_REDIS_URL / --redis-url, "
            "or start `inbox-classifier up` (it runs a private Redis)"
        )
    return settings
