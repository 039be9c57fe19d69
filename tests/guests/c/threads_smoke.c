/* Kernel-side smoke test of the version-2 thread services (host-abi §10.2, §10.3); the argument
 * string picks the case (tests/threads_kernel.rs runs each at 1, 2 and 4 CPUs):
 *   basic     create/wait/exit codes/close, ids, handles, stacks, FS base, clean FPU state,
 *             wait_on_address wake and timeout, sleep, exceptions on the faulting thread
 *   parallel  one spinning thread per CPU, all of them meeting (the kernel checks they ran at once)
 *   exit      exit(42) from a thread while the main thread waits and another spins: ends all
 *   crash     an unhandled access violation on a thread ends the guest with 0xC0000005
 *   last      exit_thread on the main thread: the guest ends with the last thread's code (7)
 *   deadlock  the only thread waits forever on an address
 *   spin      one spinning thread per CPU forever (the CPU-time limit ends it) */
#include "host_abi.h"
#include "guest_util.h"

#define INF 0xFFFFFFFFFFFFFFFFull
#define MS 1000000ull

static IHostMemoryManager *g_host;

static int eq(const char *a, const char *b) {
    while (*a && *a == *b) a++, b++;
    return *a == *b;
}

static uint32_t ret_twice(void *arg) { return (uint32_t)(uint64_t)arg * 2; }

static uint32_t my_id(void *arg) {
    (void)arg;
    return g_services->current_thread_id();
}

static void deep_exit(uint32_t code, int depth) {
    if (depth == 0) g_services->exit_thread(code);
    deep_exit(code, depth - 1);
    __asm__ volatile("" ::: "memory");
}

static uint32_t exits_deep(void *arg) {
    deep_exit((uint32_t)(uint64_t)arg, 10);
    return 0;
}

static uint32_t sleeper(void *arg) {
    g_services->sleep_ns((uint64_t)arg);
    return 9;
}

/* The thread's stack: its allocation (base, size) through VirtualQuery, and whether rsp is in it. */
static volatile uint64_t g_stack_base, g_stack_size, g_stack_addr;
static uint32_t stack_probe(void *arg) {
    MEMORY_BASIC_INFORMATION mbi;
    SIZE_T got = 0;
    volatile char local = 1;
    uint64_t a = (uint64_t)&local, base, p;
    (void)arg;
    g_stack_addr = a;
    if (g_host->lpVtbl->VirtualQuery(g_host, (void *)a, &mbi, sizeof mbi, &got) != 0) return 1;
    if (mbi.State != MEM_COMMIT || mbi.Type != MEM_PRIVATE || mbi.Protect != PAGE_READWRITE) return 2;
    base = (uint64_t)mbi.AllocationBase;
    /* Walk the allocation's regions to its end. */
    p = base;
    for (;;) {
        if (g_host->lpVtbl->VirtualQuery(g_host, (void *)p, &mbi, sizeof mbi, &got) != 0) break;
        if ((uint64_t)mbi.AllocationBase != base || mbi.State == MEM_FREE) break;
        p = (uint64_t)mbi.BaseAddress + mbi.RegionSize;
    }
    g_stack_base = base;
    g_stack_size = p - base;
    return 0;
}

/* FS base per thread; the clean FPU state at a thread's start. */
static uint32_t fs_and_fpu(void *arg) {
    uint32_t mxcsr = 0;
    uint16_t fcw = 0;
    uint64_t bad = 0;
    __asm__ volatile("stmxcsr %0\n fnstcw %1" : "=m"(mxcsr), "=m"(fcw));
    if (mxcsr != 0x1F80) bad |= 1;
    if (fcw != 0x037F) bad |= 2;
    if (g_services->get_thread_pointer() != 0) bad |= 4;
    g_services->set_thread_pointer(arg);
    g_services->sleep_ns(20 * MS); /* another thread runs meanwhile, maybe on this CPU */
    if (g_services->get_thread_pointer() != arg) bad |= 8;
    g_services->set_thread_pointer((void *)0x8000000000000000ull); /* not canonical user: ignored */
    if (g_services->get_thread_pointer() != arg) bad |= 16;
    return (uint32_t)bad;
}

