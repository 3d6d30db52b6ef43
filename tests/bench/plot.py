"""`make bench`'s failovers as a picture: every request of each run, in seconds from the event; a PNG.

    .venv/bin/python tests/bench/plot.py [--json PATH] [--png PATH] [--copy-to docs/images/failover.png]

One column per scenario (a master's apiserver killed, one black-holed), one row per proxy (the collection's IPVS
and haproxy modes, the kubespray-like nginx): each mark is one request of the steady load (a new TLS connection
and GET /readyz every 100 ms), placed at its start and at its duration (log scale). Failed requests are red
crosses; a request already sent to the master when it failed (no TCP proxy can resend it) is a red diamond. The
band below shows the long-lived connections (like watches) pinned to the failed master: when each was closed and
when it was answered again through the proxy. The image depends on the JSON alone: the same JSON, the same bytes.
A run that failed ({"failed": true, "error": ...} in its place: the bench could not measure it) is left out, its
panel saying so.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import matplotlib.style
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter
from matplotlib.transforms import blended_transform_factory

REPO = Path(__file__).resolve().parents[2]
DEFAULT_JSON = REPO / ".build" / "bench" / "bench.json"
DEFAULT_PNG = REPO / ".build" / "bench" / "failover.png"
# The scenarios in the order the bench runs them: the mark at 0 s, the column title ({victim}: the master).
SCENARIOS = {
    "killed": ("SIGKILL", "killed: {victim}'s kube-apiserver gets SIGKILL (systemd restarts it)"),
    "black-holed": ("packets dropped", "black-holed: {victim} drops every packet to its apiserver port"),
}
PROXIES = {
    "ipvs": ("ipvs", "the collection's IPVS mode", "#1f77b4"),
    "haproxy": ("haproxy", "the collection's haproxy mode", "#2ca02c"),
    "nginx": ("nginx", "nginx like kubespray's (no health checks)", "#9467bd"),
}
OTHER_COLOUR, FAILED, IN_FLIGHT = "#7f7f7f", "#d62728", "#8c1c13"
COLUMN_WIDTH_IN, HEIGHT_IN, DPI = 6.5, 9.5, 120


class PlotError(Exception):
    """The bench JSON lacks what the picture needs (the message says what and where)."""


def failed(outcome: object) -> bool:
    """Whether a place in the bench's results holds a scenario that raised: {"failed": True, "error": ...} (a
    failover outcome's own "failed" is a count of requests, never True)."""
    return isinstance(outcome, dict) and outcome.get("failed") is True and "error" in outcome


def load(path: Path) -> dict:
    try:
        results = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise PlotError(f"{path}: cannot read a bench JSON: {exc}") from exc
    check(results, str(path))
    return results


def check(results: dict, source: str = "the results") -> None:
    failover = results.get("failover") if isinstance(results, dict) else None
    if not isinstance(failover, dict) or not failover:
        raise PlotError(f"{source}: no 'failover' results (expected failover.<scenario>.<proxy>)")
    outcomes = [outcome for by_proxy in failover.values() for outcome in by_proxy.values()]
    if outcomes and all(failed(outcome) for outcome in outcomes):
        raise PlotError(f"{source}: every failover run failed (nothing to draw)")
    for scenario, by_proxy in failover.items():
        for proxy, outcome in by_proxy.items():
            if failed(outcome):
                continue
            for key in ("timeline", "long_lived_timeline"):
                if key not in outcome:
                    raise PlotError(
                        f"{source}: failover.{scenario}.{proxy} has no '{key}'"
                        " (written by a bench from before it kept the timeline: run make bench again)"
                    )


def in_flight(start_s: float, took_s: float) -> bool:
    """Sent before the event and still running when it struck (scenarios.summarize counts it apart)."""
    return start_s < 0 <= start_s + took_s


def _limits(failover: dict) -> tuple[tuple[float, float], tuple[float, float]]:
    """The x range (s from the event) and y range (ms) shared by every panel, so the panels compare."""
    xs, ms = [], []
    for by_proxy in failover.values():
        for outcome in [o for o in by_proxy.values() if not failed(o)]:
            xs += [start for start, _ok, _took in outcome["timeline"]]
            ms += [max(took, 1e-4) * 1000 for _start, _ok, took in outcome["timeline"]]
            for conn in outcome["long_lived_timeline"]:
                xs += [v for v in conn.values() if v is not None]
    x = (min(xs, default=-5.0) - 0.5, max(xs, default=12.0) + 0.8)
    # From 0.5 ms to 5 s at least (the load's timeouts are 2 s), so two runs' pictures compare at a glance.
    y = (min([*ms, 1.0]) / 2, max([*ms, 2000.0]) * 2.5)
    return x, y


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color=OTHER_COLOUR, fontsize=10)


