/* The in-guest benchmark (run by the benchmark image, kernel/src/bin/bench.rs: ./run-qemu.sh --bench).
 *
 * The workloads of the peer program (shared/peers/vmbench.c, its VirtualAlloc variant) from ring 3
 * through IHostMemoryManager, plus VirtualQuery, a large-page commit, the guard-page fault round trip
 * and two no-op host calls. Each timed loop is bracketed by two marker lines, each written with ONE
 * HOST_SERVICES.write call:
 *
 *     @begin NAME
 *     @end NAME unit=UNIT n=UNITS cycles=TOTAL_RDTSC_CYCLES [base=0x... size=0x...]
 *
 * The benchmark image sees every guest write (kernel::guest::calls::WRITE_HOOK) and reads the
 * kernel's work counters and kernel-entry count at each marker, so the work between two markers is
 * exactly that of the loop (plus the @end write's own kernel entry, which the image subtracts). At
 * each @end it prints the workload's "bench guest-<accel> ..." line, in the in-kernel lines'
 * format. Timing is rdtsc in ring 3 (the kernel leaves CR4.TSD clear), totals only; the image
 * divides and converts to ns. The no-op host calls go first (see noop_calls).
 *
 * Workloads that create page tables run at fixed addresses, each in a 512 GiB slot nothing else in
 * the guest uses (the image is in slot 0, the stack and host pages in slot 255), so the tables they
 * need are exactly those of a fresh space, as in the in-kernel benchmark. Nothing asserts a timing;
 * the guest exits 1 if a call fails. */
#include "host_abi.h"
#include "guest_util.h"
#include "vmbench_util.h"

#define PAGE 4096ull
#define KB64 (64ull << 10)
#define MIB (1ull << 20)
#define SLOT_CTD 0x0000010000000000ull   /* commit_touch_decommit: 1 TiB (PML4 slot 2) */
#define SLOT_256M 0x0000020000000000ull  /* commit_touch_256m: 2 TiB (slot 4) */
#define SLOT_LARGE 0x0000030000000000ull /* large_page_commit_2m: 3 TiB (slot 6) */
#define SLOT_SIZE (512ull << 30)

static IHostMemoryManager *g_host;
static const IHostMemoryManagerVtbl *V;
static int g_errors;
static volatile uint64_t g_guard_hits;

/* "MARKER NAME" as one write. */
static void mark_on(const HOST_SERVICES *hs, const char *marker, const char *name) {
    LINE l;
    l.n = 0;
    l_str(&l, marker);
    l_str(&l, name);
    l_flush(hs, &l);
}
static void begin_on(const HOST_SERVICES *hs, const char *name) { mark_on(hs, "@begin ", name); }
/* Starts "MARKER NAME unit=UNIT n=UNITS cycles=CYCLES" in l (the caller adds and flushes). */
static void l_end(LINE *l, const char *marker, const char *name, const char *unit, uint64_t units, uint64_t cycles) {
    l->n = 0;
    l_str(l, marker);
    l_str(l, name);
    l_str(l, " unit=");
    l_str(l, unit);
    l_str(l, " n=");
    l_dec(l, units);
    l_str(l, " cycles=");
    l_dec(l, cycles);
}
/* base/size: the range whose page tables the workload creates (0 if none). */
static void end_on(const HOST_SERVICES *hs, const char *name, const char *unit, uint64_t units, uint64_t cycles,
                   uint64_t base, uint64_t size) {
    LINE l;
    l_end(&l, "@end ", name, unit, units, cycles);
    if (size) {
        l_str(&l, " base=");
        l_hex(&l, base);
        l_str(&l, " size=");
        l_hex(&l, size);
    }
    l_flush(hs, &l);
}
static void begin(const char *name) { begin_on(g_services, name); }
static void end(const char *name, const char *unit, uint64_t units, uint64_t cycles, uint64_t base, uint64_t size) {
    end_on(g_services, name, unit, units, cycles, base, size);
}

static void fail(const char *what, HRESULT hr) {
    LINE l;
    l.n = 0;
    g_errors++;
    l_str(&l, "vmbench-guest: FAILED ");
    l_str(&l, what);
    l_str(&l, ": ");
    l_hex(&l, (uint32_t)hr);
    l_flush(g_services, &l);
}

