/* Threads fuzzing one window of the address space at once (issue 13, host-abi §10.2): where
 * vm_concurrent.c gives every thread regions of its own, here four threads (and short-lived
 * threads they start) make random calls on the SAME 4 MiB window for a while: reserve, commit,
 * MEM_RESET/MEM_RESET_UNDO, large pages, decommit and release of random ranges, protection
 * changes with guard pages, queries, write watch, reads and writes of random addresses (faults
 * caught by a vectored handler that skips the access), with the calls' out-pointers aimed into
 * the window too (so the kernel's result writes race with decommits and protection changes on
 * other CPUs), beside a MALLOC_THREADSAFE heap whose blocks they fill and check.
 *
 * What must hold whatever the interleaving:
 * - every result is one of the contract's (host-abi §4, §7), and the guest never dies;
 * - each VirtualQuery answer is one consistent snapshot (a page-aligned base at the address, a
 *   region of whole pages, fields that agree with its state);
 * - a word read from the window is 0 or the one value every writer stores at that address (its
 *   tag): anything else is a frame seen through a stale translation or handed out without
 *   being zeroed;
 * - heap blocks keep their contents;
 * - at the end, once every allocation left in the window is released, the commit charge is
 *   exactly where it started (and the kernel test checks frames, tables and spaces);
 * - with the argument "quit", worker 0 calls exit(42) halfway: the guest ends with 42 and the
 *   kernel's accounting is as before it started, whatever the other threads were doing.
 * Workers count errors and keep the first; only the main thread prints check lines. */
#define VMK_GUEST_MAIN_ARGS /* the argument string: a seed, or "quit" */
#include "host_abi.h"
#include "thread_util.h"

#define S g_services
#define PAGE 4096ull
#define GRAN 0x10000ull
#define THREADS 4
#define WINDOW (4ull << 20)
/* The window's last 512 KiB is where out-pointers aimed into the window point: the kernel writes
 * results there, so its words are not checked against their tags. */
#define SCRIBBLE (WINDOW - (512ull << 10))
#define MAX_SPAN (1ull << 20)
#define RUN_MS 1500
#define MIN_OPS 200
#define HEAP_SLOTS 16

struct worker {
    uint32_t index;
    uint32_t errors;
    const char *first_error;
    uint64_t got, expected, at;
    uint64_t ops, reads, writes, words_checked, faults, guard_faults, queries, ok_calls, children;
    uint64_t rng;
    void *heap_blocks[HEAP_SLOTS];
    uint64_t heap_sizes[HEAP_SLOTS];
};
static struct worker g_workers[THREADS];
static struct worker g_children[THREADS];
static uint64_t g_window;
static IHostMalloc *g_heap;
static volatile uint32_t g_unexpected_exceptions;
static volatile uint64_t g_deadline;
/* With the argument "quit": worker 0 ends the guest (exit code 42) halfway through, while the
 * others are in the middle of calls and faults. */
static int g_quit;
static uint64_t g_quit_at;
/* Where recent successful VirtualAlloc calls of any thread landed: half the addresses every thread
 * picks are near one of them, so calls and accesses meet on live allocations. */
#define RECENT 64
static volatile uint64_t g_recent[RECENT];
static volatile uint32_t g_recent_next;

static void fail(struct worker *w, const char *what, uint64_t got, uint64_t expected, uint64_t at) {
    if (!w->errors++) {
        w->first_error = what;
        w->got = got;
        w->expected = expected;
        w->at = at;
    }
}

/* The value every writer stores at the 8-byte word `addr` of the window. */
static uint64_t tag(uint64_t addr) { return (addr * 0x9e3779b97f4a7c15ull) | 1; }

/* Reads or writes 8 bytes at rdi; returns 0, or 1 if the access faulted (the vectored handler
 * sends a fault at the access to the `_fail` label with the stack as it was). */
uint64_t chaos_read(uint64_t addr, uint64_t *out);
uint64_t chaos_write(uint64_t addr, uint64_t value);
extern const char chaos_read_access[], chaos_write_access[], chaos_access_fail[];
__asm__(".text\n"
        ".globl chaos_read\n"
        "chaos_read:\n"
        "    xorl %eax, %eax\n"
        ".globl chaos_read_access\n"
        "chaos_read_access:\n"
        "    movq (%rdi), %rdx\n"
        "    movq %rdx, (%rsi)\n"
        "    ret\n"
        ".globl chaos_write\n"
        "chaos_write:\n"
        "    xorl %eax, %eax\n"
        ".globl chaos_write_access\n"
        "chaos_write_access:\n"
        "    movq %rsi, (%rdi)\n"
        "    ret\n"
        ".globl chaos_access_fail\n"
        "chaos_access_fail:\n"
        "    movl $1, %eax\n"
        "    ret\n");