def _requests(ax, outcome: dict, colour: str) -> None:
    timeline = outcome["timeline"]
    ok = [(s, took * 1000) for s, good, took in timeline if good]
    failed = [(s, max(took, 1e-4) * 1000) for s, good, took in timeline if not good and not in_flight(s, took)]
    flight = [(s, max(took, 1e-4) * 1000) for s, good, took in timeline if not good and in_flight(s, took)]
    for points, style in (
        (ok, {"marker": "o", "s": 9, "color": colour, "linewidths": 0, "zorder": 2}),
        (failed, {"marker": "x", "s": 46, "color": FAILED, "linewidths": 1.6, "zorder": 4}),
        (flight, {"marker": "D", "s": 46, "facecolors": "none", "edgecolors": IN_FLIGHT, "linewidths": 1.6}),
    ):
        if points:
            ax.scatter([p[0] for p in points], [p[1] for p in points], **style)
    summary = f"{len(timeline)} requests, {len(failed)} failed"
    if flight:
        summary += f" (+{len(flight)} in flight)"
    missed = [name for name, met in outcome.get("meets", {}).items() if not met]
    if "meets" in outcome:
        summary += "; targets met" if not missed else "; target NOT met: " + ", ".join(missed)
    ax.text(0.99, 0.96, summary, transform=ax.transAxes, ha="right", va="top", fontsize=8.5,
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1.5})  # fmt: skip


def _long_lived(ax, by_proxy: dict, rows: list[str], x_right: float) -> None:
    for row, proxy in enumerate(rows):
        y0 = len(rows) - 1 - row
        colour = PROXIES.get(proxy, (proxy, "", OTHER_COLOUR))[2]
        if proxy not in by_proxy:
            continue
        if failed(by_proxy[proxy]):
            ax.text(x_right, y0, "the run failed ", ha="right", va="center", fontsize=8, color=FAILED)
            continue
        conns = by_proxy[proxy]["long_lived_timeline"]
        if not conns:
            ax.text(x_right, y0, "none pinned to the failed master ", ha="right", va="center", fontsize=8,
                    color=OTHER_COLOUR)  # fmt: skip
        for j, conn in enumerate(conns):
            y = y0 + (j - (len(conns) - 1) / 2) * 0.12
            closed, again = conn["closed_s"], conn["answered_again_s"]
            if closed is not None and again is not None:
                ax.plot([closed, again], [y, y], color=colour, linewidth=1, zorder=1)
            if closed is not None:
                ax.scatter([closed], [y], marker="o", s=30, facecolors="none", edgecolors=colour, linewidths=1.2)
            if again is not None:
                ax.scatter([again], [y], marker="*", s=80, color=colour, linewidths=0, zorder=3)
            else:
                ax.scatter([x_right - 0.35], [y], marker=">", s=36, color=FAILED, linewidths=0, zorder=3)
    ax.set_yticks(range(len(rows)), [PROXIES.get(p, (p,))[0] for p in reversed(rows)])
    ax.set_ylim(-0.6, len(rows) - 0.4)


