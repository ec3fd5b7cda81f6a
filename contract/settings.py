"""The one typed settings object. Read once per process (``Settings()``), then passed in.

Every field can be set by an environment variable ``INBOX_CLASSIFIER_<FIELD>`` (or a ``.env``
file); CLI flags override both. ``up`` hands its resolved settings to its children through the
same variables (:meth:`Settings.to_env`), so every process of one pipeline agrees.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract.bucket import BucketLocation
from contract.limits import DAY_S, HOUR_S, MAX_THREADS, WEEK_S
from contract.settings_bucket import BucketInboxSettings
from contract.settings_training import RetrainingSettings

ENV_PREFIX = "INBOX_CLASSIFIER_"


#: Optional text settings where an empty variable means "not set" (the default applies).
EMPTY_MEANS_UNSET = frozenset(
    {
        "labeled_dir",
        "database_url",
        "redis_url",
        "retrain_cron",
        "web_token",
        "bucket_events_listen",
        "bucket_events_token",
        "bucket_events_queue_url",
    }
)


class Settings(BucketInboxSettings, RetrainingSettings, BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        extra="ignore",
        validate_default=True,
        env_parse_none_str="null",
        # inf and nan are never a sensible interval, rate or count: refused with the range.
        allow_inf_nan=False,
    )

    # --- where things live -------------------------------------------------------------------
    data_dir: Path = Field(Path("var"), description="Data directory: DB, models, Redis, logs.")
    inbox: Path = Field(
        Path("inbox"),
        description="Folder watched for new images (recursive); or s3://bucket/prefix, an "
        "inbox in S3-compatible object storage (INBOX_BUCKET).",
    )
    labeled_dir: Path | None = Field(
        None, description="ImageFolder-style training data; default <data_dir>/labeled."
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite:///<data_dir>/results.db (WAL)."
    )
    redis_url: str | None = Field(
        None, description="Broker URL; unset means `up` starts a private Redis in <data_dir>."
    )

    # --- the model -----------------------------------------------------------------------------
    model: str = Field("resnet18", description="torchvision classification model name.")
    weights: str = Field(
        "imagenet", description="'imagenet' (torchvision pretrained), 'none' (random), or a path."
    )
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="'auto' (CUDA if visible, else CPU), 'cpu', 'cuda' or 'cuda:N'.",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Inference precision; auto = bf16 autocast on CPUs/GPUs that gain."
    )
    topk: int = Field(5, ge=1, le=100, description="How many (label, confidence) pairs to keep.")
    inference_streams: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Batches a worker runs through its model at once; default: one per core "
        "(up to 4) on a CPU, 1 on a GPU.",
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        le=MAX_THREADS,
        description="torch threads per inference stream; default: cores / streams.",
    )
    torch_compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="torch.compile a busy worker's model in the background; auto: only on "
        "CPUs with native bf16 (where it pays; docs/performance.md).",
    )

    inference_backend: Literal["auto", "torch", "onnxruntime", "onnxruntime-fp32", "null"] = Field(
        "auto",
        description="auto: on a CPU, ONNX Runtime int8 where it passed its agreement check, "
        "else ONNX Runtime fp32 (torch where the CPU runs bf16 natively), else torch; torch on "
        "CUDA. onnxruntime-fp32 forbids int8. null: no model at all (benchmarks of the "
        "plumbing: files are read and checked, every image gets the same fixed result; only on "
        "a data dir with no other model version).",
    )
    int8_min_agreement: float = Field(
        0.99,
        ge=0,
        le=1,
        description="The int8 model serves only if its top-1 agrees with fp32 this often.",
    )

    # --- dynamic batching ----------------------------------------------------------------------
    batch_size: int = Field(16, ge=1, le=4096, description="Largest inference batch.")
    batch_wait_ms: int = Field(
        25,
        ge=0,
        le=60_000,
        description="Longest wait for a busy worker's batch to fill; an idle model never waits.",
    )
    files_per_message: int = Field(
        64,
        ge=1,
        le=1024,
        description="Most files the watcher packs into one queue message (a burst fills them; "
        "a lone drop goes alone): each message costs both ends about a millisecond.",
    )
    decode_threads: int = Field(
        2, ge=1, le=MAX_THREADS, description="Image decode threads per worker."
    )
    gpu_decode: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Decode each batch's JPEGs on the worker's device in one batched call "
        "(nvjpeg); other files take the Pillow path. auto: on CUDA only; on: also on a CPU "
        "(torchvision's decoder, slower there than Pillow's scaled decode).",
    )
    workers_per_gpu: int | None = Field(
        None,
        ge=1,
        le=16,
        description="Classify worker processes `up` starts per GPU, each with its own CUDA "
        "context; default: one per 4 CPU cores per GPU, 1 to 4 (one process's per-file Python "
        "work caps what it can feed a GPU).",
    )
    worker_concurrency: int | None = Field(
        None,
        ge=1,
        le=MAX_THREADS,
        description="Messages a worker holds at once; default: a batch per stream plus 2.",
    )
    malloc_arenas: int | None = Field(
        2,
        ge=1,
        le=MAX_THREADS,
        description="glibc malloc arenas a worker allocates from (keeps its RSS flat); "
        "null = glibc's default (8 per core).",
    )
    max_image_pixels: int = Field(
        100_000_000,
        ge=1,
        le=10_000_000_000,
        description="Larger images are refused as decompression bombs.",
    )
    max_file_bytes: int | None = Field(
        None,
        ge=1,
        le=1 << 40,
        description="Larger files are refused before they are read; default: 4 bytes per "
        "MAX_IMAGE_PIXELS pixel plus 1 MiB (an uncompressed RGBA image at the pixel limit).",
    )

    # --- the watcher ---------------------------------------------------------------------------
    quiet_period_s: float = Field(
        1.0,
        ge=0,
        le=HOUR_S,
        description="Size/mtime must hold this long where no close-write event says a file is "
        "done, or its bytes say it is unfinished.",
    )
    rescan_interval_s: float = Field(
        300.0,
        ge=1,
        le=WEEK_S,
        description="Full inbox rescan period (also catches event overflows).",
    )
    hash_threads: int = Field(
        4,
        ge=1,
        le=64,
        description="Threads the watcher hashes files on (sha256 and reads release the GIL).",
    )
    hash_processes: int = Field(
        0,
        ge=0,
        le=64,
        description="Processes the watcher inspects and hashes files on; 0: its own threads "
        "(HASH_THREADS). On many cores, processes lift the cap the watcher's per-file Python "
        "work puts on threads.",
    )
    polling: bool = Field(False, description="Use a polling observer (network mounts).")
    poll_interval_s: float = Field(1.0, ge=0.01, le=HOUR_S, description="Polling observer period.")

    verify_reads: Literal["changed", "always"] = Field(
        "changed",
        description="changed: a worker hashes a file again only where the file system says it "
        "may have changed since the watcher hashed it (contract.stamps); always: every file.",
    )

    # --- reliability ---------------------------------------------------------------------------
    requeue_after_s: float = Field(
        120.0,
        ge=1,
        le=WEEK_S,
        description="A row queued this long without a result is enqueued again.",
    )
    reconcile_interval_s: float = Field(
        30.0, ge=0.5, le=DAY_S, description="How often stuck rows are found."
    )
    max_attempts: int = Field(
        5, ge=1, le=100, description="Deliveries of one image before it is marked failed for good."
    )

    # --- the web app and metrics ---------------------------------------------------------------
    web_host: str = Field("127.0.0.1", description="Address the web app binds to.")
    web_port: int = Field(8000, ge=1, le=65535, description="Port of the web app (`up`, `serve`).")
    web_token: SecretStr | None = Field(
        None,
        description="Required on every web request when set; needed to bind off loopback.",
    )
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="A worker serves Prometheus metrics here; `up` assigns one per worker.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_empty_values(cls, values: object) -> object:
        """An empty variable is a slip (a script's unset ``$VAR``): refused with the name,
        except where empty plainly means "not set"."""
        if not isinstance(values, dict):
            return values
        out = dict(values)
        for name, value in values.items():
            if not (isinstance(value, str) and value.strip() == ""):
                continue
            if name in EMPTY_MEANS_UNSET:
                out[name] = None
            elif name in cls.model_fields:
                default = cls.model_fields[name].default
                raise ValueError(
                    f"{ENV_PREFIX}{name.upper()} is empty: give it a value, or unset it for "
                    f"the default ({default})"
                )
        return out

    @model_validator(mode="before")
    @classmethod
    def _inbox_in_a_bucket(cls, values: object) -> object:
        """``INBOX=s3://...`` names a bucket, not a folder: it becomes ``inbox_bucket``."""
        if isinstance(values, dict):
            inbox = values.get("inbox")
            if isinstance(inbox, str) and inbox.strip().lower().startswith("s3://"):
                values = {k: v for k, v in values.items() if k != "inbox"}
                values["inbox_bucket"] = inbox.strip()
        return values

    @model_validator(mode="after")
    def _requeue_after_a_reconcile_tick(self) -> Settings:
        # Shorter, and rows still being classified would be re-sent on every reconcile tick.
        if self.requeue_after_s < self.reconcile_interval_s:
            raise ValueError("requeue_after_s must be at least reconcile_interval_s")
        return self

    @field_validator("inference_backend", mode="before")
    @classmethod
    def _null_backend(cls, value: object) -> object:
        # "null" in a variable arrives as None (env_parse_none_str); this setting has no None.
        return "null" if value is None else value

    @field_validator("web_token", "bucket_events_token")
    @classmethod
    def _token_strength(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError(
                f"{info.field_name} must have 16 characters or more: `openssl rand -hex 24`"
            )
        return value

    @field_validator("weights")
    @classmethod
    def _weights_spec(cls, value: str) -> str:
        value = value.strip()
        return value.lower() if value.lower() in {"imagenet", "none"} else value

    # --- derived -------------------------------------------------------------------------------
    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'results.db').resolve()}"

    @property
    def file_byte_limit(self) -> int:
        """The largest file a worker or the web app reads (``max_file_bytes``)."""
        if self.max_file_bytes is not None:
            return self.max_file_bytes
        return 4 * self.max_image_pixels + (1 << 20)

    @property
    def bucket(self) -> BucketLocation | None:
        """The inbox's bucket, when the inbox is one (``inbox_bucket``)."""
        return None if self.inbox_bucket is None else BucketLocation.parse(self.inbox_bucket)

    @property
    def inbox_shown(self) -> str:
        """The inbox as a person reads it: the folder, or the bucket's URL."""
        return self.inbox_bucket or str(self.inbox)

    @property
    def labeled_path(self) -> Path:
        return self.labeled_dir if self.labeled_dir is not None else self.data_dir / "labeled"

    @property
    def models_path(self) -> Path:
        return self.data_dir / "models"

    def to_env(self) -> dict[str, str]:
        """The settings that were chosen (by a flag, a variable, ``.env`` or the parent
        itself) as environment variables, for child processes. Only those: a child then knows,
        as its parent did, which values a person gave and which are defaults (a training run
        keeps a person's TRAIN_LR, and picks its own where none was given)."""
        env: dict[str, str] = {}
        for name, value in self.model_dump(include=self.model_fields_set).items():
            if value is None:
                text = "null"
            elif isinstance(value, SecretStr):
                text = value.get_secret_value()
            elif isinstance(value, Path):
                text = str(value.resolve())
            else:
                text = str(value)
            env[ENV_PREFIX + name.upper()] = text
        return env

    def with_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """A full environment for a child process: ``base`` (default os.environ) plus ours."""
        env = dict(os.environ if base is None else base)
        env = {k: v for k, v in env.items() if not k.startswith(ENV_PREFIX)}
        env.update(self.to_env())
        return env
