"""The test-time depth law: a metric of a looped model against its loop depth T.

Evaluated at T loop iterations, a looped model's metric saturates exponentially:

    L(T) = L_inf + Z · exp(−z · T)        z > 0

For a loss (bpb, nats) Z > 0 and L falls towards L_inf; for an accuracy-like metric (CORE)
Z < 0 and it rises. From the smallest fitted depth T0, 95% of the gain L(T0) − L_inf is reached
at t95 = T0 + ln(20) / z.

The fit is least squares (`scipy.optimize.curve_fit`) in the form L_inf + A · exp(−z (T − T0)),
A = Z · exp(−z T0), which stays well conditioned whatever T0 is. At a fixed z the best (L_inf, A)
is a linear least-squares solve, so the residual is first profiled over a log grid of rates; the
fit starts from the best grid rates in turn until one converges.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from parcae.errors import DataError

# z is kept where the curve falls at most a million-fold between the two closest depths (faster is
# a step, indistinguishable from it) and makes at least ~1% of its gain over the fitted span
# (z · span >= 0.01; slower is a straight line, whose L_inf is anywhere).
_FASTEST_DROP = math.log(1e6)
_SLOWEST_SPAN = 0.01
# Z = A · exp(z · T0) stays finite in float64 (exp overflows past 709).
_LARGEST_EXPONENT = 500.0
_GRID = 64  # rates profiled, log-spaced over the allowed range
_STARTS = 3  # best grid rates the fit is started from, in turn


@dataclass(frozen=True)
class DepthLaw:
    """L(T) = l_inf + amplitude · exp(−rate · T), fitted to `values` measured at `depths`."""

    metric: str
    l_inf: float
    amplitude: float
    rate: float
    r2: float
    t95: float
    depths: tuple[int, ...]
    values: tuple[float, ...]
    saturated: bool = False  # z at its upper bound: L_inf is reached between the first depths

    def predict(self, depths) -> np.ndarray:
        """L(T) at `depths` (any shape; a scalar gives a 0-d array), float64."""
        t = np.asarray(depths, dtype=np.float64)
        return self.l_inf + self.amplitude * np.exp(-self.rate * t)

    def to_dict(self) -> dict:
        """JSON-ready: metric, l_inf, Z, z, r2, t95, saturated, depths, values."""
        return {
            "metric": self.metric,
            "l_inf": self.l_inf,
            "Z": self.amplitude,
            "z": self.rate,
            "r2": self.r2,
            "t95": self.t95,
            "saturated": self.saturated,
            "depths": list(self.depths),
            "values": list(self.values),
        }


def fit_depth_law(depths: Sequence[int], values: Sequence[float], metric: str = "loss") -> DepthLaw:
    """Least-squares fit of L(T) = L_inf + Z · exp(−z T) to `values[i]` measured at `depths[i]`.

    Depths are positive integers and may repeat (several measurements per depth), but at least 3
    must be distinct. The points are kept sorted by depth. Raises DataError on bad input, on
    values that are the same at every depth, and on values that do not level off.
    """
    t, y = _checked(depths, values)
    t0 = t[0]
    distinct = np.unique(t)
    lo = _SLOWEST_SPAN / (t[-1] - t0)
    hi = min(_FASTEST_DROP / np.diff(distinct).min(), _LARGEST_EXPONENT / t0)

    def curve(tt: np.ndarray, l_inf: float, a: float, z: float) -> np.ndarray:
        return l_inf + a * np.exp(-z * (tt - t0))

    rates = np.geomspace(lo, hi, _GRID)
    profile = [_linear_fit(t, y, t0, z)[1] for z in rates]
    order = np.argsort(profile)
    if order[0] == 0:
        raise DataError(
            f"the {metric} values do not level off over depths {_listed(t)}: "
            "no saturating depth law fits them"
        )
    for z in rates[order[:_STARTS]]:
        start = (*_linear_fit(t, y, t0, z)[0], z)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                params, _ = curve_fit(
                    curve, t, y, p0=start, bounds=([-np.inf, -np.inf, lo], [np.inf, np.inf, hi])
                )
        except (RuntimeError, ValueError):
            continue
        if np.all(np.isfinite(params)):
            break
    else:
        raise DataError(f"the {metric} depth law fit did not converge for depths {_listed(t)}")
    l_inf, a, z = (float(p) for p in params)
    sse = float(np.sum((curve(t, *params) - y) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return DepthLaw(
        metric=metric,
        l_inf=l_inf,
        amplitude=a * math.exp(z * t0),
        rate=z,
        r2=1.0 - sse / ss_tot,
        t95=float(t0) + math.log(20.0) / z,
        depths=tuple(int(d) for d in t),
        values=tuple(float(v) for v in y),
        saturated=bool(z >= hi * (1 - 1e-6)),
    )


def plot_depth_law(
    law: DepthLaw,
    path: str | os.PathLike,
    mean_recurrence: float | None = None,
    title: str | None = None,
) -> Path:
    """Write a PNG of the measured points, the fitted curve over [min T, max T] and L_inf (dashed),
    with a vertical line at the training mean recurrence μ_rec when given. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(min(law.depths), max(law.depths), 400)
    sign = "+" if law.amplitude >= 0 else "−"
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(law.depths, law.values, "o", label="measured")
    axis.plot(
        grid,
        law.predict(grid),
        label=(
            f"{law.l_inf:.4g} {sign} {abs(law.amplitude):.3g}·exp(−{law.rate:.3g} T)\n"
            f"R² = {law.r2:.4f}, t95 = {law.t95:.3g}"
        ),
    )
    axis.axhline(law.l_inf, linestyle="--", color="gray", label=f"L∞ = {law.l_inf:.4g}")
    if mean_recurrence is not None:
        axis.axvline(
            mean_recurrence, linestyle=":", color="black", label=f"μ_rec = {mean_recurrence:g}"
        )
    axis.set_title(title or f"{law.metric} vs test-time depth")
    axis.set_xlabel("test-time depth T")
    axis.set_ylabel(law.metric)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out


