#!/usr/bin/env python3
"""Turns the raw benchmark outputs written by tests/bench/report.sh into report.md and chart.svg.

usage: report.py RAW_DIR OUT_DIR

RAW_DIR holds env.txt, peer-linux.txt, peer-wine.txt, host-host.txt, host-frames.txt,
kernel-tcg.txt and kernel-kvm.txt (the benchmark image's output: "bench kernel-<accel> ..." lines of
the in-kernel part, "bench guest-<accel> ..." lines of the in-guest part). A file whose first line starts with "not available:" stands
for a part that did not run; its reason is shown in the report. Standard library only.
"""

import math
import os
import re
import sys
from html import escape

# Rows of the main table, in order: (workload, unit). The first five are the peer program's.
MAIN_ROWS = [
    ("reserve_release_64k", "op"),
    ("commit_touch_decommit", "page"),
    ("protect_256_pages", "call"),
    ("reserve_release_10k_live", "op"),
    ("commit_touch_256m", "page"),
    ("commit_touch_256m_again", "page"),
    ("query_committed_64k", "call"),
    ("query_reserved_64m", "call"),
    ("query_free", "call"),
    ("large_page_commit_2m", "2MiB-page"),
    ("guard_page_fault", "round-trip"),
    ("host_call_addref_release", "call"),
    ("host_call_ticks_ns", "call"),
    ("frame_alloc_free", "pair"),
]

COLUMNS = [
    ("linux", "Linux mmap/mprotect/munmap, native"),
    ("wine", "Wine VirtualAlloc family"),
    ("host", "address-space crate, host (simulated RAM, no TLB)"),
    ("tcg", "this kernel, in-kernel (TCG)"),
    ("kvm", "this kernel, in-kernel (KVM)"),
    ("gtcg", "this kernel, guest (TCG)"),
    ("gkvm", "this kernel, guest (KVM)"),
]
# The in-guest columns come from the same boot as the in-kernel ones.
GUEST_OF = {"gtcg": "tcg", "gkvm": "kvm"}

COUNTERS = [
    ("pte_writes", "PTE writes"),
    ("invlpg", "invlpg"),
    ("full_flushes", "full flushes"),
    ("frames_zeroed", "frames zeroed"),
    ("table_pages_allocated", "tables alloc"),
    ("table_pages_freed", "tables freed"),
    ("faults_resolved", "faults"),
]


def read(raw, name):
    path = os.path.join(raw, name)
    if not os.path.exists(path):
        return "not available: not run", []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [l.rstrip("\n") for l in f]
    missing = next((l for l in lines if l.startswith("not available:")), None)
    return missing, lines


def parse_peer(lines):
    """vmbench.c: 'name   123.4 ns/unit'."""
    out = {}
    for l in lines:
        m = re.match(r"^(\S+)\s+([\d.]+) ns/(\S+)$", l.strip())
        if m:
            out[m.group(1)] = (float(m.group(2)), m.group(3))
    return out


def parse_host(lines):
    """benches/host.rs: 'what   live=N   123.4 ns/op  note'."""
    out = []
    for l in lines:
        m = re.match(r"^(.*?)\s+live=(\d+)\s+([\d.]+) ns/op\s*(.*)$", l)
        if m:
            out.append((m.group(1).strip(), int(m.group(2)), float(m.group(3)), m.group(4).strip()))
    return out


def parse_frames(lines):
    """benches/frames.rs: section headers ending in ':' and '  label   12.3 ns' lines."""
    out, section = [], ""
    for l in lines:
        if l and not l.startswith(" ") and l.endswith(":"):
            section = l[:-1]
            continue
        m = re.match(r"^\s+(.*?)\s+([\d.]+) ns$", l)
        if m:
            out.append((section, m.group(1), float(m.group(2))))
    return out


