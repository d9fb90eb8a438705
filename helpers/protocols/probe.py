"""Linear probe: one-vs-rest logistic regression on frozen image embeddings.

Features are the encoder's image embeddings ``e`` (n, d), L2-normalised and standardised with
the training split's mean and spread, ``x = (e/|e| - mu) / sigma``. For each label ``j`` an
independent logistic regression ``p_j(x) = sigmoid(w_j . x + b_j)`` is fitted with an L2
penalty of strength ``1/C`` (sklearn's ``LogisticRegression`` objective, solved for all labels at
once by a batched L-BFGS in torch; tested equal to sklearn's optimum). ``C`` is chosen from a grid by
the validation split's macro AUROC (one ``C`` for all labels); class weighting for imbalance
(``balanced``: each class weighted by ``n / (2 n_class)``) is a parameter. A label with a single
class in the training split gets a constant score (its training prevalence).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from helpers.analysis.metrics import per_label_auroc
from helpers.protocols.training import cpu_threads_for_load
from helpers.storage import atomic_write_bytes

DEFAULT_CS = (0.01, 0.1, 1.0, 10.0)


@dataclass
class Probe:
    """A fitted probe. ``coef`` (k, d) and ``intercept`` (k,) act on standardised features."""

    coef: np.ndarray
    intercept: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    C: float
    class_weight: str | None
    fit_s: float
    val_auroc_by_C: dict[float, float] = field(default_factory=dict)

    def features(self, emb: np.ndarray) -> np.ndarray:
        """Standardised, L2-normalised features (n, d) of raw embeddings (n, d)."""
        e = np.asarray(emb, dtype=np.float64)
        e = e / np.linalg.norm(e, axis=1, keepdims=True).clip(1e-12)
        return (e - self.mean) / self.scale

    def decision_function(self, emb: np.ndarray) -> np.ndarray:
        """Logits (n, k) of raw embeddings (n, d)."""
        return self.features(emb) @ self.coef.T + self.intercept

    def torch_logits(self, emb):
        """The same logits as a differentiable torch function of raw embeddings (n, d) -> (n, k).

        Used by Grad-CAM to explain the probe's decision through the frozen encoder.
        """
        import torch

        e = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        t = lambda a: torch.as_tensor(a, dtype=emb.dtype, device=emb.device)  # noqa: E731
        return ((e - t(self.mean)) / t(self.scale)) @ t(self.coef).T + t(self.intercept)


class _Logistic:
    """``P`` independent L2-regularised logistic regressions on shared features, in sklearn's
    scaling: problem ``p`` minimises ``sum_i s_ip l(y_ip, x_i w_p + b_p) / sum_i s_ip +
    ||w_p||^2 / (2 C_p sum_i s_ip)`` (the intercept is not penalised, as in sklearn's lbfgs).

    x (n, d), y and sample weights s (n, P), C (P,): torch tensors on one device.
    """

    def __init__(self, x, y, s, C, basis: tuple | None = None):
        import torch

        self.x, self.y, self.s = x, y, s
        self.sw = s.sum(0)
        self.lam = 1.0 / (C * self.sw)
        ev, self.V = basis if basis is not None else torch.linalg.eigh(x.T @ x / len(x))
        self.ev = ev.clamp_min(0)[:, None]  # preconditioner basis (exact for centred features)

    def fg(self, w, b):
        """Objective (P,) and gradients (d, P), (P,) at weights w (d, P), intercepts b (P,)."""
        import torch

        z = self.x @ w + b
        f = (self.s * (torch.nn.functional.softplus(z) - self.y * z)).sum(0) / self.sw + 0.5 * self.lam * (w * w).sum(0)
        r = self.s * (torch.sigmoid(z) - self.y) / self.sw
        return f, self.x.T @ r + self.lam * w, r.sum(0)

    def h0(self, qw, qb):
        """The inverse of the objective's Hessian at w = 0 with unit weights (``x^T x / 4n +
        lambda`` on w, ``1/4`` on b): the L-BFGS initial matrix, which absorbs the features' scales."""
        return self.V @ ((self.V.T @ qw) / (0.25 * self.ev + self.lam)), 4.0 * qb


