"""The web process's /metrics: ledger and queue gauges, computed when Prometheus scrapes
(and cached for a few seconds, so an eager scraper never costs a scan per request). Each
worker exports its own metrics (batches, latencies) on its METRICS_PORT."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from fastapi.responses import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from db import browse, labels, versions
from db.engine import transaction
from db.models import ImageStatus
from db.quality import Quality, version_quality
from db.queries import status_counts
from web.state import Cached, WebState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class LedgerFigures:
    by_status: dict[str, int]
    review_backlog: int
    human_labels: int
    active: tuple[int, str, str] | None  # id, name, arch
    quality: Quality | None  # of the active version


class LedgerCollector(Collector):
    def __init__(self, web: WebState) -> None:
        self.web = web
        self._figures: Cached[LedgerFigures] = Cached(5.0, self._read)

    def _read(self) -> LedgerFigures:
        with transaction(self.web.sessions) as session:
            active = versions.active_model(session)
            return LedgerFigures(
                by_status=status_counts(session),
                review_backlog=browse.review_backlog(session),
                human_labels=labels.labeled_since(session, None),
                active=(active.id, active.name, active.arch) if active else None,
                quality=version_quality(session, active.id) if active else None,
            )

    def collect(self) -> Iterator[Metric]:
        figures = self._figures.get()
        images = GaugeMetricFamily(
            "inbox_classifier_images", "Images in the ledger by status", labels=["status"]
        )
        for name, count in figures.by_status.items():
            images.add_metric([name], count)
        yield images
        yield GaugeMetricFamily(
            "inbox_classifier_review_backlog",
            "Classified images no person has labeled yet",
            value=figures.review_backlog,
        )
        by_source = GaugeMetricFamily(
            "inbox_classifier_labels",
            "Current labels of classified images by source",
            labels=["source"],
        )
        by_source.add_metric(["human"], figures.human_labels)
        model_labels = max(0, figures.by_status.get(ImageStatus.DONE, 0) - figures.human_labels)
        by_source.add_metric(["model"], model_labels)
        yield by_source
        queue = self.web.queues.get()
        depth = GaugeMetricFamily(
            "inbox_classifier_queue_depth", "Messages waiting per queue", labels=["queue"]
        )
        for name, count in (queue.depth or {}).items():
            depth.add_metric([name], count)
        yield depth
        yield GaugeMetricFamily(
            "inbox_classifier_broker_up",
            "1 when Redis answered",
            value=int(queue.depth is not None),
        )
        yield GaugeMetricFamily(
            "inbox_classifier_workers", "Workers answering a ping", value=len(queue.workers or [])
        )
        if figures.active is not None:
            version_id, name, arch = figures.active
            info = InfoMetricFamily("inbox_classifier_active_model", "The model workers use")
            info.add_metric([], {"id": str(version_id), "name": name, "arch": arch})
            yield info
        if figures.quality is not None:
            yield from self._quality(figures.quality)

    def _quality(self, q: Quality) -> Iterator[Metric]:
        version = [q.name]
        drift = GaugeMetricFamily(
            "inbox_classifier_drift",
            "Total variation distance of the active version's production from its validation "
            "(confidence: the confidence distribution; class_mix: predicted vs trained classes)",
            labels=["version", "measure"],
        )
        if q.confidence_drift is not None:
            drift.add_metric([*version, "confidence"], q.confidence_drift)
        if q.class_mix_drift is not None:
            drift.add_metric([*version, "class_mix"], q.class_mix_drift)
        yield drift
        bound = self.web.settings.drift_warn
        warning = GaugeMetricFamily(
            "inbox_classifier_drift_warning",
            f"1 when the confidence drift exceeds DRIFT_WARN ({bound:g})",
            labels=["version"],
        )
        warning.add_metric(version, int(q.drifted(bound)))
        yield warning
        if q.needs_review_share is not None:
            share = GaugeMetricFamily(
                "inbox_classifier_needs_review_share",
                "Share of the active version's results whose conformal set is not one class",
                labels=["version"],
            )
            share.add_metric(version, q.needs_review_share)
            yield share
        corrections = GaugeMetricFamily(
            "inbox_classifier_correction_rate",
            "Share of the active version's results of a class that a person labeled otherwise",
            labels=["version", "class"],
        )
        for name, c in sorted(q.corrections.items()):
            corrections.add_metric([*version, name], round(c.rate, 6))
        yield corrections


def make_registry(web: WebState) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(web))
    return registry


def render(registry: CollectorRegistry) -> Response:
    return Response(generate_latest(registry), media_type=CONTENT_TYPE)
