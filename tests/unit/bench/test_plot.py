# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The failover picture of `make bench` (tests/bench/plot.py), drawn from a bench JSON made by the bench's own
summarize() and dumps() out of synthetic load-script output: the structure is the real one, only the data is made up.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import bench
import plot
import pytest

EVENT_AT = 1_700_000_000.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Two scenario columns of 6.5 in, 9.5 in high, at 120 dpi (plot.COLUMN_WIDTH_IN, HEIGHT_IN, DPI): a fixed size,
# whatever the data, so the README's image keeps its shape from one run to the next.
EXPECTED_SIZE = (1560, 1140)


def load_output(seed: int, failed_after: tuple[float, ...], in_flight: bool, hung: int = 0) -> dict:
    """What tests/bench/files/failover_load.py prints: a request every 100 ms from 5 s before the event to 11 s
    after it, failures at the given offsets, and 6 long-lived connections, 2 of them pinned to the victim."""
    rng = random.Random(seed)
    steady = []
    for i in range(160):
        t = EVENT_AT - 5.0 + i * 0.1
        took = round(rng.uniform(0.002, 0.02), 4)
        ok, error = True, ""
        if any(abs((t - EVENT_AT) - f) < 0.05 for f in failed_after):
            ok, error, took = False, "ConnectionRefusedError: [Errno 111] Connection refused", 0.001
        steady.append([t, ok, error, took])
    if in_flight:  # the one request running when the master died
        steady.append([EVENT_AT - 0.004, False, "ConnectionError: closed by peer", 0.03])
    long_lived = []
    for slot in range(6):
        pinned = slot < 2
        closed = EVENT_AT + 0.1 + slot * 0.05 if pinned else None
        again = closed + 0.04 if pinned and slot >= hung else None
        long_lived.append({"pinned": pinned, "backends": ["cp2" if pinned else "cp1"], "closed_at": closed,
                           "error": "" if closed is None else "ConnectionError: closed by peer",
                           "answered_again_at": again})  # fmt: skip
    return {"start": EVENT_AT - 5.0, "steady": steady, "long_lived": long_lived}


def bench_results(scenarios: tuple[str, ...] = ("killed", "black-holed"), seed: int = 1) -> dict:
    """The results dict as bench.run() builds it: failover.<scenario>.<proxy> = summarize() + victim + meets."""
    results: dict = {"when": "2026-12-01T10:00:00Z", "latency": {}, "failover": {}}
    for n, scenario in enumerate(scenarios):
        for k, proxy in enumerate(("ipvs", "haproxy", "nginx")):
            run = load_output(seed + 10 * n + k, failed_after=(0.1, 0.2) if proxy == "ipvs" else (),
                              in_flight=scenario == "killed", hung=2 if proxy == "nginx" else 0)  # fmt: skip
            outcome = bench.summarize(run, EVENT_AT) | {"victim": "cp2" if scenario == "killed" else "cp3"}
            outcome["meets"] = bench.meets(proxy, scenario, outcome)
            results["failover"].setdefault(scenario, {})[proxy] = outcome
    return results


