"""How `serve` and `scan-batch` spread the model over the cores: workers x threads, from settings and the environment."""

from __future__ import annotations

import pytest

from embeddings.runtimes import available_cores, default_inference_threads
from service.config import Settings


def test_cpu_default_is_one_single_threaded_worker_per_model_core() -> None:
    settings = Settings(device="cpu").for_serving()
    assert (settings.throughput.inference_workers, settings.embedder.threads) == (default_inference_threads(), 1)


def test_threads_set_alone_give_workers_by_division() -> None:
    settings = Settings(device="cpu", threads=1000).for_serving()
    assert (settings.throughput.inference_workers, settings.embedder.threads) == (1, 1000)


def test_workers_set_alone_share_the_model_cores() -> None:
    settings = Settings(device="cpu", inference_workers=1).for_serving()
    assert (settings.throughput.inference_workers, settings.embedder.threads) == (1, default_inference_threads())


def test_both_set_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COUNTERFEIT_SCAN_INFERENCE_WORKERS", "3")
    monkeypatch.setenv("COUNTERFEIT_SCAN_THREADS", "2")
    settings = Settings().for_serving()
    assert (settings.throughput.inference_workers, settings.embedder.threads) == (3, 2)


def test_a_gpu_gets_one_worker() -> None:
    settings = Settings(device="cuda").for_serving()
    assert (settings.throughput.inference_workers, settings.embedder.threads) == (1, 0)


def test_resolving_twice_changes_nothing() -> None:
    once = Settings(device="cpu").for_serving()
    assert once.for_serving() == once


def test_decoding_threads_default_to_one_per_core_and_keep_a_set_count() -> None:
    assert Settings(device="cpu").for_serving().throughput.decode_workers == available_cores()
    assert Settings(device="cuda", decode_workers=7).for_serving().throughput.decode_workers == 7
