"""Number formatting shared by the measurement scripts' tables (imported, not run)."""

import statistics


def med(values):
    """The median of the values that are there, or None."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, unit=""):
    """A rate or count as the README's tables write it: 4.47 M, 312 k, 950."""
    if v is None:
        return "–"
    if v >= 1e6:
        return f"{v / 1e6:.2f} M{unit}"
    if v >= 1e4:
        return f"{v / 1e3:.0f} k{unit}"
    return f"{v:.0f}{unit}"


def ratio(a, b):
    return f"{a / b:.2f}×" if a and b else "–"