def _dot(aw, ab, bw, bb):
    return (aw * bw).sum(0) + ab * bb


def _direction(prob: _Logistic, gw, gb, hist: list) -> tuple:
    """L-BFGS two-loop recursion, per problem (columns), with the preconditioned initial matrix."""
    import torch

    qw, qb, alphas = gw.clone(), gb.clone(), []
    for sw, sb, yw, yb, rho in reversed(hist):
        a = rho * _dot(sw, sb, qw, qb)
        alphas.append(a)
        qw, qb = qw - a * yw, qb - a * yb
    rw, rb = prob.h0(qw, qb)
    if hist:
        sw, sb, yw, yb, _ = hist[-1]
        hw, hb = prob.h0(yw, yb)
        gam = _dot(sw, sb, yw, yb) / _dot(yw, yb, hw, hb)
        gam = torch.where(torch.isfinite(gam) & (gam > 0), gam, torch.ones_like(gam))
        rw, rb = rw * gam, rb * gam
    for (sw, sb, yw, yb, rho), a in zip(hist, reversed(alphas)):
        c = a - rho * _dot(yw, yb, rw, rb)
        rw, rb = rw + c * sw, rb + c * sb
    return -rw, -rb


def _lbfgs(prob: _Logistic, w, b, tol: float, max_iter: int, memory: int = 10) -> tuple:
    """Minimise every problem of ``prob`` from (w, b) until each gradient's largest entry is below
    ``tol`` or a line search finds no decrease (round-off floor); batched L-BFGS with Armijo
    backtracking per problem. Returns (w, b, iterations)."""
    import torch

    f, gw, gb = prob.fg(w, b)
    hist: list = []
    stalled = torch.zeros_like(f, dtype=torch.bool)  # no decrease at round-off level: done
    for it in range(max_iter):
        active = (torch.maximum(gw.abs().amax(0), gb.abs()) > tol) & ~stalled
        if not bool(active.any()):
            return w, b, it
        pw, pb = _direction(prob, gw, gb, hist)
        slope = _dot(gw, gb, pw, pb)
        uphill = slope >= 0  # lost curvature information: steepest descent for that problem
        pw, pb = torch.where(uphill, -gw, pw) * active, torch.where(uphill, -gb, pb) * active
        slope = _dot(gw, gb, pw, pb)
        t = torch.ones_like(f)
        for _ in range(40):
            fn, gwn, gbn = prob.fg(w + t * pw, b + t * pb)
            ok = (fn <= f + 1e-4 * t * slope) | ~active
            if bool(ok.all()):
                break
            t = torch.where(ok, t, 0.5 * t)
        stalled |= active & ~ok
        t = torch.where(ok, t, torch.zeros_like(t))
        sw, sb, yw, yb = t * pw, t * pb, gwn - gw, gbn - gb
        sy = _dot(sw, sb, yw, yb)
        hist = (hist + [(sw, sb, yw, yb, torch.where(sy > 1e-20, 1.0 / sy, torch.zeros_like(sy)))])[-memory:]
        w, b, f, gw, gb = w + sw, b + sb, fn, gwn, gbn
    return w, b, max_iter


