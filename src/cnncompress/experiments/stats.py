"""How sure a bench row's accuracy change is: per-image correctness stored compactly, and a paired bootstrap
interval for Δaccuracy = accuracy(row) − accuracy(matched control).

Every row keeps which test images its deployed model got right (``pack``: one bit per image, base64) and so does
its matched control (the baseline trained for the same total epochs). ``delta_interval`` resamples with
replacement the seeds (when there are several) and the test images (the same images for row and control, and for
every seed: a paired design, so image difficulty cancels out), ``reps`` times, and reports the mean Δ with the
2.5 and 97.5 percentiles of the resampled Δ (a 95 % percentile interval). A change whose interval covers 0 is
"within noise".
"""
from __future__ import annotations

import base64

import numpy as np

REPS = 2000
LEVEL = 0.95
CHUNK = 250


def mean_of(values) -> float:
    """The mean of the values that are not None (nan when none is)."""
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def pack(correct) -> str:
    """Per-image correctness (bools) -> base64 of the packed bits (1,000 images: 168 characters)."""
    bits = np.asarray(correct, dtype=bool)
    return base64.b64encode(np.packbits(bits).tobytes()).decode("ascii")


def unpack(text: str, count: int) -> np.ndarray:
    """The first ``count`` bits of ``pack``'s output as a bool array."""
    raw = np.frombuffer(base64.b64decode(text), dtype=np.uint8)
    return np.unpackbits(raw)[:count].astype(bool)


def delta_interval(pairs: list[tuple[np.ndarray, np.ndarray]], reps: int = REPS, level: float = LEVEL,
                   seed: int = 0) -> dict:
    """Paired bootstrap of Δaccuracy (percentage points) over test images and seeds.

    ``pairs``: one ``(row correct, control correct)`` per seed, bool arrays over the same test images.
    Returns ``{delta, low, high, within_noise, reps, seeds, images}``."""
    if not pairs:
        raise ValueError("no (row, control) pairs")
    lengths = {len(r) for pair in pairs for r in pair}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"row and control must be scored on the same non-empty test split, got sizes {lengths}")
    n = lengths.pop()
    diff = np.stack([r.astype(np.float64) - c.astype(np.float64) for r, c in pairs])  # (seeds, images)
    rng = np.random.default_rng(seed)
    samples = []
    for start in range(0, reps, CHUNK):  # chunks keep (images x reps) small for large test splits
        size = min(CHUNK, reps - start)
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=size).T / n  # (images, size): resampled counts
        per_seed = diff @ weights  # (seeds, size): Δ of each seed on each resampled test set
        chosen = rng.integers(0, len(pairs), size=(size, len(pairs)))  # resampled seeds
        samples.append(per_seed[chosen, np.arange(size)[:, None]].mean(axis=1) * 100)
    samples = np.concatenate(samples)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    delta = float(diff.mean() * 100)
    return {"delta": delta, "low": float(low), "high": float(high), "within_noise": bool(low <= 0 <= high),
            "reps": reps, "seeds": len(pairs), "images": n}


def seed_interval(deltas: list[float], level: float = LEVEL) -> dict | None:
    """Mean of per-seed differences (one paired difference per seed, e.g. softmax − labels accuracy of the same
    seed) with a Student-t interval over the seeds; None for fewer than two seeds (no spread to measure).
    Returns ``{delta, low, high, within_noise, seeds}``."""
    values = np.asarray([d for d in deltas if d is not None and d == d], dtype=np.float64)
    if len(values) < 2:
        return None
    from scipy.stats import t
    mean, sem = float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values)))
    half = float(t.ppf(0.5 + level / 2, len(values) - 1)) * sem
    return {"delta": mean, "low": mean - half, "high": mean + half,
            "within_noise": bool(mean - half <= 0 <= mean + half), "seeds": len(values)}