def figure(results: dict) -> Figure:
    """The picture of results["failover"] (as bench.py writes it); raises PlotError when it cannot be drawn."""
    check(results)
    failover = results["failover"]
    columns = list(SCENARIOS) + [s for s in failover if s not in SCENARIOS]
    rows = list(PROXIES) + sorted({p for by_proxy in failover.values() for p in by_proxy} - set(PROXIES))
    (x0, x1), ylim = _limits(failover)
    fig = Figure(figsize=(COLUMN_WIDTH_IN * len(columns), HEIGHT_IN), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(rows) + 1, len(columns), height_ratios=[3] * len(rows) + [2.2])
    first = None
    for c, scenario in enumerate(columns):
        by_proxy = failover.get(scenario)
        mark, title = SCENARIOS.get(scenario, (scenario, scenario + ": {victim}"))
        measured = [o for o in (by_proxy or {}).values() if not failed(o)]
        victim = (measured[0] if measured else {}).get("victim", "a master")
        axes = []
        for r in range(len(rows) + 1):
            ax = fig.add_subplot(grid[r, c], sharex=first)
            first = first or ax
            axes.append(ax)
            ax.axvline(0, color="black", linewidth=1, linestyle="--", zorder=0)
            ax.grid(True, which="major", color="#e6e6e6", linewidth=0.6)
            ax.set_axisbelow(True)
            ax.tick_params(labelbottom=r == len(rows))
        axes[0].set_title(title.format(victim=victim), fontsize=11, loc="left")
        event = blended_transform_factory(axes[0].transData, axes[0].transAxes)
        axes[0].text(0, 0.96, f" {mark}", transform=event, ha="left", va="top", fontsize=9, fontweight="bold")
        for r, proxy in enumerate(rows):
            ax = axes[r]
            ax.set_yscale("log")
            ax.set_ylim(*ylim)
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
            ax.axhline(1000, color=OTHER_COLOUR, linewidth=0.8, linestyle=":", zorder=1)
            ax.text(1.0, 1000, "1 s ", transform=blended_transform_factory(ax.transAxes, ax.transData), ha="right",
                    va="bottom", fontsize=7.5, color=OTHER_COLOUR)  # fmt: skip
            name, _role, colour = PROXIES.get(proxy, (proxy, "", OTHER_COLOUR))
            if c == 0:
                ax.set_ylabel(f"{name}\nrequest ms", color=colour, fontsize=10)
            if by_proxy is None:
                _note(ax, f"no {scenario} run in this JSON")
            elif proxy not in by_proxy:
                _note(ax, f"{name} not measured in this run")
            elif failed(by_proxy[proxy]):
                _note(ax, f"{name}: the run failed (the bench JSON says why)")
            else:
                _requests(ax, by_proxy[proxy], colour)
        band = axes[-1]
        band.set_title("long-lived connections pinned to the failed master", fontsize=9.5, loc="left")
        band.set_xlabel(f"seconds from the event ({mark} at 0)")
        if by_proxy is None:
            band.set_yticks([])
            _note(band, f"no {scenario} run in this JSON")
        else:
            _long_lived(band, by_proxy, rows, x1)
    first.set_xlim(x0, x1)
    when = results.get("when", "an unrecorded time")
    fig.suptitle(
        "What a failover looks like: every request through each node-local proxy while a master fails\n"
        f"make bench, run of {when}: a new TLS connection + GET /readyz every 100 ms (2 s timeout),"
        " through the proxy on a worker",
        fontsize=12,
    )
    handles = [
        Line2D([], [], linestyle="", marker="o", markersize=4, color=PROXIES[p][2], label=f"answered: {PROXIES[p][1]}")
        for p in PROXIES
    ]
    handles += [
        Line2D([], [], linestyle="", marker="x", markersize=7, markeredgewidth=1.6, color=FAILED,
               label="failed request (error or timeout), at its duration"),
        Line2D([], [], linestyle="", marker="D", markersize=6, markeredgewidth=1.6, markerfacecolor="none",
               color=IN_FLIGHT, label="failed: already sent to the master when it failed (no proxy can resend it)"),
        Line2D([], [], linestyle="", marker="o", markersize=6, markerfacecolor="none", color=OTHER_COLOUR,
               label="long-lived connection closed"),
        Line2D([], [], linestyle="", marker="*", markersize=9, color=OTHER_COLOUR,
               label="long-lived connection answered again (reconnected through the proxy)"),
        Line2D([], [], linestyle="", marker=">", markersize=6, color=FAILED,
               label="long-lived connection never answered again in the run (hung)"),
    ]  # fmt: skip
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=8.5, frameon=False)
    return fig


def write(results: dict, png: Path) -> Path:
    """The PNG of `results` at `png`; deterministic: matplotlib's defaults (no matplotlibrc), no metadata."""
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.style.context("default", after_reset=True):
        figure(results).savefig(png, format="png", dpi=DPI, metadata={"Software": None})
    return png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="the bench JSON (default: %(default)s)")
    parser.add_argument("--png", type=Path, default=DEFAULT_PNG, help="the PNG to write (default: %(default)s)")
    parser.add_argument("--copy-to", type=Path, help="also copy the PNG there (the README's docs/images/failover.png)")
    args = parser.parse_args(argv)
    try:
        png = write(load(args.json), args.png)
    except PlotError as exc:
        print(f"plot.py: {exc}", file=sys.stderr)
        return 2
    print(f"PNG: {png}")
    if args.copy_to:
        args.copy_to.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, args.copy_to)
        print(f"copied to {args.copy_to}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
