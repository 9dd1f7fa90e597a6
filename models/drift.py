"""Feature drift: the population stability index of live feature values against the training reference.

The reference (stored in a model version's metadata) holds each feature's quantiles on the training rows; the
bins between them hold known shares of the training population, so PSI needs no training data at run time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

PSI_FLOOR = 1e-4  # an empty bin would make PSI infinite: floor both shares
PSI_DRIFT = 0.25  # the usual reading: < 0.1 stable, 0.1-0.25 moderate, > 0.25 a shifted population


def psi(quantile_levels: Sequence[float], quantile_values: Sequence[float], values: np.ndarray) -> float:
    """PSI of `values` against a reference given by its quantiles (levels in (0, 1), increasing)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0
    levels = np.asarray(quantile_levels, dtype=np.float64)
    expected = np.diff(np.concatenate(([0.0], levels, [1.0])))
    edges = np.asarray(quantile_values, dtype=np.float64)
    # side="right": a value equal to an edge counts below it, as np.quantile places it
    counts = np.bincount(np.searchsorted(edges, finite, side="right"), minlength=edges.size + 1)
    actual = counts / finite.size
    expected = np.maximum(expected, PSI_FLOOR)
    actual = np.maximum(actual, PSI_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def feature_psi(reference: Mapping[str, Any], names: Sequence[str], rows: np.ndarray) -> dict[str, float]:
    """PSI per feature of the live rows (n, F) against a version's `training_reference`."""
    levels = reference["quantiles"]
    out = {}
    for j, name in enumerate(names):
        spec = reference["features"].get(name)
        if spec and spec.get("values"):
            out[name] = psi(levels, spec["values"], rows[:, j])
    return out
