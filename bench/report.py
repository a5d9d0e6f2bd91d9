"""Writing what the benchmarks measured: Markdown tables, matplotlib plots, and publishing a full run's
report to docs/.

The plots take plain series (labels and numbers), not a benchmark's own records, so that every
benchmark draws through the same few functions.

Publishing: a run writes into its results/<name>-<timestamp>/ folder; a full run (not `--quick`, not
`--no-docs`) also copies its report to docs/<report>.md and its plots to docs/img/, which is what is
committed. A quick run's figures are too rough for docs/ and stay in results/.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import REPO

DOCS = REPO / "docs"


def fmt_ms(value: float) -> str:
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def table(header: Sequence[str], align: str, rows: Iterable[Sequence[object]]) -> list[str]:
    """A Markdown table; `align` has one letter a column: l (text) or r (figures)."""
    rule = ["---:" if a == "r" else "---" for a in align]
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(rule) + " |",
        *("| " + " | ".join(str(c) for c in row) + " |" for row in rows),
    ]


def profile_table(profile: Mapping[str, Sequence[tuple[str, float]]]) -> list[str]:
    """A py-spy summary (bench.harness.summarise_profile) side by side: self and inclusive shares."""
    rows = zip(profile.get("self", []), profile.get("inclusive", []), strict=False)
    return table(
        ("self %", "function", "inclusive %", "function"),
        "rlrl",
        ((s_pct, f"`{s_name}`", i_pct, f"`{i_name}`") for (s_name, s_pct), (i_name, i_pct) in rows),
    )


def publish(out_dir: Path, report: str, images: Sequence[str], *, full_run: bool) -> bool:
    """Copy a run's report.md to docs/`report` and its plots (paths relative to `out_dir`) to docs/img/,
    for a full run only. Whether it copied."""
    if not full_run:
        print(
            f"==> report: {out_dir / 'report.md'} (a quick run or --no-docs: docs/ left as it is)", flush=True
        )
        return False
    (DOCS / "img").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out_dir / "report.md", DOCS / report)
    for image in images:
        source = out_dir / image
        if source.is_file():
            shutil.copyfile(source, DOCS / "img" / source.name)
    names = ", ".join(Path(i).name for i in images)
    print(f"==> report: {out_dir / 'report.md'}, copied to docs/{report} and docs/img/ ({names})", flush=True)
    return True


# ----------------------------------------------------------------------------------------------------
# Plots


@dataclass
class Series:
    """One target's figures against the connection count."""

    label: str
    connections: list[int]
    rps: list[float]
    p50_ms: list[float]
    p99_ms: list[float] = field(default_factory=list)  # drawn dashed when given
    dashed: bool = False  # the whole series dashed (a reference line)


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend (every plot here is written to a PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_connections(
    path: Path,
    series: Sequence[Series],
    concurrencies: Sequence[int],
    *,
    rps_title: str,
    latency_title: str,
    rps_label: str = "requests / s",
    latency_label: str = "latency ms (solid p50, dashed p99)",
    xlabel: str = "concurrent connections",
    size: tuple[float, float] = (10, 3.6),
    plain_latency_ticks: bool = False,
) -> None:
    """Throughput (left) and latency (right, log) against connections, one line per series."""
    plt = pyplot()
    fig, (ax_rps, ax_lat) = plt.subplots(1, 2, figsize=size, dpi=80)
    for s in series:
        style = "--" if s.dashed else "-"
        (line,) = ax_rps.plot(s.connections, s.rps, marker="o", ls=style, label=s.label)
        p50_label = f"{s.label} p50" if s.p99_ms else s.label
        ax_lat.plot(s.connections, s.p50_ms, marker="o", ls=style, color=line.get_color(), label=p50_label)
        if s.p99_ms:
            ax_lat.plot(s.connections, s.p99_ms, ls="--", color=line.get_color(), alpha=0.7)
    for ax in (ax_rps, ax_lat):
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(concurrencies), [str(c) for c in concurrencies])
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    ax_rps.set_ylabel(rps_label)
    ax_rps.set_ylim(bottom=0)
    ax_rps.set_title(rps_title)
    ax_lat.set_yscale("log")
    if plain_latency_ticks:
        from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

        ax_lat.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax_lat.yaxis.set_major_formatter(ScalarFormatter())
        ax_lat.yaxis.set_minor_formatter(NullFormatter())
    ax_lat.set_ylabel(latency_label)
    ax_lat.set_title(latency_title)
    ax_rps.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@dataclass
class BarPanel:
    """One column of `plot_bar_grid`: bars for each configuration, in two rows."""

    title_top: str
    title_bottom: str
    labels: list[str]
    top: list[float]
    bottom: list[float]
    colors: list[str]
    reference_line: float | None = None  # a horizontal line on the top row


def plot_bar_grid(path: Path, panels: Sequence[BarPanel], title: str) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(2, len(panels), figsize=(4 * len(panels), 6.4), dpi=80, squeeze=False)
    for col, panel in enumerate(panels):
        xs = range(len(panel.labels))
        ax = axes[0][col]
        ax.bar(xs, panel.top, color=panel.colors)
        if panel.reference_line is not None:
            ax.axhline(panel.reference_line, color="grey", lw=0.8)
        ax.set_title(panel.title_top, fontsize=9)
        ax.set_xticks(xs, panel.labels, fontsize=7)
        ax = axes[1][col]
        ax.bar(xs, panel.bottom, color=panel.colors)
        ax.set_title(panel.title_bottom, fontsize=9)
        ax.set_xticks(xs, panel.labels, fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@dataclass
class GroupedBars:
    """One panel of `plot_grouped_bars`: groups on the x axis, one bar per series in each."""

    title: str
    ylabel: str
    groups: list[str]
    series: dict[str, list[float]]  # label -> one value per group
    annotations: dict[str, list[str]] = field(default_factory=dict)  # label -> text above each bar
    log: bool = False


def plot_grouped_bars(path: Path, panels: Sequence[GroupedBars], dpi: int = 120) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        width = 0.8 / max(len(panel.series), 1)
        for k, (label, values) in enumerate(panel.series.items()):
            xs = [i - 0.4 + width * (k + 0.5) for i in range(len(panel.groups))]
            bars = ax.bar(xs, values, width=width, label=label)
            for bar, text in zip(bars, panel.annotations.get(label, []), strict=False):
                ax.annotate(
                    text,
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
        ax.set_xticks(range(len(panel.groups)), panel.groups)
        ax.set_ylabel(panel.ylabel)
        if panel.log:
            ax.set_yscale("log")
        ax.set_title(panel.title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
