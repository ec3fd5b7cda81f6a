"""The settings of an inbox in a bucket (``INBOX=s3://bucket/prefix``): the store, how the
watcher lists it and where the store's notifications arrive. A part of :class:`Settings`
(``contract.settings``), which reads them like every other field."""

from __future__ import annotations

import re

from pydantic import BaseModel, Field, SecretStr, field_validator

from contract.bucket import BucketLocation
from contract.limits import HOUR_S


class BucketInboxSettings(BaseModel):
    inbox_bucket: str | None = Field(
        None,
        description="s3://bucket/prefix when the inbox is in a bucket (an INBOX of s3://... sets "
        "it); endpoint from S3_ENDPOINT_URL or AWS_ENDPOINT_URL, credentials from the AWS chain.",
    )
    s3_endpoint_url: str | None = Field(
        None,
        description="The object store's URL (MinIO, SeaweedFS, Ceph RGW); unset: AWS_ENDPOINT_URL, "
        "else AWS S3.",
    )
    bucket_list_interval_s: float = Field(
        2.0,
        ge=0.1,
        le=HOUR_S,
        description="How often the watcher lists a bucket inbox for new objects (after the last "
        "key it saw; a full pass every RESCAN_INTERVAL_S).",
    )
    bucket_events_listen: str | None = Field(
        None,
        description="host:port where the watcher of a bucket inbox takes the store's event "
        "notifications (webhooks: SeaweedFS filer, MinIO); unset: listings alone.",
    )
    bucket_events_queue_url: str | None = Field(
        None,
        description="An SQS queue the store sends the bucket's event notifications to (AWS S3 "
        "→ SQS, or → SNS → SQS); the watcher long-polls it. Unset: no queue.",
    )
    bucket_events_token: SecretStr | None = Field(
        None,
        description="The bearer token a bucket notification must carry (16 characters or "
        "more); unset: any caller that reaches BUCKET_EVENTS_LISTEN may notify.",
    )

    @field_validator("inbox_bucket")
    @classmethod
    def _bucket_url(cls, value: str | None) -> str | None:
        return None if value is None else BucketLocation.parse(value).url

    @field_validator("s3_endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("s3_endpoint_url must be an http:// or https:// URL")
        return value

    @field_validator("bucket_events_queue_url")
    @classmethod
    def _queue_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+/\S+", value):
            raise ValueError(
                "bucket_events_queue_url must be an SQS queue URL, "
                "https://sqs.<region>.amazonaws.com/<account>/<queue>"
            )
        return value

    @field_validator("bucket_events_listen")
    @classmethod
    def _host_and_port(cls, value: str | None) -> str | None:
        if value is not None:
            _address(value)
        return value

    @property
    def bucket_events_address(self) -> tuple[str, int] | None:
        """BUCKET_EVENTS_LISTEN as the (host, port) a socket binds, or None."""
        return None if self.bucket_events_listen is None else _address(self.bucket_events_listen)


def _address(value: str) -> tuple[str, int]:
    """``host:port`` (an IPv6 host in brackets) as (host, port); ValueError in words."""
    host, _, port = value.strip().rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"bucket_events_listen must be host:port, e.g. 0.0.0.0:8334 (got {value!r})"
        )
    return host.strip("[]"), int(port)