static int32_t access_handler(GUEST_EXCEPTION *e) {
    struct worker *w = (struct worker *)S->get_thread_pointer();
    uint64_t rip = e->context->rip;
    if (rip != (uint64_t)chaos_read_access && rip != (uint64_t)chaos_write_access) {
        add32(&g_unexpected_exceptions, 1);
        return EXCEPTION_CONTINUE_SEARCH;
    }
    if (e->code != STATUS_ACCESS_VIOLATION && e->code != STATUS_GUARD_PAGE_VIOLATION) {
        add32(&g_unexpected_exceptions, 1);
        return EXCEPTION_CONTINUE_SEARCH;
    }
    if (w) {
        w->faults++;
        if (e->code == STATUS_GUARD_PAGE_VIOLATION) w->guard_faults++;
        if (e->address < g_window || e->address >= g_window + WINDOW + MAX_SPAN)
            fail(w, "a caught fault outside the window", e->address, g_window, rip);
    }
    e->context->rip = (uint64_t)chaos_access_fail;
    return EXCEPTION_CONTINUE_EXECUTION;
}

static uint64_t below(struct worker *w, uint64_t n) { return n ? rng_next(&w->rng) % n : 0; }

/* An address in the window (or just past it), aligned in one of several ways. */
static uint64_t pick_addr(struct worker *w) {
    uint64_t a = g_window + below(w, WINDOW), near = ld64(&g_recent[below(w, RECENT)]);
    if (near && below(w, 2)) a = near + below(w, 16 * PAGE);
    switch (below(w, 8)) {
    case 0: case 1: case 2: case 3: return a & ~(PAGE - 1);
    case 4: case 5: return a & ~(GRAN - 1);
    case 6: return a & ~7ull;
    default: return a;
    }
}

static uint64_t pick_size(struct worker *w) {
    switch (below(w, 16)) {
    case 0: return 0;
    case 1: return 1 + below(w, PAGE);
    case 2: return (1ull << 46) + below(w, 1ull << 40); /* past the end of user space */
    case 3: return ~0ull - below(w, GRAN);             /* wraps around */
    case 4: case 5: case 6: return (1 + below(w, 256)) * PAGE;
    case 7: return 2ull << 20;
    default: return (1 + below(w, 16)) * PAGE;
    }
}

static uint32_t pick_protect(struct worker *w) {
    static const uint32_t p[] = {PAGE_NOACCESS, PAGE_READONLY, PAGE_READWRITE, PAGE_READWRITE, PAGE_READWRITE,
                                 PAGE_EXECUTE_READWRITE, PAGE_EXECUTE_READ, PAGE_READWRITE | PAGE_GUARD,
                                 PAGE_READONLY | PAGE_GUARD, PAGE_WRITECOPY, PAGE_READWRITE | PAGE_NOCACHE, 0};
    if (below(w, 50) == 0) return (uint32_t)rng_next(&w->rng);
    return p[below(w, sizeof p / sizeof p[0])];
}

/* An out-pointer: usually the worker's own, sometimes into the window's scribble area (which
 * other threads decommit, protect and guard meanwhile), sometimes NULL. */
static void *pick_out(struct worker *w, void *own) {
    switch (below(w, 8)) {
    case 0: return (void *)(g_window + SCRIBBLE + (below(w, WINDOW - SCRIBBLE) & ~7ull));
    case 1: return (void *)(g_window + SCRIBBLE + below(w, WINDOW - SCRIBBLE)); /* maybe misaligned, maybe across pages */
    case 2: if (below(w, 4) == 0) return 0; /* fallthrough */
    default: return own;
    }
}

#define E_NOACC ((uint32_t)HRESULT_FROM_WIN32(ERROR_NOACCESS))
#define E_BADADDR ((uint32_t)HRESULT_FROM_WIN32(ERROR_INVALID_ADDRESS))
#define E_BADLEN ((uint32_t)HRESULT_FROM_WIN32(ERROR_BAD_LENGTH))
#define E_DENIED ((uint32_t)HRESULT_FROM_WIN32(ERROR_ACCESS_DENIED))
#define E_PRIV ((uint32_t)HRESULT_FROM_WIN32(ERROR_PRIVILEGE_NOT_HELD))
#define E_INVAL ((uint32_t)E_INVALIDARG)
#define E_OOM ((uint32_t)E_OUTOFMEMORY)
#define E_PTR ((uint32_t)E_POINTER)
#define GUARD_HR 0x80000001u

