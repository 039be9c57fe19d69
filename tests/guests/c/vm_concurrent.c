/* The memory manager under concurrency (issue 13, host-abi §10.2): four threads at once doing
 * reserve/commit/protect/query/decommit/release on regions of their own and on disjoint slices
 * of shared allocations, first touches of the same fresh pages from every thread at once
 * (demand-zero faults racing on one page must map one frame), a MALLOC_THREADSAFE heap with
 * blocks handed between threads, write watch on their own slices, and guard-page faults on the
 * faulting thread; every datum is checked. At the end the commit charge is exactly where it
 * started. Workers count errors and keep the first; the main thread prints the check lines. */
#include "host_abi.h"
#include "thread_util.h"

#define S g_services
#define PAGE 4096ull
#define THREADS 4
#define ITERATIONS 10
#define RACE_ROUNDS 10
#define SHARED_PAGES 1024 /* 4 MiB: two page tables, slices of 256 pages */
#define WW_PAGES 64
#define SLOTS 64

struct worker {
    uint32_t index;
    uint32_t errors;
    const char *first_error;
    uint64_t got, expected;
    uint32_t guard_faults, guard_touches, guard_wrong_thread;
    uint64_t ops;
    volatile uint64_t self; /* the handler reads it through FS: the thread's own record */
};
static struct worker g_workers[THREADS];
static uint8_t *g_shared, *g_race, *g_ww;
static IHostMalloc *g_heap;
static volatile uint64_t g_slots[SLOTS];
static volatile uint32_t g_barrier_count, g_barrier_gen, g_guard_without_tp;

static void fail(struct worker *w, const char *what, uint64_t got, uint64_t expected) {
    if (!w->errors++) {
        w->first_error = what;
        w->got = got;
        w->expected = expected;
    }
}
#define EXPECT(w, what, got, exp)                                                                                      \
    do {                                                                                                               \
        uint64_t g_ = (uint64_t)(got), e_ = (uint64_t)(exp);                                                           \
        if (g_ != e_) fail(w, what, g_, e_);                                                                           \
    } while (0)

static void barrier(void) {
    uint32_t gen = ld32(&g_barrier_gen);
    if (add32(&g_barrier_count, 1) == THREADS) {
        st32(&g_barrier_count, 0);
        add32(&g_barrier_gen, 1);
        S->wake_by_address((void *)&g_barrier_gen, 1);
    } else {
        while (ld32(&g_barrier_gen) == gen) S->wait_on_address(&g_barrier_gen, &gen, 4, 1000 * MS);
    }
}

static int32_t guard_handler(GUEST_EXCEPTION *e) {
    struct worker *w;
    if (e->code != STATUS_GUARD_PAGE_VIOLATION) return EXCEPTION_CONTINUE_SEARCH;
    w = (struct worker *)S->get_thread_pointer();
    if (!w) {
        /* Only workers touch guard pages, and each set its thread pointer first. */
        add32(&g_guard_without_tp, 1);
        return EXCEPTION_CONTINUE_EXECUTION;
    }
    w->guard_faults++;
    {
        uint64_t self;
        __asm__ volatile("mov %%fs:%c1, %0" : "=r"(self) : "i"(__builtin_offsetof(struct worker, self)));
        if (self != (uint64_t)w) w->guard_wrong_thread++;
    }
    return EXCEPTION_CONTINUE_EXECUTION; /* retried: the guard bit is gone */
}

static uint32_t tag(struct worker *w, uint32_t it, uint32_t page) { return (w->index << 28) | (it << 12) | page; }

