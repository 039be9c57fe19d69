/* TLB shootdown torture (issue 13, host-abi §10.2/§10.3 "when VirtualFree, VirtualProtect or
 * MEM_RESET returns, no thread on any CPU can still reach the old mapping or protection").
 *
 * Worker threads (one per other CPU, at least one) access pages of a region in a loop while the
 * main thread narrows access (PAGE_NOACCESS, PAGE_READONLY, decommit, release, MEM_COMMIT with a
 * narrower protection) and widens it again, thousands of rounds. The handshake: a generation
 * counter whose value modulo 4 is the state: 1 while the narrowing call runs, 2 once it has
 * returned, 3 while the widening call runs, 0 once it has returned (the main thread bumps it
 * before and after each call). A worker reads the generation, makes one access (the exception
 * handler turns a fault into a result), reads the generation again, and keeps the sample only if
 * both reads agree and no call was running. A sample that succeeded in state 2 is stale (the
 * call had returned, so it had to fault); one that faulted in state 0 is late (access was
 * restored before it started); one that read other data than the main thread wrote for that
 * generation read a stale frame. Each worker acknowledges every generation it sampled; the main
 * thread moves on only when all have.
 * Every count of stale, late and bad samples must be zero. The `-blocking` variants make each
 * worker sleep (wait_on_address) once it has shown a generation, so that its CPU idles through
 * the calls. A last part does the same for write watch: after get_write_watch with the reset flag
 * returns, the next write must be seen. */
#include "host_abi.h"
#include "thread_util.h"

#define S g_services
#define PAGE 4096ull

uint64_t probe_read(volatile void *p);               /* value | 1 << 32 if it faulted */
uint64_t probe_write(volatile void *p, uint32_t v);  /* 1 if it faulted */
extern char probe_read_at[], probe_read_resume[], probe_write_at[], probe_write_resume[];
__asm__(".text\n"
        ".globl probe_read, probe_read_at, probe_read_resume, probe_write, probe_write_at, probe_write_resume\n"
        "probe_read:\n"
        "  xor %ecx, %ecx\n"
        "probe_read_at:\n"
        "  mov (%rdi), %eax\n"
        "probe_read_resume:\n"
        "  shl $32, %rcx\n"
        "  or %rcx, %rax\n"
        "  ret\n"
        "probe_write:\n"
        "  xor %eax, %eax\n"
        "probe_write_at:\n"
        "  mov %esi, (%rdi)\n"
        "probe_write_resume:\n"
        "  ret\n");

static volatile uint64_t g_base, g_size;
static int32_t probe_handler(GUEST_EXCEPTION *e) {
    uint64_t rip = e->context->rip;
    if (e->code != STATUS_ACCESS_VIOLATION || e->address < g_base || e->address >= g_base + g_size)
        return EXCEPTION_CONTINUE_SEARCH;
    if (rip == (uint64_t)probe_read_at) {
        e->context->rax = 0;
        e->context->rcx = 1;
        e->context->rip = (uint64_t)probe_read_resume;
        return EXCEPTION_CONTINUE_EXECUTION;
    }
    if (rip == (uint64_t)probe_write_at) {
        e->context->rax = 1;
        e->context->rip = (uint64_t)probe_write_resume;
        return EXCEPTION_CONTINUE_EXECUTION;
    }
    return EXCEPTION_CONTINUE_SEARCH;
}

enum narrow { NOACCESS, READONLY, DECOMMIT, RELEASE, COMMIT_READONLY, WRITE_WATCH };
#define MAX_WORKERS 3
static volatile uint32_t g_gen, g_stop, g_ack[MAX_WORKERS];
static volatile uint64_t g_samples[MAX_WORKERS], g_faults[MAX_WORKERS], g_stale[MAX_WORKERS], g_late[MAX_WORKERS],
    g_bad_data[MAX_WORKERS];
static int g_write_mode, g_fresh, g_yield, g_block;
static uint64_t g_pages;