def parse_kernel(lines):
    """Returns env, the in-kernel rows, the in-guest rows and the TLB figures."""
    env, rows, grows, prim, prot = {}, {}, {}, {}, {}
    for l in lines:
        if l.startswith("bench-env "):
            for k, v in re.findall(r'(\w+)=("[^"]*"|\S+)', l):
                env[k] = v.strip('"')
        m = re.match(r"^bench (\S+) (\S+) (.*?) verdict: (.*)$", l)
        if m:
            kv = dict(re.findall(r"(\w+)=(\S+)", m.group(3)))
            target = grows if m.group(1).startswith("guest-") else rows
            target[m.group(2)] = {"where": m.group(1), "kv": kv, "verdict": m.group(4)}
        m = re.match(r"^tlb-(primitive|protect) (\S+) N=(\d+) invlpg=(\d+) full=(\d+)", l)
        if m:
            (prim if m.group(1) == "primitive" else prot)[int(m.group(3))] = (int(m.group(4)), int(m.group(5)))
    return env, rows, grows, prim, prot


def fmt_ns(v):
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.1f}"


def main():
    raw, out = sys.argv[1], sys.argv[2]
    _, env_lines = read(raw, "env.txt")
    env = dict(l.split(": ", 1) for l in env_lines if ": " in l)

    missing, lines = read(raw, "peer-linux.txt")
    linux = ({}, missing) if missing else (parse_peer(lines), None)
    missing, lines = read(raw, "peer-wine.txt")
    wine = ({}, missing) if missing else (parse_peer(lines), None)
    missing, lines = read(raw, "host-host.txt")
    host_lines = [] if missing else parse_host(lines)
    host_missing = missing
    missing, lines = read(raw, "host-frames.txt")
    frames_lines = [] if missing else parse_frames(lines)
    frames_missing = missing
    kern = {}
    for acc in ("tcg", "kvm"):
        missing, lines = read(raw, f"kernel-{acc}.txt")
        kenv, krows, grows, prim, prot = parse_kernel(lines)
        if not krows and not missing:
            missing = "not available: no benchmark lines in the output"
        kern[acc] = {"missing": missing, "env": kenv, "rows": krows, "prim": prim, "prot": prot,
                     "qemu": next((l for l in lines if l.startswith("[boot] qemu")), "")}
        gmissing = missing
        if not grows and not gmissing:
            gmissing = "not available: the boot printed no in-guest lines"
        kern["g" + acc] = {"missing": gmissing, "env": kenv, "rows": grows, "prim": {}, "prot": {}, "qemu": ""}

    # ---- figures per (row, column): (ns, text) ----
    fig = {}

    def put(row, col, ns, text=None):
        fig[(row, col)] = (ns, text if text is not None else fmt_ns(ns))

    for col, (data, _) in (("linux", linux), ("wine", wine)):
        for name, (ns, unit) in data.items():
            put(name, col, ns)
    host_map = {
        ("reserve+release 64 KiB (lowest fit)", 1): "reserve_release_64k",
        ("query (free memory)", 1): "query_free",
        ("frame alloc+free", 0): "frame_alloc_free",
    }
    for what, live, ns, _ in host_lines:
        if (what, live) in host_map:
            put(host_map[(what, live)], "host", ns)
        if what == "reserve+release 64 KiB (lowest fit)":
            put(f"reserve_release_64k@live={live}", "host", ns)
        if what == "query, allocations in address order":
            put(f"query@live={live}", "host", ns)
    if ("frame_alloc_free", "host") not in fig:
        for section, label, ns in frames_lines:
            if section.startswith("single 4 KiB frame, alloc + free") and label.startswith("1 GiB managed, nearly empty"):
                put("frame_alloc_free", "host", ns)
    scale_rows = []
    for acc in ("tcg", "kvm", "gtcg", "gkvm"):
        for name, r in kern[acc]["rows"].items():
            kv = r["kv"]
            cyc, ns = float(kv["cycles"]), float(kv["ns"])
            put(name, acc, ns, f"{cyc:,.0f} cyc ≈ {fmt_ns(ns)}")
            if "@" in name and name not in [s for s, _ in scale_rows]:
                scale_rows.append((name, kv["unit"]))
    units = dict(MAIN_ROWS)
    for acc in ("tcg", "kvm", "gtcg", "gkvm"):
        for name, r in kern[acc]["rows"].items():
            units.setdefault(name, r["kv"]["unit"])

    def col_note(col):
        if col == "linux":
            return linux[1]
        if col == "wine":
            return wine[1]
        if col == "host":
            return host_missing
        return kern[col]["missing"]

    def cell(row, col):
        if (row, col) in fig:
            return fig[(row, col)][1]
        if not col_note(col):
            return "n/a"
        # A run that stopped part-way (see the column's note) did not reach this workload.
        same_boot = {col, GUEST_OF.get(col, col)}
        return "not reached" if any(c in same_boot for _, c in fig) else "not run"

    md = []
    md.append("# Virtual-memory benchmarks: Linux, Wine, the address-space crate and this kernel\n")
    md.append(f"Generated by `tests/bench/report.sh` on {env.get('date', '?')} from commit {env.get('commit', '?')}.\n")
    md.append("Where it ran (every column below ran on this one machine):\n")
    for k in ("cpu", "cores", "machine", "os", "load at start", "load at end", "qemu", "rustc", "cc", "wine"):
        if k in env:
            md.append(f"- {k}: {env[k]}")
    for acc in ("tcg", "kvm"):
        e = kern[acc]["env"]
        if e:
            md.append(f"- kernel under QEMU {acc.upper()}: CPUID hypervisor signature \"{e.get('signature', '?')}\" "
                      f"(accel={e.get('accel', '?')}), TSC {int(e.get('tsc_hz', '0')) / 1e9:.3f} GHz measured against the PIT, "
                      f"guest RAM {e.get('ram', '?')}, TLB full-flush threshold {e.get('flush_threshold', '?')} pages")
    md.append("")
    md.append("Units: ns per unit (peer and host: wall clock; kernel: rdtsc cycles per unit, converted to ns "
              "with the PIT-calibrated TSC rate). **TCG figures are emulation** (QEMU translates the guest's "
              "code and models the TLB in software): they rank the kernel's operations against each other, "
              "not against hardware. The Linux and Wine columns run in this machine's own virtual machine, "
              "so their page-table work pays that hypervisor's costs too.\n")
    notes = [(c, col_note(c)) for c, _ in COLUMNS if col_note(c)]
    for c, n in notes:
        md.append(f"- column *{dict(COLUMNS)[c]}*: {n}")
    if host_missing is None and frames_missing:
        md.append(f"- frames benchmark: {frames_missing}")
    if notes:
        md.append("")

    md.append("## Figures side by side (ns per unit; kernel: cycles ≈ ns)\n")
    md.append("| workload | unit | " + " | ".join(h for _, h in COLUMNS) + " |")
    md.append("| --- | --- | " + " | ".join("---:" for _ in COLUMNS) + " |")
    for row, unit in MAIN_ROWS + scale_rows:
        md.append(f"| {row} | {units.get(row, unit)} | " + " | ".join(cell(row, c) for c, _ in COLUMNS) + " |")
    md.append("")
    md.append("`@live=N`: N other live allocations in the space; `@size=S`: a reservation of S. "
              "n/a: that program has no such workload.\n")

    # ---- work counters ----
    ref = "tcg" if kern["tcg"]["rows"] else "kvm"
    krows = kern[ref]["rows"]
    if krows:
        md.append(f"## In-kernel work per unit: measured / minimum (QEMU {ref.upper()} run)\n")
        md.append("| workload | unit | " + " | ".join(h for _, h in COUNTERS) + " | kernel entries | verdict |")
        md.append("| --- | --- | " + " | ".join("---:" for _ in COUNTERS) + " | ---: | --- |")
        for name, r in krows.items():
            kv = r["kv"]
            vals = []
            for k, _ in COUNTERS:
                got, mn = kv[k].split("/")
                vals.append(got if got == mn else f"**{got}** / {mn}")
            verdict = r["verdict"]
            short = verdict if verdict == "= min" else verdict.split(" (")[0]
            md.append(f"| {name} | {kv['unit']} | " + " | ".join(vals) + f" | {kv.get('entries', 'n/a')} | {short} |")
        md.append("")
        md.append("A single figure means measured = minimum; **bold** / min marks work above the minimum. "
                  "Kernel entries: n/a, because the in-kernel benchmark calls the memory manager from ring 0; "
                  "the in-guest table below counts them.")
        if kern["tcg"]["rows"] and kern["kvm"]["rows"]:
            both = [n for n in kern["tcg"]["rows"] if n in kern["kvm"]["rows"]]
            same = all(kern["tcg"]["rows"][n]["kv"][k] == kern["kvm"]["rows"][n]["kv"][k]
                       for n in both for k, _ in COUNTERS)
            md.append(f"The KVM run's counters are {'identical' if same else 'NOT identical'} to the TCG run's "
                      f"for the {len(both)} workload(s) both runs reached.")
        md.append("")
        over = [(n, r["verdict"]) for n, r in krows.items() if r["verdict"] != "= min"]
        if over:
            md.append("Operations above their minimum (the kernel's own explanation):\n")
            for n, v in over:
                md.append(f"- `{n}`: {v}")
            md.append("")

    # ---- in-guest work counters ----
    gref = "gtcg" if kern["gtcg"]["rows"] else "gkvm"
    grows = kern[gref]["rows"]
    if grows:
        md.append(f"## In-guest work per unit: measured / minimum (QEMU {GUEST_OF[gref].upper()} run)\n")
        md.append("The same workloads from a ring-3 guest (`tests/guests/c/vmbench_guest.c`) through "
                  "`IHostMemoryManager`, run by the benchmark image after its in-kernel part. The counters are read "
                  "by the kernel at the guest's `@begin`/`@end` marker lines. Kernel entries are system calls and "
                  "exceptions from ring 3; their minimum is one per host call and one per page fault, and for the "
                  "guard page also the handler's return through the kernel (3 per round trip).\n")
        md.append("| workload | unit | " + " | ".join(h for _, h in COUNTERS) + " | kernel entries | verdict |")
        md.append("| --- | --- | " + " | ".join("---:" for _ in COUNTERS) + " | ---: | --- |")
        for name, r in grows.items():
            kv = r["kv"]
            vals = []
            for k, _ in COUNTERS + [("entries", "")]:
                got, mn = kv.get(k, "n/a/n/a").split("/")[:2]
                vals.append(got if got == mn else f"**{got}** / {mn}")
            verdict = r["verdict"]
            short = verdict if verdict == "= min" else verdict.split(" (")[0]
            md.append(f"| {name} | {kv['unit']} | " + " | ".join(vals) + f" | {short} |")
        md.append("")
        same_as_kernel = [n for n in grows if n in krows and
                          all(grows[n]["kv"][k] == krows[n]["kv"][k] for k, _ in COUNTERS)]
        md.append(f"Page-table work equal to the in-kernel run's for {len(same_as_kernel)} of "
                  f"{len([n for n in grows if n in krows])} workloads both ran"
                  + (": " + ", ".join(f"`{n}`" for n in grows if n in krows and n not in same_as_kernel) + " differ."
                     if len(same_as_kernel) < len([n for n in grows if n in krows]) else ".") + "\n")
        over = [(n, r["verdict"]) for n, r in grows.items() if r["verdict"] != "= min"]
        if over:
            md.append("In-guest operations above their minimum:\n")
            for n, v in over:
                md.append(f"- `{n}`: {v}")
            md.append("")

    # ---- TLB threshold ----
    if any(kern[a]["prim"] for a in ("tcg", "kvm")):
        md.append("## TLB invalidation: N x invlpg against one full flush (cycles)\n")
        md.append("*primitive*: N `invlpg` (or one CR3 reload) followed by re-touching the N pages and a 64-page "
                  "working set. *VirtualProtect*: protecting N touched pages read-only and back, per call, with "
                  "re-touch, in a space whose threshold is 64 (per-page `invlpg`) against one whose threshold is 1 "
                  "(full flush for N ≥ 2).\n")
        hdr, sep = "| N |", "| ---: |"
        accs = [a for a in ("tcg", "kvm") if kern[a]["prim"]]
        for a in accs:
            A = a.upper()
            hdr += f" {A} primitive invlpg | {A} primitive full | {A} VirtualProtect invlpg | {A} VirtualProtect full |"
            sep += " ---: | ---: | ---: | ---: |"
        md.append(hdr)
        md.append(sep)
        ns = sorted(set().union(*[set(kern[a]["prim"]) | set(kern[a]["prot"]) for a in accs]))
        for n in ns:
            line = f"| {n} |"
            for a in accs:
                p, q = kern[a]["prim"].get(n), kern[a]["prot"].get(n)

                def pair(v):
                    if not v:
                        return " – | – |"
                    i, f = v
                    return (f" **{i:,}** | {f:,} |" if i <= f else f" {i:,} | **{f:,}** |")
                line += pair(p) + pair(q)
            md.append(line)
        md.append("")
        md.append("Bold: the cheaper of the pair. VirtualProtect stops at 64 because a batch holds at most 64 pages.\n")

    # ---- host benchmark ----
    md.append("## Host benchmark of the address-space crate (`cargo bench -p address-space --bench host`)\n")
    if host_missing:
        md.append(f"{host_missing}\n")
    else:
        md.append("| operation | live allocations | ns/op | note |")
        md.append("| --- | ---: | ---: | --- |")
        for what, live, ns, note in host_lines:
            md.append(f"| {what} | {live:,} | {fmt_ns(ns)} | {note} |")
        md.append("")
    md.append("### Frame allocator (`cargo bench -p address-space --bench frames`)\n")
    if frames_missing:
        md.append(f"{frames_missing}\n")
    else:
        md.append("| measurement | state | ns |")
        md.append("| --- | --- | ---: |")
        for section, label, ns in frames_lines:
            md.append(f"| {section} | {label} | {fmt_ns(ns)} |")
        md.append("")

    # ---- targets ----
    md.append("## Targets (read from the figures above; never asserted by a test)\n")

    def target(what, value, limit, where):
        if value is None:
            return f"- {what} ≤ {limit} ns ({where}): not measured"
        return f"- {what} ≤ {limit} ns ({where}): {fmt_ns(value)} ns — {'met' if value <= limit else 'NOT met'}"
    fa = fig.get(("frame_alloc_free", "host"))
    rr = fig.get(("reserve_release_64k", "host"))
    md.append(target("frame alloc+free", fa[0] if fa else None, 25, "host"))
    md.append(target("reserve+release", rr[0] if rr else None, 300, "host, 1 live allocation"))
    if krows:
        at_min = [n for n, r in krows.items() if r["verdict"] == "= min"]
        md.append(f"- in-kernel work counters equal to the minimum for every workload: {len(at_min)} of {len(krows)} "
                  f"workloads at the minimum — {'met' if len(at_min) == len(krows) else 'NOT met (see the verdicts above)'}")
    if grows:
        at_min = [n for n, r in grows.items() if r["verdict"] == "= min"]
        md.append(f"- in-guest work counters and kernel entries equal to the minimum: {len(at_min)} of {len(grows)} "
                  f"workloads at the minimum — {'met' if len(at_min) == len(grows) else 'NOT met (see the verdicts above)'}")
    noop = {}
    for g in ("gtcg", "gkvm"):
        for name in ("host_call_addref_release", "host_call_ticks_ns"):
            if name in kern[g]["rows"]:
                noop[(g, name)] = float(kern[g]["rows"][name]["kv"]["ns"])
    kvm_calls = [f"`{n}` {fmt_ns(v)} ns" for (g, n), v in noop.items() if g == "gkvm"]
    tcg_calls = [f"`{n}` {fmt_ns(v)} ns" for (g, n), v in noop.items() if g == "gtcg"]
    if kvm_calls:
        best = min(v for (g, _), v in noop.items() if g == "gkvm")
        md.append(f"- guest host-call round trip (no-op call) ≤ 150 ns under KVM: {', '.join(kvm_calls)} — "
                  f"{'met' if best <= 150 else 'NOT met'}")
    else:
        why = kern["gkvm"]["missing"] or "no in-guest lines from the KVM boot"
        md.append(f"- guest host-call round trip (no-op call) ≤ 150 ns under KVM: cannot be checked on this machine "
                  f"({why.removeprefix('not available: ')})."
                  + (f" Under TCG (emulation, not comparable with the target): {', '.join(tcg_calls)} per call." if tcg_calls else ""))
    md.append("")

    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(md))

    write_chart(os.path.join(out, "chart.svg"), fig, MAIN_ROWS + scale_rows, units, env,
                {c for c, _ in COLUMNS if col_note(c)})


