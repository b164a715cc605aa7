"""Runs a vision tower on a uint8 NHWC batch: eager torch (GPU, training) or ONNX Runtime (CPU serving).

Both run `PixelInput`: the tower behind its own normalisation, so callers hand over the cropped photos' pixels as
they are and the arithmetic runs where the model runs (vectorised in the ONNX graph, on the GPU).
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import threading
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


class Runner(Protocol):
    """uint8 NHWC pixels in; the tower's embedding and its detail features (`embeddings.detail`) out."""

    name: str

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class PixelInput(nn.Module):
    """uint8 `(n, h, w, 3)` pixels in, the tower's outputs out: NHWC to NCHW, (x - mean) / std, then the tower
    (a `DetailTower`: the embedding and the detail features).

    The permuted view of NHWC pixels is already channels-last in memory, which is the layout GPUs convolve fastest.
    """

    def __init__(self, visual: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.visual = visual
        self.dtype = torch.float32  # the tower's; TorchRunner sets float16 on a GPU
        self.mean: torch.Tensor
        self.scale: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("scale", 1.0 / (torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0), persistent=False)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (pixels.permute(0, 3, 1, 2).float() - self.mean) * self.scale
        embedding, detail = self.visual(x.to(self.dtype))
        return embedding, detail


class TorchRunner:
    """Eager (or compiled) torch. On a GPU: half precision, channels-last, inputs staged through pinned host memory."""

    def __init__(self, model: PixelInput, device: str, compile_model: bool = False) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        model = model.to(self.device).eval()
        if self.cuda:
            torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
            model.visual = model.visual.half().to(memory_format=torch.channels_last)
            model.dtype = torch.float16
        self.model: nn.Module = torch.compile(model, dynamic=True) if compile_model else model  # type: ignore[assignment]
        self.name = f"torch-{self.device.type}" + ("-fp16" if self.cuda else "") + ("-compiled" if compile_model else "")
        self._pinned: torch.Tensor | None = None
        self._lock = threading.Lock()  # one staging buffer: calls from the batcher and catalog writes take turns

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        host = torch.from_numpy(batch)
        with torch.inference_mode():
            if not self.cuda:
                return _host(self.model(host.to(self.device)))
            with self._lock:
                if self._pinned is None or self._pinned.numel() < host.numel():
                    self._pinned = torch.empty(host.numel(), dtype=host.dtype, pin_memory=True)
                staged = self._pinned[: host.numel()].view(host.shape)
                staged.copy_(host)
                pixels = staged.to(self.device, non_blocking=True)  # uint8: a quarter of the bytes of float32
                return _host(self.model(pixels))  # waits for the GPU, so the staging buffer is free again


def _host(outputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    embedding, detail = outputs
    return (
        np.asarray(embedding.float().cpu().numpy(), dtype=np.float32),
        np.asarray(detail.float().cpu().numpy(), dtype=np.float32),
    )


class OnnxRunner:
    def __init__(self, model_path: Path, threads: int, spinning: bool = False) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_inference_threads()
        options.inter_op_num_threads = 1
        # Idle workers that spin burn the CPU that decoding and scoring need beside the model; they sleep instead.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self.name = "onnxruntime-cpu"

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        embedding, detail = self.session.run(None, {"pixels": batch})
        return np.asarray(embedding, dtype=np.float32), np.asarray(detail, dtype=np.float32)


def export_onnx(model: PixelInput, size: int, path: Path) -> Path:
    """Export the tower with its uint8 input, its two outputs (embedding, detail) and a dynamic batch axis; written to
    a temp file then renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")  # replicas may export at once
    dummy = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    torch.onnx.export(
        model.cpu().eval(),
        (dummy,),
        str(tmp),
        input_names=["pixels"],
        output_names=["embedding", "detail"],
        dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}, "detail": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    tmp.replace(path)
    return path


def default_inference_threads() -> int:
    """Model threads when none are set: every core but a quarter of them, which decode, resize, parse HTTP and score
    beside the model (a model thread that shares its core with them stalls every parallel operator of the others).

    Below four cores, every core: on 2 cores one model thread served EfficientNet-Lite0 as fast as two, but ViT-B-32,
    whose forward pass dwarfs the rest, lost much of its speed with one (see benchmarks/README.md, section "Served
    throughput", "Tried and not kept (2026-11-29)"). Serving spreads these cores over single-threaded workers by
    default (`Settings.for_serving`).
    """
    cores = available_cores()
    return cores - cores // 4


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def lower_thread_priority(increment: int) -> None:
    """Add `increment` to the calling thread's niceness (Linux, where each thread has its own); elsewhere nothing."""
    if increment <= 0 or not sys.platform.startswith("linux"):
        return
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + increment))
    except OSError as exc:  # a sandbox that forbids it: run at the process's priority
        log.warning("could not lower the priority of thread %s: %s", thread, exc)


def name_os_thread() -> None:
    """Give the calling thread its Python name at the OS level too (Linux: the first 15 bytes, in
    /proc/self/task/TID/comm), so `top -H`, `ps -L` and benchmarks/serve.py's CPU-by-thread profile tell the
    service's threads apart; elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    name = threading.current_thread().name.encode()[:15]
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "wb") as comm:
            comm.write(name)
    except OSError as exc:  # no /proc (a sandbox): the threads keep the process's name
        log.debug("could not name thread %s: %s", threading.get_native_id(), exc)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True