static char *reserve_at(uint64_t at, uint64_t n) {
    void *p = 0;
    HRESULT hr = V->VirtualAlloc(g_host, (void *)at, n, MEM_RESERVE, PAGE_NOACCESS, eTaskCritical, &p);
    if (hr != S_OK) {
        fail("reserve", hr);
        return 0;
    }
    return (char *)p;
}
static void release(char *p) {
    HRESULT hr = V->VirtualFree(g_host, p, 0, MEM_RELEASE);
    if (hr != S_OK) fail("release", hr);
}
static void commit(char *p, uint64_t n) {
    void *q = 0;
    HRESULT hr = V->VirtualAlloc(g_host, p, n, MEM_COMMIT, PAGE_READWRITE, eTaskCritical, &q);
    if (hr != S_OK) fail("commit", hr);
}
static void decommit(char *p, uint64_t n) {
    HRESULT hr = V->VirtualFree(g_host, p, n, MEM_DECOMMIT);
    if (hr != S_OK) fail("decommit", hr);
}
static void protect(char *p, uint64_t n, DWORD prot) {
    DWORD old;
    HRESULT hr = V->VirtualProtect(g_host, p, n, prot, &old);
    if (hr != S_OK) fail("protect", hr);
}
static void touch(char *p, uint64_t n) {
    uint64_t o;
    for (o = 0; o < n; o += PAGE) ((volatile char *)p)[o] = 1;
}
/* Checks that a 512 GiB slot holds nothing (so no page table exists in it). */
static void check_slot_free(uint64_t slot) {
    MEMORY_BASIC_INFORMATION m;
    SIZE_T got = 0;
    HRESULT hr = V->VirtualQuery(g_host, (void *)slot, &m, sizeof m, &got);
    if (hr != S_OK || m.State != MEM_FREE || m.BaseAddress + m.RegionSize < slot + SLOT_SIZE) fail("slot not free", hr);
}

static int32_t handler(GUEST_EXCEPTION *e) {
    if (e->code == STATUS_GUARD_PAGE_VIOLATION) {
        g_guard_hits++;
        return EXCEPTION_CONTINUE_EXECUTION; /* the guard is gone: the access is retried and succeeds */
    }
    return EXCEPTION_CONTINUE_SEARCH;
}

/* B1: reserve + release of one 64 KiB region, per pair. */
static void reserve_release_64k(void) {
    uint64_t n = 20000, i, t0, t1;
    begin("reserve_release_64k");
    t0 = rdtsc();
    for (i = 0; i < n; i++) release(reserve_at(0, KB64));
    t1 = rdtsc();
    end("reserve_release_64k", "op", n, t1 - t0, 0, 0);
}

/* B2: commit + first touch + decommit of 1 MiB, per page; one warm-up round first. */
static void commit_touch_decommit(void) {
    uint64_t rounds = 200, r, t0, t1;
    char *p;
    check_slot_free(SLOT_CTD);
    p = reserve_at(SLOT_CTD, MIB);
    if (!p) return;
    commit(p, MIB);
    touch(p, MIB);
    decommit(p, MIB);
    begin("commit_touch_decommit");
    t0 = rdtsc();
    for (r = 0; r < rounds; r++) {
        commit(p, MIB);
        touch(p, MIB);
        decommit(p, MIB);
    }
    t1 = rdtsc();
    end("commit_touch_decommit", "page", rounds * (MIB / PAGE), t1 - t0, 0, 0);
    release(p);
}

/* B3: protect 256 committed, touched pages read-only and back, per call. */
static void protect_256_pages(void) {
    uint64_t rounds = 5000, r, t0, t1, sz = 256 * PAGE;
    char *p = reserve_at(0, sz);
    if (!p) return;
    commit(p, sz);
    touch(p, sz);
    begin("protect_256_pages");
    t0 = rdtsc();
    for (r = 0; r < rounds; r++) {
        protect(p, sz, PAGE_READONLY);
        protect(p, sz, PAGE_READWRITE);
    }
    t1 = rdtsc();
    end("protect_256_pages", "call", 2 * rounds, t1 - t0, 0, 0);
    release(p);
}

