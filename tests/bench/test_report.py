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
    Linux default 500/500/missing (round 3's default boot failed)."""

    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        raw = self.dir.name
        os.mkdir(os.path.join(raw, "rounds"))
        for r, g in ((1, 100.0), (2, 300.0), (3, 200.0)):
            self.write(f"rounds/guest-{r}.txt", ["load before: 1.00 1.00 1.00",
                                                 guest_line("reserve_release_64k", g * 2, where="kernel-TCG"),
                                                 guest_line("reserve_release_64k", g), "load after: 1.50 1.00 1.00"])
            self.write(f"rounds/linux-fair-{r}.txt", ["load before: 1 1 1", "peer linux-mmap",
                                                      "peer-env cmdline=console=ttyS0 mitigations=off",
                                                      peer_line("reserve_release_64k", 1000.0), "peer-done errors=0"])
            default = ([peer_line("reserve_release_64k", 500.0), "peer-done errors=0"] if r < 3
                       else ["not available: Linux in QEMU did not finish the workloads"])
            self.write(f"rounds/linux-default-{r}.txt", ["load before: 1 1 1"] + default)
        self.write("env.txt", ["date: 2026-01-01 00:00 UTC", "commit: abc", "load at start: 0.5 0.5 0.5"])
        self.write("peer-linux.txt", ["not available: not run"])

    def tearDown(self):
        self.dir.cleanup()

    def write(self, name, lines):
        with open(os.path.join(self.dir.name, name), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

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
        out = os.path.join(self.dir.name, "out")
        os.mkdir(out)
        report.main(["--no-chart", self.dir.name, out])
        with open(os.path.join(out, "report.md"), encoding="utf-8") as f:
            md = f.read()
        self.assertIn("**3 alternating rounds in one run**", md)
        # workload row: Linux default median 500, fair 1000, guest 200; ratios 0.40 (0.20–0.60), 0.20 (0.10–0.30).
        # Fastest rounds: 100 / 500 and 100 / 1000.
        self.assertIn("| 500 | 1,000 | 200 | **0.40** (0.20–0.60) | **0.20** (0.10–0.30) | 0.20 | 0.10 | met |", md)
        self.assertIn("| 1 | 1 1 1 → ? | 1 1 1 → ? | 1.00 1.00 1.00 → 1.50 1.00 1.00 |", md)
        self.assertIn("column *Linux mmap/mprotect/munmap, native*: not available: not run", md)
        self.assertIn("Chart: not drawn (--no-chart)", md)


if __name__ == "__main__":
    unittest.main()
