#!/usr/bin/env python3
"""Checks report.py's parsing and arithmetic on made-up raw outputs (no QEMU, no matplotlib):
the peer and image line formats, the pairing of rounds into ratios with min/median/max, the
median-round merge of the image's rows, and that a part that did not run is reported as such.

    python3 tests/bench/test_report.py      (tests/run-all.sh runs it)
"""

import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402


def guest_line(name, cycles, unit="op", where="guest-TCG"):
    return (f"bench {where} {name} unit={unit} n=10 cycles={cycles} ns={cycles / 2.5} pte_writes=0/0 invlpg=0/0 "
            "full_flushes=0/0 frames_zeroed=0/0 table_pages_allocated=0/0 table_pages_freed=0/0 "
            "faults_resolved=0/0 entries=1/1 verdict: = min")


def peer_line(name, cycles, unit="op"):
    return f"{name:<28} {cycles / 2.5:12.1f} ns/{unit} {cycles:14.1f} cycles"


def write(raw, name, lines):
    with open(os.path.join(raw, name), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def report_md(raw):
    """Runs report.py (no chart) on RAW and returns its report.md."""
    out = os.path.join(raw, "out")
    os.makedirs(out, exist_ok=True)
    report.main(["--no-chart", raw, out])
    with open(os.path.join(out, "report.md"), encoding="utf-8") as f:
        return f.read()


class ParsingTest(unittest.TestCase):
    def test_peer_lines_with_and_without_cycles(self):
        got = report.parse_peer([peer_line("reserve_release_64k", 1000.0),
                                 "commit_touch_decommit        1443.0 ns/page",
                                 "peer-env thp=always [madvise] never"])
        self.assertEqual(got["reserve_release_64k"], {"ns": 400.0, "unit": "op", "cycles": 1000.0})
        self.assertEqual(got["commit_touch_decommit"]["cycles"], None)
        self.assertEqual(len(got), 2)

    def test_peer_info(self):
        env, notes = report.parse_peer_info([
            "peer-env cmdline=console=ttyS0 quiet", "peer-env cpu_flags erms=0 la57=1",
            "peer-note large_page_commit_2m AnonHugePages=2048 kB"])
        self.assertEqual(env["cmdline"], "console=ttyS0 quiet")
        self.assertEqual((env["erms"], env["la57"]), ("0", "1"))
        self.assertEqual(notes["large_page_commit_2m"], "AnonHugePages=2048 kB")

    def test_spread(self):
        self.assertEqual(report.spread([3.0, 1.0, 2.0]), (1.0, 2.0, 3.0))
        self.assertEqual(report.spread([4.0, 1.0]), (1.0, 2.5, 4.0))


class RoundsTest(unittest.TestCase):
    """Three rounds: guest 100/300/200 cycles against Linux fair 1000 each (ratios 0.1/0.3/0.2),
    Linux default 500/500/missing (round 3's default boot failed). The full boot's guest lines
    (kept as `bench-after-kernel`, three times the guest's own boot's) do not enter the ratios."""

    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        raw = self.dir.name
        os.mkdir(os.path.join(raw, "rounds"))
        for r, g in ((1, 100.0), (2, 300.0), (3, 200.0)):
            write(raw, f"rounds/guest-{r}.txt", ["load before: 1.00 1.00 1.00",
                                                 guest_line("reserve_release_64k", g * 2, where="kernel-TCG"),
                                                 guest_line("reserve_release_64k", g * 3).replace("bench ", "bench-after-kernel ", 1),
                                                 "load between: 1.20 1.00 1.00",
                                                 guest_line("reserve_release_64k", g), "load after: 1.50 1.00 1.00"])
            write(raw, f"rounds/linux-fair-{r}.txt", ["load before: 1 1 1", "peer linux-mmap",
                                                      "peer-env cmdline=console=ttyS0 mitigations=off",
                                                      peer_line("reserve_release_64k", 1000.0), "peer-done errors=0"])
            default = ([peer_line("reserve_release_64k", 500.0), "peer-done errors=0"] if r < 3
                       else ["not available: Linux in QEMU did not finish the workloads"])
            write(raw, f"rounds/linux-default-{r}.txt", ["load before: 1 1 1"] + default)
        write(raw, "env.txt", ["date: 2026-01-01 00:00 UTC", "commit: abc", "load at start: 0.5 0.5 0.5"])
        write(raw, "peer-linux.txt", ["not available: not run"])

    def tearDown(self):
        self.dir.cleanup()

    def test_ratios_pair_rounds(self):
        rounds = report.read_rounds(self.dir.name)
        self.assertEqual(list(rounds), [1, 2, 3])
        row = report.compare(rounds)["reserve_release_64k"]
        self.assertEqual([round(v, 3) for v in row["ratio"]["linux-fair"]], [0.1, 0.3, 0.2])
        self.assertEqual([round(v, 3) for v in row["ratio"]["linux-default"]], [0.2, 0.6])
        self.assertEqual(row["guest"], [100.0, 300.0, 200.0])

    def test_image_rows_are_the_median_round(self):
        rounds = report.read_rounds(self.dir.name)
        runs = [files["guest"][1] for files in rounds.values()]
        _, rows, grows, _, _, count = report.merge_image_runs(runs)
        self.assertEqual(float(grows["reserve_release_64k"]["kv"]["cycles"]), 200.0)
        self.assertEqual(float(rows["reserve_release_64k"]["kv"]["cycles"]), 400.0)
        self.assertEqual(count["reserve_release_64k"], 3)

    def test_report_md(self):
        md = report_md(self.dir.name)
        self.assertIn("**3 alternating rounds in one run**", md)
        # workload row: Linux default median 500, fair 1000, guest 200; ratios 0.40 (0.20–0.60), 0.20 (0.10–0.30).
        # Fastest rounds: 100 / 500 and 100 / 1000.
        self.assertIn("| 500 | 1,000 | 200 | **0.40** (0.20–0.60) | **0.20** (0.10–0.30) | 0.20 | 0.10 | met |", md)
        self.assertIn("| 1 | 1 1 1 → ? | 1 1 1 → ? | 1.00 1.00 1.00 → 1.50 1.00 1.00 |", md)
        self.assertIn("column *Linux mmap/mprotect/munmap, native*: not available: not run", md)
        self.assertIn("Chart: not drawn (--no-chart)", md)
        # The note on the full boot's guest figures: 100/300/200 in the guest's own boot, 300/900/600 after.
        self.assertIn("| reserve_release_64k | 200 (100–300) | 600 (300–900) | 3.00 |", md)

    def test_after_kernel_lines(self):
        got = report.parse_after_kernel([guest_line("query_free", 1500.0).replace("bench ", "bench-after-kernel ", 1),
                                         guest_line("query_free", 900.0)])
        self.assertEqual(got, {"query_free": 1500.0})

    def test_zeroed_ahead_lines(self):
        got = report.parse_zeroed_ahead([
            "bench-zeroed-ahead guest-TCG commit_touch_256m taken=39975 zeroed_ahead=36086 returned=0 listed=4096->207",
            "bench-after-kernel-zeroed-ahead guest-TCG commit_touch_256m taken=1 zeroed_ahead=2 returned=0 listed=0->0",
            guest_line("commit_touch_256m", 11431.0)])
        self.assertEqual(got, {"commit_touch_256m": (39975, 36086)})


class CallLineTest(unittest.TestCase):
    """Issue 15's host-call line, paired per round: guest ÷ (in-kernel + the round's no-op call)."""

    def rounds(self):
        out = {}
        for r, (g, k, noop) in enumerate(((1300.0, 400.0, 600.0), (1100.0, 400.0, 500.0), (1200.0, 500.0, 500.0)), 1):
            lines = [guest_line("query_free", k, unit="call", where="kernel-TCG"),
                     guest_line("query_free", g, unit="call"),
                     guest_line("host_call_addref_release", noop, unit="call"),
                     guest_line("reserve_release_64k", 3000.0).replace("entries=1/1", "entries=2/2"),
                     guest_line("reserve_release_64k", 2000.0, where="kernel-TCG")]
            out[r] = {"guest": (None, lines)}
        return out

    def test_ratios_per_round(self):
        line = report.call_line(self.rounds())
        self.assertEqual(set(line), {"query_free", "reserve_release_64k"})
        self.assertEqual([round(v, 3) for v in line["query_free"]["ratio"]], [1.3, round(1100 / 900, 3), 1.2])
        self.assertEqual(line["reserve_release_64k"]["entries"], 2.0)

    def test_section_and_targets(self):
        md, targets = report.call_line_section(report.call_line(self.rounds()))
        # query_free: ratios 1.30 / 1.22 / 1.20, median 1.22 > 1.2; medians 1,200 / 400 / 500.
        self.assertIn("| query_free | 1,200 | 400 | 500 | 1 | 1.22 (1.20–1.30) | NOT met | 1.33 |", md)
        # reserve_release_64k: 3000 / (2000 + 600), / (2000 + 500), / (2000 + 500): median 1.20, met;
        # a round trip per entry: 3000 / (2000 + 2 × 500).
        self.assertIn("| reserve_release_64k | 3,000 | 2,000 | 500 | 2 | 1.20 (1.15–1.20) | met | 1.00 |", md)
        self.assertIn("1 of 2 workloads — NOT met: `query_free`", targets[0])
        self.assertIn("`query_free` from the guest ≤ 1,000 cycles under TCG (issue 15): 1,200 — NOT met", targets[1])
        self.assertIn("`reserve_release_64k` from the guest ≤ 4,300 cycles under TCG (issue 15): 3,000 — met", targets[2])

    def test_nothing_without_the_no_op_call(self):
        rounds = self.rounds()
        for files in rounds.values():
            files["guest"] = (None, [l for l in files["guest"][1] if "host_call" not in l])
        self.assertEqual(report.call_line_section(report.call_line(rounds)), ([], []))


def peer_scaling_lines(base_ctd, base_rr, threads2, procs2):
    """peer-scaling lines of one fair boot at 2 CPUs: 1-worker rows at the bases, 2-worker rows at
    base × the given speed-ups, 4-worker rows n/a."""
    out = ["peer-env cpus_online=2", "peer-env tsc_hz=2500000000"]
    for name, base in (("commit_touch_decommit_64k", base_ctd), ("reserve_release_64k", base_rr)):
        for mode, two in (("threads", threads2), ("processes", procs2)):
            out.append(f"peer-scaling {name} mode={mode} n=1 ops={int(base * 2)} ops_per_s={base:.0f} speed_up=1.00x "
                       "cycles_per_op=1000 cpus_seen=1")
            out.append(f"peer-scaling {name} mode={mode} n=2 ops={int(base * two * 2)} ops_per_s={base * two:.0f} "
                       f"speed_up={two:.2f}x cycles_per_op=1100 cpus_seen=2")
            out.append(f"peer-scaling {name} mode={mode} n=4 n/a (only 2 CPUs online)")
    return out


def image_scaling_lines(base, one_space2, per_cpu2, guest2, smp=2):
    """The image's two scaling tables in their printed layout (speed-up columns deliberately wrong:
    report.py computes its own from ops/s)."""
    return [
        f"[boot] qemu-system-x86_64 -drive format=raw,file=bench.bios.img -m 1G -smp {smp} -cpu max",
        "bench-scaling-title in-kernel on 2 CPUs (...)",
        "bench-scaling workload                                 cpus     ops        ops/s speed-up  ipis/op cyc/round waits/op",
        f"bench-scaling commit_touch_decommit_64k                   1    1000 {base:12.0f}    9.99x     0.00         0     0.00",
        f"bench-scaling commit_touch_decommit_64k                   2    1000 {base * one_space2:12.0f}    9.99x     1.00     30000     3.00",
        "bench-scaling commit_touch_decommit_64k                   4     n/a (only 2 CPUs online)",
        f"bench-scaling commit_touch_decommit_64k/space-per-cpu     1    1000 {base:12.0f}    9.99x     0.00         0     0.00",
        f"bench-scaling commit_touch_decommit_64k/space-per-cpu     2    1000 {base * per_cpu2:12.0f}    9.99x     0.00         0     0.00",
        "bench-guest-scaling-title ring-3 guest threads (...)",
        "bench-guest-scaling workload                   threads cpus peak     ops      ops/s speed-up ipis/call rounds/call cycles/round entries/op",
        f"bench-guest-scaling commit_touch_decommit_64k        1    2    2    1000 {base:10.0f}    9.99x      0.00        0.00            0        2.0",
        f"bench-guest-scaling commit_touch_decommit_64k        2    2    2    1000 {base * guest2:10.0f}    9.99x      0.50        0.50        30000        2.0",
        f"bench-guest-scaling commit_touch_decommit_64k        4    2    2    1000 {base * guest2:10.0f}    9.99x      0.50        0.50        30000        2.0",
    ]


class ScalingTest(unittest.TestCase):
    """Two rounds at 2 vCPUs. Linux: threads 0.5× then 0.7×, processes 1.8× then 2.0×. This kernel
    (commit_touch_decommit_64k only): one space 1.2× then 1.0×, space per CPU 1.9× then 1.7×, guest
    threads 1.1× then 1.3×."""

    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        raw = self.dir.name
        os.mkdir(os.path.join(raw, "rounds"))
        for r, (lt, lp, ko, kp, gt) in ((1, (0.5, 1.8, 1.2, 1.9, 1.1)), (2, (0.7, 2.0, 1.0, 1.7, 1.3))):
            write(raw, f"rounds/linux-fair-{r}.txt", [f"load before: {r}.00 1 1", "peer linux-mmap",
                                                     peer_line("reserve_release_64k", 1000.0)]
                  + peer_scaling_lines(4000.0 * r, 30000.0, lt, lp) + ["peer-done errors=0", "load after: 2.50 1 1"])
            write(raw, f"rounds/guest-{r}.txt", ["load before: 1.50 1 1"] + image_scaling_lines(10000.0 * r, ko, kp, gt)
                  + ["load after: 1.75 1 1"])
            write(raw, f"rounds/linux-default-{r}.txt", ["not available: not run"])
        write(raw, "env.txt", ["date: 2026-01-01 00:00 UTC", "commit: abc"])

    def tearDown(self):
        self.dir.cleanup()

    def test_peer_scaling_lines(self):
        got = report.parse_peer_scaling(peer_scaling_lines(4000.0, 30000.0, 0.5, 1.8))
        self.assertEqual(got[("reserve_release_64k", "processes", 2)]["ops_per_s"], 54000.0)
        self.assertEqual(got[("reserve_release_64k", "processes", 2)]["speed_up"], 1.8)
        self.assertEqual(got[("commit_touch_decommit_64k", "threads", 1)]["cpus_seen"], 1.0)
        self.assertNotIn(("commit_touch_decommit_64k", "threads", 4), got)  # n/a
        self.assertEqual(len(got), 8)

    def test_image_scaling_by_header(self):
        lines = image_scaling_lines(10000.0, 1.2, 1.9, 1.1)
        kernel = report.parse_image_scaling(lines, "bench-scaling")
        self.assertEqual(kernel[("commit_touch_decommit_64k", 2)], 12000.0)
        self.assertEqual(kernel[("commit_touch_decommit_64k/space-per-cpu", 2)], 19000.0)
        self.assertNotIn(("commit_touch_decommit_64k", 4), kernel)
        guest = report.parse_image_scaling(lines, "bench-guest-scaling")
        # The guest table's count column is "threads", not its "cpus" column.
        self.assertEqual(guest, {("commit_touch_decommit_64k", 1): 10000.0, ("commit_touch_decommit_64k", 2): 11000.0,
                                 ("commit_touch_decommit_64k", 4): 11000.0})
        self.assertEqual(report.image_smp(lines), 2)

    def test_speed_ups_per_round(self):
        runs, cpus = report.scaling_runs(report.read_rounds(self.dir.name))
        ctd = runs[("commit_touch_decommit_64k", 2)]
        r2 = lambda v: [round(x, 3) for x in v]  # noqa: E731
        self.assertEqual(r2(ctd["linux-threads"]["speed_up"]), [0.5, 0.7])
        self.assertEqual(r2(ctd["linux-processes"]["speed_up"]), [1.8, 2.0])
        self.assertEqual(r2(ctd["kernel-one-space"]["speed_up"]), [1.2, 1.0])
        self.assertEqual(r2(ctd["kernel-space-per-cpu"]["speed_up"]), [1.9, 1.7])
        self.assertEqual(r2(ctd["guest-threads"]["speed_up"]), [1.1, 1.3])
        self.assertEqual(ctd["linux-threads"]["per_s"], [2000.0, 5600.0])
        self.assertEqual(runs[("reserve_release_64k", 2)]["kernel-one-space"]["speed_up"], [])
        self.assertEqual(runs[("commit_touch_decommit_64k", 4)]["linux-threads"]["speed_up"], [])
        self.assertEqual(cpus, {"linux": {2}, "image": {2}})

    def test_report_md(self):
        md = report_md(self.dir.name)
        self.assertIn("## Scaling: disjoint work from 1, 2 and 4 workers at once (same emulator)", md)
        self.assertIn("vCPUs: Linux saw 2 online, the benchmark image was booted with -smp 2 (the same on both sides).", md)
        # Columns: Linux threads, guest threads, in-kernel one space, Linux processes, space per CPU.
        self.assertIn("| commit_touch_decommit_64k | 2 | **0.60×** (0.50–0.70) | **1.20×** (1.10–1.30) | "
                      "**1.10×** (1.00–1.20) | **1.90×** (1.80–2.00) | **1.80×** (1.70–1.90) |", md)
        self.assertIn("| reserve_release_64k | 2 | **0.60×** (0.50–0.70) | – | – | **1.90×** (1.80–2.00) | – |", md)
        # Ops/s medians: Linux threads 1 worker 4000 and 8000 -> 6000.
        self.assertIn("| commit_touch_decommit_64k | 1 | 6,000 | 15,000 | 15,000 | 6,000 | 15,000 |", md)
        self.assertIn("1-minute load average around these boots: 1.00 to 2.50", md)

    def test_different_vcpus_are_flagged(self):
        write(self.dir.name, "rounds/guest-2.txt", image_scaling_lines(10000.0, 1.0, 1.7, 1.3, smp=4))
        self.assertIn("NOT the same on both sides", report_md(self.dir.name))


if __name__ == "__main__":
    unittest.main()