/* B4: 10,000 live 64 KiB reservations, then release them all; per operation. */
static void reserve_release_10k_live(void) {
    uint64_t n = 10000, i, t0, t1, sz = n * sizeof(char *);
    char **v = (char **)reserve_at(0, sz);
    if (!v) return;
    commit((char *)v, sz);
    touch((char *)v, sz); /* so the loop takes no demand-zero fault on the array */
    begin("reserve_release_10k_live");
    t0 = rdtsc();
    for (i = 0; i < n; i++) v[i] = reserve_at(0, KB64);
    for (i = 0; i < n; i++) release(v[i]);
    t1 = rdtsc();
    end("reserve_release_10k_live", "op", 2 * n, t1 - t0, 0, 0);
    release((char *)v);
}

/* B5: commit and touch 256 MiB of a fresh reservation, per page. */
static void commit_touch_256m(const char *name) {
    uint64_t sz = 256 * MIB, t0, t1;
    char *p;
    check_slot_free(SLOT_256M);
    p = reserve_at(SLOT_256M, sz);
    if (!p) return;
    begin(name);
    t0 = rdtsc();
    commit(p, sz);
    touch(p, sz);
    t1 = rdtsc();
    end(name, "page", sz / PAGE, t1 - t0, (uint64_t)p, sz);
    release(p);
}

static void query(const char *name, uint64_t addr, uint64_t n) {
    MEMORY_BASIC_INFORMATION m;
    SIZE_T got = 0;
    uint64_t i, t0, t1, sum = 0;
    HRESULT hr = S_OK;
    begin(name);
    t0 = rdtsc();
    for (i = 0; i < n; i++) {
        hr |= V->VirtualQuery(g_host, (void *)addr, &m, sizeof m, &got);
        sum += m.RegionSize;
    }
    t1 = rdtsc();
    end(name, "call", n, t1 - t0, 0, 0);
    if (hr != S_OK || sum == 0) fail(name, hr);
}

static void queries(void) {
    char *c = reserve_at(0, KB64), *r;
    if (!c) return;
    commit(c, KB64);
    touch(c, KB64);
    query("query_committed_64k", (uint64_t)c, 20000);
    r = reserve_at(0, 64 * MIB);
    if (r) {
        query("query_reserved_64m", (uint64_t)r, 20000);
        release(r);
    }
    query("query_free", 0x400000000000ull, 20000);
    release(c);
}

/* Reserve + commit one 2 MiB large page, touch it, release it; per large page. */
static void large_page_commit(void) {
    uint64_t n = 200, i, t0 = 0, t1;
    void *p = 0;
    HRESULT hr;
    check_slot_free(SLOT_LARGE);
    for (i = 0; i <= n; i++) {
        if (i == 1) { /* the first round is the warm-up */
            begin("large_page_commit_2m");
            t0 = rdtsc();
        }
        hr = V->VirtualAlloc(g_host, (void *)SLOT_LARGE, 2 * MIB, MEM_RESERVE | MEM_COMMIT | MEM_LARGE_PAGES,
                             PAGE_READWRITE, eTaskCritical, &p);
        if (hr != S_OK) {
            fail("large-page commit", hr);
            return;
        }
        ((volatile char *)p)[12345] = 1;
        release((char *)p);
    }
    t1 = rdtsc();
    end("large_page_commit_2m", "2MiB-page", n, t1 - t0, 0, 0);
}

/* Arm a guard page (VirtualProtect), touch it: STATUS_GUARD_PAGE_VIOLATION goes to the vectored
 * handler, which returns EXCEPTION_CONTINUE_EXECUTION; the retried access succeeds. */
static void guard_page_fault(void) {
    uint64_t n = 5000, i, t0, t1;
    char *p = reserve_at(0, KB64);
    void *h;
    if (!p) return;
    commit(p, KB64);
    touch(p, PAGE);
    h = g_services->add_vectored_exception_handler(1, handler);
    if (!h) {
        fail("add_vectored_exception_handler", 0);
        return;
    }
    g_guard_hits = 0;
    begin("guard_page_fault");
    t0 = rdtsc();
    for (i = 0; i < n; i++) {
        protect(p, PAGE, PAGE_READWRITE | PAGE_GUARD);
        ((volatile char *)p)[0] = 2;
    }
    t1 = rdtsc();
    end("guard_page_fault", "round-trip", n, t1 - t0, 0, 0);
    g_services->remove_vectored_exception_handler(h);
    if (g_guard_hits != n) fail("guard-page exceptions delivered", (HRESULT)g_guard_hits);
    release(p);
}