static volatile uint32_t g_word;
static volatile uint32_t g_woken;
static uint32_t address_waiter(void *arg) {
    uint32_t zero = 0, r = 0;
    (void)arg;
    while (g_word == 0) r |= g_services->wait_on_address(&g_word, &zero, 4, INF);
    __atomic_fetch_add(&g_woken, 1, __ATOMIC_SEQ_CST);
    return r;
}

/* Exceptions go to the handlers on the faulting thread. */
static volatile uint32_t g_handler_thread, g_handler_calls;
static int32_t on_breakpoint(GUEST_EXCEPTION *e) {
    if (e->code != STATUS_BREAKPOINT) return EXCEPTION_CONTINUE_SEARCH;
    g_handler_thread = g_services->current_thread_id();
    g_handler_calls++;
    e->context->rip += 1;
    return EXCEPTION_CONTINUE_EXECUTION;
}
static uint32_t breaks(void *arg) {
    (void)arg;
    __asm__ volatile("int3");
    return g_services->current_thread_id();
}

/* A thread's stack overflow reaches the handler, which sends the thread to exit_thread(77). */
static int32_t on_overflow(GUEST_EXCEPTION *e) {
    if (e->code != STATUS_STACK_OVERFLOW) return EXCEPTION_CONTINUE_SEARCH;
    e->context->rip = (uint64_t)g_services->exit_thread;
    e->context->rdi = 77;
    e->context->rsp = (e->context->rsp & ~15ull) - 8;
    return EXCEPTION_CONTINUE_EXECUTION;
}
static uint64_t recurse(uint64_t n) {
    volatile char pad[512];
    pad[0] = (char)n;
    return recurse(n + 1) + pad[0];
}
static uint32_t overflows(void *arg) {
    (void)arg;
    return (uint32_t)recurse(0);
}

static uint32_t closes_itself(void *arg) {
    volatile uint64_t *handle = arg;
    while (*handle == 0) g_services->yield();
    return g_services->close_thread(*handle);
}