/* A region of its own: every operation, with the data and VirtualQuery checked after each. */
static void private_region(struct worker *w, uint32_t it, uint64_t *rng) {
    uint64_t mask = rng_next(rng), p;
    DWORD old;
    uint8_t *b = valloc(0, 64 * PAGE, MEM_RESERVE, PAGE_READWRITE);
    MEMORY_BASIC_INFORMATION m;
    EXPECT(w, "private reserve", b != 0, 1);
    if (!b) return;
    m = query((uint64_t)b);
    EXPECT(w, "reserved region state", m.State, MEM_RESERVE);
    EXPECT(w, "reserved region size", m.RegionSize, 64 * PAGE);
    for (p = 0; p < 64; p++)
        if (mask >> p & 1) {
            EXPECT(w, "commit a page", valloc(b + p * PAGE, PAGE, MEM_COMMIT, PAGE_READWRITE) == b + p * PAGE, 1);
            EXPECT(w, "committed page is zero", *(volatile uint32_t *)(b + p * PAGE + 8), 0);
            *(volatile uint32_t *)(b + p * PAGE) = tag(w, it, (uint32_t)p);
            *(volatile uint32_t *)(b + p * PAGE + PAGE - 4) = ~tag(w, it, (uint32_t)p);
        }
    for (p = 0; p < 64; p++) {
        m = query((uint64_t)(b + p * PAGE));
        EXPECT(w, "query: allocation base", m.AllocationBase, (uint64_t)b);
        EXPECT(w, "query: state", m.State, (mask >> p & 1) ? MEM_COMMIT : MEM_RESERVE);
        EXPECT(w, "query: type", m.Type, MEM_PRIVATE);
    }
    for (p = 0; p < 64; p += 2)
        if (mask >> p & 1) {
            old = 0;
            EXPECT(w, "protect read-only", g_v->VirtualProtect(g_host, b + p * PAGE, PAGE, PAGE_READONLY, &old), S_OK);
            EXPECT(w, "old protection", old, PAGE_READWRITE);
            EXPECT(w, "query after protect", query((uint64_t)(b + p * PAGE)).Protect, PAGE_READONLY);
        }
    for (p = 0; p < 64; p++)
        if (mask >> p & 1) {
            EXPECT(w, "data at the page start", *(volatile uint32_t *)(b + p * PAGE), tag(w, it, (uint32_t)p));
            EXPECT(w, "data at the page end", *(volatile uint32_t *)(b + p * PAGE + PAGE - 4), ~tag(w, it, (uint32_t)p));
        }
    for (p = 1; p < 64; p += 3)
        if (mask >> p & 1) {
            EXPECT(w, "decommit", g_v->VirtualFree(g_host, b + p * PAGE, PAGE, MEM_DECOMMIT), S_OK);
            EXPECT(w, "query after decommit", query((uint64_t)(b + p * PAGE)).State, MEM_RESERVE);
            EXPECT(w, "recommit", valloc(b + p * PAGE, PAGE, MEM_COMMIT, PAGE_READWRITE) == b + p * PAGE, 1);
            EXPECT(w, "recommitted page is zero again", *(volatile uint32_t *)(b + p * PAGE), 0);
        }
    if (it % 4 == 0) {
        /* A guard page: the first touch raises STATUS_GUARD_PAGE_VIOLATION on this thread. */
        uint8_t *g = b + 63 * PAGE;
        EXPECT(w, "commit a guard page", valloc(g, PAGE, MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD) == g, 1);
        w->guard_touches++;
        *(volatile uint32_t *)g = 5;
        EXPECT(w, "the guarded write landed", *(volatile uint32_t *)g, 5);
    }
    EXPECT(w, "release", g_v->VirtualFree(g_host, b, 0, MEM_RELEASE), S_OK);
    w->ops += 200;
}

/* A slice of the shared 4 MiB allocation: neighbours change the same page tables. */
static void shared_slice(struct worker *w, uint32_t it, uint64_t *rng) {
    uint64_t first = w->index * (SHARED_PAGES / THREADS), k;
    for (k = 0; k < 8; k++) {
        uint64_t page = first + rng_next(rng) % (SHARED_PAGES / THREADS);
        uint8_t *p = g_shared + page * PAGE;
        MEMORY_BASIC_INFORMATION m;
        EXPECT(w, "shared: commit", valloc(p, PAGE, MEM_COMMIT, PAGE_READWRITE) == p, 1);
        *(volatile uint32_t *)(p + 16) = tag(w, it, (uint32_t)page);
        m = query((uint64_t)p);
        EXPECT(w, "shared: query state", m.State, MEM_COMMIT);
        EXPECT(w, "shared: allocation base", m.AllocationBase, (uint64_t)g_shared);
        EXPECT(w, "shared: data", *(volatile uint32_t *)(p + 16), tag(w, it, (uint32_t)page));
        if (k & 1) {
            EXPECT(w, "shared: decommit", g_v->VirtualFree(g_host, p, PAGE, MEM_DECOMMIT), S_OK);
            EXPECT(w, "shared: query after decommit", query((uint64_t)p).State, MEM_RESERVE);
        }
        /* Anyone's page: whatever its state, the answer is a consistent region of the allocation. */
        page = rng_next(rng) % SHARED_PAGES;
        m = query((uint64_t)(g_shared + page * PAGE));
        EXPECT(w, "shared: foreign query base", m.AllocationBase, (uint64_t)g_shared);
        EXPECT(w, "shared: foreign query state", m.State == MEM_COMMIT || m.State == MEM_RESERVE, 1);
        EXPECT(w, "shared: foreign region inside",
               m.BaseAddress >= (uint64_t)g_shared && m.BaseAddress + m.RegionSize <= (uint64_t)g_shared + SHARED_PAGES * PAGE &&
                   m.BaseAddress <= (uint64_t)g_shared + page * PAGE && m.BaseAddress + m.RegionSize > (uint64_t)g_shared + page * PAGE,
               1);
    }
    w->ops += 40;
}

