"""Result rows, the printed table and the JSON results file."""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import asdict, dataclass


@dataclass
class Row:
    metric: str
    value: float | None
    unit: str
    reference: float | None = None
    ref_label: str = ""
    ratio: float | None = None
    target: str = "info"
    result: str = "info"  # PASS / MISS / info / skipped / ERROR
    note: str = ""

    def cells(self) -> list[str]:
        def num(v: float | None, unit: str) -> str:
            if v is None:
                return "-"
            if isinstance(v, int):
                return f"{v} {unit}"
            if unit == "ms" and v < 10:
                return f"{v:.2f} {unit}"
            return f"{v:.3f} {unit}" if unit == "s" else f"{v:.1f} {unit}"

        ref = num(self.reference, self.unit)
        if self.ref_label and self.reference is not None:
            ref = f"{ref} ({self.ref_label})"
        value = num(self.value, self.unit) if self.result != "skipped" else "skipped"
        ratio = f"{self.ratio:.3f}x" if self.ratio is not None else "-"
        return [self.metric, value, ref, ratio, self.target, self.result]

    def as_json(self) -> dict:
        d = asdict(self)
        d["reference_label"] = d.pop("ref_label")
        return d


def print_table(rows: list[Row]) -> None:
    header = ["metric", "value", "reference", "ratio", "target", "result"]
    table = [header] + [r.cells() for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    sep = "-+-".join("-" * w for w in widths)
    print()
    for j, line in enumerate(table):
        print(" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if j == 0:
            print(sep)
    for r in rows:
        if r.note:
            print(f"  note: {r.metric}: {r.note}")
    print()


def pf(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def size_label(mib: int) -> str:
    return f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"


def spread(values: list[float], unit: str = "s", digits: int = 2) -> str:
    """``min..max`` of ``values``."""
    return f"{min(values):.{digits}f}..{max(values):.{digits}f}{unit}"


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median of a/b over the reps: each pair ran back to back, so slow drift cancels."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def write_json(path: str, result: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")