static void basic(const HOST_SERVICES *S) {
    uint64_t h, h2, hs[8], t0, t_created;
    uint32_t code, ids[8], zero = 0, one = 1, r;
    int i, distinct;
    uint32_t mxcsr_main = 0x9F80, mxcsr_after = 0; /* flush-to-zero set: the new threads must not see it */

    check("version >= 2", S->version >= 2, 1);
    check("cbSize >= 192", S->cbSize >= 192, 1);
    check("cpu_count >= 1", S->cpu_count >= 1, 1);
    check("reserved0 is 0", S->reserved0, 0);
    put("cpu_count ");
    put_dec(S->cpu_count);
    put("\n");
    check("main thread id is 1", S->current_thread_id(), 1);

    h = S->create_thread(ret_twice, (void *)21, 0, 0);
    check("create_thread returns a handle", h != 0, 1);
    code = 0xDEAD;
    check("wait_thread returns 0", S->wait_thread(h, INF, &code), 0);
    check("exit code is start's return value", code, 42);
    check("wait again returns 0", S->wait_thread(h, 0, 0), 0);
    check("close_thread 1", S->close_thread(h), 1);
    check("close again 0", S->close_thread(h), 0);
    code = 0xDEAD;
    check("wait on a closed handle is 6", S->wait_thread(h, INF, &code), 6);
    check("... and writes nothing", code, 0xDEAD);
    check("wait on an unknown handle is 6", S->wait_thread(0x12345678, 0, 0), 6);
    check("wait on handle 0 is 6", S->wait_thread(0, 0, 0), 6);
    check("close of an unknown handle is 0", S->close_thread(0x12345678), 0);

    h = S->create_thread(exits_deep, (void *)0xABCD, 0, 0);
    check("exit_thread deep in calls: exit code", S->wait_thread(h, INF, &code) == 0 && code == 0xABCD, 1);
    check("wait with an unwritable exit_code is 998", S->wait_thread(h, INF, (uint32_t *)S), 998);
    S->close_thread(h);

    check("unexecutable start: 0", S->create_thread((GUEST_THREAD_START)(void *)&g_word, 0, 0, 0), 0);
    check("NULL start: 0", S->create_thread(0, 0, 0, 0), 0);
    check("reserve above 1 GiB: 0", S->create_thread(ret_twice, 0, (1ull << 30) + 1, 0), 0);
    check("huge commit: 0", S->create_thread(ret_twice, 0, 0, 1ull << 40), 0);
    check("overflowing sizes: 0", S->create_thread(ret_twice, 0, INF, INF), 0);
    h = S->create_thread(ret_twice, (void *)1, 1ull << 30, 0);
    check("reserve of exactly 1 GiB works", h != 0 && S->wait_thread(h, INF, &code) == 0 && code == 2, 1);
    S->close_thread(h);

    /* Ids: distinct, never 1, non-zero. */
    for (i = 0; i < 8; i++) hs[i] = S->create_thread(my_id, 0, 0, 0);
    for (i = 0; i < 8; i++) {
        ids[i] = 0;
        S->wait_thread(hs[i], INF, &ids[i]);
        S->close_thread(hs[i]);
    }
    distinct = 1;
    for (i = 0; i < 8; i++) {
        int j;
        if (ids[i] == 0 || ids[i] == 1) distinct = 0;
        for (j = 0; j < i; j++)
            if (ids[i] == ids[j]) distinct = 0;
    }
    check("8 thread ids distinct, non-zero, not 1", distinct, 1);
    check("handles distinct", hs[0] != hs[1] && hs[1] != hs[7], 1);

    /* Stacks: a private committed allocation of the asked size, released before wait returns 0. */
    h = S->create_thread(stack_probe, 0, 0, 0);
    check("stack probe", S->wait_thread(h, INF, &code) == 0 ? code : 100, 0);
    check("default reservation is 1 MiB", g_stack_size, 1 << 20);
    {
        MEMORY_BASIC_INFORMATION mbi;
        SIZE_T got = 0;
        g_host->lpVtbl->VirtualQuery(g_host, (void *)g_stack_addr, &mbi, sizeof mbi, &got);
        check("the stack is released once wait_thread returned 0", mbi.State, MEM_FREE);
    }
    S->close_thread(h);
    h = S->create_thread(stack_probe, 0, 64 * 1024, 64 * 1024);
    S->wait_thread(h, INF, 0);
    S->close_thread(h);
    check("commit 64 KiB + guard in 64 KiB: the reservation grows to 128 KiB", g_stack_size, 128 * 1024);
    h = S->create_thread(stack_probe, 0, 100000, 0);
    S->wait_thread(h, INF, 0);
    S->close_thread(h);
    check("reservation rounded up to 64 KiB", g_stack_size, 128 * 1024);

    /* FS base and the clean FPU state of a new thread, while main has its own of both. */
    S->set_thread_pointer((void *)0x123450000ull);
    __asm__ volatile("ldmxcsr %0" ::"m"(mxcsr_main));
    h = S->create_thread(fs_and_fpu, (void *)0x777770000ull, 0, 0);
    h2 = S->create_thread(fs_and_fpu, (void *)0x888880000ull, 0, 0);
    check("thread 1: clean FPU, FS base 0 at start, its own FS base kept", S->wait_thread(h, INF, &code) == 0 ? code : 100, 0);
    check("thread 2: the same", S->wait_thread(h2, INF, &code) == 0 ? code : 100, 0);
    __asm__ volatile("stmxcsr %0" : "=m"(mxcsr_after));
    check("main's MXCSR kept across the waits", mxcsr_after, 0x9F80);
    mxcsr_after = 0x1F80;
    __asm__ volatile("ldmxcsr %0" ::"m"(mxcsr_after));
    check("main's FS base kept", (uint64_t)S->get_thread_pointer(), 0x123450000ull);
    S->set_thread_pointer((void *)0xFFFF800000001000ull);
    check("a kernel FS base is ignored", (uint64_t)S->get_thread_pointer(), 0x123450000ull);
    S->set_thread_pointer(0);
    S->close_thread(h);
    S->close_thread(h2);

    /* Timeouts. The sleeper may start sleeping at once on another CPU: its 300 ms count from
     * before it is created, not from the first wait. */
    t_created = S->ticks_ns();
    h = S->create_thread(sleeper, (void *)(300 * MS), 0, 0);
    code = 0xDEAD;
    check("wait_thread timeout 0 on a running thread: 0x102", S->wait_thread(h, 0, &code), 0x102);
    t0 = S->ticks_ns();
    check("wait_thread 20 ms: 0x102", S->wait_thread(h, 20 * MS, &code), 0x102);
    check("... after at least 20 ms", S->ticks_ns() - t0 >= 20 * MS, 1);
    check("... writing nothing", code, 0xDEAD);
    check("wait_thread forever: 0", S->wait_thread(h, INF, &code), 0);
    check("sleep at least 300 ms", S->ticks_ns() - t_created >= 300 * MS, 1);
    check("sleeper's code", code, 9);
    S->close_thread(h);
    t0 = S->ticks_ns();
    S->sleep_ns(30 * MS);
    check("sleep_ns(30 ms) sleeps at least 30 ms", S->ticks_ns() - t0 >= 30 * MS, 1);
    S->yield();
    S->sleep_ns(0);

    /* wait_on_address. */
    check("size 3: 87", S->wait_on_address(&g_word, &zero, 3, 0), 87);
    check("size 16: 87", S->wait_on_address(&g_word, &zero, 16, 0), 87);
    check("misaligned: 87", S->wait_on_address((char *)&g_word + 1, &zero, 2, 0), 87);
    check("unreadable address: 998", S->wait_on_address((void *)0x10, &zero, 1, 0), 998);
    check("unreadable compare: 998", S->wait_on_address(&g_word, (void *)0x10, 4, 0), 998);
    check("kernel address: 998", S->wait_on_address((void *)0xFFFF800000000000ull, &zero, 8, 0), 998);
    check("different value: 0 at once", S->wait_on_address(&g_word, &one, 4, INF), 0);
    t0 = S->ticks_ns();
    check("equal value, 20 ms: ERROR_TIMEOUT", S->wait_on_address(&g_word, &zero, 4, 20 * MS), 0x5B4);
    check("... after at least 20 ms", S->ticks_ns() - t0 >= 20 * MS, 1);
    check("equal value, timeout 0: ERROR_TIMEOUT", S->wait_on_address(&g_word, &zero, 4, 0), 0x5B4);
    S->wake_by_address((void *)&g_word, 0); /* nobody waits: nothing happens */
    for (i = 0; i < 3; i++) hs[i] = S->create_thread(address_waiter, 0, 0, 0);
    S->sleep_ns(30 * MS);
    check("the waiters wait", g_woken, 0);
    g_word = 1;
    S->wake_by_address((void *)&g_word, 1);
    r = 0;
    for (i = 0; i < 3; i++) {
        code = 100;
        S->wait_thread(hs[i], INF, &code);
        r |= code;
        S->close_thread(hs[i]);
    }
    check("wake_by_address(all) woke the 3 waiters, each wait returned 0", g_woken * 1000 + r, 3000);
    g_word = 0;
    g_woken = 0;
    h = S->create_thread(address_waiter, 0, 0, 0);
    S->sleep_ns(20 * MS);
    g_word = 1;
    S->wake_by_address((void *)&g_word, 0);
    check("wake_by_address(single) woke the waiter", S->wait_thread(h, 2000 * MS, &code) == 0 && code == 0 && g_woken == 1, 1);
    S->close_thread(h);

    /* Exceptions on the faulting thread. */
    {
        void *veh = S->add_vectored_exception_handler(1, on_breakpoint);
        h = S->create_thread(breaks, 0, 0, 0);
        S->wait_thread(h, INF, &code);
        check("the breakpoint's handler ran on the faulting thread", g_handler_calls == 1 && g_handler_thread == code, 1);
        S->close_thread(h);
        S->remove_vectored_exception_handler(veh);
        veh = S->add_vectored_exception_handler(1, on_overflow);
        h = S->create_thread(overflows, 0, 256 * 1024, 0);
        check("a thread's stack overflow reaches the handler, which ends the thread", S->wait_thread(h, INF, &code) == 0 ? code : 100, 77);
        S->close_thread(h);
        S->remove_vectored_exception_handler(veh);
    }

    /* A thread may close its own handle. */
    {
        static volatile uint64_t self;
        self = 0;
        h = S->create_thread(closes_itself, (void *)&self, 0, 0);
        self = h;
        S->sleep_ns(50 * MS);
        check("a thread closed its own handle: wait is 6", S->wait_thread(h, INF, &code), 6);
    }
}