def write_chart(path, fig, rows, units, env, incomplete):
    colors = {"linux": "#e6711b", "wine": "#8e44ad", "host": "#2e86c1", "tcg": "#7f8c8d", "kvm": "#27ae60",
              "gtcg": "#c0392b", "gkvm": "#16a085"}
    names = dict(COLUMNS)
    names["tcg"] += " (emulation)"
    names["gtcg"] += " (emulation)"
    groups = []
    for row, unit in rows:
        bars = [(c, fig[(row, c)][0]) for c, _ in COLUMNS if (row, c) in fig and fig[(row, c)][0] > 0]
        if bars:
            groups.append((row, units.get(row, unit), bars))
    values = [v for _, _, bars in groups for _, v in bars]
    if not values:
        values = [1.0]
    lo = 10 ** math.floor(math.log10(min(values)))
    hi = 10 ** math.ceil(math.log10(max(values)))
    if hi <= lo:
        hi = lo * 10
    left, plot_w, right = 300, 620, 110
    bar_h, gap, pad = 11, 2, 12
    top = 124
    y = top
    body = []
    for row, unit, bars in groups:
        h = len(bars) * (bar_h + gap) - gap
        body.append(f'<text x="{left - 8}" y="{y + h / 2 + 4:.1f}" text-anchor="end" class="label">'
                    f'{escape(row)} <tspan class="unit">ns/{escape(unit)}</tspan></text>')
        for c, v in bars:
            w = plot_w * (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
            w = max(w, 1.0)
            body.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colors[c]}">'
                        f'<title>{escape(names[c])}: {fmt_ns(v)} ns/{escape(unit)}</title></rect>')
            body.append(f'<text x="{left + w + 4:.1f}" y="{y + bar_h - 2}" class="value">{fmt_ns(v)}</text>')
            y += bar_h + gap
        y += pad
    height = y + 40
    width = left + plot_w + right
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'font-family="DejaVu Sans, Arial, sans-serif">',
           "<style>.label{font-size:11px;fill:#222}.unit{fill:#888;font-size:9px}.value{font-size:9px;fill:#333}"
           ".tick{font-size:9px;fill:#555}.title{font-size:14px;font-weight:bold}.sub{font-size:10px;fill:#444}</style>",
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="12" y="20" class="title">Virtual-memory workloads: ns per unit, log scale (shorter is faster)</text>',
           f'<text x="12" y="36" class="sub">{escape(env.get("date", ""))}, commit {escape(env.get("commit", "?"))}; all on one '
           f'machine: {escape(env.get("cpu", ""))}, {escape(env.get("cores", "?"))} cores ({escape(env.get("machine", ""))}).</text>',
           f'<text x="12" y="50" class="sub">Kernel bars: rdtsc cycles converted with the PIT-calibrated TSC rate; '
           f'TCG timings are emulation, not hardware. Generated by tests/bench/report.sh.</text>']
    present = {c for _, _, bars in groups for c, _ in bars}
    lx, ly = 12, 70
    for c, _ in COLUMNS:
        label = names[c]
        if c not in present:
            label += " (no figures: see report.md)"
        elif c in incomplete:
            label += " (run stopped early: see report.md)"
        svg.append(f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{colors[c]}"/>'
                   f'<text x="{lx + 14}" y="{ly}" class="sub">{escape(label)}</text>')
        lx += 14 + 6.0 * len(label) + 18
        if lx > width - 250:
            lx, ly = 12, ly + 16
    decade = lo
    while decade <= hi * 1.0001:
        x = left + plot_w * (math.log10(decade) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
        svg.append(f'<line x1="{x:.1f}" y1="{top - 8}" x2="{x:.1f}" y2="{y}" stroke="#ddd"/>')
        label = f"{decade:,.0f}" if decade >= 1 else f"{decade:g}"
        svg.append(f'<text x="{x:.1f}" y="{top - 12}" text-anchor="middle" class="tick">{label} ns</text>')
        decade *= 10
    svg.extend(body)
    svg.append("</svg>")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
