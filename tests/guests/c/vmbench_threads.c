/* The guest-thread scaling benchmark (run by the benchmark image, kernel/src/bin/bench.rs, after
 * vmbench_guest.c: ./run-qemu.sh --bench; alone: ./run-qemu.sh --bench --guest-args guest-threads).
 *
 * Two workloads, each from 1, 2 and 4 HOST_SERVICES v2 threads (host-abi §10.2) at once, every
 * thread on its own region (fixed addresses, 4 GiB apart, in a 512 GiB slot nothing else uses):
 *
 *     commit_touch_decommit_64k  one op: commit 64 KiB of the thread's reservation, write each of
 *                                its 16 pages, decommit them (two IHostMemoryManager calls)
 *     reserve_release_64k        one op: reserve 64 KiB at the thread's address, release it (two)
 *
 * The threads are created, make their page tables with a few warm-up ops, and meet on a barrier
 * (wait_on_address on a counter); the main thread then writes the begin marker, sets the common
 * deadline (a fixed time, on rdtsc calibrated against ticks_ns) and wakes them all. Each counts its
 * ops until the deadline and reports; the main thread waits for all of them (wait_on_address
 * again) and writes the end marker before any thread ends, so the figures between the markers are
 * the ops' alone (not the release of thread stacks at thread exit). Markers, one write each:
 *
 *     @threads-begin NAME threads=N
 *     @threads-end NAME threads=N ops=OPS calls=CALLS cycles=RDTSC_CYCLES_FROM_START_TO_LAST_END
 *
 * The image's write hook reads the kernel's shootdown counters, kernel entries and scheduler
 * figures at both and prints the "bench-guest-scaling" row. Nothing asserts a speed; the guest
 * exits 1 if a call fails. */
#include "host_abi.h"
#include "guest_util.h"
#include "vmbench_util.h"

#define PAGE 4096ull
#define KB64 (64ull << 10)
#define INF 0xFFFFFFFFFFFFFFFFull
#define SLOT 0x0000040000000000ull    /* 4 TiB: PML4 slot 8, unused by the image, stack and heap */
#define REGION_STRIDE (4ull << 30)     /* thread i's region: SLOT + i * 4 GiB */
#define RR_OFFSET (1ull << 30)         /* reserve_release's address inside the region */
#define MAX_THREADS 4
#define WARM_UP_OPS 8
#define RUN_MS 2000ull

static IHostMemoryManager *g_host;
static const IHostMemoryManagerVtbl *V;

typedef enum { COMMIT_TOUCH_DECOMMIT, RESERVE_RELEASE } WORKLOAD;
static const char *const NAMES[] = {"commit_touch_decommit_64k", "reserve_release_64k"};

typedef struct WORKER {
    WORKLOAD workload;
    char *region;
    uint64_t ops;
    uint64_t end_tsc;
    uint32_t errors;
} WORKER;

static WORKER g_workers[MAX_THREADS];
static volatile uint32_t g_ready, g_done, g_leave;
static volatile uint64_t g_deadline; /* 0 until the start */

static void failed(WORKER *w, const char *what, HRESULT hr) {
    LINE l;
    l.n = 0;
    w->errors++;
    l_str(&l, "vmbench-threads: FAILED ");
    l_str(&l, what);
    l_str(&l, ": ");
    l_hex(&l, (uint32_t)hr);
    l_flush(g_services, &l);
}

static void one_op(WORKER *w) {
    void *p = 0;
    HRESULT hr;
    uint64_t o;
    if (w->workload == COMMIT_TOUCH_DECOMMIT) {
        hr = V->VirtualAlloc(g_host, w->region, KB64, MEM_COMMIT, PAGE_READWRITE, eTaskCritical, &p);
        if (hr != S_OK) {
            failed(w, "commit", hr);
            return;
        }
        for (o = 0; o < KB64; o += PAGE) ((volatile char *)w->region)[o] = 1;
        hr = V->VirtualFree(g_host, w->region, KB64, MEM_DECOMMIT);
        if (hr != S_OK) failed(w, "decommit", hr);
    } else {
        hr = V->VirtualAlloc(g_host, w->region + RR_OFFSET, KB64, MEM_RESERVE, PAGE_NOACCESS, eTaskCritical, &p);
        if (hr != S_OK) {
            failed(w, "reserve", hr);
            return;
        }
        hr = V->VirtualFree(g_host, p, 0, MEM_RELEASE);
        if (hr != S_OK) failed(w, "release", hr);
    }
}

/* Waits until *word (4 bytes) is at least `target`. */
static void wait_until(volatile uint32_t *word, uint32_t target) {
    uint32_t seen;
    while ((seen = __atomic_load_n(word, __ATOMIC_ACQUIRE)) < target)
        g_services->wait_on_address(word, &seen, 4, INF);
}
static void arrive(volatile uint32_t *word) {
    __atomic_fetch_add(word, 1, __ATOMIC_ACQ_REL);
    g_services->wake_by_address((void *)word, 1);
}