def _fit_path(x: np.ndarray, y: np.ndarray, Cs: Sequence[float], class_weight: str | None,
              max_iter: int, tol: float = 1e-6, device: str | None = None) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """Fit every label for every C: C -> (coef (k, d), intercept (k,)).

    All labels at once (one batched L-BFGS in float64 with torch, on the GPU when present), the Cs
    in increasing order, each warm-started at the previous C's solution. The solution is sklearn's
    ``LogisticRegression`` optimum (same objective, class weights and unpenalised intercept),
    reached to a gradient tolerance of ``tol`` (sklearn's default 1e-4 stops far earlier at large C).
    """
    import torch


    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    k, d = y.shape[1], x.shape[1]
    out = {float(C): (np.zeros((k, d)), np.zeros(k)) for C in Cs}
    two = [j for j in range(k) if y[:, j].min() != y[:, j].max()]
    for j in set(range(k)) - set(two):  # one class only: constant log-odds of the (clipped) prevalence
        p = float(np.clip(y[:, j].mean(), 1e-3, 1 - 1e-3))
        for C in out:
            out[C][1][j] = np.log(p / (1 - p))
    if not two:
        return out
    threads = torch.get_num_threads()
    torch.set_num_threads(cpu_threads_for_load(threads))
    try:
        t = lambda a: torch.as_tensor(a, dtype=torch.float64, device=dev)  # noqa: E731
        X, Y = t(x), t(y[:, two])
        pos = Y.sum(0)
        S = torch.where(Y > 0, len(Y) / (2 * pos), len(Y) / (2 * (len(Y) - pos))) if class_weight else torch.ones_like(Y)
        w, b, basis = t(np.zeros((d, len(two)))), t(np.zeros(len(two))), torch.linalg.eigh(X.T @ X / len(X))
        for C in sorted(out):
            w, b, _ = _lbfgs(_Logistic(X, Y, S, t(np.full(len(two), C)), basis), w, b, tol, max_iter)
            out[C][0][two], out[C][1][two] = w.T.cpu().numpy(), b.cpu().numpy()
    finally:
        torch.set_num_threads(threads)
    return out


def fit_probe(emb_train: np.ndarray, y_train: np.ndarray, emb_val: np.ndarray, y_val: np.ndarray,
              Cs: Sequence[float] = DEFAULT_CS, class_weight: str | None = "balanced",
              max_iter: int = 2000) -> Probe:
    """Fit the probe for every ``C`` in ``Cs``; keep the one with the best val macro AUROC.

    Parameters
    ----------
    emb_train, emb_val : raw image embeddings (n, d). y_train, y_val : 0/1 targets (n, k).
    class_weight : ``"balanced"`` or ``None``.
    """

    if class_weight not in ("balanced", None):
        raise ValueError(f"class_weight must be 'balanced' or None, got {class_weight!r}")
    if not len(Cs) or min(Cs) <= 0:
        raise ValueError(f"Cs must be a non-empty list of positive numbers, got {Cs!r}")
    t0 = time.perf_counter()
    e = np.asarray(emb_train, dtype=np.float64)
    e = e / np.linalg.norm(e, axis=1, keepdims=True).clip(1e-12)
    mean, scale = e.mean(0), e.std(0).clip(1e-6)
    probe = Probe(np.empty(0), np.empty(0), mean, scale, float("nan"), class_weight, 0.0)
    x_tr, x_va = (e - mean) / scale, probe.features(emb_val)  # e: the training rows, already normalised
    best = (-np.inf, None)
    path = _fit_path(x_tr, np.asarray(y_train).astype(int), Cs, class_weight, max_iter)
    for C, (coef, icpt) in path.items():
        auc = float(np.nanmean(per_label_auroc(np.asarray(y_val).astype(int), x_va @ coef.T + icpt)))
        probe.val_auroc_by_C[float(C)] = auc
        if auc > best[0]:
            best = (auc, (float(C), coef, icpt))
    probe.C, probe.coef, probe.intercept = best[1]
    probe.fit_s = time.perf_counter() - t0
    return probe


def save_probe(path, probe: Probe) -> None:
    """Write a fitted probe (weights, standardisation, chosen C) atomically as ``.npz``."""
    import io


    buf = io.BytesIO()
    np.savez(buf, coef=probe.coef, intercept=probe.intercept, mean=probe.mean, scale=probe.scale,
             C=probe.C, class_weight=str(probe.class_weight), fit_s=probe.fit_s)
    atomic_write_bytes(path, buf.getvalue())


def load_probe(path) -> Probe:
    """Read :func:`save_probe` output; a missing file names the chapter that writes it."""
    from pathlib import Path

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} is missing; run chapter 3 first: python -m helpers.book.runner 03_linear_probe")
    with np.load(path) as z:
        cw = str(z["class_weight"])
        return Probe(z["coef"], z["intercept"], z["mean"], z["scale"], float(z["C"]),
                     None if cw == "None" else cw, float(z["fit_s"]))