/* Heap blocks carry their size and a fill byte; some are handed to another thread to free. */
static void heap_work(struct worker *w, uint64_t *rng, int blocks, uint64_t max_size) {
    int k;
    for (k = 0; k < blocks; k++) {
        uint64_t size = 16 + rng_next(rng) % max_size, i, other;
        uint8_t *blk = 0, fill = (uint8_t)(rng_next(rng) | 1);
        EXPECT(w, "heap alloc", g_heap->lpVtbl->Alloc(g_heap, size, eTaskCritical, (void **)&blk), S_OK);
        if (!blk) continue;
        EXPECT(w, "heap block 16-byte aligned", (uint64_t)blk & 15, 0);
        ((volatile uint64_t *)blk)[0] = size;
        blk[8] = fill;
        for (i = 9; i < size; i++) blk[i] = fill;
        other = __atomic_exchange_n(&g_slots[rng_next(rng) % SLOTS], (uint64_t)blk, __ATOMIC_ACQ_REL);
        if (other) {
            uint8_t *o = (uint8_t *)other;
            uint64_t osize = ((volatile uint64_t *)o)[0], bad = 0;
            for (i = 9; i < osize; i++) bad += o[i] != o[8];
            EXPECT(w, "a block from another thread is intact", bad, 0);
            EXPECT(w, "heap free (of another thread's block)", g_heap->lpVtbl->Free(g_heap, o), S_OK);
        }
    }
    w->ops += 16;
}

/* Write watch on its own 16 pages: exactly the pages it wrote since its last reset. */
static void write_watch(struct worker *w, uint64_t *rng) {
    uint8_t *base = g_ww + w->index * 16 * PAGE;
    void *addrs[16];
    uint64_t count = 16, mask = rng_next(rng) & 0xFFFF, k, seen = 0;
    uint32_t gran = 0;
    EXPECT(w, "write watch: reset", S->get_write_watch(WRITE_WATCH_FLAG_RESET, base, 16 * PAGE, addrs, &count, &gran), 0);
    for (k = 0; k < 16; k++)
        if (mask >> k & 1) *(volatile uint32_t *)(base + k * PAGE + 32) = (uint32_t)k;
    count = 16;
    EXPECT(w, "write watch: get", S->get_write_watch(0, base, 16 * PAGE, addrs, &count, &gran), 0);
    for (k = 0; k < count && k < 16; k++) seen |= 1ull << (((uint64_t)addrs[k] - (uint64_t)base) / PAGE);
    EXPECT(w, "write watch: exactly the pages written", seen, mask);
    w->ops += 2;
}

/* Every thread touches the same fresh pages at once: one frame per page, no lost increments. */
static void race(struct worker *w, uint32_t round) {
    uint64_t p;
    barrier();
    EXPECT(w, "race: commit the shared pages (all at once)", valloc(g_race, 16 * PAGE, MEM_COMMIT, PAGE_READWRITE) == g_race, 1);
    for (p = 0; p < 16; p++) __atomic_add_fetch((volatile uint32_t *)(g_race + p * PAGE) + w->index, 1, __ATOMIC_ACQ_REL);
    barrier();
    for (p = 0; p < 16; p++) {
        uint32_t t;
        for (t = 0; t < THREADS; t++) EXPECT(w, "race: every thread's increment on the one frame", ((volatile uint32_t *)(g_race + p * PAGE))[t], 1);
    }
    barrier();
    if (w->index == round % THREADS)
        EXPECT(w, "race: decommit", g_v->VirtualFree(g_host, g_race, 16 * PAGE, MEM_DECOMMIT), S_OK);
    w->ops += 2;
}

