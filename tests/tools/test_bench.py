"""`python -m bench --quick` runs and its output is well-formed (not that it is fast); targets
render and judge from one value; bench runs only at the root of its checkout."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import bench.__main__ as bench_main
from bench import figures, trading
from bench.harness import Sizes
from bench.report import README_BEGIN, README_END
from bench.spec import SPECS
from bench.stats import abba_order, interleave, percentile, summarize
from bench.target import Target
from gatewaysim.prices import PriceProcess

REPO = Path(__file__).resolve().parents[2]
MEASURED = {"PASS", "MISS", "info"}  # a whole run measures every figure: no n/a, no error


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, dict]:
    """One quick bench run shared by the checks below (it takes about a minute)."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"bench crashed (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc, json.loads(out.read_text())


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_every_figure_is_present_and_well_formed(quick_run) -> None:
    _, doc = quick_run
    got = {f["key"]: f for f in doc["figures"]}
    assert set(got) == {s.key for s in SPECS}
    for key, fig in got.items():
        assert fig["status"] in MEASURED, f"{key}: {fig['status']} ({fig['reason']})"
        value = fig["value"]
        for stat in ("median", "p90", "p99", "n"):
            assert _is_number(value[stat]), f"{key}.{stat} = {value[stat]!r}"
        assert value["n"] >= 1
        assert value["median"] <= value["p90"] <= value["p99"] <= value["max"], key
        if fig["target"] is None:
            assert fig["status"] == "info" and fig["judged"] is None, key
        else:
            target = Target.from_dict(fig["target"])
            assert fig["target"]["text"] == target.render()
            assert _is_number(fig["judged"]), f"{key}: judged {fig['judged']!r} is not a number"
            assert target.met(fig["judged"]) == (fig["status"] == "PASS"), key
        if fig["baseline"] is not None:
            for stat in ("median", "p90", "p99", "n"):
                assert _is_number(fig["baseline"][stat]), f"{key} baseline {stat}"


def test_warm_spare_rows_come_from_the_managers_option(quick_run) -> None:
    _, doc = quick_run
    got = {f["key"]: f for f in doc["figures"]}
    spare = got["warm_spare"]
    spawned, adopted = (int(x) for x in spare["extra"]["spares spawned / adopted"].split(" / "))
    assert adopted == spare["value"]["n"] and spawned >= adopted
    recovery = got["recovery_kill_spare"]
    assert recovery["value"]["n"] == spare["value"]["n"]  # the same samples
    assert "recovery_kill (no spare), this run" in recovery["other_baselines"]
    for key in ("recovery_kill", "recovery_kill_spare"):
        fast, kills = got[key]["extra"]["respawned at once (no backoff step)"].split(" / ")
        assert int(kills) == got[key]["value"]["n"] and 0 <= int(fast) <= int(kills)


def test_trading_surface_figures_are_measured_against_in_process_ib_async(quick_run) -> None:
    """Issue 13 and 14's figures: each has its same-run in-process baseline, and the number its
    target judges is the one its samples give."""
    _, doc = quick_run
    got = {f["key"]: f for f in doc["figures"]}
    sizes = Sizes.quick()
    added = "added per tick (trader minus in-process, same tick)"
    quote = got["quote_latency"]
    paired, pushed = (
        int(x) for x in quote["extra"]["ticks paired / pushed to the trader's session"].split(" / ")
    )
    assert 10 <= paired <= pushed and quote["value"]["n"] == paired
    assert quote["value"]["min"] > 0 and quote["baseline"]["min"] > 0  # read after it was pushed
    for key, stat in (("quote_latency", "median"), ("quote_latency_p99", "p99")):
        fig = got[key]
        assert fig["value"] == quote["value"] and fig["baseline"]["n"] == paired
        assert fig["judged"] == pytest.approx(fig["other_baselines"][added][stat])

    rate = got["tick_rate"]
    assert rate["judged"] == pytest.approx(rate["value"]["median"] / rate["baseline"]["median"])
    assert rate["baseline"]["median"] in sizes.tick_rates
    assert list(rate["extra"]) == [f"{r:,.0f} ticks/s (trader | in-process)" for r in sizes.tick_rates]

    history = got["history_10k"]
    assert int(history["extra"]["bars per request"].split("-")[0].replace(",", "")) >= 10_000
    assert history["value"]["n"] == history["baseline"]["n"] == sizes.history_rounds
    assert history["judged"] == pytest.approx(history["value"]["median"] / history["baseline"]["median"])

    for key, stat in (("order_ack", "median"), ("order_ack_p99", "p99")):
        fig = got[key]
        assert fig["value"]["n"] == fig["baseline"]["n"] == sizes.order_rounds
        assert fig["judged"] == pytest.approx(fig["value"][stat] - fig["baseline"][stat])
    assert _is_number(got["order_ack"]["extra"]["an fsync'd append in the state dir, median (ms)"])


def test_quotes_pair_by_volume_within_the_rounds_window() -> None:
    ms = 1_000_000
    sends = [
        [10 * ms, "mkt_data", 1, 1, 0, 500],  # before the window: not paired
        [20 * ms, "mkt_data", 1, 2, 0, 600],
        [20 * ms, "mkt_data", 2, 2, 0, 600],
        [30 * ms, "mkt_data", 1, 3, 0, 700],  # the in-process reader never saw it
        [30 * ms, "mkt_data", 2, 3, 0, 700],
        [30 * ms, "tick_by_tick", 1, 9, 99, None],
        [90 * ms, "mkt_data", 1, 4, 0, 800],  # after the window
    ]
    trader = [(21 * ms, 600.0), (25 * ms, 600.0), (31 * ms, 700.0), (91 * ms, 800.0)]
    inproc = [(20 * ms + ms // 2, 600.0), (40 * ms, float("nan"))]
    got = trading.pair_quotes(sends, trader, inproc, 1, 2, 15 * ms, 50 * ms)
    assert got == {"trader": [1.0], "inproc": [0.5], "added": [0.5], "pushed": [2]}


def test_a_window_is_carried_only_if_every_tick_pushed_in_it_was_read_in_time() -> None:
    prices = PriceProcess(seed=0, tick_rate=1000.0)
    # a fixed tick index: ticks are matched by (price, size), and some stretches of the price
    # process repeat a pair, which would change how many of the window's ticks look missing
    base = 1_000_000
    ms = 1_000_000
    # Pushes (stamp, kind, client, sent so far, last tick): the first is before the window,
    # the third skipped two ticks (the simulator fell behind), the last came after the window.
    sends = [
        [1 * ms, "tick_by_tick", 7, 11, base + 10, None],
        [2 * ms, "tick_by_tick", 8, 5, base + 99, None],  # another session
        [3 * ms, "tick_by_tick", 7, 16, base + 15, None],
        [4 * ms, "tick_by_tick", 7, 20, base + 21, None],
        [9 * ms, "tick_by_tick", 7, 25, base + 26, None],
    ]
    ticks = trading.window_ticks(sends, 7, 2 * ms, 5 * ms)
    assert ticks == [base + t for t in (11, 12, 13, 14, 15, 18, 19, 20, 21)]

    def read(ts: list[int], at: int) -> list[tuple[int, float, float]]:
        return [
            (at, prices.trade(trading.CON_ID, t).price, float(prices.trade(trading.CON_ID, t).size))
            for t in ts
        ]

    before, after = [base + 9, base + 10], [base + 22]
    end = 5 * ms
    ok = trading.check_window(prices, ticks, read(before + ticks + after, end), 2 * ms, end)
    assert ok.carried and ok.pushed == len(ticks) and ok.rate == pytest.approx(len(ticks) / 0.003)
    lost = trading.check_window(prices, ticks, read(before + ticks[:4] + ticks[5:], end), 2 * ms, end)
    assert not lost.carried and lost.why == f"5 of {len(ticks)} ticks missing or out of order"
    late_at = end + int(trading.TRADES_GRACE_S * 1e9) + 3 * ms
    late = trading.check_window(prices, ticks, read(ticks, late_at), 2 * ms, end)
    assert not late.carried and late.why == "the last tick read 3 ms after the grace"
    assert not trading.check_window(prices, [], [], 2 * ms, end).carried


def test_meta_says_when_and_where(quick_run) -> None:
    _, doc = quick_run
    meta = doc["meta"]
    assert meta["quick"] is True
    assert _is_number(meta["cores"]) and meta["cores"] >= 1
    assert meta["date"] and meta["python"]
    assert _is_number(meta["duration_s"])


def test_table_names_every_figure_and_the_throttle(quick_run) -> None:
    proc, doc = quick_run
    for fig in doc["figures"]:
        assert fig["title"] in proc.stdout
        assert fig["status"] in proc.stdout
    assert "45 msg/s" in proc.stdout


def test_update_readme_rewrites_only_the_block(quick_run, tmp_path: Path) -> None:
    _, doc = quick_run
    saved = tmp_path / "bench.json"
    saved.write_text(json.dumps(doc))
    readme = tmp_path / "README.md"
    before, after = "# title\n\nintro text\n", "\n## later\n\nmore text\n"
    readme.write_text(f"{before}{README_BEGIN}\nold table\n{README_END}{after}")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--from-json",
            str(saved),
            "--update-readme",
            "--readme",
            str(readme),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    text = readme.read_text()
    assert text.startswith(before + README_BEGIN) and text.endswith(README_END + after)
    block = text[len(before) + len(README_BEGIN) : -len(README_END + after)]
    assert "old table" not in block
    assert f"on {doc['meta']['cores']} cores" in block
    assert "| figure [unit] |" in block
    for fig in doc["figures"]:  # the target text in the README is the one the verdict used
        assert f"| {fig['target']['text'] if fig['target'] else 'report'} | {fig['status']} |" in block


def test_update_readme_without_markers_leaves_the_file_alone(quick_run, tmp_path: Path) -> None:
    _, doc = quick_run
    saved = tmp_path / "bench.json"
    saved.write_text(json.dumps(doc))
    readme = tmp_path / "README.md"
    readme.write_text("# no markers here\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--from-json",
            str(saved),
            "--update-readme",
            "--readme",
            str(readme),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert readme.read_text() == "# no markers here\n"


def test_percentiles_interpolate_like_numpy() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 90) == pytest.approx(90.1)
    assert percentile(values, 99) == pytest.approx(99.01)
    s = summarize([3.0, 1.0, 2.0])
    assert (s.median, s.n, s.min, s.max) == (2.0, 3, 1.0, 3.0)


def test_abba_order_alternates() -> None:
    assert abba_order(["a", "b"], 0) == ["a", "b"]
    assert abba_order(["a", "b"], 1) == ["b", "a"]


@pytest.mark.anyio
async def test_interleave_drops_warmup_and_files_mapped_series() -> None:
    calls: list[str] = []

    async def a() -> dict[str, float]:
        calls.append("a")
        return {"a": len(calls), "a2": [1.0, 2.0]}

    async def b() -> float:
        calls.append("b")
        return -len(calls)

    got = await interleave({"a": a, "b": b}, rounds=2, warmup=1)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert got == {"a": [4.0, 5.0], "b": [-3.0, -6.0], "a2": [1.0, 2.0, 1.0, 2.0]}


def test_a_failing_group_is_an_error_row_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)

    async def boom(ctx: figures.Context, figs: dict) -> None:
        raise RuntimeError("boom")

    others = [g for g in figures.GROUPS if "core_events" not in g[2]]
    monkeypatch.setattr(figures, "GROUPS", [("boom", boom, ["core_events"]), *others])
    out = tmp_path / "bench.json"
    assert bench_main.main(["--quick", "--only", "boom", "--json", str(out)]) == 1
    got = {f["key"]: f for f in json.loads(out.read_text())["figures"]}
    assert got["core_events"]["status"] == "error"
    assert "RuntimeError: boom" in got["core_events"]["reason"]
    assert {f["status"] for k, f in got.items() if k != "core_events"} == {"n/a"}
    assert "error (RuntimeError: boom)" in capsys.readouterr().out


def test_target_renders_and_judges_from_one_value() -> None:
    ratio = Target("<=", 1.15, "x", "fresh-process ib_async connect")
    assert ratio.render() == "median <= 1.15 x fresh-process ib_async connect"
    assert ratio.met(1.15) and not ratio.met(1.16) and ratio.show(1.1234) == "1.123 x"
    allowance = Target("<=", 100, "ms", "cold connect")
    assert allowance.render() == "median <= cold connect + 100 ms"
    assert allowance.met(99.9) and not allowance.met(100.1) and allowance.show(31.26) == "+31.3 ms"
    floor = Target(">=", 20_000, "events/s", stat="p50")
    assert floor.render() == "p50 >= 20,000 events/s"
    assert floor.met(20_000) and not floor.met(19_999)
    for t in (ratio, allowance, floor):
        assert Target.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    with pytest.raises(ValueError, match="baseline"):
        Target("<=", 2, "x")


def _bench(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", "--quick"],
        cwd=cwd,
        env={"PYTHONPATH": str(pythonpath), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bench_refuses_outside_its_checkout_in_one_line(tmp_path: Path) -> None:
    """A copy of bench/ that is not in a checkout, and a checkout run from elsewhere than its
    root, are refused before anything is measured or written."""
    shutil.copytree(REPO / "bench", tmp_path / "bench", ignore=shutil.ignore_patterns("__pycache__"))
    got = _bench(tmp_path, tmp_path)
    assert got.returncode == 2 and got.stdout == "", got.stdout + got.stderr
    assert got.stderr.strip() == f"bench: bench runs from an ibgw-fsm checkout, and {tmp_path} is not one"
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    (tmp_path / "diagrams").mkdir()
    (tmp_path / "sub").mkdir()
    got = _bench(tmp_path / "sub", tmp_path)
    assert got.returncode == 2, got.stdout + got.stderr
    assert got.stderr.strip() == f"bench: run `python -m bench` at the root of the checkout, {tmp_path}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench", "diagrams", "pyproject.toml", "sub"]