/* One spinning thread per CPU; they meet (every one has arrived) before any leaves, then spin
 * on for 1 s: whatever the host's scheduling of the virtual CPUs, each CPU then runs one of
 * them at the same time (the kernel records the most CPUs running guest threads at once). */
static volatile uint32_t g_arrived, g_spin_forever;
static uint32_t meet(void *arg) {
    uint32_t n = (uint32_t)(uint64_t)arg;
    uint64_t end = g_services->ticks_ns() + 60000 * MS, hold;
    __atomic_fetch_add(&g_arrived, 1, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(&g_arrived, __ATOMIC_SEQ_CST) < n)
        if (g_services->ticks_ns() > end) return 1;
    hold = g_services->ticks_ns() + 1000 * MS;
    while (g_services->ticks_ns() < hold) {
    }
    return 0;
}
static void parallel(const HOST_SERVICES *S) {
    uint64_t hs[16];
    uint32_t n = S->cpu_count, i, code, bad = 0;
    if (n > 16) n = 16;
    for (i = 0; i < n; i++) hs[i] = S->create_thread(meet, (void *)(uint64_t)n, 0, 0);
    for (i = 0; i < n; i++) {
        code = 100;
        S->wait_thread(hs[i], INF, &code);
        bad |= code;
        S->close_thread(hs[i]);
    }
    check("one thread per CPU met the others", bad, 0);
}