static uint32_t worker_main(void *arg) {
    struct worker *w = (struct worker *)arg;
    uint64_t rng = 0x9E3779B97F4A7C15ull * (w->index + 1);
    uint32_t it;
    w->self = (uint64_t)w;
    S->set_thread_pointer((void *)w);
    /* All at once on the heap first: small blocks, as fast as it goes. */
    barrier();
    heap_work(w, &rng, 3000, 200);
    for (it = 0; it < ITERATIONS; it++) {
        private_region(w, it, &rng);
        shared_slice(w, it, &rng);
        heap_work(w, &rng, 8, 3000);
        write_watch(w, &rng);
        if (it < RACE_ROUNDS) race(w, it);
    }
    return 0;
}

int32_t guest_main(IHostMemoryManager *host, const HOST_SERVICES *services) {
    uint64_t start, t[THREADS], i, leftover = 0, bad_frees = 0, t0;
    uint32_t errors = 0;
    void *h;
    thread_guest_init(host, services);
    start = committed_now();
    h = services->add_vectored_exception_handler(1, guard_handler);
    g_shared = valloc(0, SHARED_PAGES * PAGE, MEM_RESERVE, PAGE_READWRITE);
    g_race = valloc(0, 16 * PAGE, MEM_RESERVE, PAGE_READWRITE);
    g_ww = valloc(0, WW_PAGES * PAGE, MEM_RESERVE | MEM_COMMIT | MEM_WRITE_WATCH, PAGE_READWRITE);
    check("setup: shared regions", g_shared && g_race && g_ww && h, 1);
    check("setup: MALLOC_THREADSAFE heap", g_v->CreateMalloc(g_host, MALLOC_THREADSAFE, &g_heap), S_OK);
    if (!g_shared || !g_race || !g_ww || !g_heap) return summary();
    t0 = now_ns();
    for (i = 0; i < THREADS; i++) {
        g_workers[i].index = (uint32_t)i;
        t[i] = services->create_thread(worker_main, &g_workers[i], 0, 0);
    }
    for (i = 0; i < THREADS; i++) {
        uint32_t code = 0xBAD, r = services->wait_thread(t[i], 300000 * MS, &code);
        check("worker ended", r == 0 ? code : 0xBAD0000u + r, 0);
        if (r != 0) return summary(); /* it still uses the shared regions: leave them */
        services->close_thread(t[i]);
    }
    put("vm_concurrent: ");
    for (i = 0; i < THREADS; i++) {
        struct worker *w = &g_workers[i];
        put_dec(w->ops);
        put(i + 1 < THREADS ? " + " : " operations");
    }
    put(" in ");
    put_dec((now_ns() - t0) / MS);
    put(" ms\n");
    for (i = 0; i < THREADS; i++) {
        struct worker *w = &g_workers[i];
        errors += w->errors;
        if (w->errors) {
            put("first error of worker ");
            put_dec(i);
            put(": ");
            put(w->first_error);
            put("\n");
            check(w->first_error, w->got, w->expected);
        }
        check("guard-page faults: one per touch", w->guard_faults, w->guard_touches);
        check("guard-page faults handled on the faulting thread", w->guard_wrong_thread, 0);
    }
    check("no worker saw a wrong result or datum", errors, 0);
    check("guard-page handlers saw their thread's FS base", g_guard_without_tp, 0);
    for (i = 0; i < SLOTS; i++)
        if (g_slots[i]) {
            uint8_t *o = (uint8_t *)g_slots[i];
            uint64_t n = ((uint64_t *)o)[0], k;
            for (k = 9; k < n; k++) leftover += o[k] != o[8];
            if (g_heap->lpVtbl->Free(g_heap, o) != S_OK) bad_frees++;
        }
    check("leftover heap blocks intact", leftover, 0);
    check("leftover heap blocks freed", bad_frees, 0);
    check("heap released", g_heap->lpVtbl->Release(g_heap), 0);
    check("release the shared allocation", g_v->VirtualFree(g_host, g_shared, 0, MEM_RELEASE), S_OK);
    check("release the race region", g_v->VirtualFree(g_host, g_race, 0, MEM_RELEASE), S_OK);
    check("release the write-watch region", g_v->VirtualFree(g_host, g_ww, 0, MEM_RELEASE), S_OK);
    services->remove_vectored_exception_handler(h);
    check("commit charge exactly where it started", committed_now(), start);
    return summary();
}
