"""People's views of a report: a rich table and an SVG timeline (written by hand: no plotting dependency)."""

from __future__ import annotations

import math
from pathlib import Path
from xml.sax.saxutils import escape

from rich.table import Table

from dpfreeze.probe.report import BUCKET_MS, Report

ROW_H = 28
LEFT = 170
WIDTH = 960
TOP = 40


def table(report: Report) -> Table:
    t = Table(title=f"probe report ({report.duration_ms / 1000:.1f} s)")
    cols = ("class", "sent", "recv", "lost", "dup", "reord", "gap ms", "p50 ms", "p99 ms", "max ms", "notes")
    for col in cols:
        t.add_column(col, justify="left" if col in ("class", "notes") else "right")
    for c in report.classes:
        lat = c.latency
        notes = ""
        if c.tcp is not None:
            notes = ("survived" if c.tcp.survived else f"broken: {c.tcp.error}") + (
                f", {c.tcp.retransmissions} retrans" if c.tcp.retransmissions is not None else "")
        t.add_row(c.name, str(c.sent), str(c.received), _red(c.lost), str(c.duplicated), str(c.reordered),
                  f"{c.largest_gap_ms:.1f}", *(f"{v:.2f}" if lat else "-" for v in
                                               ((lat.p50_ms, lat.p99_ms, lat.max_ms) if lat else (0, 0, 0))),
                  notes)
    return t


