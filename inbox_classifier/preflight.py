"""Checks a command runs before it starts anything: settings that cannot work stop it at once,
with exit status 2 and one line that names the variable and the fix, instead of a traceback
or a child that restarts for ever."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from pathlib import Path

import click

from contract.settings import ENV_PREFIX, Settings

#: The exit status of a command refused for its settings (click's usage errors use it too);
#: `up` stops, instead of restarting, a child that exits with it.
MISCONFIGURED = 2


class Refused(click.ClickException):
    """A command that cannot run with these settings, in words of its own (exit status 2, so
    `up` stops instead of restarting it)."""

    exit_code = MISCONFIGURED


class Misconfigured(click.ClickException):
    exit_code = MISCONFIGURED

    def __init__(self, variable: str, value: object, problem: str) -> None:
        shown = f"={value}" if value not in (None, "") else ""
        super().__init__(f"{ENV_PREFIX}{variable}{shown}: {problem}")


def folder_problem(path: Path, writable: bool) -> str | None:
    """Why ``path`` cannot serve as a folder (created where missing), or None."""
    if path.exists() and not path.is_dir():
        return "is a file, not a folder; point it at a folder"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot be created ({exc.strerror or exc}); choose another place"
    wanted = os.R_OK | os.X_OK | (os.W_OK if writable else 0)
    if not os.access(path, wanted):
        need = "read and write" if writable else "read"
        return f"this user cannot {need} it; fix its permissions or choose another place"
    return None


def check_folders(settings: Settings, *, inbox: bool = False, labeled: bool = False) -> None:
    folders: list[tuple[str, Path, bool]] = [("DATA_DIR", settings.data_dir, True)]
    if inbox and settings.inbox_bucket is None:
        folders.append(("INBOX", settings.inbox, False))
    if labeled:
        folders.append(("LABELED_DIR", settings.labeled_path, True))
    for variable, path, writable in folders:
        problem = folder_problem(path, writable)
        if problem is not None:
            raise Misconfigured(variable, path, problem)


def check_layout(settings: Settings) -> None:
    """The inbox holds nothing of the system's own (:mod:`contract.layout`)."""
    from contract.layout import inbox_overlap

    if settings.inbox_bucket is not None:
        check_bucket(settings)
        return
    for variable, value in (
        ("BUCKET_EVENTS_LISTEN", settings.bucket_events_listen),
        ("BUCKET_EVENTS_QUEUE_URL", settings.bucket_events_queue_url),
    ):
        if value:
            raise Misconfigured(
                variable,
                value,
                "only a bucket inbox (INBOX=s3://bucket/prefix) takes notifications; unset it",
            )
    problem = inbox_overlap(settings)
    if problem is not None:
        raise Misconfigured("INBOX", settings.inbox, problem)


def check_bucket(settings: Settings) -> None:
    """A bucket inbox answers a listing with these credentials, or the command stops saying
    why (no such bucket, refused, unreachable) and how to point it elsewhere."""
    from contract.failures import Unusable
    from objectstore.inbox import store_for
    from objectstore.store import StoreUnavailable

    store = store_for(settings)
    assert store is not None
    try:
        store.probe()
    except (StoreUnavailable, Unusable) as exc:
        endpoint = settings.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
        raise Misconfigured(
            "INBOX",
            settings.inbox_bucket,
            f"{exc} (endpoint {endpoint}; set S3_ENDPOINT_URL or AWS_ENDPOINT_URL, and the "
            "credentials in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ~/.aws)",
        ) from None
    if settings.bucket_events_queue_url:
        check_queue(settings)
    if settings.bucket_events_address is not None:
        try:
            with socket.create_server(settings.bucket_events_address):
                pass
        except OSError as exc:
            raise Misconfigured(
                "BUCKET_EVENTS_LISTEN",
                settings.bucket_events_listen,
                f"the watcher cannot listen there ({exc.strerror or exc}); choose a free port "
                "on an address of this host",
            ) from None


def check_queue(settings: Settings) -> None:
    """The notification queue answers these credentials, or the watcher stops saying why."""
    from watcher.bucket_queue import queue_client

    url = settings.bucket_events_queue_url
    assert url is not None
    try:
        queue_client(url).get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    except Exception as exc:  # botocore's errors: no such queue, refused, unreachable
        raise Misconfigured(
            "BUCKET_EVENTS_QUEUE_URL",
            url,
            f"the queue cannot be read ({exc}); check the URL, the region it names and the "
            "credentials (sqs:ReceiveMessage, sqs:DeleteMessage)",
        ) from None


def check_urls(settings: Settings) -> None:
    """Every command: the database and Redis URLs parse and name something supported (no
    connection is tried: a command that needs one says so itself)."""
    check_database(settings, connect=False)
    check_redis(settings, reachable=False)


def check_database(settings: Settings, connect: bool = True) -> None:
    from db.engine import database_problem

    problem = database_problem(settings.db_url, connect=connect)
    if problem is None:
        return
    if settings.database_url:
        raise Misconfigured("DATABASE_URL", _masked(settings.database_url), problem)
    raise Misconfigured("DATA_DIR", settings.data_dir, f"its ledger {settings.db_url}: {problem}")


def check_redis(settings: Settings, reachable: bool = True) -> None:
    from broker.check import redis_unreachable, redis_url_problem

    url = settings.redis_url
    if not url:
        return
    problem = redis_url_problem(url) or (redis_unreachable(url) if reachable else None)
    if problem is not None:
        raise Misconfigured("REDIS_URL", _masked(url), problem)


def check_device_visible(settings: Settings, gpus: Iterable[str]) -> None:
    """For `up`, which must not touch CUDA itself: a CUDA device needs a visible GPU."""
    if settings.device.startswith("cuda") and not list(gpus):
        raise Misconfigured(
            "DEVICE",
            settings.device,
            "no NVIDIA GPU is visible here (nvidia-smi -L, CUDA_VISIBLE_DEVICES); use auto "
            "(the GPU when there is one, else the CPU) or cpu",
        )


def check_device(settings: Settings) -> None:
    """For a worker, the process that will run the model: the device must be usable here."""
    if settings.device == "auto" or settings.device == "cpu":
        return
    from worker.model.precision import DeviceUnavailable, pick_device

    try:
        pick_device(settings.device)
    except DeviceUnavailable as exc:
        raise Misconfigured("DEVICE", settings.device, str(exc)) from None


def check_web(settings: Settings, host: str | None = None) -> None:
    from web.security import RefusedBind, check_bind

    host = host or settings.web_host
    token = settings.web_token.get_secret_value() if settings.web_token else None
    try:
        check_bind(host, token)
    except RefusedBind as exc:
        raise Misconfigured("WEB_HOST", host, str(exc)) from None


def _masked(url: str) -> str:
    from contract.running import mask

    try:
        return mask(url)
    except ValueError:
        return url