static void result(struct worker *w, const char *what, uint32_t hr, int allowed) {
    if (!allowed) fail(w, what, hr, 0, 0);
    else if (hr == 0) w->ok_calls++;
}

static void op_alloc(struct worker *w) {
    static const uint32_t types[] = {MEM_RESERVE, MEM_COMMIT, MEM_COMMIT | MEM_RESERVE, MEM_COMMIT | MEM_RESERVE, MEM_COMMIT, MEM_COMMIT, MEM_RESET,
                                     MEM_RESET_UNDO, MEM_RESERVE | MEM_WRITE_WATCH, MEM_COMMIT | MEM_RESERVE | MEM_WRITE_WATCH,
                                     MEM_COMMIT | MEM_RESERVE | MEM_LARGE_PAGES, MEM_COMMIT | MEM_RESET, MEM_RESERVE | MEM_TOP_DOWN};
    uint32_t type = below(w, 50) == 0 ? (uint32_t)rng_next(&w->rng) : types[below(w, sizeof types / sizeof types[0])];
    uint64_t addr = pick_addr(w), size = pick_size(w);
    void *mem = (void *)1, **out = (void **)pick_out(w, &mem);
    uint32_t hr;
    if (type & MEM_LARGE_PAGES) {
        addr &= ~((2ull << 20) - 1);
        size = 2ull << 20;
    }
    hr = (uint32_t)g_v->VirtualAlloc(g_host, (void *)addr, size, type, pick_protect(w), eTaskCritical, out);
    result(w, "VirtualAlloc: result outside the contract", hr,
           hr == 0 || hr == E_OOM || hr == E_INVAL || hr == E_BADADDR || hr == E_NOACC || hr == E_PTR || hr == GUARD_HR ||
               hr == E_PRIV || hr == E_DENIED);
    if (hr == 0 && out == (void **)&mem) {
        if ((uint64_t)mem < g_window || (uint64_t)mem >= g_window + WINDOW + MAX_SPAN)
            fail(w, "VirtualAlloc at an address of the window placed outside it", (uint64_t)mem, addr, type);
        else if ((uint64_t)mem < g_window + WINDOW)
            st64(&g_recent[add32(&g_recent_next, 1) % RECENT], (uint64_t)mem);
    }
}

static void op_free(struct worker *w) {
    static const uint32_t types[] = {MEM_DECOMMIT, MEM_DECOMMIT, MEM_RELEASE, MEM_RELEASE, MEM_DECOMMIT | MEM_RELEASE, 0};
    uint32_t type = below(w, 50) == 0 ? (uint32_t)rng_next(&w->rng) : types[below(w, sizeof types / sizeof types[0])];
    uint64_t size = (type == MEM_RELEASE && below(w, 2)) ? 0 : pick_size(w);
    uint32_t hr = (uint32_t)g_v->VirtualFree(g_host, (void *)pick_addr(w), size, type);
    result(w, "VirtualFree: result outside the contract", hr, hr == 0 || hr == E_INVAL || hr == E_BADADDR || hr == E_NOACC);
}

static void op_protect(struct worker *w) {
    DWORD old = 0xEEEEEEEE, *out = (DWORD *)pick_out(w, &old);
    uint32_t hr = (uint32_t)g_v->VirtualProtect(g_host, (void *)pick_addr(w), pick_size(w), pick_protect(w), out);
    result(w, "VirtualProtect: result outside the contract", hr,
           hr == 0 || hr == E_INVAL || hr == E_BADADDR || hr == E_NOACC || hr == GUARD_HR);
    if (hr == 0 && out == &old && (old == 0xEEEEEEEE || old == 0))
        fail(w, "VirtualProtect succeeded without an old protection", old, 0, 0);
}