/* The cheapest host calls: IHostMemoryManager::AddRef + Release (each one kernel entry and a
 * counter update), and HOST_SERVICES.ticks_ns; per call. They run first and touch only the stack
 * and the host's pages (no page fault, no write to the image's data), so nothing but the calls
 * themselves is in the loop. Returns a sum the caller checks is non-zero. */
static uint64_t noop_calls(IHostMemoryManager *host, const HOST_SERVICES *hs) {
    const IHostMemoryManagerVtbl *v = host->lpVtbl;
    uint64_t n = 50000, i, t0, t1, sum = 0;
    begin_on(hs, "host_call_addref_release");
    t0 = rdtsc();
    for (i = 0; i < n; i++) {
        sum += v->AddRef(host);
        sum += v->Release(host);
    }
    t1 = rdtsc();
    end_on(hs, "host_call_addref_release", "call", 2 * n, t1 - t0, 0, 0);
    begin_on(hs, "host_call_ticks_ns");
    t0 = rdtsc();
    for (i = 0; i < n; i++) sum += hs->ticks_ns();
    t1 = rdtsc();
    end_on(hs, "host_call_ticks_ns", "call", n, t1 - t0, 0, 0);
    return sum;
}

/* ---- host-call breakdown passes: the image arms its host-call clock between @stages-begin and
 * @stages-end (which carries unit=, n=, the loop's cycles and the round) and prints, per call kind,
 * the cycles of each stage of the path, the least of STAGE_ROUNDS rounds. They run after every
 * workload: the clock's laps cost cycles, so these loops' own timings are not the workloads'
 * figures. ---- */
#define STAGE_ROUNDS 5
#define STAGE_CALLS 1000
static void stages_begin(const char *name) { mark_on(g_services, "@stages-begin ", name); }
static void stages_end(const char *name, const char *unit, uint64_t units, uint64_t cycles, uint64_t round) {
    LINE l;
    l_end(&l, "@stages-end ", name, unit, units, cycles);
    l_str(&l, " round=");
    l_dec(&l, round);
    l_str(&l, " of=");
    l_dec(&l, STAGE_ROUNDS);
    l_flush(g_services, &l);
}

static HRESULT cb_qi(ICLRMemoryNotificationCallback *t, REFIID r, void **p) { (void)t; (void)r; *p = 0; return E_NOINTERFACE; }
static ULONG cb_addref(ICLRMemoryNotificationCallback *t) { (void)t; return 1; }
static ULONG cb_release(ICLRMemoryNotificationCallback *t) { (void)t; return 1; }
static HRESULT cb_notify(ICLRMemoryNotificationCallback *t, EMemoryAvailable a) { (void)t; (void)a; return S_OK; }
static const ICLRMemoryNotificationCallbackVtbl g_cb_vtbl = {cb_qi, cb_addref, cb_release, cb_notify};
static ICLRMemoryNotificationCallback g_cb = {&g_cb_vtbl};

enum { PASS_ADDREF, PASS_QUERY, PASS_RESERVE_RELEASE, PASS_PROTECT, PASS_GUARD };

