"""Prometheus metrics, kept in a registry per app so tests can build many apps in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.scans = Counter("counterfeit_scan_scans_total", "Scans answered, by verdict", ["verdict"], registry=self.registry)
        self.photos = Counter("counterfeit_scan_photos_total", "Photos scanned", registry=self.registry)
        self.scan_seconds = Histogram(
            "counterfeit_scan_scan_seconds",
            "Time to answer a scan (decode, embed, search, score, record)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.rejected = Counter(
            "counterfeit_scan_rejected_total", "Requests rejected, by status", ["status"], registry=self.registry
        )
        self.catalog_images = Gauge("counterfeit_scan_catalog_images", "Reference images in the index", registry=self.registry)
        self.catalog_changes = Counter(
            "counterfeit_scan_catalog_changes_total", "Catalog writes, by kind", ["kind"], registry=self.registry
        )
        self.feedback = Counter(
            "counterfeit_scan_feedback_total", "Reviewer feedback, by verdict", ["verdict"], registry=self.registry
        )