static void op_query(struct worker *w) {
    MEMORY_BASIC_INFORMATION m, *out = (MEMORY_BASIC_INFORMATION *)pick_out(w, &m);
    SIZE_T got = 0, *pgot = below(w, 8) ? &got : (SIZE_T *)pick_out(w, &got);
    uint64_t addr = pick_addr(w);
    uint32_t hr;
    memset(&m, 0xEE, sizeof m);
    hr = (uint32_t)g_v->VirtualQuery(g_host, (void *)addr, out, sizeof m, pgot);
    result(w, "VirtualQuery: result outside the contract", hr,
           hr == 0 || hr == E_INVAL || hr == E_NOACC || hr == E_BADLEN || hr == E_PTR || hr == GUARD_HR);
    if (hr != 0 || out != &m) return;
    w->queries++;
    if (pgot == &got && got != sizeof m) fail(w, "VirtualQuery: *pResult", got, sizeof m, addr);
    if (m.BaseAddress != (addr & ~(PAGE - 1))) fail(w, "VirtualQuery: BaseAddress", m.BaseAddress, addr & ~(PAGE - 1), addr);
    if (m.RegionSize == 0 || m.RegionSize % PAGE) fail(w, "VirtualQuery: RegionSize", m.RegionSize, PAGE, addr);
    switch (m.State) {
    case MEM_FREE:
        if (m.AllocationBase != 0) fail(w, "VirtualQuery: a free region's AllocationBase", m.AllocationBase, 0, addr);
        break;
    case MEM_RESERVE:
    case MEM_COMMIT:
        if (m.Type != MEM_PRIVATE) fail(w, "VirtualQuery: Type", m.Type, MEM_PRIVATE, addr);
        if (m.AllocationBase % GRAN || m.AllocationBase > m.BaseAddress || m.AllocationBase < g_window - MAX_SPAN)
            fail(w, "VirtualQuery: AllocationBase", m.AllocationBase, m.BaseAddress, addr);
        if (m.AllocationProtect == 0) fail(w, "VirtualQuery: AllocationProtect", 0, 1, addr);
        if (m.State == MEM_RESERVE && m.Protect != 0) fail(w, "VirtualQuery: a reserved region's Protect", m.Protect, 0, addr);
        if (m.State == MEM_COMMIT && m.Protect == 0) fail(w, "VirtualQuery: a committed region's Protect", 0, 1, addr);
        break;
    default:
        fail(w, "VirtualQuery: State", m.State, MEM_COMMIT, addr);
    }
}

static void op_write_watch(struct worker *w) {
    void *addrs[64], **out = (void **)pick_out(w, addrs);
    uint64_t count = below(w, 65), *pcount = (uint64_t *)pick_out(w, &count);
    uint32_t gran = 0, r;
    if (below(w, 3) == 0) {
        r = S->reset_write_watch((void *)pick_addr(w), pick_size(w));
    } else {
        uint32_t flags = below(w, 10) == 0 ? (uint32_t)below(w, 4) : (uint32_t)below(w, 2);
        /* A count the guest does not control (read from the window) must not size a write
         * into the guest's own array. */
        if (pcount != &count) out = below(w, 4) ? (void **)(g_window + SCRIBBLE + (below(w, WINDOW - SCRIBBLE) & ~7ull)) : 0;
        r = S->get_write_watch(flags, (void *)pick_addr(w), pick_size(w), out, pcount, &gran);
        if (r == 0 && pcount == &count && count > 64) fail(w, "get_write_watch: count above the array's", count, 64, 0);
    }
    result(w, "write watch: result outside the contract", r,
           r == 0 || r == ERROR_INVALID_PARAMETER || r == ERROR_INVALID_ADDRESS || r == ERROR_NOACCESS || r == GUARD_HR);
}

/* Reads or writes a few words of one page of the window. */
static void op_touch(struct worker *w) {
    uint64_t base = pick_addr(w) & ~7ull, i, n = 1 + below(w, 8);
    int write = below(w, 2) == 0;
    for (i = 0; i < n; i++) {
        uint64_t a = (base + i * 8 * (1 + below(w, 64))) & ~7ull, v = 0;
        if (a + 8 > g_window + WINDOW + MAX_SPAN) break;
        if (write) {
            w->writes++;
            if (a < g_window + SCRIBBLE) chaos_write(a, tag(a));
        } else {
            w->reads++;
            if (chaos_read(a, &v) == 0 && a < g_window + SCRIBBLE) {
                w->words_checked++;
                if (v != 0 && v != tag(a)) fail(w, "a word of the window neither zero nor its tag", v, tag(a), a);
            }
        }
    }
}