/* One breakdown pass: STAGE_ROUNDS rounds of STAGE_CALLS iterations of `what`. */
static void stage_pass(const char *name, int what, char *page) {
    MEMORY_BASIC_INFORMATION m;
    SIZE_T got = 0;
    uint64_t r, i, t0, t1, sum = 0;
    HRESULT hr = S_OK;
    for (r = 1; r <= STAGE_ROUNDS; r++) {
        stages_begin(name);
        t0 = rdtsc();
        for (i = 0; i < STAGE_CALLS; i++) {
            switch (what) {
            case PASS_ADDREF:
                sum += V->AddRef(g_host);
                sum += V->Release(g_host);
                break;
            case PASS_QUERY:
                hr |= V->VirtualQuery(g_host, page, &m, sizeof m, &got);
                break;
            case PASS_RESERVE_RELEASE:
                release(reserve_at(0, KB64));
                break;
            case PASS_GUARD: /* as guard_page_fault: arm, touch (exception, handler, continue) */
                protect(page, PAGE, PAGE_READWRITE | PAGE_GUARD);
                ((volatile char *)page)[0] = 2;
                break;
            default:
                protect(page, PAGE, (i & 1) ? PAGE_READWRITE : PAGE_READONLY);
            }
        }
        t1 = rdtsc();
        stages_end(name, what == PASS_ADDREF ? "call" : what == PASS_RESERVE_RELEASE ? "op" : what == PASS_GUARD ? "round-trip" : "call",
                   what == PASS_ADDREF ? 2 * STAGE_CALLS : STAGE_CALLS, t1 - t0, r);
    }
    if (hr != S_OK || (what == PASS_ADDREF && sum == 0)) fail(name, hr);
}

static void stage_passes(void) {
    char *c = reserve_at(0, KB64);
    HRESULT hr;
    void *h;
    if (!c) return;
    commit(c, KB64);
    touch(c, KB64);
    stage_pass("stages_addref_release", PASS_ADDREF, 0);
    stage_pass("stages_query_committed", PASS_QUERY, c);
    stage_pass("stages_query_free", PASS_QUERY, (char *)0x400000000000ull);
    stage_pass("stages_reserve_release_64k", PASS_RESERVE_RELEASE, 0);
    stage_pass("stages_protect_1_page", PASS_PROTECT, c);
    /* The guard-page round trip: VirtualProtect, the fault and its exception frame, the handler
     * in ring 3, `continue`. */
    h = g_services->add_vectored_exception_handler(1, handler);
    if (!h) fail("add_vectored_exception_handler", 0);
    g_guard_hits = 0;
    stage_pass("stages_guard_page_fault", PASS_GUARD, c);
    g_services->remove_vectored_exception_handler(h);
    if (g_guard_hits != STAGE_ROUNDS * STAGE_CALLS) fail("guard-page exceptions delivered", (HRESULT)g_guard_hits);
    /* With a memory-notification callback registered (as a CLR host has): every call may check
     * the band. */
    hr = V->RegisterMemoryNotificationCallback(g_host, &g_cb);
    if (hr != S_OK) fail("register callback", hr);
    stage_pass("stages_query_with_callback", PASS_QUERY, c);
    hr = V->RegisterMemoryNotificationCallback(g_host, 0);
    if (hr != S_OK) fail("unregister callback", hr);
    release(c);
}

int32_t guest_main(IHostMemoryManager *host, const HOST_SERVICES *services) {
    uint64_t c0, c1, n0, n1, sum;
    LINE l;
    n0 = services->ticks_ns();
    c0 = rdtsc();
    sum = noop_calls(host, services); /* first, before any global is written */
    g_host = host;
    V = host->lpVtbl;
    g_services = services;
    put("vmbench-guest: hello from ring 3\n");
    if (sum == 0) fail("no-op calls", 0);
    reserve_release_64k();
    commit_touch_decommit();
    protect_256_pages();
    reserve_release_10k_live();
    commit_touch_256m("commit_touch_256m");
    commit_touch_256m("commit_touch_256m_again");
    queries();
    large_page_commit();
    guard_page_fault();
    stage_passes();
    c1 = rdtsc();
    n1 = services->ticks_ns();
    /* Cross-check of the clock the image converts cycles with: the ring-3 TSC against ticks_ns. */
    l.n = 0;
    l_str(&l, "vmbench-guest: rdtsc in ring 3 ran at ");
    l_dec(&l, (n1 - n0) >= 1000000 ? (c1 - c0) * 1000 / ((n1 - n0) / 1000000) : 0);
    l_str(&l, " cycles per second of HOST_SERVICES.ticks_ns over the whole run");
    l_flush(services, &l);
    l_str(&l, "vmbench-guest: ");
    l_dec(&l, (uint64_t)g_errors);
    l_str(&l, " errors");
    l_flush(services, &l);
    return g_errors ? 1 : 0;
}