def write_json(tmp_path: Path, results: dict, name: str = "bench.json") -> Path:
    path = tmp_path / name
    path.write_text(bench.dumps(results) + "\n")
    return path


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The chunks of a PNG, each checked against its CRC."""
    assert data[:8] == PNG_SIGNATURE
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in chunk {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    return chunks


def png_size(data: bytes) -> tuple[int, int]:
    kind, body = png_chunks(data)[0]
    assert kind == b"IHDR"
    return struct.unpack(">II", body[:8])


def plot_cli(json_path: Path, png: Path, *extra: str) -> bytes:
    assert plot.main(["--json", str(json_path), "--png", str(png), *extra]) == 0
    return png.read_bytes()


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> dict:
    """The picture of the two scenarios, drawn once for the module by `plot.py --copy-to` (drawing takes seconds)."""
    tmp = tmp_path_factory.mktemp("full")
    png, copy = tmp / "out" / "failover.png", tmp / "docs" / "images" / "failover.png"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        data = plot_cli(write_json(tmp, bench_results()), png, "--copy-to", str(copy))
    return {"json": tmp / "bench.json", "png": png, "data": data, "copy": copy, "out": out.getvalue()}


def test_a_bench_json_gives_a_valid_png_of_the_fixed_size(full):
    data = full["data"]
    kinds = [kind for kind, _body in png_chunks(data)]
    assert (kinds[0], kinds[-1]) == (b"IHDR", b"IEND") and b"IDAT" in kinds
    assert png_size(data) == EXPECTED_SIZE
    # No text or time chunk (matplotlib's Software, a date): the bytes depend on the JSON only.
    assert set(kinds) <= {b"IHDR", b"pHYs", b"IDAT", b"IEND"}


def test_the_chunk_check_sees_the_text_that_matplotlib_writes_by_default(tmp_path):
    # Negative control of the check above: without metadata={"Software": None}, a tEXt chunk names matplotlib.
    figure = plot.Figure(figsize=(1, 1), dpi=plot.DPI)
    plot.FigureCanvasAgg(figure)
    figure.savefig(tmp_path / "default.png", format="png")
    chunks = dict(png_chunks((tmp_path / "default.png").read_bytes()))
    assert b"tEXt" in chunks and b"Software" in chunks[b"tEXt"]


def test_two_plots_of_the_same_json_are_byte_identical_and_another_json_differs(tmp_path, full):
    first = full["data"]
    # The second in a process of its own, as a later `plot.py` run would be (another hash seed, fresh caches).
    argv = [sys.executable, str(Path(plot.__file__)), "--json", str(full["json"]), "--png", str(tmp_path / "b.png")]
    env = os.environ | {"PYTHONHASHSEED": "12345", "MPLBACKEND": "pdf"}
    assert subprocess.run(argv, env=env, capture_output=True, check=False, timeout=120).returncode == 0
    assert (tmp_path / "b.png").read_bytes() == first
    # Negative control: the comparison sees a change of data (other random durations).
    other = plot_cli(write_json(tmp_path, bench_results(seed=2), "other.json"), tmp_path / "c.png")
    assert other != first


def test_copy_to_puts_the_same_png_where_the_readme_shows_it(full):
    assert full["copy"].read_bytes() == full["data"]
    assert f"PNG: {full['png']}" in full["out"] and f"copied to {full['copy']}" in full["out"]


def test_a_json_without_a_scenario_still_plots_with_that_column_marked_missing(tmp_path, full):
    killed_only = plot_cli(write_json(tmp_path, bench_results(("killed",)), "k.json"), tmp_path / "k.png")
    assert png_size(killed_only) == EXPECTED_SIZE
    assert killed_only != full["data"]  # the black-holed column is drawn as missing, not as the full one
    figure = plot.figure(bench_results(("killed",)))
    texts = [t.get_text() for ax in figure.axes for t in ax.texts]
    assert "no black-holed run in this JSON" in texts


def test_a_json_from_before_the_timeline_is_refused_naming_what_is_missing(tmp_path, capsys):
    results = bench_results()
    del results["failover"]["black-holed"]["nginx"]["timeline"]
    png = tmp_path / "failover.png"
    assert plot.main(["--json", str(write_json(tmp_path, results)), "--png", str(png)]) == 2
    assert "failover.black-holed.nginx has no 'timeline'" in capsys.readouterr().err
    assert not png.exists()


def test_a_json_without_failover_results_is_refused():
    with pytest.raises(plot.PlotError, match="no 'failover' results"):
        plot.figure({"when": "x", "latency": {}})


def test_failed_and_in_flight_requests_are_drawn_apart_and_counted_like_the_bench(tmp_path):
    results = json.loads(write_json(tmp_path, bench_results()).read_text())  # as the plot reads it from disk
    ipvs = results["failover"]["killed"]["ipvs"]
    flight = [row for row in ipvs["timeline"] if not row[1] and plot.in_flight(row[0], row[2])]
    failed = [row for row in ipvs["timeline"] if not row[1] and not plot.in_flight(row[0], row[2])]
    assert (len(failed), len(flight)) == (ipvs["failed"], ipvs["failed_in_flight"]) == (2, 1)
    texts = [t.get_text() for ax in plot.figure(results).axes for t in ax.texts]
    assert "161 requests, 2 failed (+1 in flight); targets met" in texts
    # nginx's 2 hung long-lived connections miss the long-lived target, and the panel says so.
    assert "160 requests, 0 failed; target NOT met: long-lived" in texts


def test_the_bench_writes_the_png_beside_its_json_and_says_where(tmp_path, monkeypatch, capsys, full):
    # bench.main() with the lab run replaced by its synthetic results: the JSON, the table, then the picture.
    monkeypatch.setattr(bench, "run", lambda rounds, sections, save: bench_results())
    assert bench.main(["--json", str(tmp_path / "bench" / "bench.json")]) == 0
    png = tmp_path / "bench" / "failover.png"
    assert f"PNG: {png}" in capsys.readouterr().out
    assert png.read_bytes() == full["data"]  # the same picture as plot.py draws from the same results
    assert json.loads((tmp_path / "bench" / "bench.json").read_text()) == json.loads(full["json"].read_text())


def test_a_failed_failover_run_is_left_out_and_its_panel_says_so(tmp_path):
    results = bench_results()
    results["failover"]["killed"]["haproxy"] = {"failed": True, "error": "RuntimeError: w2: banner exchange"}
    results = json.loads(write_json(tmp_path, results).read_text())  # as the plot reads it from disk
    texts = [t.get_text() for ax in plot.figure(results).axes for t in ax.texts]
    assert "haproxy: the run failed (the bench JSON says why)" in texts
    assert "the run failed " in texts  # its row of the long-lived band
    # The other runs are drawn as ever, nginx's included.
    assert "160 requests, 0 failed; target NOT met: long-lived" in texts


def test_a_json_whose_every_failover_failed_is_refused():
    results = bench_results(("killed",))
    for proxy in results["failover"]["killed"]:
        results["failover"]["killed"][proxy] = {"failed": True, "error": "E"}
    with pytest.raises(plot.PlotError, match="every failover run failed"):
        plot.figure(results)