/* A heap block of the worker's own: allocated and filled, or checked and freed. */
static void op_heap(struct worker *w) {
    uint64_t slot = below(w, HEAP_SLOTS), k;
    uint8_t *b = (uint8_t *)w->heap_blocks[slot];
    if (b) {
        for (k = 0; k < w->heap_sizes[slot]; k++)
            if (b[k] != (uint8_t)(slot * 31 + k + w->index)) {
                fail(w, "a heap block's contents changed", b[k], (uint8_t)(slot * 31 + k + w->index), (uint64_t)b);
                break;
            }
        result(w, "IHostMalloc::Free", (uint32_t)g_heap->lpVtbl->Free(g_heap, b), 1);
        w->heap_blocks[slot] = 0;
    } else {
        uint64_t size = 1 + below(w, below(w, 8) == 0 ? 20000 : 200);
        void *p = 0;
        uint32_t hr = (uint32_t)g_heap->lpVtbl->Alloc(g_heap, size, eTaskCritical, &p);
        result(w, "IHostMalloc::Alloc: result outside the contract", hr, hr == 0 || hr == E_OOM);
        if (hr == 0 && p) {
            for (k = 0; k < size; k++) ((uint8_t *)p)[k] = (uint8_t)(slot * 31 + k + w->index);
            w->heap_blocks[slot] = p;
            w->heap_sizes[slot] = size;
        }
    }
}

static void one_op(struct worker *w) {
    w->ops++;
    switch (below(w, 20)) {
    case 0: case 1: case 2: op_alloc(w); break;
    case 3: case 4: op_free(w); break;
    case 5: case 6: case 7: op_protect(w); break;
    case 8: case 9: op_query(w); break;
    case 10: op_write_watch(w); break;
    case 11: op_heap(w); break;
    default: op_touch(w); break;
    }
}

static uint32_t child_main(void *arg) {
    struct worker *w = (struct worker *)arg;
    uint64_t i;
    S->set_thread_pointer(w);
    for (i = 0; i < 50; i++) one_op(w);
    return 0;
}

static uint32_t worker_main(void *arg) {
    struct worker *w = (struct worker *)arg;
    uint64_t k;
    S->set_thread_pointer(w);
    while (w->ops < MIN_OPS || now_ns() < g_deadline) {
        one_op(w);
        if (g_quit && w->index == 0 && now_ns() > g_quit_at) S->exit(42);
        /* Now and then a thread of its own that fuzzes beside it and ends (its records are
         * added to this worker's once it has been waited for). */
        if (below(w, 400) == 0) {
            struct worker *c = &g_children[w->index];
            uint64_t t;
            memset(c, 0, sizeof *c);
            c->index = w->index + 16;
            c->rng = rng_next(&w->rng) | 1;
            t = S->create_thread(child_main, c, 0, 0);
            if (!t) {
                fail(w, "create_thread", 0, 1, 0);
                continue;
            }
            k = join(t);
            if (k != 0) fail(w, "a child thread's exit code", k, 0, 0);
            w->children++;
            w->ops += c->ops;
            w->faults += c->faults;
            w->reads += c->reads;
            w->writes += c->writes;
            w->words_checked += c->words_checked;
            w->queries += c->queries;
            if (c->errors && !w->errors) {
                fail(w, c->first_error, c->got, c->expected, c->at);
            }
            for (k = 0; k < HEAP_SLOTS; k++)
                if (c->heap_blocks[k] && g_heap->lpVtbl->Free(g_heap, c->heap_blocks[k]) != S_OK)
                    fail(w, "IHostMalloc::Free of a child's block", 1, 0, (uint64_t)c->heap_blocks[k]);
        }
    }
    /* Blocks still held are checked and freed by the main thread. */
    return 0;
}

/* Releases every allocation left in [from, to): returns how many it released, or ~0 if a query
 * or release failed. */
static uint64_t sweep(uint64_t from, uint64_t to) {
    uint64_t a = from, released = 0;
    while (a < to) {
        MEMORY_BASIC_INFORMATION m;
        SIZE_T got = 0;
        if (g_v->VirtualQuery(g_host, (void *)a, &m, sizeof m, &got) != S_OK) return ~0ull;
        if (m.State != MEM_FREE) {
            if (g_v->VirtualFree(g_host, (void *)m.AllocationBase, 0, MEM_RELEASE) != S_OK) return ~0ull;
            released++;
            continue; /* query the same address again: free now */
        }
        a = m.BaseAddress + m.RegionSize;
    }
    return released;
}

/* The seed: the guest's argument string as a hex number (./run-qemu.sh --guest-args), else a
 * fixed one ("quit" too). The interleaving differs from run to run whatever the seed. */