def write(report: Report, directory: Path, stem: str = "probe-report") -> tuple[Path, Path]:
    """Save the JSON report and its SVG timeline side by side; returns both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path, svg_path = directory / f"{stem}.json", directory / f"{stem}.svg"
    json_path.write_text(report.to_json())
    svg_path.write_text(svg(report))
    return json_path, svg_path


def timeline(report: Report, max_runs: int = 8) -> list[str]:
    """Events and loss runs in time order, one line each (the first `max_runs` runs of each class)."""
    rows: list[tuple[float, str]] = [(e.t_ms, f"== {e.name}") for e in report.events]
    for c in report.classes:
        rows += [(r.start_ms, f"   {c.name}: {r.lost} lost until {r.end_ms:.1f} ms")
                 for r in c.loss_intervals[:max_runs]]
        if len(c.loss_intervals) > max_runs:
            rows.append((c.loss_intervals[max_runs].start_ms,
                         f"   {c.name}: ... {len(c.loss_intervals) - max_runs} more loss runs"))
    return [f"{t:9.1f} ms {text}" for t, text in sorted(rows, key=lambda r: r[0])]


def _red(n: int) -> str:
    return f"[bold red]{n}[/]" if n else "0"


def svg(report: Report) -> str:
    """Loss intervals per class as red bars on one time axis, with the upgrade's events as vertical lines."""
    span = max([report.duration_ms, *(e.t_ms for e in report.events), 1.0])
    plot_w = WIDTH - LEFT - 20
    n = len(report.classes)
    height = TOP + n * ROW_H + 60

    def x(ms: float) -> float:
        return round(LEFT + max(0.0, min(ms, span)) / span * plot_w, 2)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
           f'<text x="{LEFT}" y="20" font-size="14">dpfreeze probes: losses (red) and upgrade events</text>']
    for i, c in enumerate(report.classes):
        y = TOP + i * ROW_H
        out.append(f'<text x="8" y="{y + 17}">{escape(c.name)} ({c.lost} lost)</text>')
        out.append(f'<rect x="{LEFT}" y="{y + 6}" width="{plot_w}" height="14" fill="#dff0d8"/>')
        for r in c.loss_intervals:
            w = max(1.0, x(r.end_ms) - x(r.start_ms))
            out.append(f'<rect x="{x(r.start_ms)}" y="{y + 4}" width="{w:.2f}" height="18" fill="#d9534f">'
                       f'<title>{r.lost} lost, {r.start_ms:.1f}-{r.end_ms:.1f} ms</title></rect>')
    axis_y = TOP + n * ROW_H + 6
    out.append(f'<line x1="{LEFT}" y1="{axis_y}" x2="{LEFT + plot_w}" y2="{axis_y}" stroke="black"/>')
    step = _tick(span)
    t = 0.0
    while t <= span:
        out.append(f'<line x1="{x(t)}" y1="{axis_y}" x2="{x(t)}" y2="{axis_y + 4}" stroke="black"/>'
                   f'<text x="{x(t)}" y="{axis_y + 16}" text-anchor="middle">{t / 1000:g} s</text>')
        t += step
    for j, e in enumerate(report.events):
        ex = x(e.t_ms)
        out.append(f'<line x1="{ex}" y1="{TOP - 4}" x2="{ex}" y2="{axis_y}" stroke="#337ab7" '
                   f'stroke-dasharray="4 3"><title>{escape(e.name)} at {e.t_ms:.1f} ms</title></line>')
        ty = axis_y + 30 + (j % 2) * 12
        out.append(f'<text x="{ex + 2}" y="{ty}" fill="#337ab7">{escape(e.name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _tick(span_ms: float) -> float:
    """A 1-2-5 tick step giving at most about ten ticks."""
    step = 1.0
    while span_ms / step > 10:
        for m in (2, 5, 10):
            if span_ms / (step * m) <= 10 or m == 10:
                step *= m
                break
    return step


SLOW_MS = 100.0  # a delivery slower than this is late (amber); from 1 s on, very late (dark amber)
STRIP_H = 14
CMP_LEFT = 150
CMP_RIGHT = 330  # the per-strip summary
CMP_WIDTH = 1180


def _cell_colour(lost: int, sent: int, max_delay_ms: float | None) -> str:
    if lost:
        return "#d9534f" if lost == sent else "#e8908d"
    if max_delay_ms is not None and max_delay_ms >= 1000:
        return "#c77c02"
    if max_delay_ms is not None and max_delay_ms >= SLOW_MS:
        return "#f0ad4e"
    return "#8fce8f"


def _seconds(ms: float) -> str:
    return f"{ms / 1000:.1f} s" if ms >= 1000 else f"{ms:.0f} ms"


def compare_svg(runs: list[tuple[str, Report]], align: str, title: str) -> str:
    """Several runs of the same disruption, each shifted so that its event `align` is at 0 s: per class,
    one strip per run, each 500 ms step coloured by what became of its packets (red lost, pink partly lost,
    amber late, green on time), the run's summary at the right, its events as numbered marks explained
    below (labels never sit on top of one another)."""
    offsets = [next((e.t_ms for e in rep.events if e.name == align), 0.0) for _, rep in runs]
    lo = min(-off for off in offsets)
    hi = max(rep.duration_ms - off for (_, rep), off in zip(runs, offsets, strict=True))
    span = max(hi - lo, 1.0)
    plot_w = CMP_WIDTH - CMP_LEFT - CMP_RIGHT
    names = [c.name for c in runs[0][1].classes]
    row_h = len(runs) * (STRIP_H + 3) + 16
    axis_y = 52 + len(names) * row_h
    height = axis_y + 36 + 16 * len(runs) + 20

    def x(ms: float) -> float:
        return round(CMP_LEFT + (max(lo, min(ms, hi)) - lo) / span * plot_w, 2)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{CMP_WIDTH}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{CMP_WIDTH}" height="{height}" fill="white"/>',
           f'<text x="8" y="20" font-size="15" font-weight="bold">{escape(title)}</text>',
           '<text x="8" y="38" fill="#555">each cell: 0.5 s of packets, by send time, 0 s = '
           f'{escape(align)}.  <tspan fill="#d9534f">lost</tspan>, '
           '<tspan fill="#e8908d">partly lost</tspan>, '
           f'<tspan fill="#c77c02">late (1 s or more)</tspan>, <tspan fill="#f0ad4e">late ({SLOW_MS:g} ms '
           'or more)</tspan>, <tspan fill="#3c9a3c">on time</tspan></text>']
    for i, name in enumerate(names):
        y0 = 52 + i * row_h
        out.append(f'<text x="8" y="{y0 + 12}" font-weight="bold">{escape(name)}</text>')
        for j, ((label, rep), off) in enumerate(zip(runs, offsets, strict=True)):
            y = y0 + 4 + j * (STRIP_H + 3)
            c = rep.cls(name)
            out.append(f'<text x="{CMP_LEFT - 6}" y="{y + 11}" text-anchor="end">{escape(label)}</text>')
            out.append(f'<rect x="{x(-off)}" y="{y}" width="{x(rep.duration_ms - off) - x(-off)}" '
                       f'height="{STRIP_H}" fill="#eeeeee"/>')
            for b in c.buckets:
                left, right = x(b.t_ms - off), x(b.t_ms + BUCKET_MS - off)
                fill = _cell_colour(b.lost, b.sent, b.max_delay_ms)
                out.append(f'<rect x="{left}" y="{y}" width="{max(right - left, 0.5):.2f}" '
                           f'height="{STRIP_H}" fill="{fill}"><title>{b.lost} of {b.sent} lost, slowest '
                           f'{b.max_delay_ms} ms</title></rect>')
            for k, e in enumerate(rep.events, 1):
                ex = x(e.t_ms - off)
                out.append(f'<text x="{ex}" y="{y + 11}" text-anchor="middle" font-size="10" '
                           f'font-weight="bold">{k}</text>')
            slow = c.latency.max_ms if c.latency else 0.0
            gap = f", gap {_seconds(c.largest_gap_ms)}" if c.lost else ""
            summary = f"lost {c.lost} of {c.sent}{gap}, slowest {_seconds(slow)}"
            colour = "#d9534f" if c.lost else "black"
            out.append(f'<text x="{CMP_WIDTH - CMP_RIGHT + 10}" y="{y + 11}" fill="{colour}">'
                       f'{escape(summary)}</text>')
    out.append(f'<line x1="{CMP_LEFT}" y1="{axis_y}" x2="{CMP_LEFT + plot_w}" y2="{axis_y}" stroke="black"/>')
    step = _tick(span)
    t = math.ceil(lo / step) * step
    while t <= hi:
        out.append(f'<line x1="{x(t)}" y1="{axis_y}" x2="{x(t)}" y2="{axis_y + 4}" stroke="black"/>'
                   f'<text x="{x(t)}" y="{axis_y + 16}" text-anchor="middle">{t / 1000:g} s</text>')
        t += step
    for j, ((label, rep), off) in enumerate(zip(runs, offsets, strict=True)):
        marks = ", ".join(f"{k} {e.name} ({(e.t_ms - off) / 1000:+.1f} s)"
                          for k, e in enumerate(rep.events, 1))
        out.append(f'<text x="8" y="{axis_y + 36 + 16 * j}">{escape(label)}: {escape(marks)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