def laws_from_results(
    results: dict, metrics: Sequence[str] = ("bpb", "loss", "core")
) -> dict[str, DepthLaw]:
    """Depth laws of the `metrics` in a `parcae eval` results dict, {metric: {"T": value}}.

    Keys that are not integers ("fixed": a fixed-depth model) are ignored. Metrics that are
    absent, have fewer than 3 depths or whose fit fails are left out; raises DataError, naming
    each metric's depth count, when none is left.
    """
    laws, reasons = {}, []
    for metric in metrics:
        table = results.get(metric)
        if not isinstance(table, dict):
            reasons.append(f"{metric} absent")
            continue
        points = {int(key): value for key, value in table.items() if _is_int(key)}
        if len(points) < 3:
            reasons.append(f"{metric} has {len(points)} depths")
            continue
        try:
            laws[metric] = fit_depth_law(list(points), list(points.values()), metric)
        except DataError as error:
            reasons.append(f"{metric} has {len(points)} depths but {error}")
    if not laws:
        raise DataError(
            "no depth law could be fitted (each needs at least 3 depths): " + ", ".join(reasons)
        )
    return laws


def _checked(depths: Sequence[int], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(T, y) as float64 arrays sorted by T, after refusing bad input with DataError."""
    try:
        t = np.asarray(depths, dtype=np.float64).reshape(-1)
        y = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as error:
        raise DataError(f"depths and values must be numbers: {error}") from None
    if len(t) != len(y):
        raise DataError(f"got {len(t)} depths but {len(y)} values: give one value per depth")
    if not np.all(np.isfinite(t) & (t == np.round(t)) & (t > 0)):
        raise DataError(f"depths must be positive integers, got {_listed(t)}")
    if not np.all(np.isfinite(y)):
        raise DataError(f"values must be finite, got {y.tolist()}")
    distinct = np.unique(t)
    if len(distinct) < 3:
        raise DataError(
            "the depth law has 3 parameters: give at least 3 depths, "
            f"got {len(distinct)} distinct ({_listed(distinct)})"
        )
    if np.ptp(y) == 0:
        raise DataError(f"the values are {y[0]:g} at every depth: there is no depth law to fit")
    order = np.argsort(t, kind="stable")
    return t[order], y[order]


def _linear_fit(
    t: np.ndarray, y: np.ndarray, t0: float, z: float
) -> tuple[tuple[float, float], float]:
    """((L_inf, A), SSE) minimising SSE = Σ (L_inf + A · exp(−z (T − T0)) − y)² at a fixed z."""
    basis = np.stack([np.ones_like(t), np.exp(-z * (t - t0))], axis=1)
    (l_inf, a), *_ = np.linalg.lstsq(basis, y, rcond=None)
    return (float(l_inf), float(a)), float(np.sum((basis @ (l_inf, a) - y) ** 2))


def _listed(t: np.ndarray) -> str:
    """Depths as a short list: integers shown without a trailing .0."""
    return "[" + ", ".join(f"{d:g}" for d in t) + "]"


def _is_int(key) -> bool:
    """Whether a results key names an integer depth ("4" does, "fixed" does not)."""
    try:
        int(key)
    except (TypeError, ValueError):
        return False
    return True
