/* Thread conformance (host-abi §10.2 and §10.3): every rule of HOST_SERVICES version 2 that one
 * guest run can check. Output is grouped in areas (`== NAME`) of check lines, as conformance.c;
 * tests/threads.rs runs it at 1, 2 and 4 CPUs. Rules that end the guest (exit_thread on the main
 * thread, unhandled faults on a worker, exit from a worker) are in lifecycle.c. */
#include "host_abi.h"
#include "thread_util.h"

#define S g_services

static void area(const char *name) {
    put("== ");
    put(name);
    put("\n");
}

/* ---- start state probe: the first instructions of a thread record rsp and the FPU state ---- */
/* Referenced from the assembly below only by name: kept with `used`. */
static uint8_t g_probe_fx[512] __attribute__((aligned(16), used));
static uint8_t g_probe_hi[16 * 16] __attribute__((aligned(16), used));
static volatile uint64_t g_probe_rsp __attribute__((used));
static uint8_t g_have_avx __attribute__((used));
uint32_t probe_body(void *arg);
void probe_entry(void);
__asm__(".text\n"
        ".globl probe_entry\n"
        "probe_entry:\n"
        "  mov %rsp, g_probe_rsp(%rip)\n"
        "  fxsave64 g_probe_fx(%rip)\n"
        "  cmpb $0, g_have_avx(%rip)\n"
        "  je 1f\n"
        "  vextractf128 $1, %ymm0, g_probe_hi+0(%rip)\n"
        "  vextractf128 $1, %ymm1, g_probe_hi+16(%rip)\n"
        "  vextractf128 $1, %ymm2, g_probe_hi+32(%rip)\n"
        "  vextractf128 $1, %ymm3, g_probe_hi+48(%rip)\n"
        "  vextractf128 $1, %ymm4, g_probe_hi+64(%rip)\n"
        "  vextractf128 $1, %ymm5, g_probe_hi+80(%rip)\n"
        "  vextractf128 $1, %ymm6, g_probe_hi+96(%rip)\n"
        "  vextractf128 $1, %ymm7, g_probe_hi+112(%rip)\n"
        "  vextractf128 $1, %ymm8, g_probe_hi+128(%rip)\n"
        "  vextractf128 $1, %ymm9, g_probe_hi+144(%rip)\n"
        "  vextractf128 $1, %ymm10, g_probe_hi+160(%rip)\n"
        "  vextractf128 $1, %ymm11, g_probe_hi+176(%rip)\n"
        "  vextractf128 $1, %ymm12, g_probe_hi+192(%rip)\n"
        "  vextractf128 $1, %ymm13, g_probe_hi+208(%rip)\n"
        "  vextractf128 $1, %ymm14, g_probe_hi+224(%rip)\n"
        "  vextractf128 $1, %ymm15, g_probe_hi+240(%rip)\n"
        "1: jmp probe_body\n");

static volatile uint64_t g_probe_arg, g_probe_fs;
uint32_t probe_body(void *arg) {
    g_probe_arg = (uint64_t)arg;
    g_probe_fs = (uint64_t)S->get_thread_pointer();
    return 0x5157;
}

static int detect_avx(void) {
    uint32_t a, b, c, d;
    uint32_t lo, hi;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
    if (!(c & (1u << 28)) || !(c & (1u << 27))) return 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 6) == 6;
}

/* Dirties the calling thread's FPU state (x87 control word and stack, MXCSR, every vector
 * register): a new thread must not inherit any of it. */
