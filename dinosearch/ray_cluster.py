"""What runs on a Ray cluster for an index run, and how the driver joins the cluster.

Ray is an optional dependency (`pip install 'dinosearch[ray]'`): it is imported only by `import_ray`.
The functions and the actor class here are sent to the nodes by reference, so dinosearch must be
installed on every node (the same version as the driver's).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._decode_worker import FAULT_ENV, FileIdentity, WorkerDecoded, WorkerFailed, _decode_one
from .errors import DinosearchError
from .records import FailureKind, ImageFile, ModelFingerprint, Preprocess

INSTALL_HINT = "--ray needs Ray, which is not installed: pip install 'dinosearch[ray]' (on every machine of the cluster)"


def import_ray() -> Any:
    """The ray module, or a DinosearchError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise DinosearchError(INSTALL_HINT) from None
    return ray


class Cluster:
    """Joined for one run. `address` "auto" (or ""): the cluster named by RAY_ADDRESS, else a new local
    one (Ray's own rule); else HOST:PORT or ray://HOST:PORT. A Ray already initialised in this process is
    used as it is; a connection this run made is closed at the end. Raises DinosearchError."""

    def __init__(self, ray: Any, address: str):
        self.ray, self.address, self.ours = ray, address, False

    def __enter__(self) -> "Cluster":
        if self.ray.is_initialized():
            return self
        import logging

        try:
            self.ray.init(
                address=None if self.address in ("", "auto") else self.address,
                include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
            )
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, ValueError, RuntimeError ...
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DinosearchError(
                f"cannot connect to the Ray cluster at {self.address} ({reason[:200]}); start one with "
                "`ray start --head`, or leave out the address to start a local one"
            ) from None
        self.ours = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.ours:
            self.ray.shutdown()

    def decode_cpus(self, actors_cpus: int) -> int:
        """CPUs left for decode tasks once the model actors hold theirs."""
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)) - actors_cpus)


def unreadable(paths: list[str]) -> list[str]:
    """Which of `paths` this machine cannot read (run on every node before a run decodes anything)."""
    return [p for p in paths if not os.access(p, os.R_OK)]


def check_nodes_can_read(ray: Any, todo: list[ImageFile]) -> None:
    """Fail early, naming the node and the path, when a node cannot read a root or a file under it.

    The seam for other file access (object storage): a root's scheme would pick another reader here
    and in `decode_task`. Raises DinosearchError.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    samples: dict[str, str] = {}
    for f in todo:
        samples.setdefault(f.root, f.path)
    paths = sorted({*samples, *samples.values()})
    probe = ray.remote(unreadable)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    answers = [
        probe.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(paths)
        for n in nodes
    ]
    for node, problems in zip(nodes, ray.get(answers)):
        if problems:
            raise DinosearchError(
                f"the Ray node {node.get('NodeManagerAddress', '?')} cannot read {problems[0]}: every node must see the "
                "roots at the same path (a shared file system); mount them there and run again (nothing was changed)"
            )


@dataclass(frozen=True)
class DecodedMeta:
    """A decode task's small result; its pixels are a separate object that stays on the cluster."""

    read: FileIdentity | None  # set when the task read the file itself (by path)
    width: int
    height: int
    format: str


STARTED = "started"


def decode_task(source: str | bytes, pre: Preprocess, max_pixels: int) -> Iterator[Any]:
    """In a Ray worker (a streaming generator task): read + hash + decode one file, exactly as a local
    decode worker does.

    Yields STARTED first (the file's timeout counts from then: never a worker's start-up or a wait for
    a CPU), then DecodedMeta and the (crop_height, crop_width, 3) uint8 pixels, or a WorkerFailed.
    """
    yield STARTED
    reply = _decode_one(source, pre, max_pixels, os.environ.get(FAULT_ENV) == "1", None)  # photos only: no video progress to send
    if isinstance(reply, WorkerDecoded):
        d = reply.decoded
        yield DecodedMeta(reply.read, d.width, d.height, d.format)
        yield d.pixels
    else:
        yield reply


def task_failure(ray: Any, exc: BaseException) -> WorkerFailed | None:
    """A decode task's death as the file's failure (its worker crashed or ran out of memory, every try),
    or None when the cluster, not the file, is at fault (a lost node or object: a run error)."""
    e = ray.exceptions
    if isinstance(exc, e.OutOfMemoryError):
        return WorkerFailed(FailureKind.CRASHED, "the decoder ran out of memory on this file and was stopped; "
                                                 "downscale or re-export it")
    if isinstance(exc, e.WorkerCrashedError):
        return WorkerFailed(FailureKind.CRASHED, "the decoder crashed on this file (its Ray worker died, "
                                                 "twice); it may be corrupt or hostile — re-export it")
    return None


class ModelActor:
    """In a Ray actor: the model, loaded with embed.Dinov2Embedder's arguments (a hub id is fetched once per node)."""

    def __init__(self, model: str, options: dict[str, Any]):
        from .embed import Dinov2Embedder

        self.embedder: Any = None
        self.error: str | None = None
        try:
            self.embedder = Dinov2Embedder(model, **options)
        except DinosearchError as exc:
            self.error = str(exc)

    def info(self) -> tuple[ModelFingerprint, Preprocess, int] | str:
        """(fingerprint, preprocessing, batch size), or why the model could not be loaded."""
        if self.embedder is None:
            return self.error or "the model could not be loaded"
        return self.embedder.fingerprint, self.embedder.preprocess, self.embedder.batch_size

    def embed(self, *pixels: np.ndarray) -> np.ndarray:
        """n (h, w, 3) uint8 images -> (n, dim) float32 unit vectors."""
        return self.embedder.embed(np.stack(pixels))


def start_model_actors(ray: Any, model: str, options: dict[str, Any]) -> tuple[list[Any], int]:
    """(actors, CPUs they hold): one per GPU (`num_gpus=1`) when the model may use CUDA and the cluster
    has GPUs, else one per node, spread, holding no CPU (the decode tasks use them, as locally)."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cls = ray.remote(ModelActor)
    if gpus and options.get("device") in ("auto", "cuda"):
        return [cls.options(num_gpus=1, num_cpus=1).remote(model, options) for _ in range(gpus)], gpus
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return [cls.options(num_cpus=0, scheduling_strategy="SPREAD").remote(model, options) for _ in range(max(1, nodes))], 0
