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
        self.rate_limited = Counter(
            "counterfeit_scan_rate_limited_total",
            "Requests refused (429) for going over their API key's rate limit, by the key's role",
            ["role"],
            registry=self.registry,
        )
        self.catalog_images = Gauge("counterfeit_scan_catalog_images", "Reference images in the index", registry=self.registry)
        self.catalog_changes = Counter(
            "counterfeit_scan_catalog_changes_total", "Catalog writes, by kind", ["kind"], registry=self.registry
        )
        self.feedback = Counter(
            "counterfeit_scan_feedback_total", "Reviewer feedback, by verdict", ["verdict"], registry=self.registry
        )
        # Micro-batching (service/scanning/batching.py)
        self.queue_depth = Gauge(
            "counterfeit_scan_queue_photos", "Photos admitted to the scan queue and not yet answered", registry=self.registry
        )
        self.batch_size = Histogram(
            "counterfeit_scan_batch_photos",
            "Photos per model batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=self.registry,
        )
        latency = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
        self.queue_wait = Histogram(
            "counterfeit_scan_queue_wait_seconds",
            "Time a decoded listing waited for its model batch",
            buckets=latency,
            registry=self.registry,
        )
        self.decode_seconds = Histogram(
            "counterfeit_scan_decode_seconds",
            "Time to decode and preprocess one listing's photos",
            buckets=latency,
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "counterfeit_scan_inference_seconds", "Model forward time per batch", buckets=latency, registry=self.registry
        )
        self.search_seconds = Histogram(
            "counterfeit_scan_search_seconds", "Index search time per batch", buckets=latency, registry=self.registry
        )
        self.finish_seconds = Histogram(
            "counterfeit_scan_finish_seconds",
            "Index search, scoring and recording of one batch's listings",
            buckets=latency,
            registry=self.registry,
        )