#define MARKER 0x100u
static uint32_t expected(uint32_t gen) { return g_fresh ? MARKER + gen : MARKER; }
/* Writers write their own slot of a page (worker i at offset 64 * (i + 1)); readers read offset 0. */
static uint32_t worker(void *arg) {
    uint64_t i = (uint64_t)arg, k = 0;
    uint32_t acked = 0xFFFFFFFFu;
    while (!ld32(&g_stop)) {
        uint64_t page = (k++ * 13 + i * 5) % g_pages;
        volatile uint8_t *p = (volatile uint8_t *)g_base + page * PAGE;
        uint32_t g1 = ld32(&g_gen), g2, value = 0;
        int faulted;
        if (g_block && g1 == acked) {
            /* Blocking variants: a worker that has shown this generation sleeps until the next
             * settled one is published, so its CPU idles (lazily, with the guest's tables
             * loaded) through the calls; it must still see each call's effect once it wakes. */
            S->wait_on_address((volatile void *)&g_gen, &g1, 4, 100 * MS);
            continue;
        }
        if (g1 == acked && (g1 & 3) == 2) {
            /* Access is gone and this worker has shown it: faulting on would only load the
             * machine. Wait for the widening to begin. */
            while (ld32(&g_gen) == g1 && !ld32(&g_stop)) {
                if (g_yield) S->yield();
                else __asm__ volatile("pause");
            }
            continue;
        }
        if (g_write_mode) {
            faulted = (int)probe_write(p + 64 * (i + 1), g1);
        } else {
            uint64_t r = probe_read(p);
            faulted = (int)(r >> 32);
            value = (uint32_t)r;
        }
        g2 = ld32(&g_gen);
        /* The generation changed during the access, or a call was running: no verdict. */
        if (g1 != g2 || (g1 & 1)) continue;
        g_samples[i]++;
        if (faulted) g_faults[i]++;
        if (g1 & 2) {
            if (!faulted) g_stale[i]++;
        } else if (faulted) {
            g_late[i]++;
        } else if (!g_write_mode && value != expected(g1)) {
            g_bad_data[i]++;
        }
        if (g1 != acked) {
            acked = g1;
            st32(&g_ack[i], g1);
            S->wake_by_address((void *)&g_ack[i], 1);
        }
        if (g_yield) S->yield();
    }
    return 0;
}

static uint32_t g_workers;
static int wait_acks(uint32_t gen) {
    uint32_t i;
    for (i = 0; i < g_workers; i++)
        if (!wait_until_eq(&g_ack[i], gen, 5000 * MS)) return 0;
    return 1;
}

/* Publishes generation `gen`. In blocking variants a settled one (even) wakes the sleeping
 * workers; a call's (odd) does not, so the call runs while they sleep. */
static void set_gen(uint32_t gen) {
    st32(&g_gen, gen);
    if (g_block && !(gen & 1)) S->wake_by_address((void *)&g_gen, 1);
}

static int narrow(enum narrow how) {
    DWORD old;
    void *b = (void *)g_base;
    switch (how) {
    case NOACCESS: return g_v->VirtualProtect(g_host, b, g_pages * PAGE, PAGE_NOACCESS, &old) == S_OK;
    case READONLY: return g_v->VirtualProtect(g_host, b, g_pages * PAGE, PAGE_READONLY, &old) == S_OK;
    case DECOMMIT: return g_v->VirtualFree(g_host, b, g_pages * PAGE, MEM_DECOMMIT) == S_OK;
    case RELEASE: return g_v->VirtualFree(g_host, b, 0, MEM_RELEASE) == S_OK;
    case COMMIT_READONLY: return valloc(b, g_pages * PAGE, MEM_COMMIT, PAGE_READONLY) == b;
    default: return 0;
    }
}
static int widen(enum narrow how, uint32_t gen) {
    DWORD old;
    void *b = (void *)g_base;
    uint64_t p;
    int ok;
    switch (how) {
    case DECOMMIT: ok = valloc(b, g_pages * PAGE, MEM_COMMIT, PAGE_READWRITE) == b; break;
    case RELEASE: ok = valloc(b, g_size, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE) == b; break;
    default: ok = g_v->VirtualProtect(g_host, b, g_pages * PAGE, PAGE_READWRITE, &old) == S_OK; break;
    }
    if (ok && g_fresh)
        for (p = 0; p < g_pages; p++) *(volatile uint32_t *)(g_base + p * PAGE) = expected(gen);
    return ok;
}

/* Rounds for `base` at one worker: with more workers each round checks more CPUs (and costs
 * more IPIs), so there are fewer: 3 workers run half as many. */