static uint64_t parse_seed(const char *args) {
    uint64_t v = 0;
    for (; args && *args; args++) {
        char c = *args;
        if (c >= '0' && c <= '9') v = v * 16 + (uint64_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v = v * 16 + (uint64_t)(c - 'a' + 10);
        else if (c == 'x' || c == 'X') continue;
        else break;
    }
    return v ? v : 0x2545f4914f6cdd1dull;
}

int32_t guest_main(IHostMemoryManager *host, const HOST_SERVICES *services, const char *args) {
    uint64_t seed = parse_seed(args), start, t[THREADS], i, k, ops = 0, accesses = 0, words = 0, faults = 0, guards = 0, queries = 0, children = 0, ok_calls = 0, leftover = 0, released;
    uint32_t errors = 0;
    void *h;
    thread_guest_init(host, services);
    start = committed_now();
    /* The middle of user space: allocations at NULL go bottom-up (and MEM_TOP_DOWN ones to the
     * top), so nothing else the guest or the kernel places lands in the window. */
    g_window = (services->max_application_address / 2) & ~((2ull << 20) - 1); /* large pages fit */
    check("setup: the window is free", sweep(g_window - MAX_SPAN, g_window + WINDOW + 4 * MAX_SPAN), 0);
    h = services->add_vectored_exception_handler(1, access_handler);
    check("setup: vectored handler", h != 0, 1);
    check("setup: MALLOC_THREADSAFE heap", g_v->CreateMalloc(g_host, MALLOC_THREADSAFE, &g_heap), S_OK);
    if (!h || !g_heap) return summary();
    g_deadline = now_ns() + RUN_MS * MS;
    g_quit = args && args[0] == 'q';
    g_quit_at = now_ns() + RUN_MS * MS / 2;
    for (i = 0; i < THREADS; i++) {
        g_workers[i].index = (uint32_t)i;
        g_workers[i].rng = (seed * (2 * i + 1)) | 1;
        t[i] = services->create_thread(worker_main, &g_workers[i], 0, 0);
        check("worker created", t[i] != 0, 1);
        if (!t[i]) return summary();
    }
    for (i = 0; i < THREADS; i++) check("worker ended", join(t[i]), 0);
    for (i = 0; i < THREADS; i++) {
        struct worker *w = &g_workers[i];
        errors += w->errors;
        ops += w->ops;
        faults += w->faults;
        accesses += w->reads + w->writes;
        words += w->words_checked;
        guards += w->guard_faults;
        queries += w->queries;
        children += w->children;
        ok_calls += w->ok_calls;
        if (w->errors) {
            put("first error of worker ");
            put_dec(i);
            put(" (at ");
            put_hex(w->at);
            put("): ");
            put(w->first_error);
            put("\n");
            check(w->first_error, w->got, w->expected);
        }
        check("worker made its minimum of operations", w->ops >= MIN_OPS, 1);
        for (k = 0; k < HEAP_SLOTS; k++)
            if (w->heap_blocks[k]) {
                uint8_t *b = (uint8_t *)w->heap_blocks[k];
                uint64_t j;
                for (j = 0; j < w->heap_sizes[k]; j++) leftover += b[j] != (uint8_t)(k * 31 + j + w->index);
                if (g_heap->lpVtbl->Free(g_heap, b) != S_OK) leftover++;
            }
    }
    put("chaos_threads: seed ");
    put_hex(seed);
    put(", ");
    put_dec(ops);
    put(" operations (");
    put_dec(ok_calls);
    put(" calls succeeded, ");
    put_dec(queries);
    put(" queries checked, ");
    put_dec(accesses);
    put(" window accesses, ");
    put_dec(words);
    put(" words read and checked, ");
    put_dec(faults);
    put(" faults caught, ");
    put_dec(guards);
    put(" of them guard pages, ");
    put_dec(children);
    put(" child threads)\n");
    check("no worker saw a result, answer or datum outside the contract", errors, 0);
    check("no exception but the workers' window accesses", g_unexpected_exceptions, 0);
    check("heap blocks left intact and freed", leftover, 0);
    check("heap released", g_heap->lpVtbl->Release(g_heap), 0);
    released = sweep(g_window - MAX_SPAN, g_window + WINDOW + 4 * MAX_SPAN);
    check("every allocation left in the window released", released != ~0ull, 1);
    check("the window is free again", sweep(g_window - MAX_SPAN, g_window + WINDOW + 4 * MAX_SPAN), 0);
    services->remove_vectored_exception_handler(h);
    check("commit charge exactly where it started", committed_now(), start);
    return summary();
}
