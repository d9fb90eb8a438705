"""Training utilities shared by pretraining, fine-tuning, embedding and the benchmark.

One home for what several modules need: the learning-rate schedule, token trimming, the image
augmentation (on the host, and on any device from uint8 pixels), normalisation, autocast, an
atomic ``torch.save``, seeded generators, the process's DDP rank, and ``torch.compile`` with a
fallback. Nothing here imports another module of the project except :mod:`helpers.storage`, so every
module can import it without cycles.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from helpers.storage import atomic_write_json

AUGMENT_NOISE = ("host", "device")


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    """Learning rate at ``step`` (0-based) of ``total``: linear warm-up to ``base`` over ``warmup``
    steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * base * (1 + math.cos(math.pi * t))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group of ``opt`` to learning rate ``lr`` (one value of :func:`cosine_lr`)."""
    for group in opt.param_groups:
        group["lr"] = lr


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """The update every training loop of the project makes: clear the gradients, back-propagate
    ``loss`` (a scalar), step ``opt``. Pretraining, fine-tuning and chapter 6's positive control
    share it with :func:`set_lr` and :func:`cosine_lr`."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def trim_tokens(tokens: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """Drop trailing all-pad columns of a token batch (B, L) -> (B, L').

    With an attention mask and a CLS pooler, trailing padding does not change any output, so
    this only saves compute (captions are ~20 tokens, the context is 256).
    """
    used = (tokens != pad_id).any(0).nonzero()
    n = int(used.max()) + 1 if len(used) else 1
    return tokens[:, :n]


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mild photometric and geometric jitter of a batch of [0, 1] grey images (B, S, S) on the CPU.

    Per image: gamma in [0.85, 1.15], contrast in [0.9, 1.1], brightness +-0.04, Gaussian noise
    with std up to 0.03, rotation +-3 degrees, shift +-3%. The jitter is much smaller than the
    source -> target style gap, so the target style stays out of distribution. This is the
    reference: :func:`augment_pixels` with ``noise="host"`` gives the same images on any device.
    """
    import torch.nn.functional as F

    B = x.shape[0]
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(B, 1, 1, generator=gen)  # noqa: E731
    x = x.clamp(1e-4, 1) ** u(0.85, 1.15)
    x = (x - 0.5) * u(0.9, 1.1) + 0.5 + u(-0.04, 0.04)
    x = x + torch.randn(x.shape, generator=gen) * u(0, 0.03)
    a = (torch.rand(B, generator=gen) - 0.5) * 2 * math.radians(3)
    t = (torch.rand(B, 2, generator=gen) - 0.5) * 0.12
    theta = torch.stack([torch.stack([a.cos(), -a.sin(), t[:, 0]], 1),
                         torch.stack([a.sin(), a.cos(), t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, (B, 1, *x.shape[1:]), align_corners=False)
    x = F.grid_sample(x.unsqueeze(1), grid, padding_mode="border", align_corners=False).squeeze(1)
    return x.clamp(0, 1)


def _augment_draws(B: int, shape: Sequence[int], gen: torch.Generator, device: torch.device,
                   noise: str) -> tuple[torch.Tensor, ...]:
    """The random numbers of one :func:`augment_pixels` call, drawn from the host generator ``gen``.

    ``host``: in :func:`augment`'s order, the noise from ``gen`` too (so the images are
    :func:`augment`'s). ``device``: the per-image numbers first, then one seed from ``gen`` for
    a generator on ``device`` that draws the noise there (no host-side noise, no transfer).
    """
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(B, 1, 1, generator=gen)  # noqa: E731
    gamma, contrast, bright = u(0.85, 1.15), u(0.9, 1.1), u(-0.04, 0.04)
    if noise == "host":
        eps = torch.randn(tuple(shape), generator=gen)
    else:
        seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        eps = torch.randn(tuple(shape), generator=torch.Generator(device).manual_seed(seed), device=device)
    sigma = u(0, 0.03)
    a = (torch.rand(B, generator=gen) - 0.5) * 2 * math.radians(3)
    t = (torch.rand(B, 2, generator=gen) - 0.5) * 0.12
    return gamma, contrast, bright, eps, sigma, a, t


def augment_pixels(pixels: torch.Tensor, gen: torch.Generator, noise: str = "host") -> torch.Tensor:
    """:func:`augment` of uint8 grey images (B, S, S) on their own device: float [0, 1] (B, S, S).

    The per-image random numbers come from the host generator ``gen`` (a few per image); the
    arithmetic runs where ``pixels`` live (e.g. a pixel cache resident on the GPU). With
    ``noise="host"`` the result equals ``augment(pixels.float() / 255, gen)`` up to float
    round-off (a test checks it; the sampling grid is computed directly, see :func:`_rotation_grid`); ``noise="device"`` draws the noise image on the device instead
    (same distribution, different numbers, no host work proportional to the image size).
    """
    import torch.nn.functional as F

    if noise not in AUGMENT_NOISE:
        raise ValueError(f"noise must be one of {AUGMENT_NOISE}, got {noise!r}")
    dev = pixels.device
    B = pixels.shape[0]
    gamma, contrast, bright, eps, sigma, a, t = _augment_draws(B, pixels.shape, gen, dev, noise)
    # the per-image numbers travel to the device in one small transfer (values unchanged)
    flat = to_device(torch.cat([v.reshape(-1) for v in (gamma, contrast, bright, sigma, a, t)]), dev)
    gamma, contrast, bright, sigma, a, t = flat.split([B, B, B, B, B, 2 * B])
    gamma, contrast, bright, sigma = (v.view(B, 1, 1) for v in (gamma, contrast, bright, sigma))
    t = t.view(B, 2)
    eps = eps.to(dev, non_blocking=True)
    x = pixels.float().div_(255).clamp_(1e-4, 1).pow_(gamma)
    x = x.sub_(0.5).mul_(contrast).add_(0.5).add_(bright)  # augment's order of operations: same round-off
    x = x.add_(eps.mul_(sigma))
    x = F.grid_sample(x.unsqueeze(1), _rotation_grid(a, t, *x.shape[1:]), padding_mode="border",
                      align_corners=False).squeeze(1)
    return x.clamp_(0, 1)


def _rotation_grid(a: torch.Tensor, t: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """``F.affine_grid`` of rotations ``a`` (B,) and shifts ``t`` (B, 2) for (H, W) outputs
    (``align_corners=False``), written out: (B, H, W, 2). Equal up to round-off, and several times
    faster on a CPU, where ``affine_grid``'s batched matmul with an inner size of 3 is slow."""
    xs = (torch.arange(W, device=a.device, dtype=torch.float32) * 2 + 1).div_(W).sub_(1).view(1, 1, W)
    ys = (torch.arange(H, device=a.device, dtype=torch.float32) * 2 + 1).div_(H).sub_(1).view(1, H, 1)
    c, s = a.cos().view(-1, 1, 1), a.sin().view(-1, 1, 1)
    gx = c * xs - s * ys + t[:, 0].view(-1, 1, 1)
    gy = s * xs + c * ys + t[:, 1].view(-1, 1, 1)
    return torch.stack([gx, gy], -1)


def normalize01(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """[0, 1] grey (B, S, S) -> normalised (B, 3, S, S), as :func:`images.to_model_input`; on
    ``x``'s device and dtype."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x.unsqueeze(1) - m) / s


def autocast(device: torch.device | str, cpu_bf16: bool = False):
    """bf16 autocast on CUDA (and on the CPU when ``cpu_bf16``), a no-op context elsewhere."""
    device = torch.device(device)
    if device.type == "cuda" or (device.type == "cpu" and cpu_bf16):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX-512 BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the destination folder, then rename: a reader never
    sees a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def to_cpu(obj: Any) -> Any:
    """A deep copy of ``obj`` (nested dicts / lists / tuples) with every tensor copied to the CPU:
    a snapshot that later in-place updates of the originals do not change."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The host generator of one training epoch (data order, augmentation): the same numbers
    whenever that epoch runs, so an interrupted run replays it exactly."""
    return torch.Generator().manual_seed(seed * 100003 + epoch)


def seed_all(seed: int) -> None:
    """Seed torch's global generators (CPU and every CUDA device)."""
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict:
    """The global generator states to store in a checkpoint (CPU, and ``device``'s when CUDA)."""
    return {"rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore what :func:`rng_state` stored."""
    torch.set_rng_state(state["rng"])
    if device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], device)


def cpu_threads_for_load(current: int | None = None) -> int:
    """Threads for CPU work now: at most ``current`` (default ``torch.get_num_threads()``), fewer
    when other processes keep the cores busy (1-minute load average, less this process).

    On a shared machine, OpenMP threads that outnumber the free cores spin at every barrier: a
    fine-tuning step of the demo model measured about 5x slower with 2 threads than with 1 on two
    busy cores (the benchmark times the step at every thread count, with the load).
    """
    current = current or torch.get_num_threads()
    try:
        cores = len(os.sched_getaffinity(0))
        others = max(0.0, os.getloadavg()[0] - 1.0)
    except (AttributeError, OSError):
        return current
    return max(1, min(current, int(round(cores - others))))


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside a process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def maybe_compile(fn: Callable, mode: str = "auto", device: torch.device | str = "cpu",
                  **kwargs: Any) -> tuple[Callable, str]:
    """``torch.compile(fn)`` when asked for and available, else ``fn``; returns (callable, what ran).

    ``mode``: ``"off"``; ``"on"`` (try to compile, fall back to eager on failure); ``"auto"``
    (compile on CUDA only). Compilation is lazy, so the returned callable falls back to ``fn``
    itself if the first call fails to compile; the second element says ``"compiled"`` or
    ``"eager"`` (read :attr:`CompiledOrEager.state` after the first call for the outcome).
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"compile must be 'auto', 'on' or 'off', got {mode!r}")
    use = mode == "on" or (mode == "auto" and torch.device(device).type == "cuda")
    if not use or not hasattr(torch, "compile"):
        return fn, "eager"
    try:
        compiled = torch.compile(fn, **kwargs)
    except Exception:  # noqa: BLE001 - any failure means: run eager
        return fn, "eager"
    wrapped = CompiledOrEager(compiled, fn)
    return wrapped, "compiled"


class CompiledOrEager:
    """Call the compiled function; if compiling it fails (missing compiler, unsupported op), warn
    once and call the eager one from then on. ``state``: ``"compiled"`` or ``"eager"``."""

    def __init__(self, compiled: Callable, eager: Callable):
        self.compiled, self.eager, self.state = compiled, eager, "compiled"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.state == "compiled":
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001
                import warnings

                warnings.warn(f"torch.compile failed ({type(e).__name__}: {str(e)[:200]}); running eager")
                self.state = "eager"
        return self.eager(*args, **kwargs)


def to_device(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``x`` on ``device``; through pinned memory without blocking the host when that is a GPU."""
    device = torch.device(device)
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


class DevicePixels:
    """uint8 rows (n, S, S) of a :class:`images.PixelCache` served on ``device``: copied there once,
    on first use (``resident``), or read from the cache per request.

    Calling it with row indices returns those rows, uint8 (len(rows), S, S), on the device.
    """

    def __init__(self, pixels, rows: Sequence[int], device: torch.device | str, resident: bool):
        import numpy as np

        self.cache, self.dev, self.resident = pixels, torch.device(device), resident
        self.rows = np.unique(np.asarray(rows, dtype=np.int64))
        self.data: torch.Tensor | None = None

    def __call__(self, rows: Sequence[int]) -> torch.Tensor:
        import numpy as np

        rows = np.asarray(rows, dtype=np.int64)
        if not self.resident:
            return to_device(torch.from_numpy(np.asarray(self.cache.pixels[rows])), self.dev)
        if self.data is None:
            self.data = to_device(torch.from_numpy(np.ascontiguousarray(self.cache.pixels[self.rows])), self.dev)
        return self.data[to_device(torch.from_numpy(np.searchsorted(self.rows, rows)), self.dev)]


class BackgroundWriter:
    """Writes files atomically on one background thread, in submission order, while the caller
    goes on (at most one job waits, so a slow disk slows the caller instead of filling memory).

    A job is a list of (path, object): ``.json`` paths via :func:`io.atomic_write_json`, others
    via :func:`atomic_torch_save`. Objects must be snapshots (see :func:`to_cpu`). ``active=False``
    makes every call a no-op (e.g. DDP ranks other than 0).
    """

    def __init__(self, active: bool = True, what: str = "checkpoint"):
        import queue
        import threading

        self.active, self.what, self.error = active, what, None
        self.jobs: queue.Queue = queue.Queue(maxsize=1)
        self.thread = threading.Thread(target=self._work, name=f"{what}-writer", daemon=True)
        if active:
            self.thread.start()

    def _work(self) -> None:

        while (job := self.jobs.get()) is not None:
            try:
                for path, obj in job:
                    if str(path).endswith(".json"):
                        atomic_write_json(path, obj)
                    else:
                        atomic_torch_save(obj, path)
            except BaseException as e:  # noqa: BLE001 - reported to the caller's thread
                self.error = (path, e)

    def submit(self, files: list[tuple[str | os.PathLike, Any]]) -> None:
        """Queue ``files`` (written in that order); raise an earlier write's error."""
        if self.active:
            self._raise()
            self.jobs.put(files)

    def close(self) -> None:
        """Wait until every queued file is written; raise a write error naming the file."""
        if self.active and self.thread.is_alive():
            self.jobs.put(None)
            self.thread.join()
        self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            path, e = self.error
            self.error = None
            raise RuntimeError(f"writing the {self.what} {path} failed: {type(e).__name__}: {e}") from e