static uint32_t scaled(uint32_t base) { return base * 2 / (g_workers + 1); }

static void variant(const char *name, enum narrow how, int write_mode, uint64_t pages, uint32_t rounds) {
    uint64_t t[MAX_WORKERS], samples = 0, faults = 0, stale = 0, late = 0, bad = 0, p, t0 = now_ns();
    uint32_t i, round, done = 0, calls_ok = 1, odd_slots = 0;
    put("== ");
    put(name);
    put("\n");
    g_pages = pages;
    g_size = (pages * PAGE + 0xFFFF) & ~0xFFFFull;
    g_base = (uint64_t)valloc(0, g_size, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
    check("region allocated", g_base != 0, 1);
    if (!g_base) return;
    g_write_mode = write_mode;
    g_fresh = how == DECOMMIT || how == RELEASE;
    for (p = 0; p < pages; p++) *(volatile uint32_t *)(g_base + p * PAGE) = expected(0);
    g_gen = 0;
    g_stop = 0;
    for (i = 0; i < g_workers; i++) {
        g_ack[i] = 0xFFFFFFFFu;
        g_samples[i] = g_faults[i] = g_stale[i] = g_late[i] = g_bad_data[i] = 0;
        t[i] = S->create_thread(worker, (void *)(uint64_t)i, 0, 0);
    }
    if (wait_acks(0)) {
        for (round = 0; round < rounds; round++) {
            uint32_t g = 4 * round + 2;
            set_gen(g - 1);
            if (!narrow(how)) { calls_ok = 0; break; }
            set_gen(g);
            if (!wait_acks(g)) break;
            if (write_mode && (how == READONLY || how == COMMIT_READONLY)) {
                /* Read-only pages can be read: no write begun after the call returned (a write of
                 * this generation's value) may have landed. */
                for (p = 0; p < pages; p++)
                    for (i = 0; i < g_workers; i++)
                        if (*(volatile uint32_t *)(g_base + p * PAGE + 64 * (i + 1)) == g) odd_slots++;
            }
            set_gen(g + 1);
            if (!widen(how, g + 2)) { calls_ok = 0; break; }
            set_gen(g + 2);
            if (!wait_acks(g + 2)) break;
            done++;
        }
    }
    st32(&g_stop, 1);
    if (g_block) S->wake_by_address((void *)&g_gen, 1);
    for (i = 0; i < g_workers; i++) {
        join(t[i]);
        samples += g_samples[i];
        faults += g_faults[i];
        stale += g_stale[i];
        late += g_late[i];
        bad += g_bad_data[i];
    }
    check("every narrowing and widening call succeeded", calls_ok, 1);
    check("every round completed (each worker sampled each generation)", done, rounds);
    check("no stale access: an access after the narrowing call returned faulted", stale, 0);
    check("no late fault: an access after the widening call returned succeeded", late, 0);
    check("no stale data: reads after re-commit saw the new page's contents", bad, 0);
    if (write_mode && (how == READONLY || how == COMMIT_READONLY)) check("no write landed on a read-only page", odd_slots, 0);
    check("faults were seen (the test exercised the narrowing)", faults > 0, 1);
    put("shootdown ");
    put(name);
    put(": ");
    put_dec(done);
    put(" rounds, ");
    put_dec(samples);
    put(" samples, ");
    put_dec(faults);
    put(" faults, ");
    put_dec(g_workers);
    put(" workers, ");
    put_dec((now_ns() - t0) / MS);
    put(" ms\n");
    g_v->VirtualFree(g_host, (void *)g_base, 0, MEM_RELEASE);
    g_base = 0;
}

/* Write watch: after get_write_watch(reset) returns, each worker's next write is seen. */
static uint32_t ww_worker(void *arg) {
    uint64_t i = (uint64_t)arg;
    uint32_t acked = 0xFFFFFFFFu;
    while (!ld32(&g_stop)) {
        uint32_t g1 = ld32(&g_gen), g2;
        *(volatile uint32_t *)(g_base + i * PAGE + 128) = g1;
        g2 = ld32(&g_gen);
        if (g1 == g2 && g1 != acked) {
            acked = g1;
            st32(&g_ack[i], g1);
            S->wake_by_address((void *)&g_ack[i], 1);
        }
        if (g_yield) S->yield();
    }
    return 0;
}
static void write_watch_variant(uint32_t rounds) {
    uint64_t t[MAX_WORKERS], t0 = now_ns();
    void *addrs[16];
    uint32_t i, round, done = 0, missed = 0, calls_ok = 1;
    put("== write-watch-reset\n");
    g_pages = 16;
    g_size = 0x10000;
    g_base = (uint64_t)valloc(0, g_size, MEM_RESERVE | MEM_COMMIT | MEM_WRITE_WATCH, PAGE_READWRITE);
    check("write-watch region allocated", g_base != 0, 1);
    if (!g_base) return;
    g_gen = 0;
    g_stop = 0;
    for (i = 0; i < g_workers; i++) {
        g_ack[i] = 0xFFFFFFFFu;
        t[i] = S->create_thread(ww_worker, (void *)(uint64_t)i, 0, 0);
    }
    if (wait_acks(0)) {
        for (round = 1; round <= rounds; round++) {
            uint64_t count = 16;
            uint32_t gran;
            uint32_t seen = 0, k;
            if (S->get_write_watch(WRITE_WATCH_FLAG_RESET, (void *)g_base, g_size, addrs, &count, &gran) != 0) {
                calls_ok = 0;
                break;
            }
            st32(&g_gen, round);
            if (!wait_acks(round)) break;
            count = 16;
            if (S->get_write_watch(0, (void *)g_base, g_size, addrs, &count, &gran) != 0) {
                calls_ok = 0;
                break;
            }
            for (k = 0; k < count; k++)
                for (i = 0; i < g_workers; i++)
                    if ((uint64_t)addrs[k] == g_base + i * PAGE) seen |= 1u << i;
            if (seen != (1u << g_workers) - 1) missed++;
            done++;
        }
    }
    st32(&g_stop, 1);
    for (i = 0; i < g_workers; i++) join(t[i]);
    check("every get_write_watch call succeeded", calls_ok, 1);
    check("every round completed", done, rounds);
    check("no write after a reset returned went unseen", missed, 0);
    put("shootdown write-watch-reset: ");
    put_dec(done);
    put(" rounds, ");
    put_dec((now_ns() - t0) / MS);
    put(" ms\n");
    g_v->VirtualFree(g_host, (void *)g_base, 0, MEM_RELEASE);
    g_base = 0;
}

int32_t guest_main(IHostMemoryManager *host, const HOST_SERVICES *services) {
    uint64_t start;
    void *h;
    thread_guest_init(host, services);
    start = committed_now();
    g_workers = services->cpu_count > 1 ? services->cpu_count - 1 : 1;
    if (g_workers > MAX_WORKERS) g_workers = MAX_WORKERS;
    /* On one CPU a spinning worker would hold the CPU until preempted: let it yield. */
    g_yield = services->cpu_count == 1;
    h = services->add_vectored_exception_handler(1, probe_handler);
    check("handler added", h != 0, 1);
    /* 3,000 rounds of narrowing and widening in all with one worker (1,500 with three), and 300
     * (150) of write watch. */
    variant("protect-noaccess-read", NOACCESS, 0, 1, scaled(600));
    variant("protect-readonly-write", READONLY, 1, 1, scaled(600));
    variant("protect-noaccess-write-64-pages", NOACCESS, 1, 64, scaled(200));
    variant("protect-noaccess-read-600-pages", NOACCESS, 0, 600, scaled(100));
    variant("decommit-read", DECOMMIT, 0, 1, scaled(400));
    variant("decommit-write-16-pages", DECOMMIT, 1, 16, scaled(200));
    variant("release-read", RELEASE, 0, 4, scaled(300));
    variant("commit-readonly-write", COMMIT_READONLY, 1, 2, scaled(600));
    /* Workers that sleep between generations: their CPUs idle through most calls, left out of
     * the rounds that free no table (lazy TLB) and flushing when they wake. */
    g_block = 1;
    variant("protect-noaccess-read-blocking", NOACCESS, 0, 1, scaled(300));
    variant("decommit-write-blocking", DECOMMIT, 1, 4, scaled(300));
    variant("release-read-blocking", RELEASE, 0, 4, scaled(200));
    g_block = 0;
    write_watch_variant(scaled(300));
    put("== final\n");
    check("commit back to its start", committed_now(), start);
    return summary();
}