static void dirty_fpu(uint32_t mxcsr) {
    uint16_t fcw = 0x0C7F;
    uint64_t ones = ~0ull;
    __asm__ volatile("fldcw %0\n fld1\n fldpi\n ldmxcsr %1" ::"m"(fcw), "m"(mxcsr));
    __asm__ volatile("movq %0, %%xmm0\n pshufd $0, %%xmm0, %%xmm0\n"
                     "movdqa %%xmm0, %%xmm1\n movdqa %%xmm0, %%xmm2\n movdqa %%xmm0, %%xmm3\n"
                     "movdqa %%xmm0, %%xmm4\n movdqa %%xmm0, %%xmm5\n movdqa %%xmm0, %%xmm6\n"
                     "movdqa %%xmm0, %%xmm7\n movdqa %%xmm0, %%xmm8\n movdqa %%xmm0, %%xmm9\n"
                     "movdqa %%xmm0, %%xmm10\n movdqa %%xmm0, %%xmm11\n movdqa %%xmm0, %%xmm12\n"
                     "movdqa %%xmm0, %%xmm13\n movdqa %%xmm0, %%xmm14\n movdqa %%xmm0, %%xmm15\n" ::"r"(ones)
                     : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
                       "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
    if (g_have_avx)
        __asm__ volatile("vcmpps $15, %%ymm0, %%ymm0, %%ymm0\n vcmpps $15, %%ymm9, %%ymm9, %%ymm9\n"
                         "vcmpps $15, %%ymm15, %%ymm15, %%ymm15" ::: "xmm0", "xmm9", "xmm15");
}
static void clean_x87(void) {
    uint16_t fcw = 0x037F;
    uint32_t mxcsr = 0x1F80;
    __asm__ volatile("fstp %%st(0)\n fstp %%st(0)\n fldcw %0\n ldmxcsr %1" ::"m"(fcw), "m"(mxcsr));
}
static uint32_t get_mxcsr(void) {
    uint32_t m;
    __asm__ volatile("stmxcsr %0" : "=m"(m));
    return m;
}

static int all_zero(const uint8_t *p, size_t n) {
    while (n--)
        if (*p++) return 0;
    return 1;
}

static void start_state(void) {
    uint64_t t;
    uint32_t code = 0;
    static volatile uint64_t main_tls[2] = {0x1111, 0};
    area("start-state");
    g_have_avx = (uint8_t)detect_avx();
    memset(g_probe_fx, 0xCC, sizeof g_probe_fx);
    memset(g_probe_hi, 0xCC, sizeof g_probe_hi);
    S->set_thread_pointer((void *)main_tls);
    dirty_fpu(0x7FBF);
    t = S->create_thread((GUEST_THREAD_START)probe_entry, (void *)0xABCDEF12345ull, 0, 0);
    check("probe thread created", t != 0, 1);
    code = join(t);
    check("the creator's MXCSR (sticky flags too) is kept across create_thread and wait_thread", get_mxcsr(), 0x7FBF);
    clean_x87();
    check("probe thread ends with the value its start returned", code, 0x5157);
    check("start receives arg in rdi", g_probe_arg, 0xABCDEF12345ull);
    check("start is entered as at a call: (rsp + 8) % 16 == 0", (g_probe_rsp + 8) % 16, 0);
    check("x87 FCW 0x037F at the first instruction", *(uint16_t *)(g_probe_fx + 0), 0x037F);
    check("x87 status word 0 (empty stack, top 0)", *(uint16_t *)(g_probe_fx + 2), 0);
    check("x87 tag word: every register empty", g_probe_fx[4], 0);
    check("MXCSR 0x1F80 at the first instruction", *(uint32_t *)(g_probe_fx + 24), 0x1F80);
    {
        /* Each ST slot is 16 bytes of which the first 10 are the register (FXSAVE leaves the
         * rest alone). */
        int i, zero = 1;
        for (i = 0; i < 8; i++) zero &= all_zero(g_probe_fx + 32 + 16 * i, 10);
        check("x87 registers zero", zero, 1);
    }
    check("xmm0-15 zero", all_zero(g_probe_fx + 160, 256), 1);
    if (g_have_avx) check("ymm0-15 upper halves zero", all_zero(g_probe_hi, sizeof g_probe_hi), 1);
    check("a new thread starts with FS base 0 (the creator's is set)", g_probe_fs, 0);
    check("the creator's FS base is unchanged", (uint64_t)S->get_thread_pointer(), (uint64_t)main_tls);
    S->set_thread_pointer(0);
}

/* ---- services ---- */
static void services_area(void) {
    area("services");
    check("version >= 2", S->version >= 2, 1);
    check("cbSize >= 192", S->cbSize >= 192, 1);
    check("reserved0 is 0", S->reserved0, 0);
    check("cpu_count >= 1", S->cpu_count >= 1, 1);
    put("cpu_count ");
    put_dec(S->cpu_count);
    put("\n");
    check("the main thread's id is 1", S->current_thread_id(), 1);
    check("the main thread's id stays 1", S->current_thread_id(), 1);
}

/* ---- create_thread refusals ---- */
static uint32_t return_arg(void *arg) { return (uint32_t)(uint64_t)arg; }
static uint8_t g_data_bytes[64] = {0xC3};

static void create_area(void) {
    uint64_t before = committed_now(), t;
    void *rw, *rx;
    area("create");
    check("start NULL: 0", S->create_thread(0, 0, 0, 0), 0);
    check("start in writable data (not executable): 0", S->create_thread((GUEST_THREAD_START)(void *)g_data_bytes, 0, 0, 0), 0);
    check("start at a kernel address: 0", S->create_thread((GUEST_THREAD_START)0xFFFF800000001000ull, 0, 0, 0), 0);
    check("start non-canonical: 0", S->create_thread((GUEST_THREAD_START)0x8000000000001000ull, 0, 0, 0), 0);
    rw = valloc(0, 0x10000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
    check("start on a committed read-write page: 0", S->create_thread((GUEST_THREAD_START)rw, 0, 0, 0), 0);
    rx = valloc(0, 0x10000, MEM_RESERVE, PAGE_EXECUTE_READ);
    before = committed_now();
    check("start on a reserved (uncommitted) page: 0", S->create_thread((GUEST_THREAD_START)rx, 0, 0, 0), 0);
    check("start at an unmapped address: 0",
          S->create_thread((GUEST_THREAD_START)0x10000000000ull, 0, 0, 0), 0);
    check("stack_reserve 1 GiB + 1: 0", S->create_thread(return_arg, 0, (1ull << 30) + 1, 0), 0);
    check("stack_reserve 2 GiB: 0", S->create_thread(return_arg, 0, 2ull << 30, 0), 0);
    check("stack_reserve UINT64_MAX: 0", S->create_thread(return_arg, 0, UINT64_MAX, 0), 0);
    check("stack_commit 1 GiB + guard does not fit 1 GiB (reservation would exceed it): 0",
          S->create_thread(return_arg, 0, 1ull << 30, 1ull << 30), 0);
    check("stack_commit 2 GiB, reserve 0: 0", S->create_thread(return_arg, 0, 0, 2ull << 30), 0);
    check("stack_commit UINT64_MAX: 0", S->create_thread(return_arg, 0, 0, UINT64_MAX), 0);
    {
        /* More commit than the guest has left, within 1 GiB: out of commit → 0. */
        HOST_COMMIT_INFO ci;
        uint64_t left;
        S->query_commit(&ci);
        left = ci.commit_limit - ci.committed;
        if (left + 0x20000 < (1ull << 30) - 0x10000) {
            check("stack_commit above the commit left: 0", S->create_thread(return_arg, 0, 0, left + 0x10000), 0);
        } else {
            put("(commit limit above 1 GiB: the out-of-commit case is not reachable)\n");
        }
    }
    check("refused creations charge nothing", committed_now(), before);
    g_v->VirtualFree(g_host, rw, 0, MEM_RELEASE);
    g_v->VirtualFree(g_host, rx, 0, MEM_RELEASE);
    /* The host's code is executable: a thread may start there, as CreateThread(ExitThread, code)
     * does on Windows. */
    t = S->create_thread((GUEST_THREAD_START)(void *)S->exit_thread, (void *)42, 0, 0);
    check("start = services->exit_thread (host code): created", t != 0, 1);
    if (t) check("... and ends with its argument as exit code", join(t), 42);
    before = committed_now();
    t = S->create_thread(return_arg, (void *)77, 1ull << 30, 0);
    check("stack_reserve exactly 1 GiB: created", t != 0, 1);
    if (t) check("... and runs", join(t), 77);
    check("the 1 GiB stack is gone after the wait", committed_now(), before);
}

/* ---- the stack: layout in VirtualQuery, rounding, release ---- */
struct stack_probe {
    uint64_t rsp, alloc_base, total, type, committed_at_start;
    uint64_t regions, region[8][4]; /* the allocation's regions from its base: offset, size, state, protect */
};
/* Walks its own stack's allocation from the base: VirtualQuery gives maximal runs from the
 * address asked for, so the walk sees each region whole. */
static uint32_t stack_probe_start(void *arg) {
    struct stack_probe *p = (struct stack_probe *)arg;
    volatile char marker = 1;
    MEMORY_BASIC_INFORMATION m;
    uint64_t q;
    p->committed_at_start = committed_now();
    p->rsp = (uint64_t)&marker;
    m = query((uint64_t)&marker);
    p->alloc_base = m.AllocationBase;
    p->type = m.Type;
    p->total = 0;
    p->regions = 0;
    for (q = p->alloc_base;;) {
        m = query(q);
        if (m.State == 0xFFFFFFFFu || m.AllocationBase != p->alloc_base || m.State == MEM_FREE) break;
        if (p->regions < 8) {
            p->region[p->regions][0] = m.BaseAddress - p->alloc_base;
            p->region[p->regions][1] = m.RegionSize;
            p->region[p->regions][2] = m.State;
            p->region[p->regions][3] = m.Protect;
            p->regions++;
        }
        p->total += m.RegionSize;
        q += m.RegionSize;
    }
    return 0;
}

static uint64_t round_up(uint64_t v, uint64_t to) { return (v + to - 1) / to * to; }

static void stack_case(const char *name, uint64_t reserve, uint64_t commit) {
    static struct stack_probe p;
    uint64_t before = committed_now(), t;
    uint64_t c = round_up(commit ? commit : 4096, 4096);
    uint64_t r = round_up(reserve ? reserve : 0x100000, 0x10000);
    MEMORY_BASIC_INFORMATION after;
    if (c + 4096 > r) r = round_up(c + 4096, 0x10000);
    memset(&p, 0, sizeof p);
    put("-- stack ");
    put(name);
    put("\n");
    t = S->create_thread(stack_probe_start, &p, reserve, commit);
    check("created", t != 0, 1);
    if (!t) return;
    check("ended", join(t), 0);
    {
        uint64_t k;
        put("   regions (offset size state protect):");
        for (k = 0; k < p.regions; k++) {
            put(" [");
            put_hex(p.region[k][0]);
            put(" ");
            put_hex(p.region[k][1]);
            put(" ");
            put_hex(p.region[k][2]);
            put(" ");
            put_hex(p.region[k][3]);
            put("]");
        }
        put("\n");
    }
    {
        /* From the top: the committed stack, the guard page, then (if room) reserved pages. */
        uint64_t n = p.regions, *top = p.region[n ? n - 1 : 0], *guard = p.region[n > 1 ? n - 2 : 0];
        check("at least two regions (stack and guard page)", n >= 2, 1);
        check("rsp inside the top region", p.rsp >= p.alloc_base + top[0] && p.rsp < p.alloc_base + top[0] + top[1], 1);
        check("stack is a private allocation", p.type, MEM_PRIVATE);
        check("top region committed", top[2], MEM_COMMIT);
        check("top region read-write", top[3], PAGE_READWRITE);
        check("committed top = stack_commit rounded up to a page", top[1], c);
        check("the stack starts at the top of its reservation", top[0] + top[1], r);
        check("a guard page below: one page", guard[1], 4096);
        check("guard page committed", guard[2], MEM_COMMIT);
        check("guard page PAGE_READWRITE|PAGE_GUARD", guard[3], PAGE_READWRITE | PAGE_GUARD);
        if (r > c + 4096) {
            check("below the guard page: reserved", n == 3 ? p.region[0][2] : 0, MEM_RESERVE);
            check("... from the allocation base", n == 3 ? p.region[0][0] : 1, 0);
        } else {
            check("the guard page is the lowest page", n == 2 ? guard[0] : 1, 0);
        }
    }
    check("reservation = rounded stack_reserve (made larger when commit + guard does not fit)", p.total, r);
    check("commit charged for the stack = committed pages + guard page", p.committed_at_start - before, c + 4096);
    after = query(p.alloc_base);
    check("the stack is released before wait_thread returns 0", after.State, MEM_FREE);
    check("and its commit is returned", committed_now(), before);
}

static void stack_area(void) {
    area("stack");
    stack_case("defaults (0, 0): 1 MiB reserved, one page", 0, 0);
    stack_case("0x20001 / 0x3001", 0x20001, 0x3001);
    stack_case("64 KiB / 64 KiB: guard in addition, reservation grows to 128 KiB", 0x10000, 0x10000);
    stack_case("64 KiB / 60 KiB: commit + guard fit exactly", 0x10000, 0xF000);
    stack_case("0 / 1 MiB: reservation grows past the default", 0, 0x100000);
    stack_case("1 / 1", 1, 1);
    stack_case("300000 / 70000", 300000, 70000);
}

/* ---- thread pointer ---- */
static uint64_t fs_read0(void) {
    uint64_t v;
    __asm__ volatile("mov %%fs:0, %0" : "=r"(v));
    return v;
}
/* Gives the CPU up in turn by yield, by sleep and by spinning into preemption (step i). */
static void leave_cpu(int i) {
    if (i % 3 == 0) S->yield();
    else if (i % 3 == 1) S->sleep_ns(100000);
    else {
        volatile int k;
        for (k = 0; k < 20000; k++) {}
    }
}
struct tp_worker {
    volatile uint64_t tls[2];
    volatile uint32_t bad;
};
static volatile uint32_t g_tp_go;
static uint32_t tp_worker_start(void *arg) {
    struct tp_worker *w = (struct tp_worker *)arg;
    int i;
    if (S->get_thread_pointer() != 0) w->bad |= 1;
    S->set_thread_pointer((void *)w->tls);
    wait_until_eq(&g_tp_go, 1, 10000 * MS);
    for (i = 0; i < 300; i++) {
        if ((uint64_t)S->get_thread_pointer() != (uint64_t)w->tls) w->bad |= 2;
        if (fs_read0() != w->tls[0]) w->bad |= 4;
        leave_cpu(i);
    }
    return 0;
}
static void thread_pointer_area(void) {
    static volatile uint64_t tls[2] = {0xF5F5F5F5F5F5F5F5ull, 0};
    static struct tp_worker w[3];
    uint64_t t[3];
    int i;
    area("thread-pointer");
    check("main thread: FS base 0 at start", (uint64_t)S->get_thread_pointer(), 0);
    S->set_thread_pointer((void *)tls);
    check("set/get", (uint64_t)S->get_thread_pointer(), (uint64_t)tls);
    check("%fs:0 reads through the new FS base", fs_read0(), tls[0]);
    S->set_thread_pointer((void *)0x8000000000000000ull);
    check("non-canonical 0x8000000000000000 ignored", (uint64_t)S->get_thread_pointer(), (uint64_t)tls);
    S->set_thread_pointer((void *)0x0000800000000000ull);
    check("non-canonical 0x800000000000 ignored", (uint64_t)S->get_thread_pointer(), (uint64_t)tls);
    S->set_thread_pointer((void *)0xFFFF800000000000ull);
    check("kernel-half 0xFFFF800000000000 ignored", (uint64_t)S->get_thread_pointer(), (uint64_t)tls);
    /* Canonical but beyond user space (above max_application_address, host-abi §9). */
    S->set_thread_pointer((void *)(S->max_application_address + 1));
    check("max_application_address + 1 ignored", (uint64_t)S->get_thread_pointer(), (uint64_t)tls);
    S->set_thread_pointer((void *)0x7FFFFFFFFFF8ull);
    check("0x7FFFFFFFFFF8 (the last 64 KiB below 2^47) ignored", (uint64_t)S->get_thread_pointer(), (uint64_t)tls);
    S->set_thread_pointer((void *)(S->max_application_address & ~7ull));
    check("max_application_address (8-aligned) accepted", (uint64_t)S->get_thread_pointer(), S->max_application_address & ~7ull);
    S->set_thread_pointer((void *)tls);
    check("%fs:0 still reads the old base", fs_read0(), tls[0]);
    for (i = 0; i < 3; i++) {
        w[i].tls[0] = 0x1000 + (uint64_t)i * 0x1111;
        w[i].bad = 0;
        t[i] = S->create_thread(tp_worker_start, &w[i], 0, 0);
    }
    st32(&g_tp_go, 1);
    for (i = 0; i < 300; i++) {
        if (i % 2) S->yield();
        if (fs_read0() != tls[0] || (uint64_t)S->get_thread_pointer() != (uint64_t)tls) break;
    }
    check("main's FS base kept while other threads run theirs", i, 300);
    for (i = 0; i < 3; i++) {
        check("worker ended", join(t[i]), 0);
        check("worker: FS base 0 at start, its own FS base kept across yield/sleep/preemption", w[i].bad, 0);
    }
    S->set_thread_pointer(0);
}

/* ---- data selectors: each thread's DS/ES/FS/GS are its own, kept across switches and moves ---- */
static uint16_t read_ds(void) { uint16_t v; __asm__ volatile("mov %%ds, %0" : "=r"(v)); return v; }
static uint16_t read_es(void) { uint16_t v; __asm__ volatile("mov %%es, %0" : "=r"(v)); return v; }
static uint16_t read_fs(void) { uint16_t v; __asm__ volatile("mov %%fs, %0" : "=r"(v)); return v; }
static uint16_t read_gs(void) { uint16_t v; __asm__ volatile("mov %%gs, %0" : "=r"(v)); return v; }
struct sel_worker {
    volatile uint64_t tls[2];
    volatile uint32_t start_bad, bad;
};
static volatile uint32_t g_sel_go;
static uint32_t sel_worker_start(void *arg) {
    struct sel_worker *w = (struct sel_worker *)arg;
    uint16_t user_data = 0x1b, want_fs = 0x1b;
    int i;
    if ((read_ds() & ~3) || (read_es() & ~3) || (read_fs() & ~3) || (read_gs() & ~3)) w->start_bad = 1;
    /* Loading FS clears its base: the thread pointer is set after it. */
    __asm__ volatile("mov %0, %%ds\n mov %0, %%es\n mov %0, %%fs\n mov %0, %%gs" : : "r"(user_data));
    S->set_thread_pointer((void *)w->tls);
    wait_until_eq(&g_sel_go, 1, 10000 * MS);
    for (i = 0; i < 200; i++) {
        if (read_ds() != user_data || read_es() != user_data || read_gs() != user_data) w->bad |= 1;
        if (read_fs() != want_fs) w->bad |= 2;
        if (fs_read0() != w->tls[0]) w->bad |= 4;
        leave_cpu(i);
    }
    return 0;
}
static void selectors_area(void) {
    static struct sel_worker w[3];
    uint64_t t[3];
    int i, same = 1;
    area("selectors");
    g_sel_go = 0;
    for (i = 0; i < 3; i++) {
        w[i].tls[0] = 0x5E1000 + (uint64_t)i;
        w[i].start_bad = w[i].bad = 0;
        t[i] = S->create_thread(sel_worker_start, &w[i], 0, 0);
    }
    st32(&g_sel_go, 1);
    for (i = 0; i < 200; i++) {
        if (i % 2) S->yield();
        if ((read_ds() & ~3) || (read_es() & ~3) || (read_gs() & ~3)) same = 0;
    }
    check("main's data selectors stay null while other threads load theirs", same, 1);
    for (i = 0; i < 3; i++) {
        check("selector worker ended", join(t[i]), 0);
        check("a new thread starts with null DS/ES/FS/GS", w[i].start_bad, 0);
        check("a thread's DS/ES/GS and FS (with its FS base) kept across yield/sleep/preemption/moves", w[i].bad, 0);
    }
}

/* ---- a thread that ends inside its notification callback ---- */
static volatile uint32_t g_nx_calls, g_nx_band, g_nx_exit_in_callback;
static HRESULT nx_qi(ICLRMemoryNotificationCallback *t, REFIID r, void **p) { (void)t; (void)r; *p = 0; return E_NOINTERFACE; }
static ULONG nx_add_ref(ICLRMemoryNotificationCallback *t) { (void)t; return 1; }
static ULONG nx_release(ICLRMemoryNotificationCallback *t) { (void)t; return 1; }
static HRESULT nx_on_notification(ICLRMemoryNotificationCallback *t, EMemoryAvailable band) {
    (void)t;
    add32(&g_nx_calls, 1);
    st32(&g_nx_band, (uint32_t)band);
    if (ld32(&g_nx_exit_in_callback)) {
        st32(&g_nx_exit_in_callback, 0);
        S->exit_thread(77);
    }
    return S_OK;
}
static const ICLRMemoryNotificationCallbackVtbl nx_vtbl = {nx_qi, nx_add_ref, nx_release, nx_on_notification};
static ICLRMemoryNotificationCallback nx_callback = {&nx_vtbl};
static void *volatile g_nx_block;
static volatile uint64_t g_nx_size;
static uint32_t nx_committer(void *arg) {
    void *p = 0;
    (void)arg;
    if (g_v->VirtualAlloc(g_host, 0, g_nx_size, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eTaskCritical, &p) != S_OK) return 1;
    g_nx_block = p;
    return 2; /* the callback should have ended the thread with 77 before this */
}
static void notification_exit_area(void) {
    HOST_COMMIT_INFO info;
    uint64_t t;
    area("notification-exit");
    S->query_commit(&info);
    g_nx_size = (info.commit_limit - info.committed - (info.low_threshold + info.high_threshold) / 2) & ~0xFFFull;
    g_nx_calls = 0;
    g_nx_block = 0;
    check("register a callback", (uint32_t)g_v->RegisterMemoryNotificationCallback(g_host, &nx_callback), S_OK);
    st32(&g_nx_exit_in_callback, 1);
    t = S->create_thread(nx_committer, 0, 0, 0);
    check("a thread whose commit changes the band ends inside the callback with exit_thread", join(t), 77);
    check("... the callback ran once, on that thread", ld32(&g_nx_calls), 1);
    check("... with the neutral band", ld32(&g_nx_band), eMemoryAvailableNeutral);
    check("... so its VirtualAlloc never returned to it", g_nx_block == 0, 1);
    {
        /* The commit took effect though its caller never saw the result: find it and release. */
        MEMORY_BASIC_INFORMATION mbi;
        uint64_t a = 0x10000;
        void *found = 0;
        SIZE_T got = 0;
        while (a < 0x7FFFFFFF0000ull && g_v->VirtualQuery(g_host, (void *)a, &mbi, sizeof mbi, &got) == S_OK && got == sizeof mbi) {
            if (mbi.State == MEM_COMMIT && mbi.RegionSize == g_nx_size && mbi.Type == MEM_PRIVATE) {
                found = (void *)mbi.BaseAddress;
                break;
            }
            a = mbi.BaseAddress + mbi.RegionSize;
        }
        check("... the committed block is there", found != 0, 1);
        check("releasing it changes the band, and the callback is called again on this thread",
              found ? (uint32_t)g_v->VirtualFree(g_host, found, 0, MEM_RELEASE) : 1u, S_OK);
    }
    check("... a second notification (the ended thread's callback does not hold later ones back)", ld32(&g_nx_calls), 2);
    check("... with the high band", ld32(&g_nx_band), eMemoryAvailableHigh);
    check("unregister", (uint32_t)g_v->RegisterMemoryNotificationCallback(g_host, 0), S_OK);
}

/* ---- a notification callback using the heap whose commit or decommit changed the band ---- */
static IHostMalloc *g_nh_heap;
static volatile uint32_t g_nh_calls, g_nh_inner_ok, g_nh_band;
static HRESULT nh_on_notification(ICLRMemoryNotificationCallback *t, EMemoryAvailable band) {
    void *p = 0;
    (void)t;
    add32(&g_nh_calls, 1);
    g_nh_band = (uint32_t)band;
    /* host-abi §10.3: a callback may call any host function, this heap included. */
    if (g_nh_heap->lpVtbl->Alloc(g_nh_heap, 64, eTaskCritical, &p) == S_OK && p) {
        memset(p, 0x5A, 64);
        if (g_nh_heap->lpVtbl->Free(g_nh_heap, p) == S_OK) add32(&g_nh_inner_ok, 1);
    }
    return S_OK;
}
static const ICLRMemoryNotificationCallbackVtbl nh_vtbl = {nx_qi, nx_add_ref, nx_release, nh_on_notification};
static ICLRMemoryNotificationCallback nh_callback = {&nh_vtbl};
static void notification_heap_area(void) {
    static const uint32_t kinds[2] = {MALLOC_THREADSAFE, 0};
    int i;
    area("notification-heap");
    for (i = 0; i < 2; i++) {
        HOST_COMMIT_INFO info;
        void *pad = 0, *blk = 0;
        uint64_t pre;
        S->query_commit(&info);
        /* 2 MiB above the high threshold: an 8 MiB block takes the band to neutral. */
        pre = (info.commit_limit - info.committed - info.high_threshold - (2ull << 20)) & ~0xFFFFull;
        check("setup: commit to 2 MiB above the high threshold",
              (uint32_t)g_v->VirtualAlloc(g_host, 0, pre, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eTaskCritical, &pad), S_OK);
        check(i ? "setup: a heap without MALLOC_THREADSAFE" : "setup: a MALLOC_THREADSAFE heap",
              (uint32_t)g_v->CreateMalloc(g_host, kinds[i], &g_nh_heap), S_OK);
        g_nh_calls = 0;
        g_nh_inner_ok = 0;
        check("register a callback", (uint32_t)g_v->RegisterMemoryNotificationCallback(g_host, &nh_callback), S_OK);
        check("the heap's 8 MiB Alloc commits across the threshold",
              (uint32_t)g_nh_heap->lpVtbl->Alloc(g_nh_heap, 8ull << 20, eTaskCritical, &blk), S_OK);
        check("... the callback ran once", ld32(&g_nh_calls), 1);
        check("... with the neutral band", ld32(&g_nh_band), eMemoryAvailableNeutral);
        check("... and used the same heap (Alloc, Free) from inside it", ld32(&g_nh_inner_ok), 1);
        check("freeing the block decommits it", (uint32_t)g_nh_heap->lpVtbl->Free(g_nh_heap, blk), S_OK);
        check("... the callback ran again", ld32(&g_nh_calls), 2);
        check("... with the high band", ld32(&g_nh_band), eMemoryAvailableHigh);
        check("... and used the same heap from inside it", ld32(&g_nh_inner_ok), 2);
        check("unregister", (uint32_t)g_v->RegisterMemoryNotificationCallback(g_host, 0), S_OK);
        check("the heap released", g_nh_heap->lpVtbl->Release(g_nh_heap), 0);
        g_v->VirtualFree(g_host, pad, 0, MEM_RELEASE);
    }
}

/* ---- a notification callback left by a handler's jump (host-abi §8): later ones still come ---- */
static void *g_nl_jb[5];
static volatile uint32_t g_nl_calls, g_nl_bands[4];
static HRESULT nl_on_notification(ICLRMemoryNotificationCallback *t, EMemoryAvailable band) {
    (void)t;
    if (g_nl_calls < 4) g_nl_bands[g_nl_calls] = (uint32_t)band;
    if (add32(&g_nl_calls, 1) == 1) __asm__ volatile("ud2" ::: "memory"); /* the handler jumps out */
    return S_OK;
}
static const ICLRMemoryNotificationCallbackVtbl nl_vtbl = {nx_qi, nx_add_ref, nx_release, nl_on_notification};
static ICLRMemoryNotificationCallback nl_callback = {&nl_vtbl};
__attribute__((noinline)) static int32_t nl_unwind(GUEST_EXCEPTION *e) {
    if (e->code != STATUS_ILLEGAL_INSTRUCTION) return EXCEPTION_CONTINUE_SEARCH;
    __builtin_longjmp(g_nl_jb, 1);
}
static void notification_left_area(void) {
    HOST_COMMIT_INFO info;
    void *pad = 0, *blk = 0, *h;
    uint64_t pre;
    int left = 0;
    area("notification-left");
    S->query_commit(&info);
    pre = (info.commit_limit - info.committed - info.high_threshold - (2ull << 20)) & ~0xFFFFull;
    check("setup: commit to 2 MiB above the high threshold",
          (uint32_t)g_v->VirtualAlloc(g_host, 0, pre, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eTaskCritical, &pad), S_OK);
    h = S->add_vectored_exception_handler(1, nl_unwind);
    g_nl_calls = 0;
    check("register a callback", (uint32_t)g_v->RegisterMemoryNotificationCallback(g_host, &nl_callback), S_OK);
    if (__builtin_setjmp(g_nl_jb) == 0) {
        g_v->VirtualAlloc(g_host, 0, 8ull << 20, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eTaskCritical, &blk);
    } else {
        left = 1;
    }
    S->remove_vectored_exception_handler(h);
    check("the callback faulted and the handler jumped out of it", left && ld32(&g_nl_calls) == 1, 1);
    check("... it had the neutral band", g_nl_bands[0], eMemoryAvailableNeutral);
    check("releasing the padding changes the band: the callback is called again",
          (uint32_t)g_v->VirtualFree(g_host, pad, 0, MEM_RELEASE), S_OK);
    check("... a second notification", ld32(&g_nl_calls), 2);
    check("... with the high band", g_nl_bands[1], eMemoryAvailableHigh);
    pad = 0;
    check("committing it again: a third, neutral",
          (uint32_t)g_v->VirtualAlloc(g_host, 0, pre, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eTaskCritical, &pad), S_OK);
    check("... a third notification", ld32(&g_nl_calls), 3);
    check("... with the neutral band", g_nl_bands[2], eMemoryAvailableNeutral);
    check("unregister", (uint32_t)g_v->RegisterMemoryNotificationCallback(g_host, 0), S_OK);
    g_v->VirtualFree(g_host, pad, 0, MEM_RELEASE);
    {
        /* The 8 MiB commit took effect, its result never seen: find it and release it. */
        MEMORY_BASIC_INFORMATION mbi;
        uint64_t a = 0x10000;
        SIZE_T got = 0;
        while (a < 0x7FFFFFFF0000ull && g_v->VirtualQuery(g_host, (void *)a, &mbi, sizeof mbi, &got) == S_OK) {
            if (mbi.State == MEM_COMMIT && mbi.RegionSize == (8ull << 20) && mbi.Type == MEM_PRIVATE &&
                mbi.AllocationBase == mbi.BaseAddress) {
                g_v->VirtualFree(g_host, (void *)mbi.BaseAddress, 0, MEM_RELEASE);
                break;
            }
            a = mbi.BaseAddress + mbi.RegionSize;
        }
    }
}

/* ---- exit codes ---- */
static void __attribute__((noinline)) nested_exit(uint32_t code) {
    volatile int depth = 3;
    if (depth) S->exit_thread(code);
    put("FAILED exit_thread returned\n");
}
static uint32_t exit_thread_start(void *arg) {
    nested_exit((uint32_t)(uint64_t)arg);
    return 1;
}
static void exit_codes_area(void) {
    area("exit-codes");
    check("return 42", join(S->create_thread(return_arg, (void *)42, 0, 0)), 42);
    check("return 0", join(S->create_thread(return_arg, (void *)0, 0, 0)), 0);
    check("return 0xFFFFFFFF", join(S->create_thread(return_arg, (void *)0xFFFFFFFFull, 0, 0)), 0xFFFFFFFFu);
    check("exit_thread(0xDEADBEEF) from a nested call", join(S->create_thread(exit_thread_start, (void *)0xDEADBEEFull, 0, 0)),
          0xDEADBEEFu);
    check("exit_thread(0x103 = STILL_ACTIVE)", join(S->create_thread(exit_thread_start, (void *)0x103ull, 0, 0)), 0x103);
}

/* ---- wait_thread / close_thread ---- */
static volatile uint32_t g_gate;
static uint32_t gated_start(void *arg) {
    wait_until_eq(&g_gate, 1, 20000 * MS);
    return (uint32_t)(uint64_t)arg;
}
static volatile uint32_t g_closed_ran;
static uint32_t closed_runner(void *arg) {
    (void)arg;
    wait_until_eq(&g_gate, 1, 20000 * MS);
    st32(&g_closed_ran, 1);
    return 0;
}
static volatile uint64_t g_self_handle;
static volatile uint32_t g_self_close, g_self_after;
static uint32_t self_close_start(void *arg) {
    (void)arg;
    while (ld64(&g_self_handle) == 0) S->yield();
    g_self_close = S->close_thread(g_self_handle);
    S->sleep_ns(20 * MS);
    st32(&g_self_after, 1);
    return 9;
}
static volatile uint32_t g_waiters_done, g_waiter_codes[3], g_waiter_results[3];
static volatile uint64_t g_target;
static uint32_t waiter_start(void *arg) {
    uint64_t i = (uint64_t)arg;
    uint32_t code = 0;
    g_waiter_results[i] = S->wait_thread(g_target, 20000 * MS, &code);
    g_waiter_codes[i] = code;
    add32(&g_waiters_done, 1);
    return 0;
}

static void wait_close_area(void) {
    uint32_t code, r;
    uint64_t t, t0, el;
    void *ro;
    int i;
    area("wait-close");
    code = 0xA5A5A5A5;
    check("wait on handle 0: ERROR_INVALID_HANDLE", S->wait_thread(0, 0, &code), ERROR_INVALID_HANDLE);
    check("wait on an unknown handle: 6", S->wait_thread(0x123456789ull, 0, &code), ERROR_INVALID_HANDLE);
    check("wait on UINT64_MAX: 6", S->wait_thread(UINT64_MAX, FOREVER, &code), ERROR_INVALID_HANDLE);
    check("... writes nothing", code, 0xA5A5A5A5);
    check("close an unknown handle: 0", S->close_thread(0x123456789ull), 0);
    check("close handle 0: 0", S->close_thread(0), 0);

    st32(&g_gate, 0);
    t = S->create_thread(gated_start, (void *)31, 0, 0);
    check("gated thread created", t != 0, 1);
    code = 0xA5A5A5A5;
    check("wait with timeout 0 on a running thread: WAIT_TIMEOUT", S->wait_thread(t, 0, &code), WAIT_TIMEOUT);
    t0 = now_ns();
    r = S->wait_thread(t, 30 * MS, &code);
    el = now_ns() - t0;
    check("wait with timeout 30 ms: WAIT_TIMEOUT", r, WAIT_TIMEOUT);
    check("... after at least 30 ms", el >= 30 * MS, 1);
    check("... and not much longer (< 2 s)", el < 2000 * MS, 1);
    check("WAIT_TIMEOUT writes nothing", code, 0xA5A5A5A5);
    check("unwritable exit_code, thread running, timeout 0: WAIT_TIMEOUT",
          S->wait_thread(t, 0, (uint32_t *)&S->reserved0), WAIT_TIMEOUT);
    st32(&g_gate, 1);
    check("wait forever once it ends: 0", S->wait_thread(t, FOREVER, &code), 0);
    check("... exit code written", code, 31);
    code = 0;
    check("waiting again on the ended thread: 0", S->wait_thread(t, 0, &code), 0);
    check("... same code", code, 31);
    check("exit_code NULL: 0", S->wait_thread(t, 0, 0), 0);
    check("exit_code in the host's read-only page: ERROR_NOACCESS", S->wait_thread(t, 0, (uint32_t *)&S->reserved0), ERROR_NOACCESS);
    ro = valloc(0, 4096, MEM_RESERVE | MEM_COMMIT, PAGE_READONLY);
    check("exit_code on a PAGE_READONLY page: 998", S->wait_thread(t, 0, (uint32_t *)ro), ERROR_NOACCESS);
    check("... the page is untouched", *(volatile uint32_t *)ro, 0);
    check("exit_code at a kernel address: 998", S->wait_thread(t, 0, (uint32_t *)0xFFFF800000000000ull), ERROR_NOACCESS);
    g_v->VirtualFree(g_host, ro, 0, MEM_RELEASE);
    {
        /* An out-pointer into a guard page (host-abi §9): 0x80000001, the guard cleared, nothing
         * written; the retry succeeds. */
        volatile uint32_t *g = valloc(0, 4096, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD);
        check("exit_code on a guard page: 0x80000001", S->wait_thread(t, 0, (uint32_t *)g), STATUS_GUARD_PAGE_VIOLATION);
        check("... the guard is cleared", query((uint64_t)g).Protect, PAGE_READWRITE);
        check("... nothing written", *g, 0);
        check("... the retry: 0", S->wait_thread(t, 0, (uint32_t *)g), 0);
        check("... and writes the code", *g, 31);
        g_v->VirtualFree(g_host, (void *)g, 0, MEM_RELEASE);
    }
    check("the handle still works after 998", S->wait_thread(t, 0, &code), 0);
    check("close: 1", S->close_thread(t), 1);
    code = 0xA5A5A5A5;
    check("wait on the closed handle: 6", S->wait_thread(t, 0, &code), ERROR_INVALID_HANDLE);
    check("... writes nothing", code, 0xA5A5A5A5);
    check("close again: 0", S->close_thread(t), 0);

    /* Closing does not stop the thread. */
    st32(&g_gate, 0);
    g_closed_ran = 0;
    t = S->create_thread(closed_runner, 0, 0, 0);
    check("close a running thread: 1", S->close_thread(t), 1);
    st32(&g_gate, 1);
    check("the closed thread runs on", wait_until_eq(&g_closed_ran, 1, 10000 * MS), 1);

    /* A thread closes its own handle and runs on. */
    g_self_handle = 0;
    g_self_after = 0;
    t = S->create_thread(self_close_start, 0, 0, 0);
    st64(&g_self_handle, t);
    check("the thread runs on after closing its own handle", wait_until_eq(&g_self_after, 1, 10000 * MS), 1);
    check("closing its own handle: 1", g_self_close, 1);
    check("its handle is then unknown to wait: 6", S->wait_thread(t, FOREVER, &code), ERROR_INVALID_HANDLE);

    /* Three threads wait on one. */
    st32(&g_gate, 0);
    g_waiters_done = 0;
    g_target = S->create_thread(gated_start, (void *)0x77, 0, 0);
    {
        uint64_t w[3];
        for (i = 0; i < 3; i++) w[i] = S->create_thread(waiter_start, (void *)(uint64_t)i, 0, 0);
        S->sleep_ns(30 * MS);
        check("waiters wait while the thread runs", ld32(&g_waiters_done), 0);
        st32(&g_gate, 1);
        check("every waiter returns once it ends", wait_until_eq(&g_waiters_done, 3, 10000 * MS), 1);
        for (i = 0; i < 3; i++) {
            check("waiter got 0", g_waiter_results[i], 0);
            check("waiter got the code", g_waiter_codes[i], 0x77);
            join(w[i]);
        }
        S->close_thread(g_target);
    }
}

/* ---- thread ids ---- */
#define ID_THREADS 6
static volatile uint32_t g_ids[ID_THREADS], g_ids_ready, g_ids_go, g_ids_changed;
static uint32_t id_start(void *arg) {
    uint64_t i = (uint64_t)arg;
    uint32_t id = S->current_thread_id();
    g_ids[i] = id;
    add32(&g_ids_ready, 1);
    wait_until_eq(&g_ids_go, 1, 20000 * MS);
    S->yield();
    if (S->current_thread_id() != id) add32(&g_ids_changed, 1);
    return id;
}
static void ids_area(void) {
    uint64_t t[ID_THREADS];
    int i, j, distinct = 1, nonzero = 1, not_main = 1, handles_distinct = 1, codes = 1;
    area("ids");
    g_ids_ready = g_ids_go = g_ids_changed = 0;
    for (i = 0; i < ID_THREADS; i++) t[i] = S->create_thread(id_start, (void *)(uint64_t)i, 0, 0);
    check("all started", wait_until_eq(&g_ids_ready, ID_THREADS, 10000 * MS), 1);
    for (i = 0; i < ID_THREADS; i++) {
        if (!g_ids[i]) nonzero = 0;
        if (g_ids[i] == 1) not_main = 0;
        if (!t[i]) handles_distinct = 0;
        for (j = 0; j < i; j++) {
            if (g_ids[i] == g_ids[j]) distinct = 0;
            if (t[i] == t[j]) handles_distinct = 0;
        }
    }
    check("ids non-zero", nonzero, 1);
    check("no worker has the main thread's id 1", not_main, 1);
    check("ids unique among live threads", distinct, 1);
    check("handles non-zero and unique while open", handles_distinct, 1);
    st32(&g_ids_go, 1);
    for (i = 0; i < ID_THREADS; i++)
        if (join(t[i]) != g_ids[i]) codes = 0;
    check("ids stable for a thread's life", g_ids_changed, 0);
    check("each returned its id", codes, 1);
}

/* ---- wait_on_address / wake_by_address ---- */
static volatile uint64_t g_word __attribute__((aligned(8)));
static volatile uint32_t g_woa_ready, g_woa_woken, g_woa_results[4];
static volatile uint32_t g_woa_target __attribute__((aligned(8)));
static volatile uint32_t g_woa_other __attribute__((aligned(8)));
static uint32_t woa_waiter(void *arg) {
    uint64_t i = (uint64_t)arg;
    uint32_t cmp = 0;
    volatile uint32_t *addr = i == 3 ? &g_woa_other : &g_woa_target;
    add32(&g_woa_ready, 1);
    g_woa_results[i] = S->wait_on_address(addr, &cmp, 4, i == 3 ? 1500 * MS : 8000 * MS);
    add32(&g_woa_woken, 1);
    return 0;
}

static void wait_on_address_area(void) {
    uint64_t cmp8 = 0, t0, el;
    uint32_t r, cmp4;
    uint8_t cmp1;
    uint16_t cmp2;
    void *na = valloc(0, 0x10000, MEM_RESERVE | MEM_COMMIT, PAGE_NOACCESS);
    void *resv = valloc(0, 0x10000, MEM_RESERVE, PAGE_READWRITE);
    uint64_t t[4];
    int i;
    area("wait-on-address");
    g_word = 0;
    check("size 0: 87", S->wait_on_address(&g_word, &cmp8, 0, 0), ERROR_INVALID_PARAMETER);
    check("size 3: 87", S->wait_on_address(&g_word, &cmp8, 3, 0), ERROR_INVALID_PARAMETER);
    check("size 16: 87", S->wait_on_address(&g_word, &cmp8, 16, 0), ERROR_INVALID_PARAMETER);
    check("size 5 with NULL pointers: 87 (size checked first)", S->wait_on_address(0, 0, 5, 0), ERROR_INVALID_PARAMETER);
    check("size 4 misaligned: 87", S->wait_on_address((volatile uint8_t *)&g_word + 2, &cmp8, 4, 0), ERROR_INVALID_PARAMETER);
    check("size 8 at 4-aligned: 87", S->wait_on_address((volatile uint8_t *)&g_word + 4, &cmp8, 8, 0), ERROR_INVALID_PARAMETER);
    check("size 2 at odd address: 87", S->wait_on_address((volatile uint8_t *)&g_word + 1, &cmp8, 2, 0), ERROR_INVALID_PARAMETER);
    check("misaligned and unreadable: 87 (alignment before readability)", S->wait_on_address((void *)0x3, &cmp8, 4, 0),
          ERROR_INVALID_PARAMETER);
    check("address NULL: 998", S->wait_on_address(0, &cmp8, 8, 0), ERROR_NOACCESS);
    check("address in the kernel half: 998", S->wait_on_address((void *)0xFFFF800000000000ull, &cmp8, 8, 0), ERROR_NOACCESS);
    check("address on a PAGE_NOACCESS page: 998", S->wait_on_address(na, &cmp8, 8, 0), ERROR_NOACCESS);
    check("address reserved, not committed: 998", S->wait_on_address(resv, &cmp8, 4, 0), ERROR_NOACCESS);
    check("compare NULL: 998", S->wait_on_address(&g_word, 0, 8, 0), ERROR_NOACCESS);
    check("compare on a PAGE_NOACCESS page: 998", S->wait_on_address(&g_word, na, 1, 0), ERROR_NOACCESS);
    check("compare in the kernel half: 998", S->wait_on_address(&g_word, (void *)0xFFFF800000000000ull, 2, 0), ERROR_NOACCESS);
    {
        /* A guard page under `address` or `compare`: 0x80000001 and the guard cleared (host-abi
         * §9, as every service's pointer); the retry reads the page. */
        volatile uint64_t *g = valloc(0, 2 * 4096, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD);
        uint64_t zero = 0;
        check("address on a guard page: 0x80000001", S->wait_on_address(g, &cmp8, 8, 0), STATUS_GUARD_PAGE_VIOLATION);
        check("... the guard is cleared", query((uint64_t)g).Protect, PAGE_READWRITE);
        check("... the retry compares (equal to 0, timeout 0: ERROR_TIMEOUT)", S->wait_on_address(g, &zero, 8, 0), ERROR_TIMEOUT);
        check("compare on a guard page: 0x80000001", S->wait_on_address(&g_word, (const void *)(g + 512), 8, 0),
              STATUS_GUARD_PAGE_VIOLATION);
        check("... the guard is cleared", query((uint64_t)(g + 512)).Protect, PAGE_READWRITE);
        g_v->VirtualFree(g_host, (void *)g, 0, MEM_RELEASE);
    }
    check("size 1 at an odd address is fine (value differs: 0)",
          S->wait_on_address((volatile uint8_t *)&g_word + 1, "\x01", 1, FOREVER), 0);

    g_word = 0x0102030405060708ull;
    t0 = now_ns();
    cmp8 = 0x0102030405060709ull;
    check("8-byte value differs: 0 at once (timeout forever)", S->wait_on_address(&g_word, &cmp8, 8, FOREVER), 0);
    cmp4 = 0x05060709;
    check("4-byte value differs: 0", S->wait_on_address(&g_word, &cmp4, 4, FOREVER), 0);
    cmp2 = 0x0709;
    check("2-byte value differs: 0", S->wait_on_address(&g_word, &cmp2, 2, FOREVER), 0);
    cmp1 = 0x09;
    check("1-byte value differs: 0", S->wait_on_address(&g_word, &cmp1, 1, FOREVER), 0);
    check("... all without sleeping (< 1 s)", now_ns() - t0 < 1000 * MS, 1);
    cmp8 = g_word;
    check("equal, timeout 0: ERROR_TIMEOUT", S->wait_on_address(&g_word, &cmp8, 8, 0), ERROR_TIMEOUT);
    cmp1 = 0x08;
    t0 = now_ns();
    r = S->wait_on_address(&g_word, &cmp1, 1, 20 * MS);
    el = now_ns() - t0;
    check("1 byte equal (the bytes above differ), 20 ms: ERROR_TIMEOUT", r, ERROR_TIMEOUT);
    check("... after at least 20 ms", el >= 20 * MS, 1);
    cmp2 = 0x0708;
    check("2 bytes equal: ERROR_TIMEOUT", S->wait_on_address(&g_word, &cmp2, 2, 5 * MS), ERROR_TIMEOUT);
    cmp4 = 0x05060708;
    check("4 bytes equal: ERROR_TIMEOUT", S->wait_on_address(&g_word, &cmp4, 4, 5 * MS), ERROR_TIMEOUT);
    cmp8 = 0x0102030405060708ull;
    check("8 bytes equal: ERROR_TIMEOUT", S->wait_on_address(&g_word, &cmp8, 8, 5 * MS), ERROR_TIMEOUT);

    S->wake_by_address((void *)&g_word, 1);
    S->wake_by_address((void *)&g_word, 0);
    check("a wake with no waiter is not remembered", S->wait_on_address(&g_word, &cmp8, 8, 10 * MS), ERROR_TIMEOUT);
    S->wake_by_address(0, 1);
    S->wake_by_address((void *)0xFFFF800000000000ull, 0);
    check("wakes on NULL and kernel addresses do nothing harmful", 1, 1);

    /* Three waiters on one address, one on another. */
    g_woa_ready = g_woa_woken = 0;
    g_woa_target = 0;
    g_woa_other = 0;
    for (i = 0; i < 4; i++) {
        g_woa_results[i] = 0xEEEE;
        t[i] = S->create_thread(woa_waiter, (void *)(uint64_t)i, 0, 0);
    }
    check("waiters started", wait_until_eq(&g_woa_ready, 4, 10000 * MS), 1);
    S->sleep_ns(100 * MS); /* let them all go to sleep */
    check("nobody returns unwoken", ld32(&g_woa_woken), 0);
    S->wake_by_address((void *)&g_woa_target, 0);
    S->sleep_ns(100 * MS);
    check("wake single: exactly one waiter returns", ld32(&g_woa_woken), 1);
    S->wake_by_address((void *)&g_woa_target, 1);
    check("wake all: the other two return", wait_until_eq(&g_woa_woken, 3, 5000 * MS), 1);
    S->sleep_ns(20 * MS);
    check("... and not the waiter on another address", ld32(&g_woa_woken), 3);
    for (i = 0; i < 3; i++) check("woken waiter got 0", g_woa_results[i], 0);
    check("the waiter on another address times out", wait_until_eq(&g_woa_woken, 4, 5000 * MS), 1);
    check("... with ERROR_TIMEOUT", g_woa_results[3], ERROR_TIMEOUT);
    for (i = 0; i < 4; i++) join(t[i]);
    g_v->VirtualFree(g_host, na, 0, MEM_RELEASE);
    g_v->VirtualFree(g_host, resv, 0, MEM_RELEASE);
}

/* ---- exceptions on threads ---- */
static volatile uint32_t g_exc_tid, g_exc_count;
static volatile uint64_t g_exc_rsp, g_exc_tp, g_exc_fs0;
static int32_t thread_exc_handler(GUEST_EXCEPTION *e) {
    if (e->code == STATUS_ILLEGAL_INSTRUCTION) {
        g_exc_tid = S->current_thread_id();
        g_exc_rsp = e->context->rsp;
        g_exc_tp = (uint64_t)S->get_thread_pointer();
        g_exc_fs0 = g_exc_tp ? fs_read0() : 0; /* through FS base 0 it would fault here */
        add32(&g_exc_count, 1);
        e->context->rip += 2;
        return EXCEPTION_CONTINUE_EXECUTION;
    }
    if (e->code == STATUS_ACCESS_VIOLATION && e->address == 0x5000000000ull) {
        /* Per-thread answer: the faulting thread's own context gets its own id. */
        e->context->rax = 0x1D00000000ull + S->current_thread_id();
        e->context->rip += 3; /* mov (%rbx),%rax */
        return EXCEPTION_CONTINUE_EXECUTION;
    }
    return EXCEPTION_CONTINUE_SEARCH;
}
static volatile uint32_t g_ud_tid;
static volatile uint64_t g_ud_stack_lo, g_ud_tp_after;
static volatile uint64_t g_ud_tls[2] = {0x7E57AB1E, 0};
static uint32_t ud_start(void *arg) {
    volatile char here;
    (void)arg;
    g_ud_tid = S->current_thread_id();
    g_ud_stack_lo = (uint64_t)&here;
    S->set_thread_pointer((void *)g_ud_tls);
    __asm__ volatile("ud2");
    /* Read through FS only if it is still set (through base 0 the read would end the guest). */
    g_ud_tp_after = (uint64_t)S->get_thread_pointer() == (uint64_t)g_ud_tls ? fs_read0() : 0;
    return 0x0D;
}
static volatile uint32_t g_av_bad;
static uint32_t av_start(void *arg) {
    uint32_t id = S->current_thread_id();
    int i;
    (void)arg;
    for (i = 0; i < 100; i++) {
        uint64_t rax;
        __asm__ volatile("mov (%%rbx), %%rax" : "=a"(rax) : "b"(0x5000000000ull) : "memory");
        if (rax != 0x1D00000000ull + id) add32(&g_av_bad, 1);
        if (i % 10 == 0) S->yield();
    }
    return 0;
}
static int32_t second_handler(GUEST_EXCEPTION *e) {
    if (e->code == STATUS_BREAKPOINT) {
        g_exc_tid = S->current_thread_id();
        e->context->rip += 1; /* the context names the int3 itself */
        return EXCEPTION_CONTINUE_EXECUTION;
    }
    return EXCEPTION_CONTINUE_SEARCH;
}
static volatile uint64_t g_h2;
static uint32_t add_handler_start(void *arg) {
    (void)arg;
    g_h2 = (uint64_t)S->add_vectored_exception_handler(1, second_handler);
    return 0;
}

static volatile uint32_t g_order[4], g_order_n;
static int32_t order_note(GUEST_EXCEPTION *e, char who) {
    if (e->code != STATUS_BREAKPOINT) return EXCEPTION_CONTINUE_SEARCH;
    if (g_order_n < 4) g_order[g_order_n++] = (uint32_t)who;
    if (who != 'c') return EXCEPTION_CONTINUE_SEARCH;
    e->context->rip += 1;
    return EXCEPTION_CONTINUE_EXECUTION;
}
static int32_t order_a(GUEST_EXCEPTION *e) { return order_note(e, 'a'); }
static int32_t order_b(GUEST_EXCEPTION *e) { return order_note(e, 'b'); }
static int32_t order_c(GUEST_EXCEPTION *e) { return order_note(e, 'c'); }

static void exceptions_area(void) {
    void *h = S->add_vectored_exception_handler(1, thread_exc_handler);
    uint64_t t[4];
    int i;
    area("exceptions");
    check("handler added", h != 0, 1);
    g_exc_count = 0;
    check("ud2 on a thread handled and resumed", join(S->create_thread(ud_start, 0, 0, 0)), 0x0D);
    check("handler called once", g_exc_count, 1);
    check("handler ran on the faulting thread", g_exc_tid, g_ud_tid);
    check("... not the main thread", g_exc_tid != 1, 1);
    check("the handler runs with the faulting thread's thread pointer", g_exc_tp, (uint64_t)g_ud_tls);
    check("... and %fs:0 reads through it in the handler", g_exc_fs0, g_ud_tls[0]);
    check("the thread's FS base is its own after the handler", g_ud_tp_after, g_ud_tls[0]);
    check("context rsp is on the thread's stack", g_exc_rsp <= g_ud_stack_lo && g_exc_rsp > g_ud_stack_lo - 0x10000, 1);
    g_av_bad = 0;
    for (i = 0; i < 4; i++) t[i] = S->create_thread(av_start, 0, 0, 0);
    for (i = 0; i < 4; i++) check("concurrent faulting thread ended", join(t[i]), 0);
    check("400 concurrent access violations each resumed with its own thread's context", g_av_bad, 0);
    /* A handler added by one thread is the guest's: it runs for a fault on the main thread. */
    join(S->create_thread(add_handler_start, 0, 0, 0));
    check("handler added on a worker", g_h2 != 0, 1);
    g_exc_tid = 0;
    __asm__ volatile("int3");
    check("the worker's handler ran for the main thread's breakpoint, on the main thread", g_exc_tid, 1);
    check("remove it (after its thread ended)", S->remove_vectored_exception_handler((void *)g_h2), 1);
    check("remove the first", S->remove_vectored_exception_handler(h), 1);
    {
        /* `first` is a uint32_t: the upper half of its register is not part of it (SysV), so
         * first = (uint32_t)0 passed with garbage above adds the handler last. */
        typedef void *(*add_raw_t)(uint64_t first, GUEST_EXCEPTION_HANDLER h);
        add_raw_t add_raw = (add_raw_t)(void *)S->add_vectored_exception_handler;
        void *ha = S->add_vectored_exception_handler(1, order_a);
        void *hb = S->add_vectored_exception_handler(0, order_b);
        void *hc = add_raw(0xFFFFFFFF00000000ull, order_c);
        g_order_n = 0;
        __asm__ volatile("int3" ::: "memory");
        check("first = 1, 0, (uint32_t)0 with the register's upper half set: called in that order",
              g_order_n == 3 && g_order[0] == 'a' && g_order[1] == 'b' && g_order[2] == 'c', 1);
        S->remove_vectored_exception_handler(ha);
        S->remove_vectored_exception_handler(hb);
        S->remove_vectored_exception_handler(hc);
    }
}

/* ---- stack overflow on a thread ---- */
static volatile uint32_t g_ovf_tid, g_ovf_seen_tid, g_ovf_code, g_ovf_guard_seen;
static volatile uint64_t g_ovf_base, g_ovf_rsp;
static int32_t overflow_handler(GUEST_EXCEPTION *e) {
    if (S->current_thread_id() != g_ovf_tid) return EXCEPTION_CONTINUE_SEARCH;
    if (e->code == STATUS_GUARD_PAGE_VIOLATION) {
        add32(&g_ovf_guard_seen, 1);
        return EXCEPTION_CONTINUE_SEARCH;
    }
    if (e->code != STATUS_STACK_OVERFLOW) return EXCEPTION_CONTINUE_SEARCH;
    g_ovf_code = e->code;
    g_ovf_seen_tid = S->current_thread_id();
    g_ovf_rsp = e->context->rsp;
    /* Redirect the thread to exit_thread(0xFD), entered as at a call. */
    e->context->rip = (uint64_t)S->exit_thread;
    e->context->rdi = 0xFD;
    e->context->rsp = ((e->context->rsp - 64) & ~15ull) - 8;
    return EXCEPTION_CONTINUE_EXECUTION;
}
static uint32_t overflow_start(void *arg) {
    volatile char here;
    (void)arg;
    g_ovf_base = query((uint64_t)&here).AllocationBase;
    g_ovf_tid = S->current_thread_id();
    return (uint32_t)recurse_forever(0);
}
static void stack_overflow_area(void) {
    uint64_t before = committed_now();
    void *h = S->add_vectored_exception_handler(1, overflow_handler);
    uint64_t t;
    area("stack-overflow");
    g_ovf_tid = 0xFFFFFFFF;
    g_ovf_guard_seen = 0;
    t = S->create_thread(overflow_start, 0, 0x40000, 0);
    check("overflowing thread created", t != 0, 1);
    check("redirected to exit_thread by its handler", join(t), 0xFD);
    check("STATUS_STACK_OVERFLOW delivered", g_ovf_code, STATUS_STACK_OVERFLOW);
    check("on the overflowing thread", g_ovf_seen_tid, g_ovf_tid);
    check("stack growth raised no guard-page exception", g_ovf_guard_seen, 0);
    check("raised within the last 3 pages of the reservation (+ a frame)", g_ovf_rsp >= g_ovf_base && g_ovf_rsp < g_ovf_base + 6 * 4096, 1);
    check("its stack is released", query(g_ovf_base).State, MEM_FREE);
    check("its commit is returned", committed_now(), before);
    S->remove_vectored_exception_handler(h);
}

/* ---- registers across preemption and migration ---- */
static volatile uint32_t g_pre_bad[8], g_pre_go;
/* Holds MXCSR, r12-r15 and xmm6-xmm7 with thread-specific values for `iterations` spins;
 * returns 0 if they never changed. */
static uint64_t hold_registers(uint32_t mxcsr, uint64_t pattern, uint64_t iterations) {
    uint64_t bad;
    uint32_t scratch;
    __asm__ volatile(
        "ldmxcsr %[mx]\n"
        "mov %[pat], %%r12\n lea 1(%[pat]), %%r13\n lea 2(%[pat]), %%r14\n lea 3(%[pat]), %%r15\n"
        "movq %[pat], %%xmm6\n pshufd $0x44, %%xmm6, %%xmm6\n movdqa %%xmm6, %%xmm7\n"
        "xor %[bad], %[bad]\n"
        "1:\n"
        "stmxcsr %[scr]\n mov %[scr], %%eax\n cmp %[mx], %%eax\n jne 2f\n"
        "cmp %[pat], %%r12\n jne 2f\n"
        "lea 3(%[pat]), %%rax\n cmp %%rax, %%r15\n jne 2f\n"
        "movq %%xmm7, %%rax\n cmp %[pat], %%rax\n jne 2f\n"
        "pshufd $0xEE, %%xmm6, %%xmm5\n movq %%xmm5, %%rax\n cmp %[pat], %%rax\n jne 2f\n"
        "dec %[it]\n jnz 1b\n"
        "jmp 3f\n"
        "2: mov $1, %[bad]\n"
        "3:\n"
        "ldmxcsr %[clean]\n"
        : [bad] "=&r"(bad), [it] "+r"(iterations), [scr] "=m"(scratch)
        : [mx] "m"(mxcsr), [pat] "r"(pattern), [clean] "m"((uint32_t){0x1F80})
        : "rax", "r12", "r13", "r14", "r15", "xmm5", "xmm6", "xmm7", "cc");
    return bad;
}
static uint32_t preempt_start(void *arg) {
    uint64_t i = (uint64_t)arg;
    /* Rounding modes and sticky flags differ per thread. */
    uint32_t mxcsr = 0x1F80 | ((uint32_t)(i & 3) << 13) | (uint32_t)(1u << (i % 6));
    uint64_t end = now_ns() + 600 * MS;
    wait_until_eq(&g_pre_go, 1, 10000 * MS);
    while (now_ns() < end)
        if (hold_registers(mxcsr, 0x1234567800000000ull + i * 0x10001, 2000000)) g_pre_bad[i]++;
    return 0;
}
static void preemption_area(void) {
    uint64_t t[8];
    uint32_t n = S->cpu_count * 2, i, bad = 0;
    area("preemption");
    if (n > 8) n = 8;
    if (n < 3) n = 3;
    g_pre_go = 0;
    for (i = 0; i < n; i++) {
        g_pre_bad[i] = 0;
        t[i] = S->create_thread(preempt_start, (void *)(uint64_t)i, 0, 0);
    }
    st32(&g_pre_go, 1);
    for (i = 0; i < n; i++) check("spinning thread ended", join(t[i]), 0);
    for (i = 0; i < n; i++) bad += g_pre_bad[i];
    check("MXCSR (with sticky flags), r12-r15 and xmm6-7 kept across preemption and migration", bad, 0);
    check("main's MXCSR is its own", get_mxcsr(), 0x1F80);
}

int32_t guest_main(IHostMemoryManager *host, const HOST_SERVICES *services) {
    uint64_t start_commit;
    thread_guest_init(host, services);
    start_commit = committed_now();
    services_area();
    start_state();
    create_area();
    stack_area();
    thread_pointer_area();
    selectors_area();
    notification_exit_area();
    notification_heap_area();
    notification_left_area();
    exit_codes_area();
    wait_close_area();
    ids_area();
    wait_on_address_area();
    exceptions_area();
    stack_overflow_area();
    preemption_area();
    area("final");
    check("commit back to where it started (every thread stack released)", committed_now(), start_commit);
    return summary();
}