static uint32_t spin(void *arg) {
    (void)arg;
    for (;;) g_spin_forever++;
}
static uint32_t exit_42(void *arg) {
    (void)arg;
    g_services->sleep_ns(20 * MS);
    g_services->exit(42);
    return 1;
}
static uint32_t crash(void *arg) {
    (void)arg;
    g_services->sleep_ns(20 * MS);
    *(volatile int *)0 = 1;
    return 1;
}
static uint32_t return_7(void *arg) {
    (void)arg;
    g_services->sleep_ns(50 * MS);
    return 7;
}

/* The entry point takes the argument string as a third argument (host_abi.h declares two). */
int32_t c_main(IHostMemoryManager *host, const HOST_SERVICES *services, const char *args);
__asm__(".globl guest_main\nguest_main:\n  jmp c_main\n");

int32_t c_main(IHostMemoryManager *host, const HOST_SERVICES *services, const char *args) {
    g_services = services;
    g_host = host;
    put("threads_smoke: ");
    put(args);
    put("\n");
    if (services->version < 2) {
        put("FAILED: HOST_SERVICES version 1\n");
        return 1;
    }
    if (eq(args, "basic")) {
        basic(services);
    } else if (eq(args, "parallel")) {
        parallel(services);
    } else if (eq(args, "exit") || eq(args, "crash")) {
        /* A spinning thread, the main thread waiting for it, and a thread that ends the guest. */
        uint64_t spinner = services->create_thread(spin, 0, 0, 0);
        services->create_thread(eq(args, "exit") ? exit_42 : crash, 0, 0, 0);
        services->wait_thread(spinner, INF, 0);
        put("FAILED: still running after the end\n");
        return 1;
    } else if (eq(args, "last")) {
        services->create_thread(return_7, 0, 0, 0);
        services->exit_thread(5);
    } else if (eq(args, "deadlock")) {
        uint32_t zero = 0;
        services->wait_on_address(&g_word, &zero, 4, INF);
        put("FAILED: woken\n");
        return 1;
    } else if (eq(args, "sleep")) {
        /* A thread that sleeps for ever (a finite wait: not a deadlock) and the main thread
         * waiting for it: no CPU time is used, only the wall-clock limit ends this guest. */
        uint64_t sleeper_thread = services->create_thread(sleeper, (void *)UINT64_MAX, 0, 0);
        services->wait_thread(sleeper_thread, INF, 0);
        put("FAILED: woken\n");
        return 1;
    } else if (eq(args, "spin")) {
        uint32_t i;
        for (i = 0; i < services->cpu_count; i++) services->create_thread(spin, 0, 0, 0);
        spin(0);
    } else {
        put("FAILED: unknown case\n");
        return 1;
    }
    return summary();
}