static uint32_t worker(void *arg) {
    WORKER *w = arg;
    uint64_t zero = 0, deadline, n = 0, i;
    void *p = 0;
    HRESULT hr;
    if (w->workload == COMMIT_TOUCH_DECOMMIT) {
        hr = V->VirtualAlloc(g_host, w->region, KB64, MEM_RESERVE, PAGE_NOACCESS, eTaskCritical, &p);
        if (hr != S_OK) failed(w, "reserve region", hr);
    }
    for (i = 0; i < WARM_UP_OPS && !w->errors; i++) one_op(w);
    arrive(&g_ready);
    while ((deadline = __atomic_load_n(&g_deadline, __ATOMIC_ACQUIRE)) == 0)
        g_services->wait_on_address(&g_deadline, &zero, 8, INF);
    do {
        one_op(w);
        n++;
    } while (rdtsc() < deadline && !w->errors);
    w->end_tsc = rdtsc();
    w->ops = n;
    arrive(&g_done);
    wait_until(&g_leave, 1);
    if (w->workload == COMMIT_TOUCH_DECOMMIT) {
        hr = V->VirtualFree(g_host, w->region, 0, MEM_RELEASE);
        if (hr != S_OK) failed(w, "release region", hr);
    }
    return w->errors;
}

/* One row: `threads` threads on `workload` for `run_cycles`. Returns the errors. */
static uint32_t row(WORKLOAD workload, uint32_t threads, uint64_t run_cycles) {
    uint64_t handles[MAX_THREADS], t0, last = 0, ops = 0;
    uint32_t i, code, errors = 0;
    LINE l;
    g_ready = g_done = g_leave = 0;
    g_deadline = 0;
    for (i = 0; i < threads; i++) {
        WORKER *w = &g_workers[i];
        w->workload = workload;
        w->region = (char *)(SLOT + i * REGION_STRIDE);
        w->ops = w->end_tsc = 0;
        w->errors = 0;
        handles[i] = g_services->create_thread(worker, w, 0, 0);
        if (!handles[i]) {
            put("vmbench-threads: FAILED create_thread\n");
            g_services->exit(1);
        }
    }
    wait_until(&g_ready, threads);
    l.n = 0;
    l_str(&l, "@threads-begin ");
    l_str(&l, NAMES[workload]);
    l_str(&l, " threads=");
    l_dec(&l, threads);
    l_flush(g_services, &l);
    t0 = rdtsc();
    __atomic_store_n(&g_deadline, t0 + run_cycles, __ATOMIC_RELEASE);
    g_services->wake_by_address((void *)&g_deadline, 1);
    wait_until(&g_done, threads);
    for (i = 0; i < threads; i++) {
        ops += g_workers[i].ops;
        if (g_workers[i].end_tsc > last) last = g_workers[i].end_tsc;
    }
    l_str(&l, "@threads-end ");
    l_str(&l, NAMES[workload]);
    l_str(&l, " threads=");
    l_dec(&l, threads);
    l_str(&l, " ops=");
    l_dec(&l, ops);
    l_str(&l, " calls=");
    l_dec(&l, 2 * ops);
    l_str(&l, " cycles=");
    l_dec(&l, last - t0);
    l_flush(g_services, &l);
    __atomic_store_n(&g_leave, 1, __ATOMIC_RELEASE);
    g_services->wake_by_address((void *)&g_leave, 1);
    for (i = 0; i < threads; i++) {
        code = 1;
        if (g_services->wait_thread(handles[i], INF, &code) != 0 || code != 0) errors++;
        g_services->close_thread(handles[i]);
    }
    return errors;
}

int32_t guest_main(IHostMemoryManager *host, const HOST_SERVICES *services) {
    static const uint32_t COUNTS[] = {1, 2, MAX_THREADS};
    uint64_t n0, n1, c0, c1, run_cycles;
    uint32_t errors = 0, w, k;
    LINE l;
    g_host = host;
    V = host->lpVtbl;
    g_services = services;
    if (services->version < 2 || services->cbSize < 192) {
        put("vmbench-threads: HOST_SERVICES is not version 2\n");
        return 1;
    }
    /* rdtsc's rate against the host clock, for the fixed run time. */
    n0 = services->ticks_ns();
    c0 = rdtsc();
    services->sleep_ns(50000000ull);
    n1 = services->ticks_ns();
    c1 = rdtsc();
    /* No overflow: (c1 - c0) is about 50 ms of TSC, far below 2^64 / 2e9. */
    run_cycles = (n1 > n0) ? (c1 - c0) * (RUN_MS * 1000000ull) / (n1 - n0) : 2000000000ull;
    l.n = 0;
    l_str(&l, "vmbench-threads: ");
    l_dec(&l, services->cpu_count);
    l_str(&l, " CPUs run guest threads; each row runs ");
    l_dec(&l, RUN_MS);
    l_str(&l, " ms");
    l_flush(g_services, &l);
    for (w = COMMIT_TOUCH_DECOMMIT; w <= RESERVE_RELEASE; w++)
        for (k = 0; k < sizeof COUNTS / sizeof COUNTS[0]; k++) errors += row((WORKLOAD)w, COUNTS[k], run_cycles);
    l_str(&l, "vmbench-threads: ");
    l_dec(&l, errors);
    l_str(&l, " errors");
    l_flush(g_services, &l);
    return errors ? 1 : 0;
}
