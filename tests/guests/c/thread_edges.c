/* An outsider's conformance guest for host-abi §8 (exceptions), §9 and §10 (threads), written
 * from the spec text alone, aimed at the edges: every return path of wait_thread/close_thread and
 * what each writes, handle and id reuse, wait_on_address's order of checks, per-thread FS base and
 * FPU state under preemption, thread stacks (rounding, release, overflow on the last pages),
 * nested exceptions and handlers that never return, notification callbacks with threads,
 * MALLOC_THREADSAFE heaps and the memory manager from four threads with exact accounting.
 * One `== AREA` header per area, `ok`/`FAILED` check lines printed by the main thread only. */
#include "thread_util.h"

#define SENT 0xA5A5A5A5u
#define PAGE 4096ull
#define KERNEL_ADDR 0xFFFF800000000000ull
#define NONCANON 0x0000800000000000ull

static uint64_t g_ro;       /* a committed PAGE_READONLY page */
static uint64_t g_noacc;    /* a committed PAGE_NOACCESS page */
static uint64_t g_reserved; /* a reserved, uncommitted page */
static uint64_t g_rw_ro;    /* two pages: the first PAGE_READWRITE, the second PAGE_READONLY */

static uint64_t create(GUEST_THREAD_START f, void *arg) { return g_services->create_thread(f, arg, 0, 0); }
static uint32_t tid(void) { return g_services->current_thread_id(); }

/* Handlers are per guest: each area removes what it added. */
static void *add_handler(GUEST_EXCEPTION_HANDLER h) { return g_services->add_vectored_exception_handler(1, h); }

/* ------------------------------------------------------------------------------------------ */
static volatile uint32_t g_gate, g_flag, g_flag2;
static volatile uint64_t g_handle;
static volatile uint32_t g_self_close;

static uint32_t t_ret(void *arg) { return (uint32_t)(uintptr_t)arg; }
static uint32_t t_sleep_ret(void *arg) {
    g_services->sleep_ns(60 * MS);
    return (uint32_t)(uintptr_t)arg;
}
static uint32_t t_gate(void *arg) {
    wait_until_eq(&g_gate, 1, 20000 * MS);
    return (uint32_t)(uintptr_t)arg;
}
static uint32_t t_gate_flag(void *arg) {
    wait_until_eq(&g_gate, 1, 20000 * MS);
    st32(&g_flag, 1);
    g_services->wake_by_address((void *)&g_flag, 1);
    return (uint32_t)(uintptr_t)arg;
}
static uint32_t t_exit(void *arg) {
    g_services->exit_thread((uint32_t)(uintptr_t)arg);
    return 0x0BADu;
}
static uint32_t t_close_self(void *arg) {
    (void)arg;
    while (ld64(&g_handle) == 0) g_services->yield();
    st32(&g_self_close, g_services->close_thread(ld64(&g_handle)));
    st32(&g_flag2, 1);
    return 9;
}
static uint32_t t_id(void *arg) {
    (void)arg;
    return tid();
}
static uint32_t t_id_gate(void *arg) {
    uint32_t id = tid();
    wait_until_eq(&g_gate, 1, 20000 * MS);
    (void)arg;
    return id;
}

static volatile uint64_t g_target;
static uint32_t g_waiter_code[3], g_waiter_ret[3];
static uint32_t t_waiter(void *arg) {
    uintptr_t i = (uintptr_t)arg;
    uint32_t code = SENT;
    add32(&g_flag, 1);
    g_waiter_ret[i] = g_services->wait_thread(ld64(&g_target), FOREVER, &code);
    g_waiter_code[i] = code;
    return 0;
}

/* A thread's start: its 64-bit argument unchanged; RFLAGS with DF, TF, AC clear and IF set
 * whatever the creator's DF was. */
static uint32_t t_arg_flags(void *arg) {
    uint64_t fl;
    __asm__ volatile("pushfq\n pop %0" : "=r"(fl));
    return ((uint64_t)arg == 0xFFFF8000DEADBEEFull) | ((fl & 0x400) == 0) << 1 | ((fl & 0x100) == 0) << 2 |
           ((fl & 0x40000) == 0) << 3 | ((fl & 0x200) != 0) << 4;
}
/* DF set at a fault on a worker: the handler runs with DF clear, sees DF set in the context, and
 * the resumed code has it set again. */
static volatile uint32_t g_df_tid, g_df_handler_flags;
static volatile uint64_t g_df_ctx_flags;
static int32_t h_df(GUEST_EXCEPTION *e) {
    uint64_t fl;
    if (tid() != ld32(&g_df_tid)) return EXCEPTION_CONTINUE_SEARCH;
    __asm__ volatile("pushfq\n pop %0" : "=r"(fl));
    g_df_handler_flags = (uint32_t)fl;
    g_df_ctx_flags = e->context->rflags;
    e->context->rip += 2;
    return EXCEPTION_CONTINUE_EXECUTION;
}
static uint32_t t_df(void *arg) {
    uint64_t fl;
    (void)arg;
    st32(&g_df_tid, tid());
    __asm__ volatile("std\n ud2\n pushfq\n pop %0\n cld" : "=r"(fl) : : "memory");
    return (uint32_t)fl;
}

static void area_wait_close(void) {
    uint32_t code = SENT, r;
    uint64_t h, t0;
    put("== wait-close\n");
    t0 = now_ns();
    check("wait_thread(0) is 6", g_services->wait_thread(0, FOREVER, &code), 6);
    check("wait_thread(unknown handle, forever) is 6", g_services->wait_thread(0x123456789abcull, FOREVER, &code), 6);
    check("wait_thread(~0) is 6", g_services->wait_thread(~0ull, 10 * MS, &code), 6);
    check("... at once", now_ns() - t0 < 1000 * MS, 1);
    check("... writing nothing", code, SENT);
    check("wait_thread(unknown handle, unwritable exit_code) is 6", g_services->wait_thread(77, 0, (uint32_t *)KERNEL_ADDR), 6);
    check("close_thread(0) is 0", g_services->close_thread(0), 0);
    check("close_thread(unknown) is 0", g_services->close_thread(0x123456789abcull), 0);

    st32(&g_gate, 0);
    h = create(t_gate, (void *)0x1234);
    check("create_thread returns a handle", h != 0, 1);
    check("running thread, timeout 0: 0x102", g_services->wait_thread(h, 0, &code), WAIT_TIMEOUT);
    t0 = now_ns();
    check("running thread, timeout 30 ms: 0x102", g_services->wait_thread(h, 30 * MS, &code), WAIT_TIMEOUT);
    check("... after about 30 ms", now_ns() - t0 >= 20 * MS, 1);
    check("... writing nothing", code, SENT);
    check("running thread, unwritable exit_code, timeout: 0x102 (it waits first)",
          g_services->wait_thread(h, 5 * MS, (uint32_t *)g_ro), WAIT_TIMEOUT);
    check("running thread, kernel exit_code, timeout 0: 0x102", g_services->wait_thread(h, 0, (uint32_t *)KERNEL_ADDR),
          WAIT_TIMEOUT);
    st32(&g_gate, 1);
    g_services->wake_by_address((void *)&g_gate, 1);
    check("ended thread, NULL exit_code: 0", g_services->wait_thread(h, FOREVER, 0), 0);
    check("ended thread, read-only exit_code: 998", g_services->wait_thread(h, 0, (uint32_t *)g_ro), 998);
    check("... the read-only page unchanged", *(volatile uint32_t *)g_ro, 0);
    check("ended thread, kernel exit_code: 998", g_services->wait_thread(h, 0, (uint32_t *)KERNEL_ADDR), 998);
    check("ended thread, non-canonical exit_code: 998", g_services->wait_thread(h, 0, (uint32_t *)NONCANON), 998);
    check("ended thread, exit_code in the host's data: 998",
          g_services->wait_thread(h, 0, (uint32_t *)(uintptr_t)g_services), 998);
    check("... the host's data unchanged", g_services->cbSize >= 192 && g_services->version >= 2, 1);
    check("ended thread, exit_code in a reserved page: 998", g_services->wait_thread(h, 0, (uint32_t *)g_reserved), 998);
    check("ended thread, exit_code straddling into a read-only page: 998",
          g_services->wait_thread(h, 0, (uint32_t *)(g_rw_ro + PAGE - 2)), 998);
    check("... its writable half untouched", *(volatile uint16_t *)(g_rw_ro + PAGE - 2), 0);
    {
        uint8_t buf[8] = {0};
        uint32_t v;
        check("ended thread, unaligned exit_code: 0", g_services->wait_thread(h, 0, (uint32_t *)(buf + 1)), 0);
        memcpy(&v, buf + 1, 4);
        check("... written there", v, 0x1234);
    }
    check("after 998 the handle still waits: 0", g_services->wait_thread(h, 0, &code), 0);
    check("... with the exit code", code, 0x1234);
    code = SENT;
    check("a second wait: 0 again", g_services->wait_thread(h, FOREVER, &code), 0);
    check("... the same code", code, 0x1234);
    check("close_thread: 1", g_services->close_thread(h), 1);
    check("close_thread again: 0", g_services->close_thread(h), 0);
    code = SENT;
    check("wait on a closed handle: 6", g_services->wait_thread(h, FOREVER, &code), 6);
    check("... writing nothing", code, SENT);

    {
        uint64_t th;
        void *hh;
        __asm__ volatile("std" ::: "memory");
        th = g_services->create_thread(t_arg_flags, (void *)0xFFFF8000DEADBEEFull, 0, 0);
        __asm__ volatile("cld" ::: "memory");
        check("start gets its 64-bit arg unchanged, DF/TF/AC clear and IF set (creator had DF set)", join(th), 0x1F);
        hh = add_handler(h_df);
        r = join(create(t_df, 0));
        g_services->remove_vectored_exception_handler(hh);
        check("a fault with DF set on a thread: the handler runs with DF clear", ld32(&g_df_handler_flags) & 0x400, 0);
        check("... its context has DF set", g_df_ctx_flags & 0x400, 0x400);
        check("... the resumed code has DF set again", r & 0x400, 0x400);
    }

    /* A thread ending while another waits on it with a timeout. */
    h = create(t_sleep_ret, (void *)77);
    t0 = now_ns();
    code = SENT;
    r = g_services->wait_thread(h, 5000 * MS, &code);
    check("thread ending during a timed wait: 0", r, 0);
    check("... its code", code, 77);
    check("... before the timeout", now_ns() - t0 < 4000 * MS, 1);
    g_services->close_thread(h);

    /* exit_thread's code, whatever it is (0x103 is Windows' STILL_ACTIVE, nothing special here). */
    check("exit_thread(0xFFFFFFFF)", join(create(t_exit, (void *)(uintptr_t)0xFFFFFFFFu)), 0xFFFFFFFFu);
    check("exit_thread(0x103)", join(create(t_exit, (void *)(uintptr_t)0x103u)), 0x103);
    check("return 0", join(create(t_ret, 0)), 0);

    /* Closing does not stop the thread. */
    st32(&g_gate, 0);
    st32(&g_flag, 0);
    h = create(t_gate_flag, 0);
    check("close a running thread: 1", g_services->close_thread(h), 1);
    check("... then waiting on it: 6", g_services->wait_thread(h, 0, &code), 6);
    st32(&g_gate, 1);
    g_services->wake_by_address((void *)&g_gate, 1);
    check("... it keeps running", wait_until_eq(&g_flag, 1, 10000 * MS), 1);

    /* A thread closes its own handle. */
    st64(&g_handle, 0);
    st32(&g_flag2, 0);
    h = create(t_close_self, 0);
    st64(&g_handle, h);
    check("a thread closes its own handle: 1", wait_until_eq(&g_flag2, 1, 10000 * MS) ? ld32(&g_self_close) : 0xDEAD, 1);
    g_services->sleep_ns(20 * MS);
    check("... then its handle is unknown: 6", g_services->wait_thread(h, 2000 * MS, &code), 6);

    /* Three threads wait on one. */
    {
        uint64_t w[3];
        int i;
        st32(&g_gate, 0);
        st32(&g_flag, 0);
        g_target = create(t_gate, (void *)0x55);
        for (i = 0; i < 3; i++) w[i] = create(t_waiter, (void *)(uintptr_t)i);
        wait_until_eq(&g_flag, 3, 10000 * MS);
        g_services->sleep_ns(20 * MS);
        st32(&g_gate, 1);
        g_services->wake_by_address((void *)&g_gate, 1);
        for (i = 0; i < 3; i++) join(w[i]);
        for (i = 0; i < 3; i++) {
            check("waiter of a shared thread: 0", g_waiter_ret[i], 0);
            check("... its code", g_waiter_code[i], 0x55);
        }
        join(g_target);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Deadlines that overflow, timers of different lengths on one address, lost wake-ups, waits on
 * a handle closed meanwhile, on one's own handle, on a handle made by another thread. */
static volatile uint32_t g_later_word;
static uint32_t t_release_later(void *arg) {
    (void)arg;
    g_services->sleep_ns(50 * MS);
    st32(&g_gate, 1);
    g_services->wake_by_address((void *)&g_gate, 1);
    st32(&g_later_word, 1);
    g_services->wake_by_address((void *)&g_later_word, 1);
    return 0;
}

static uint32_t g_timer_ret[6];
static uint64_t g_timer_took[6];
static volatile uint32_t g_timer_word;
static uint32_t t_timer(void *arg) {
    uintptr_t i = (uintptr_t)arg;
    uint32_t zero = 0;
    uint64_t t0 = now_ns();
    g_timer_ret[i] = g_services->wait_on_address(&g_timer_word, &zero, 4, (6 - i) * 25 * MS);
    g_timer_took[i] = now_ns() - t0;
    return 0;
}

static volatile uint32_t g_turn;
static volatile uint32_t g_pingpong_stuck;
static uint32_t t_pingpong(void *arg) {
    uint32_t me = (uint32_t)(uintptr_t)arg, n;
    for (n = 0; n < 1500; n++) {
        uint32_t v;
        while (((v = ld32(&g_turn)) & 1) != me) g_services->wait_on_address(&g_turn, &v, 4, FOREVER);
        st32(&g_turn, v + 1);
        g_services->wake_by_address((void *)&g_turn, 0);
    }
    return 0;
}

static uint32_t g_closed_wait_ret, g_closed_wait_code;
static volatile uint32_t g_closed_waiting;
static uint32_t t_wait_closed(void *arg) {
    uint32_t code = SENT;
    (void)arg;
    st32(&g_closed_waiting, 1);
    g_closed_wait_ret = g_services->wait_thread(ld64(&g_target), FOREVER, &code);
    g_closed_wait_code = code;
    return 0;
}
static uint32_t t_wait_self(void *arg) {
    uint32_t code = SENT, r;
    (void)arg;
    while (ld64(&g_handle) == 0) g_services->yield();
    r = g_services->wait_thread(ld64(&g_handle), 20 * MS, &code);
    return r == WAIT_TIMEOUT && code == SENT ? 0x5E1F : r;
}
static uint32_t t_make_thread(void *arg) {
    (void)arg;
    st64(&g_handle, create(t_sleep_ret, (void *)0x4242));
    return 1;
}

static void area_more_waits(void) {
    uint64_t h, helper, th[6];
    uint32_t code = SENT, r, zero = 0;
    int i, ok;
    put("== more-waits\n");
    /* Huge timeouts: deadlines that overflow must not turn into "already passed". */
    st32(&g_gate, 0);
    h = create(t_gate, (void *)0x31);
    helper = create(t_release_later, 0);
    r = g_services->wait_thread(h, FOREVER - 1, &code);
    check("wait_thread with timeout UINT64_MAX - 1 waits for the thread: 0", r, 0);
    check("... its code", code, 0x31);
    join(helper);
    join(h);
    st32(&g_gate, 0);
    h = create(t_gate, (void *)0x32);
    helper = create(t_release_later, 0);
    r = g_services->wait_thread(h, 1ull << 63, &code);
    check("wait_thread with timeout 2^63: 0", r, 0);
    join(helper);
    join(h);
    st32(&g_later_word, 0);
    helper = create(t_release_later, 0);
    r = g_services->wait_on_address(&g_later_word, &zero, 4, FOREVER - 1);
    check("wait_on_address with timeout UINT64_MAX - 1 waits for the wake: 0", r, 0);
    join(helper);

    /* Six waiters on one address with timeouts of 150 down to 25 ms: each times out on its own. */
    g_timer_word = 0;
    for (i = 0; i < 6; i++) th[i] = create(t_timer, (void *)(uintptr_t)i);
    for (i = 0; i < 6; i++) join(th[i]);
    ok = 1;
    for (i = 0; i < 6; i++) {
        uint64_t want = (uint64_t)(6 - i) * 25 * MS;
        ok &= g_timer_ret[i] == ERROR_TIMEOUT && g_timer_took[i] + 5 * MS >= want && g_timer_took[i] < want + 3000 * MS;
    }
    check("six timed waits on one address each end with 0x5B4 at their own timeout", ok, 1);

    /* Ping-pong with FOREVER waits: a lost wake-up hangs (join gives up after 20 s). */
    st32(&g_turn, 0);
    th[0] = create(t_pingpong, (void *)0);
    th[1] = create(t_pingpong, (void *)1);
    r = join(th[0]);
    check("1500 round trips of wait_on_address/wake single with FOREVER waits: no lost wake-up", r, 0);
    check("... the other side too", join(th[1]), 0);
    check("... every turn taken", ld32(&g_turn), 3000);

    /* A handle closed while another thread waits on it: the waiter is not left waiting forever. */
    st32(&g_gate, 0);
    st32(&g_closed_waiting, 0);
    g_target = create(t_gate, (void *)0x77);
    th[0] = create(t_wait_closed, 0);
    wait_until_eq(&g_closed_waiting, 1, 10000 * MS);
    g_services->sleep_ns(20 * MS);
    check("close a handle another thread waits on: 1", g_services->close_thread(g_target), 1);
    st32(&g_gate, 1);
    g_services->wake_by_address((void *)&g_gate, 1);
    r = join(th[0]);
    check("... that waiter returns once the thread ends (0 or 6)", r == 0 && (g_closed_wait_ret == 0 || g_closed_wait_ret == 6), 1);
    check("... writing the code only with 0",
          g_closed_wait_ret == 0 ? g_closed_wait_code == 0x77 : g_closed_wait_code == SENT, 1);

    /* A thread waiting on its own handle times out. */
    st64(&g_handle, 0);
    h = create(t_wait_self, 0);
    st64(&g_handle, h);
    check("a thread waiting on its own handle: 0x102, nothing written", join(h), 0x5E1F);

    /* A handle made by a thread that has ended works for another. */
    st64(&g_handle, 0);
    check("a thread creates one and ends", join(create(t_make_thread, 0)), 1);
    code = SENT;
    check("... main waits on the handle it made: 0", g_services->wait_thread(ld64(&g_handle), FOREVER, &code), 0);
    check("... its code", code, 0x4242);
    check("... and closes it", g_services->close_thread(ld64(&g_handle)), 1);
}

/* ------------------------------------------------------------------------------------------ */
/* The thread limit: create_thread returns 0 there (running threads, then ended ones whose handles
 * are open), and works again once handles are closed. */
static uint64_t g_many[700];
static volatile uint64_t g_stack_slot;
static uint32_t t_publish_stack(void *arg) {
    volatile uint32_t local = 0;
    (void)arg;
    st64(&g_stack_slot, (uint64_t)&local);
    wait_until_eq(&g_gate, 1, 20000 * MS);
    return 0x99;
}

static void area_limits(void) {
    uint64_t before = committed_now(), h;
    uint32_t n = 0, m = 0, i, code = SENT, bad = 0;
    put("== limits\n");
    st32(&g_gate, 0);
    while (n < 700 && (g_many[n] = g_services->create_thread(t_gate, (void *)(uintptr_t)n, 0x10000, 0)) != 0) n++;
    put("limits: ");
    put_dec(n);
    put(" threads running at once\n");
    check("create_thread returns 0 at the thread limit (running threads)", n >= 8 && n < 700, 1);
    check("... a wait on one of them still works: 0x102", g_services->wait_thread(g_many[0], 0, &code), WAIT_TIMEOUT);
    st32(&g_gate, 1);
    g_services->wake_by_address((void *)&g_gate, 1);
    for (i = 0; i < n; i++)
        if (join(g_many[i]) != i) bad++;
    check("... every one ran and ended with its code", bad, 0);
    check("... their stacks all returned", committed_now(), before);
    while (m < 700 && (g_many[m] = g_services->create_thread(t_ret, (void *)(uintptr_t)m, 0x10000, 0)) != 0) {
        g_services->wait_thread(g_many[m], FOREVER, 0); /* ended, its handle kept open */
        m++;
    }
    check("ended threads with open handles count too: 0 at the same limit", m, n);
    bad = 0;
    for (i = 0; i < m; i++) {
        code = SENT;
        if (g_services->wait_thread(g_many[i], 0, &code) != 0 || code != i || g_services->close_thread(g_many[i]) != 1) bad++;
    }
    check("... each still gives its code, then closes", bad, 0);
    h = create(t_ret, (void *)0x1234);
    check("after closing, create_thread works again", join(h), 0x1234);
    check("... commit back", committed_now(), before);

    /* exit_code pointing into the waited thread's own stack, released before the wait returns. */
    st32(&g_gate, 0);
    st64(&g_stack_slot, 0);
    h = create(t_publish_stack, 0);
    while (ld64(&g_stack_slot) == 0) g_services->yield();
    st32(&g_gate, 1);
    g_services->wake_by_address((void *)&g_gate, 1);
    check("exit_code in the ended thread's own (released) stack: 998",
          g_services->wait_thread(h, FOREVER, (uint32_t *)ld64(&g_stack_slot)), 998);
    code = SENT;
    check("... then with a good pointer: 0 and its code", g_services->wait_thread(h, 0, &code) == 0 && code == 0x99, 1);
    g_services->close_thread(h);
}

/* ------------------------------------------------------------------------------------------ */
static void area_ids(void) {
    uint64_t kept, open[8], h;
    uint32_t kept_id, ids[8], code;
    int i, j, reused_handle = 0, reused_id = 0, dup_id = 0, dup_handle = 0, zero = 0;
    put("== ids\n");
    check("main thread id is 1", tid(), 1);
    kept = create(t_id, 0);
    g_services->wait_thread(kept, FOREVER, &kept_id);
    check("a thread's id is not 0 nor 1", kept_id > 1, 1);
    /* The kept thread has ended but its handle is open: neither its handle nor its id comes back. */
    for (i = 0; i < 40; i++) {
        h = create(t_id, 0);
        code = 0;
        if (h == kept) reused_handle++;
        if (h == 0) zero++;
        g_services->wait_thread(h, FOREVER, &code);
        if (code == kept_id) reused_id++;
        g_services->close_thread(h);
    }
    check("handles are non-zero", zero, 0);
    check("an open handle of an ended thread is not reused", reused_handle, 0);
    check("the id of an ended thread whose handle is open is not reused", reused_id, 0);
    /* Eight live threads: distinct ids and handles. */
    st32(&g_gate, 0);
    for (i = 0; i < 8; i++) open[i] = create(t_id_gate, 0);
    st32(&g_gate, 1);
    g_services->wake_by_address((void *)&g_gate, 1);
    for (i = 0; i < 8; i++) ids[i] = join(open[i]);
    for (i = 0; i < 8; i++)
        for (j = 0; j < i; j++) {
            if (ids[i] == ids[j]) dup_id++;
            if (open[i] == open[j]) dup_handle++;
        }
    for (i = 0; i < 8; i++)
        if (ids[i] == 0 || ids[i] == 1 || ids[i] == kept_id) dup_id++;
    check("live threads have distinct ids (not 0, not main's, not the kept one's)", dup_id, 0);
    check("live threads have distinct handles", dup_handle, 0);
    check("the kept handle still answers", g_services->wait_thread(kept, 0, &code), 0);
    check("... with the id as exit code", code, kept_id);
    check("close the kept handle", g_services->close_thread(kept), 1);
}

/* ------------------------------------------------------------------------------------------ */
static volatile uint64_t g_word __attribute__((aligned(16)));
static volatile uint32_t g_wready, g_wdone;
static uint32_t g_wret[4];
static uint64_t g_wtime[4];

static uint32_t t_addr_waiter(void *arg) {
    uintptr_t i = (uintptr_t)arg;
    static const uint64_t sizes[4] = {4, 8, 1, 2};
    uint64_t zero = 0, t0;
    add32(&g_wready, 1);
    t0 = now_ns();
    g_wret[i] = g_services->wait_on_address(&g_word, &zero, sizes[i], 8000 * MS);
    g_wtime[i] = now_ns() - t0;
    add32(&g_wdone, 1);
    return 0;
}

static void area_wait_on_address(void) {
    uint64_t cmp = 0, t0, sz;
    uint8_t *w = (uint8_t *)&g_word;
    static const uint64_t bad_sizes[] = {0, 3, 5, 6, 7, 9, 16, 87, ~0ull};
    unsigned i;
    int ok;
    put("== wait-on-address\n");
    g_word = 0x1122334455667788ull;
    cmp = g_word;
    ok = 1;
    for (i = 0; i < sizeof bad_sizes / sizeof bad_sizes[0]; i++)
        ok &= g_services->wait_on_address(&g_word, &cmp, bad_sizes[i], 0) == 87;
    check("sizes other than 1, 2, 4, 8: 87", ok, 1);
    check("bad size checked before alignment and readability (NULL, NULL, size 3)",
          g_services->wait_on_address(0, 0, 3, 0), 87);
    check("bad size with a kernel address: 87", g_services->wait_on_address((void *)(KERNEL_ADDR + 1), 0, 0, 0), 87);
    check("size 2 at an odd address: 87", g_services->wait_on_address(w + 1, &cmp, 2, 0), 87);
    check("size 4 at +2: 87", g_services->wait_on_address(w + 2, &cmp, 4, 0), 87);
    check("size 8 at +4: 87", g_services->wait_on_address(w + 4, &cmp, 8, 0), 87);
    check("misaligned with NULL compare: 87 (alignment before readability)",
          g_services->wait_on_address(w + 1, 0, 2, 0), 87);
    check("misaligned unreadable address: 87", g_services->wait_on_address((void *)(g_noacc + 2), &cmp, 4, 0), 87);
    check("misaligned NULL+1 address: 87", g_services->wait_on_address((void *)1, &cmp, 8, 0), 87);
    check("NULL address: 998", g_services->wait_on_address(0, &cmp, 4, 0), 998);
    check("NULL compare: 998", g_services->wait_on_address(&g_word, 0, 4, 0), 998);
    check("kernel address: 998", g_services->wait_on_address((void *)KERNEL_ADDR, &cmp, 8, 0), 998);
    check("non-canonical address: 998", g_services->wait_on_address((void *)NONCANON, &cmp, 8, 0), 998);
    check("kernel compare: 998", g_services->wait_on_address(&g_word, (void *)KERNEL_ADDR, 8, 0), 998);
    check("reserved page: 998", g_services->wait_on_address((void *)g_reserved, &cmp, 4, 0), 998);
    check("PAGE_NOACCESS page: 998", g_services->wait_on_address((void *)g_noacc, &cmp, 1, 0), 998);
    check("compare in a PAGE_NOACCESS page: 998", g_services->wait_on_address(&g_word, (void *)g_noacc, 1, 0), 998);
    check("compare straddling into a PAGE_NOACCESS page: 998",
          g_services->wait_on_address(&g_word, (void *)(g_noacc - 4), 8, 0), 998);
    check("unreadable checked before comparing (different values, NULL compare): 998",
          g_services->wait_on_address(&g_word, 0, 8, FOREVER), 998);
    {
        uint64_t other = 1;
        check("address in a read-only page, values differ: 0", g_services->wait_on_address((void *)g_ro, &other, 8, FOREVER), 0);
        check("address in the host's read-only data, values differ: 0",
              g_services->wait_on_address((void *)(uintptr_t)g_services, &other, 8, FOREVER), 0);
    }
    {
        /* compare at an odd address is fine: only `address` must be aligned. */
        uint8_t buf[16];
        memset(buf, 0, sizeof buf);
        check("unaligned compare, values differ: 0", g_services->wait_on_address(&g_word, buf + 3, 8, FOREVER), 0);
        memcpy(buf + 3, (const void *)&g_word, 8);
        check("unaligned compare, values equal, timeout 0: 0x5B4", g_services->wait_on_address(&g_word, buf + 3, 8, 0),
              ERROR_TIMEOUT);
    }
    /* Differs in the compared bytes → 0 at once; equal in them (whatever the rest) → sleeps. */
    for (sz = 1; sz <= 8; sz *= 2) {
        uint64_t c = g_word ^ (1ull << (8 * sz - 1)); /* the top bit of the compared window */
        uint64_t same = g_word ^ (sz < 8 ? (0xFFull << (8 * sz)) : 0);
        uint32_t r;
        t0 = now_ns();
        r = g_services->wait_on_address(&g_word, &c, sz, FOREVER);
        check(sz == 1 ? "size 1 differs: 0 at once" : sz == 2 ? "size 2 differs: 0 at once"
                      : sz == 4 ? "size 4 differs: 0 at once" : "size 8 differs: 0 at once",
              r == 0 && now_ns() - t0 < 2000 * MS, 1);
        r = g_services->wait_on_address(&g_word, &same, sz, 0);
        check(sz == 1 ? "size 1 equal in its byte only: 0x5B4" : sz == 2 ? "size 2 equal in its bytes only: 0x5B4"
                      : sz == 4 ? "size 4 equal in its bytes only: 0x5B4" : "size 8 equal, timeout 0: 0x5B4",
              r, ERROR_TIMEOUT);
    }
    {
        uint32_t hi = (uint32_t)(g_word >> 32);
        check("size 4 at +4 compares the upper half: equal → 0x5B4", g_services->wait_on_address(w + 4, &hi, 4, 0),
              ERROR_TIMEOUT);
        hi ^= 1;
        check("size 4 at +4 differs → 0", g_services->wait_on_address(w + 4, &hi, 4, 0), 0);
    }
    cmp = g_word;
    t0 = now_ns();
    check("equal, timeout 30 ms: 0x5B4", g_services->wait_on_address(&g_word, &cmp, 8, 30 * MS), ERROR_TIMEOUT);
    check("... after about 30 ms", now_ns() - t0 >= 20 * MS, 1);
    /* A wake with no waiter is not remembered. */
    g_services->wake_by_address((void *)&g_word, 0);
    g_services->wake_by_address((void *)&g_word, 1);
    check("a wake with no waiter does nothing: a later wait times out",
          g_services->wait_on_address(&g_word, &cmp, 8, 30 * MS), ERROR_TIMEOUT);
    g_services->wake_by_address(0, 1);
    g_services->wake_by_address((void *)KERNEL_ADDR, 0);
    g_services->wake_by_address((void *)NONCANON, 1);
    g_services->wake_by_address((void *)(uintptr_t)(w + 1), 1);
    g_services->wake_by_address((void *)g_noacc, 0);
    check("wakes at NULL, kernel, non-canonical, odd, no-access addresses return", 1, 1);

    /* Four waiters of sizes 4, 8, 1, 2 on one word: one wake-single wakes at least one, wake-all the rest. */
    {
        uint64_t th[4];
        uint32_t after_single;
        int all0 = 1;
        g_word = 0;
        st32(&g_wready, 0);
        st32(&g_wdone, 0);
        for (i = 0; i < 4; i++) th[i] = create(t_addr_waiter, (void *)(uintptr_t)i);
        wait_until_eq(&g_wready, 4, 10000 * MS);
        g_services->sleep_ns(100 * MS);
        check("waiters sleep while the value is equal", ld32(&g_wdone), 0);
        g_services->wake_by_address((void *)&g_word, 0);
        wait_until_ge(&g_wdone, 1, 2000 * MS);
        after_single = ld32(&g_wdone);
        check("wake single wakes a waiter", after_single >= 1, 1);
        g_services->wake_by_address((void *)&g_word, 1);
        check("wake all wakes the rest", wait_until_eq(&g_wdone, 4, 3000 * MS), 1);
        for (i = 0; i < 4; i++) {
            join(th[i]);
            all0 &= g_wret[i] == 0 && g_wtime[i] < 7000 * MS;
        }
        check("... each woken waiter returned 0 before its timeout", all0, 1);
    }
}

/* ------------------------------------------------------------------------------------------ */
static inline uint64_t fs_load0(void) {
    uint64_t v;
    __asm__ volatile("mov %%fs:0, %0" : "=r"(v));
    return v;
}

struct tls_block {
    uint64_t self;
    uint64_t pad[7];
};
static struct tls_block g_tls[9] __attribute__((aligned(64)));
static volatile uint32_t g_tp_start_nonzero, g_tp_bad, g_tp_rounds;
static volatile uint32_t g_tp_handler_bad, g_tp_handler_calls, g_tp_faulter;

static int32_t h_tp(GUEST_EXCEPTION *e) {
    uint32_t me = tid();
    if (e->code != STATUS_ILLEGAL_INSTRUCTION || me != ld32(&g_tp_faulter)) return EXCEPTION_CONTINUE_SEARCH;
    add32(&g_tp_handler_calls, 1);
    if ((uint64_t)g_services->get_thread_pointer() != (uint64_t)&g_tls[8] || fs_load0() != (uint64_t)&g_tls[8])
        add32(&g_tp_handler_bad, 1);
    e->context->rip += 2; /* ud2 */
    return EXCEPTION_CONTINUE_EXECUTION;
}

static uint32_t t_tp(void *arg) {
    uintptr_t i = (uintptr_t)arg;
    struct tls_block *mine = &g_tls[i];
    static const uint64_t bad[] = {NONCANON, KERNEL_ADDR, 0x8000000000000000ull, 0xFFFFFFFFFFFFF000ull,
                                   0x00FF000000000000ull};
    int r, k;
    if (g_services->get_thread_pointer() != 0) add32(&g_tp_start_nonzero, 1);
    mine->self = (uint64_t)mine;
    g_services->set_thread_pointer(mine);
    for (r = 0; r < 150; r++) {
        volatile uint64_t spin;
        for (spin = 0; spin < 20000; spin++) {
        }
        if (r % 3 == 0) g_services->yield();
        if (r % 7 == 0) g_services->sleep_ns(200000);
        if (r % 11 == 0) g_services->set_thread_pointer((void *)bad[r % 5]);
        if (fs_load0() != (uint64_t)mine || g_services->get_thread_pointer() != (void *)mine) add32(&g_tp_bad, 1);
    }
    add32(&g_tp_rounds, 1);
    if (i == 8) {
        st32(&g_tp_faulter, tid());
        for (k = 0; k < 5; k++) __asm__ volatile("ud2" ::: "memory");
        if (fs_load0() != (uint64_t)mine) add32(&g_tp_bad, 1);
    }
    return 0;
}

static void area_thread_pointer(void) {
    uint64_t th[9];
    void *saved = g_services->get_thread_pointer(), *hh;
    int i, n = 8;
    put("== thread-pointer\n");
    /* Main's own pointer: set, then refused values leave it. */
    g_tls[0].self = 0x5151;
    g_services->set_thread_pointer(&g_tls[0]);
    check("main: set_thread_pointer takes effect", fs_load0() == 0x5151 && g_services->get_thread_pointer() == &g_tls[0], 1);
    g_services->set_thread_pointer((void *)NONCANON);
    check("main: non-canonical 0x800000000000 ignored", fs_load0() == 0x5151 && g_services->get_thread_pointer() == &g_tls[0], 1);
    g_services->set_thread_pointer((void *)KERNEL_ADDR);
    check("main: kernel address ignored", fs_load0() == 0x5151 && g_services->get_thread_pointer() == &g_tls[0], 1);
    g_services->set_thread_pointer((void *)0xFFFFFFFFFFFFFFF0ull);
    check("main: 0xFFFFFFFFFFFFFFF0 ignored", g_services->get_thread_pointer() == &g_tls[0], 1);
    g_services->set_thread_pointer((void *)0x0000800000001000ull);
    check("main: 0x800000001000 ignored", g_services->get_thread_pointer() == &g_tls[0], 1);
    g_services->set_thread_pointer((void *)0x10000000ull);
    check("main: an unmapped user address is accepted", g_services->get_thread_pointer() == (void *)0x10000000ull, 1);
    g_services->set_thread_pointer(&g_tls[0]);
    st32(&g_tp_faulter, 0xFFFFFFFFu);
    hh = add_handler(h_tp);
    for (i = 1; i <= n; i++) th[i] = create(t_tp, (void *)(uintptr_t)i);
    for (i = 1; i <= n; i++) join(th[i]);
    g_services->remove_vectored_exception_handler(hh);
    check("each thread starts with FS base 0 (main's is set)", ld32(&g_tp_start_nonzero), 0);
    check("each thread's FS base kept across preemption, host calls and refused values", ld32(&g_tp_bad), 0);
    check("all threads ran", ld32(&g_tp_rounds), (uint64_t)n);
    check("a handler runs with the faulting thread's FS base", ld32(&g_tp_handler_calls) == 5 && ld32(&g_tp_handler_bad) == 0, 1);
    check("main's FS base untouched by the threads", fs_load0() == 0x5151 && g_services->get_thread_pointer() == &g_tls[0], 1);
    g_services->set_thread_pointer(saved);
}

/* ------------------------------------------------------------------------------------------ */
/* FPU. fxsave as the first instruction of a thread; fpu_hold keeps xmm8-15, MXCSR, FCW and an x87
 * value live across a spin loop and, optionally, a host call per round. */
__asm__(".text\n"
        ".globl fpu_probe_start\n"
        "fpu_probe_start:\n"
        "  fxsave (%rdi)\n"
        "  xor %eax, %eax\n"
        "  ret\n"
        ".globl fpu_hold\n"
        "fpu_hold:\n"
        "  push %rbx\n push %r12\n push %r13\n push %r14\n push %r15\n push %rbp\n"
        "  sub $8, %rsp\n"
        "  mov %rdi, %rbx\n"
        "  movdqu 0(%rbx), %xmm8\n movdqu 16(%rbx), %xmm9\n movdqu 32(%rbx), %xmm10\n movdqu 48(%rbx), %xmm11\n"
        "  movdqu 64(%rbx), %xmm12\n movdqu 80(%rbx), %xmm13\n movdqu 96(%rbx), %xmm14\n movdqu 112(%rbx), %xmm15\n"
        "  ldmxcsr 256(%rbx)\n"
        "  fldcw 264(%rbx)\n"
        "  fldpi\n"
        "  mov 272(%rbx), %r12\n"
        "1:\n"
        "  mov 280(%rbx), %r13\n"
        "2:\n"
        "  dec %r13\n"
        "  jnz 2b\n"
        "  mov 288(%rbx), %rax\n"
        "  test %rax, %rax\n"
        "  jz 3f\n"
        "  mov 296(%rbx), %rdi\n"
        "  call *%rax\n"
        "3:\n"
        "  dec %r12\n"
        "  jnz 1b\n"
        "  movdqu %xmm8, 128(%rbx)\n movdqu %xmm9, 144(%rbx)\n movdqu %xmm10, 160(%rbx)\n movdqu %xmm11, 176(%rbx)\n"
        "  movdqu %xmm12, 192(%rbx)\n movdqu %xmm13, 208(%rbx)\n movdqu %xmm14, 224(%rbx)\n movdqu %xmm15, 240(%rbx)\n"
        "  stmxcsr 260(%rbx)\n"
        "  fnstcw 266(%rbx)\n"
        "  fstpt 304(%rbx)\n"
        "  add $8, %rsp\n"
        "  pop %rbp\n pop %r15\n pop %r14\n pop %r13\n pop %r12\n pop %rbx\n"
        "  ret\n");
uint32_t fpu_probe_start(void *arg);
void fpu_hold(void *hold);

struct hold {
    uint8_t xmm_in[128];
    uint8_t xmm_out[128];
    uint32_t mxcsr_in, mxcsr_out;
    uint16_t fcw_in, fcw_out;
    uint32_t pad0;
    uint64_t rounds, spin;
    void *fn;
    uint64_t fn_arg;
    uint8_t st0[16];
} __attribute__((aligned(16)));

static uint8_t g_fx[12][512] __attribute__((aligned(16)));
static struct hold g_hold[8];
static uint8_t g_pi[16];

static int fx_clean(const uint8_t *fx) {
    uint16_t fcw, fsw;
    uint32_t mxcsr;
    int i;
    memcpy(&fcw, fx, 2);
    memcpy(&fsw, fx + 2, 2);
    memcpy(&mxcsr, fx + 24, 4);
    if (fcw != 0x037F || fsw != 0 || fx[4] != 0 || mxcsr != 0x1F80) return 0;
    for (i = 32; i < 416; i++) /* ST0-7 and XMM0-15 */
        if (fx[i] != 0) return 0;
    return 1;
}

static uint32_t t_hold(void *arg) {
    fpu_hold(arg);
    return 0;
}

static void sleep_tiny(uint64_t ns) { g_services->sleep_ns(ns); }

static int avx_usable(void) {
    uint32_t a, b, c, d, lo, hi;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
    if (!(c & (1u << 27)) || !(c & (1u << 28))) return 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 6) == 6;
}
static uint8_t g_ymm_hi[12][16 * 16];
static uint32_t t_probe_avx(void *arg) {
    uint8_t *out = arg;
    /* Upper halves of ymm0-15: nothing compiled here touches them first. */
    __asm__ volatile("vextractf128 $1, %%ymm0, 0(%0)\n vextractf128 $1, %%ymm1, 16(%0)\n"
                     "vextractf128 $1, %%ymm2, 32(%0)\n vextractf128 $1, %%ymm3, 48(%0)\n"
                     "vextractf128 $1, %%ymm4, 64(%0)\n vextractf128 $1, %%ymm5, 80(%0)\n"
                     "vextractf128 $1, %%ymm6, 96(%0)\n vextractf128 $1, %%ymm7, 112(%0)\n"
                     "vextractf128 $1, %%ymm8, 128(%0)\n vextractf128 $1, %%ymm9, 144(%0)\n"
                     "vextractf128 $1, %%ymm10, 160(%0)\n vextractf128 $1, %%ymm11, 176(%0)\n"
                     "vextractf128 $1, %%ymm12, 192(%0)\n vextractf128 $1, %%ymm13, 208(%0)\n"
                     "vextractf128 $1, %%ymm14, 224(%0)\n vextractf128 $1, %%ymm15, 240(%0)\n"
                     :
                     : "r"(out)
                     : "memory");
    return 0;
}
static void dirty_avx(void) {
    static const uint64_t ones[4] = {~0ull, ~0ull, ~0ull, ~0ull};
    __asm__ volatile("vmovdqu %0, %%ymm0\n vmovdqu %0, %%ymm7\n vmovdqu %0, %%ymm15\n" : : "m"(ones) : "xmm0", "xmm7", "xmm15");
}

/* An unmasked x87 divide by zero on a worker (QEMU's TCG never raises #XM, so x87's #MF): delivered
 * at the next waiting x87 instruction with its code, resumed past it with the thread's x87 state
 * (the control word, the pending ZE and ES in the status word) as it was. */
static volatile uint32_t g_fpx_tid, g_fpx_calls, g_fpx_code, g_fpx_mxcsr;
static volatile uint64_t g_fpx_address, g_fpx_rip;
extern const uint8_t fpx_div[];
static int32_t h_fpx(GUEST_EXCEPTION *e) {
    if (tid() != ld32(&g_fpx_tid)) return EXCEPTION_CONTINUE_SEARCH;
    add32(&g_fpx_calls, 1);
    g_fpx_code = e->code;
    g_fpx_address = e->address;
    g_fpx_rip = e->context->rip;
    e->context->rip += 1; /* fwait */
    return EXCEPTION_CONTINUE_EXECUTION;
}
static uint32_t t_fpx(void *arg) {
    uint16_t fcw = 0x037B, fsw = 0, fcw_after = 0;
    (void)arg;
    st32(&g_fpx_tid, tid());
    __asm__ volatile("fldcw %2\n fld1\n fldz\n fdivrp\n"
                     ".globl fpx_div\nfpx_div:\n fwait\n fnstsw %0\n fnstcw %1\n fnclex\n fstp %%st(0)\n"
                     : "=m"(fsw), "=m"(fcw_after)
                     : "m"(fcw));
    g_fpx_mxcsr = (uint32_t)fsw << 16 | fcw_after;
    fcw = 0x037F;
    __asm__ volatile("fldcw %0" : : "m"(fcw));
    return 0;
}

static void area_fpu(void) {
    static const uint32_t mx[8] = {0x1F80 | 0x20, 0x3F80 | 0x01, 0x5F80 | 0x3F, 0x9F80 | 0x10,
                                   0x7F80 | 0x04, 0x1F80 | 0x02, 0xDF80 | 0x08, 0x3F80 | 0x3F};
    static const uint16_t fcw[8] = {0x027F, 0x007F, 0x037F, 0x027F, 0x007F, 0x037F, 0x027F, 0x007F};
    uint64_t th[8], pr[12];
    int i, j, clean = 1, kept_x = 1, kept_m = 1, kept_c = 1, kept_st = 1, nhold = 8;
    uint32_t main_mx = 0x3F80 | 0x20 | 0x01, got_mx;
    uint16_t main_fcw = 0x027F, got_fcw;
    put("== fpu\n");
    /* Reference pi (round to nearest). */
    __asm__ volatile("fldpi\n fstpt %0" : "=m"(*(uint8_t(*)[10])g_pi));
    /* Dirty main's state before creating threads: nothing of it may show in a new thread. */
    {
        static const uint64_t pat[2] = {0x0123456789abcdefull, 0xfedcba9876543210ull};
        __asm__ volatile("movdqu %0, %%xmm0\n movdqu %0, %%xmm5\n movdqu %0, %%xmm15\n fld1\n fldz\n"
                         :
                         : "m"(pat)
                         : "xmm0", "xmm5", "xmm15");
        __asm__ volatile("ldmxcsr %0\n fldcw %1" : : "m"(main_mx), "m"(main_fcw));
        if (avx_usable()) dirty_avx();
    }
    for (i = 0; i < nhold; i++) {
        struct hold *h = &g_hold[i];
        for (j = 0; j < 128; j++) h->xmm_in[j] = (uint8_t)(0x11 * (i + 1) + j * 7);
        h->mxcsr_in = mx[i];
        h->fcw_in = fcw[i];
        h->rounds = 120;
        h->spin = 30000;
        h->fn = i % 4 == 0 ? 0 : i % 4 == 1 ? (void *)g_services->yield : i % 4 == 2 ? (void *)sleep_tiny
                                                                                     : (void *)g_services->ticks_ns;
        h->fn_arg = 100000;
    }
    for (i = 0; i < nhold; i++) th[i] = create(t_hold, &g_hold[i]);
    /* Clean start states while the hold threads run dirty states on every CPU. */
    for (i = 0; i < 6; i++) pr[i] = create(fpu_probe_start, g_fx[i]);
    for (i = 0; i < 6; i++) join(pr[i]);
    if (avx_usable()) {
        int ok = 1;
        for (i = 0; i < 4; i++) pr[i] = create(t_probe_avx, g_ymm_hi[i]);
        for (i = 0; i < 4; i++) join(pr[i]);
        for (i = 0; i < 4; i++)
            for (j = 0; j < 256; j++) ok &= g_ymm_hi[i][j] == 0;
        check("each thread starts with the upper halves of ymm0-15 zero", ok, 1);
    } else {
        put("(no AVX: ymm upper halves not checked)\n");
    }
    for (i = 0; i < nhold; i++) join(th[i]);
    for (i = 6; i < 12; i++) pr[i] = create(fpu_probe_start, g_fx[i]);
    for (i = 6; i < 12; i++) join(pr[i]);
    for (i = 0; i < 12; i++) clean &= fx_clean(g_fx[i]);
    check("each thread starts clean: FCW 0x37F, FSW 0, empty tags, MXCSR 0x1F80, ST/XMM zero", clean, 1);
    if (!clean) {
        uint32_t m;
        uint16_t c;
        memcpy(&m, g_fx[0] + 24, 4);
        memcpy(&c, g_fx[0], 2);
        put("  first probe: fcw ");
        put_hex(c);
        put(" mxcsr ");
        put_hex(m);
        put("\n");
    }
    for (i = 0; i < nhold; i++) {
        struct hold *h = &g_hold[i];
        kept_x &= memcmp(h->xmm_in, h->xmm_out, 128) == 0;
        kept_m &= h->mxcsr_out == h->mxcsr_in;
        kept_c &= h->fcw_out == h->fcw_in;
        kept_st &= memcmp(h->st0, g_pi, 10) == 0;
        if (h->mxcsr_out != h->mxcsr_in) {
            put("  hold ");
            put_dec(i);
            put(" mxcsr ");
            put_hex(h->mxcsr_out);
            put(" expected ");
            put_hex(h->mxcsr_in);
            put("\n");
        }
    }
    check("xmm8-15 kept across preemption, migration and host calls", kept_x, 1);
    check("MXCSR (rounding, FZ, sticky flags) kept", kept_m, 1);
    check("x87 control word kept", kept_c, 1);
    check("x87 stack value kept", kept_st, 1);
    __asm__ volatile("stmxcsr %0\n fnstcw %1" : "=m"(got_mx), "=m"(got_fcw));
    check("main's MXCSR kept across thread creation and joins", got_mx, main_mx);
    {
        void *hh = add_handler(h_fpx);
        join(create(t_fpx, 0));
        g_services->remove_vectored_exception_handler(hh);
        check("unmasked x87 divide by zero on a thread: delivered once", ld32(&g_fpx_calls), 1);
        check("... code 0xC000008E", ld32(&g_fpx_code), 0xC000008Eu);
        check("... address = the fwait", g_fpx_address, (uint64_t)fpx_div);
        check("... context rip = the fwait", g_fpx_rip, (uint64_t)fpx_div);
        check("... resumed with the thread's x87 state: ZE unmasked, ZE and ES pending",
              ld32(&g_fpx_mxcsr) & 0x00FF037Fu, 0x0084037Bu);
    }
    check("main's FCW kept", got_fcw, main_fcw);
    {
        uint32_t def = 0x1F80;
        uint16_t dfcw = 0x037F;
        __asm__ volatile("fninit\n ldmxcsr %0\n fldcw %1" : : "m"(def), "m"(dfcw));
    }
}

/* ------------------------------------------------------------------------------------------ */
struct stack_probe {
    uint64_t local, base, total, top_size, top_state, top_protect, guard_size, guard_protect, type, alloc_protect;
    volatile uint64_t done; /* set last */
};
static volatile uint32_t g_stack_gate;

static void walk_stack(struct stack_probe *p, uint64_t local) {
    MEMORY_BASIC_INFORMATION m = query(local), r;
    uint64_t a;
    p->local = local;
    p->base = m.AllocationBase;
    p->type = m.Type;
    p->alloc_protect = m.AllocationProtect;
    p->top_state = m.State;
    p->top_protect = m.Protect;
    p->total = 0;
    p->guard_size = 0;
    p->guard_protect = 0;
    for (a = m.AllocationBase;;) {
        r = query(a);
        if (r.State == 0xFFFFFFFFu || r.AllocationBase != m.AllocationBase || r.State == MEM_FREE) break;
        if (r.Protect & PAGE_GUARD) {
            p->guard_size += r.RegionSize;
            p->guard_protect = r.Protect;
        }
        p->total += r.RegionSize;
        p->top_size = r.RegionSize; /* the last region: the committed top */
        a = r.BaseAddress + r.RegionSize;
    }
    /* The committed part that holds `local` should reach the top of the reservation. */
    if (m.BaseAddress + m.RegionSize != m.AllocationBase + p->total) p->top_size = 0xBAD;
}

static uint32_t t_stack_probe(void *arg) {
    volatile uint8_t here = 0;
    walk_stack(arg, (uint64_t)&here);
    st64(&((struct stack_probe *)arg)->done, 1);
    wait_until_eq(&g_stack_gate, 1, 20000 * MS);
    return here;
}

static void stack_case(const char *name, uint64_t reserve, uint64_t commit, uint64_t want_total, uint64_t want_top) {
    static struct stack_probe p;
    uint64_t before = committed_now(), h;
    MEMORY_BASIC_INFORMATION m;
    uint32_t code = SENT;
    int ok;
    memset(&p, 0, sizeof p);
    st32(&g_stack_gate, 0);
    h = g_services->create_thread(t_stack_probe, &p, reserve, commit);
    put("-- ");
    put(name);
    put("\n");
    if (!h) {
        check("create_thread", 0, 1);
        return;
    }
    while (ld64(&p.done) == 0) g_services->sleep_ns(1 * MS);
    m = query(p.base);
    check("the stack shows from another thread: private, reserved at its base", m.Type == MEM_PRIVATE && m.AllocationBase == p.base, 1);
    check("stack reservation size", p.total, want_total);
    check("committed top", p.top_size, want_top);
    check("one guard page below it", p.guard_size, PAGE);
    check("guard page protection PAGE_READWRITE|PAGE_GUARD", p.guard_protect, PAGE_READWRITE | PAGE_GUARD);
    check("top is committed PAGE_READWRITE", p.top_state == MEM_COMMIT && p.top_protect == PAGE_READWRITE, 1);
    check("type MEM_PRIVATE, AllocationProtect PAGE_READWRITE", p.type == MEM_PRIVATE && p.alloc_protect == PAGE_READWRITE, 1);
    check("commit grew by the stack", committed_now() - before >= want_top + 0, 1);
    st32(&g_stack_gate, 1);
    g_services->wake_by_address((void *)&g_stack_gate, 1);
    ok = g_services->wait_thread(h, FOREVER, &code) == 0;
    m = query(p.base);
    check("after wait_thread returns 0 the stack is released", ok && (m.State == MEM_FREE || m.AllocationBase != p.base), 1);
    check("... and its commit returned", committed_now(), before);
    g_services->close_thread(h);
}

__attribute__((noinline)) static uint64_t deep(uint64_t n) {
    volatile uint8_t pad[1000];
    pad[0] = (uint8_t)n;
    pad[999] = 1;
    return n ? deep(n - 1) + pad[0] : pad[999];
}
static uint32_t deep_expected(uint64_t n) {
    uint64_t s = 1, k;
    for (k = 1; k <= n; k++) s += (uint8_t)k;
    return (uint32_t)s;
}
static uint32_t t_deep(void *arg) { return (uint32_t)deep((uint64_t)(uintptr_t)arg); }

static void area_stack(void) {
    uint64_t before;
    int i, zero = 1;
    static const uint64_t refused[][2] = {
        {(1ull << 30) + 1, 0},  {(1ull << 30) + 0x10000, 0}, {~0ull, 0}, {~0ull - 0xFFFF, 0}, {0, ~0ull},
        {0, 1ull << 30},        {1ull << 31, 1ull << 20},    {0, (1ull << 30) - 0xFFF},  {~0ull, ~0ull},
    };
    put("== stack\n");
    before = committed_now();
    check("a thread grows its stack by 300 KB and returns", join(create(t_deep, (void *)300)), deep_expected(300));
    check("... all its grown stack returned to the commit", committed_now(), before);
    stack_case("defaults (0, 0): 1 MiB, one page", 0, 0, 1ull << 20, PAGE);
    stack_case("(100000, 5000): 128 KiB, two pages", 100000, 5000, 0x20000, 2 * PAGE);
    stack_case("(1, 1): 64 KiB, one page", 1, 1, 0x10000, PAGE);
    stack_case("(64 KiB, 60 KiB): commit + guard fit exactly", 0x10000, 0xF000, 0x10000, 0xF000);
    stack_case("(64 KiB, 60 KiB + 1): the reservation grows to 128 KiB", 0x10000, 0xF001, 0x20000, 0x10000);
    stack_case("(64 KiB, 64 KiB): 128 KiB", 0x10000, 0x10000, 0x20000, 0x10000);
    stack_case("(0, 2 MiB): 2 MiB + 64 KiB", 0, 2ull << 20, (2ull << 20) + 0x10000, 2ull << 20);
    stack_case("(1 GiB, 0): the largest allowed", 1ull << 30, 0, 1ull << 30, PAGE);
    stack_case("(1 GiB - 65535, 0): rounds up to 1 GiB", (1ull << 30) - 0xFFFF, 0, 1ull << 30, PAGE);
    before = committed_now();
    for (i = 0; i < (int)(sizeof refused / sizeof refused[0]); i++) {
        uint64_t h = g_services->create_thread(t_ret, 0, refused[i][0], refused[i][1]);
        if (h) {
            zero = 0;
            put("  accepted: reserve ");
            put_hex(refused[i][0]);
            put(" commit ");
            put_hex(refused[i][1]);
            put("\n");
            join(h);
        }
    }
    check("reservations above 1 GiB (incl. by rounding or by commit) return 0", zero, 1);
    check("... charging nothing", committed_now(), before);
    check("start NULL: 0", g_services->create_thread(0, 0, 0, 0), 0);
    check("start in a data page: 0", g_services->create_thread((GUEST_THREAD_START)(uintptr_t)g_tls, 0, 0, 0), 0);
    check("start in a kernel address: 0", g_services->create_thread((GUEST_THREAD_START)KERNEL_ADDR, 0, 0, 0), 0);
    check("start non-canonical: 0", g_services->create_thread((GUEST_THREAD_START)NONCANON, 0, 0, 0), 0);
    check("start in a reserved page: 0", g_services->create_thread((GUEST_THREAD_START)g_reserved, 0, 0, 0), 0);
    check("... charging nothing", committed_now(), before);
}

/* ------------------------------------------------------------------------------------------ */
/* Stack overflow on threads: one handler redirects the context to exit_thread, the other calls
 * exit_thread itself from the last pages. */
static volatile uint32_t g_ovf_tid[4];
static volatile uint64_t g_ovf_resume_rsp[4], g_ovf_base[4], g_ovf_handler_at[4], g_ovf_code[4];
static volatile uint32_t g_ovf_mode[4];

static void ovf_exit(void) { g_services->exit_thread(0xF00D); }

static int32_t h_overflow(GUEST_EXCEPTION *e) {
    volatile uint8_t here = 0;
    uint32_t me = tid();
    int i;
    for (i = 0; i < 4; i++)
        if (ld32(&g_ovf_tid[i]) == me) break;
    if (i == 4) return EXCEPTION_CONTINUE_SEARCH;
    g_ovf_code[i] = e->code;
    g_ovf_handler_at[i] = (uint64_t)&here;
    if (e->code != STATUS_STACK_OVERFLOW) return EXCEPTION_CONTINUE_SEARCH;
    {
        /* The guarantee: the handler has two pages of stack to use without a further fault. */
        volatile uint8_t use[8000];
        int k;
        for (k = (int)sizeof use - 1; k >= 0; k -= 512) use[k] = (uint8_t)k;
        use[0] = 1;
    }
    if (g_ovf_mode[i] == 1) g_services->exit_thread(0xF00E);
    e->context->rsp = g_ovf_resume_rsp[i];
    e->context->rip = (uint64_t)ovf_exit;
    return EXCEPTION_CONTINUE_EXECUTION;
}

static uint32_t t_overflow(void *arg) {
    uintptr_t i = (uintptr_t)arg;
    volatile uint8_t top[64];
    top[0] = 1;
    g_ovf_resume_rsp[i] = (((uint64_t)top - 1024) & ~15ull) - 8;
    g_ovf_base[i] = query((uint64_t)top).AllocationBase;
    st32(&g_ovf_tid[i], tid());
    return (uint32_t)recurse_forever(top[0]);
}

static void area_overflow(void) {
    void *hh;
    uint64_t th[4], before;
    uint32_t codes[4];
    int i, round;
    put("== overflow\n");
    hh = add_handler(h_overflow);
    before = committed_now();
    for (round = 0; round < 2; round++) {
        int n = round == 0 ? 2 : 4;
        for (i = 0; i < 4; i++) {
            st32(&g_ovf_tid[i], 0);
            g_ovf_mode[i] = (uint32_t)(i & 1);
            g_ovf_code[i] = 0;
            g_ovf_handler_at[i] = 0;
        }
        for (i = 0; i < n; i++) th[i] = g_services->create_thread(t_overflow, (void *)(uintptr_t)i, 0x40000, 0);
        for (i = 0; i < n; i++) codes[i] = join(th[i]);
        for (i = 0; i < n; i++) {
            uint64_t off = g_ovf_handler_at[i] - g_ovf_base[i];
            check(round == 0 ? "overflow on a thread: 0xC00000FD to the handler" : "four at once: 0xC00000FD to the handler",
                  g_ovf_code[i], STATUS_STACK_OVERFLOW);
            check(i & 1 ? "... handler calls exit_thread: the thread's code" : "... handler redirects to exit_thread: its code",
                  codes[i], i & 1 ? 0xF00E : 0xF00D);
            check("... the handler ran on the last pages of that stack (and used two pages there)",
                  g_ovf_handler_at[i] >= g_ovf_base[i] && off < 4 * PAGE, 1);
            if (!(g_ovf_handler_at[i] >= g_ovf_base[i] && off < 4 * PAGE)) {
                put("  handler at base + ");
                put_hex(off);
                put("\n");
            }
            check("... the stack is released", query(g_ovf_base[i]).State, MEM_FREE);
        }
    }
    check("commit back to where it was", committed_now(), before);
    check("remove the handler", g_services->remove_vectored_exception_handler(hh), 1);
    check("remove it again: 0", g_services->remove_vectored_exception_handler(hh), 0);
}

/* ------------------------------------------------------------------------------------------ */
/* Nested exceptions: a fault inside a handler is a new exception on the same thread. */
struct nest_rec {
    uint32_t code, depth;
    uint64_t access, address, rip, ctx_rsp, local;
};
static struct nest_rec g_nest[8];
static volatile uint32_t g_nest_n, g_nest_depth, g_nest_tid, g_nest_read;
static uint64_t g_nx, g_ny;
/* A minimal setjmp/longjmp (gcc's __builtin_setjmp receiver may re-run the faulting path). */
__asm__(".text\n"
        ".globl jb_set\n"
        "jb_set:\n"
        "  mov %rbx, 0(%rdi)\n mov %rbp, 8(%rdi)\n mov %r12, 16(%rdi)\n mov %r13, 24(%rdi)\n"
        "  mov %r14, 32(%rdi)\n mov %r15, 40(%rdi)\n"
        "  lea 8(%rsp), %rax\n mov %rax, 48(%rdi)\n"
        "  mov (%rsp), %rax\n mov %rax, 56(%rdi)\n"
        "  xor %eax, %eax\n ret\n"
        ".globl jb_jump\n"
        "jb_jump:\n"
        "  mov 0(%rdi), %rbx\n mov 8(%rdi), %rbp\n mov 16(%rdi), %r12\n mov 24(%rdi), %r13\n"
        "  mov 32(%rdi), %r14\n mov 40(%rdi), %r15\n mov 48(%rdi), %rsp\n"
        "  mov %esi, %eax\n jmp *56(%rdi)\n");
int jb_set(uint64_t *jb) __attribute__((returns_twice));
__attribute__((noreturn)) void jb_jump(uint64_t *jb, int v);
static uint64_t g_jb[8];
static volatile uint32_t g_escape_tid, g_escapes, g_escape_other;

static int32_t h_nested(GUEST_EXCEPTION *e) {
    volatile uint8_t here = 0;
    uint32_t depth, n;
    if (tid() != ld32(&g_nest_tid)) return EXCEPTION_CONTINUE_SEARCH;
    if (e->code != STATUS_ACCESS_VIOLATION) return EXCEPTION_CONTINUE_SEARCH;
    depth = ++g_nest_depth;
    n = g_nest_n++;
    if (n < 8) {
        g_nest[n].code = e->code;
        g_nest[n].depth = depth;
        g_nest[n].access = e->access;
        g_nest[n].address = e->address;
        g_nest[n].rip = e->context->rip;
        g_nest[n].ctx_rsp = e->context->rsp;
        g_nest[n].local = (uint64_t)&here;
    }
    if (e->address == g_nx && depth == 1) {
        uint8_t v = *(volatile uint8_t *)g_ny; /* faults: the nested exception */
        g_nest_read = v + 1u;
        valloc((void *)g_nx, PAGE, MEM_COMMIT, PAGE_READWRITE);
    } else if (e->address == g_ny) {
        valloc((void *)g_ny, PAGE, MEM_COMMIT, PAGE_READONLY);
    }
    --g_nest_depth;
    return EXCEPTION_CONTINUE_EXECUTION;
}

static int32_t h_escape(GUEST_EXCEPTION *e) {
    if (tid() != ld32(&g_escape_tid)) return EXCEPTION_CONTINUE_SEARCH;
    if (e->code != STATUS_ACCESS_VIOLATION || e->address != g_reserved) {
        add32(&g_escape_other, 1);
        return EXCEPTION_CONTINUE_SEARCH;
    }
    jb_jump(g_jb, 1);
}

/* Handlers that change the list while a dispatch walks it: the walk goes on after the handler it
 * called, whatever was added in front or removed (the caller itself included). */
static volatile uint32_t g_walk_tid, g_walk_log[8], g_walk_n;
static void *g_walk_self;
static void walk_note(uint32_t who) {
    uint32_t n = g_walk_n++;
    if (n < 8) g_walk_log[n] = who;
}
static int32_t h_walk_removes_itself(GUEST_EXCEPTION *e) {
    (void)e;
    if (tid() != ld32(&g_walk_tid)) return EXCEPTION_CONTINUE_SEARCH;
    walk_note(1);
    g_services->remove_vectored_exception_handler(g_walk_self);
    return EXCEPTION_CONTINUE_SEARCH;
}
static int32_t h_walk_front(GUEST_EXCEPTION *e) {
    (void)e;
    if (tid() != ld32(&g_walk_tid)) return EXCEPTION_CONTINUE_SEARCH;
    walk_note(3);
    return EXCEPTION_CONTINUE_SEARCH;
}
static int32_t h_walk_adds_front(GUEST_EXCEPTION *e) {
    (void)e;
    if (tid() != ld32(&g_walk_tid)) return EXCEPTION_CONTINUE_SEARCH;
    walk_note(2);
    if (!g_walk_self) g_walk_self = add_handler(h_walk_front);
    return EXCEPTION_CONTINUE_SEARCH;
}
static int32_t h_walk_last(GUEST_EXCEPTION *e) {
    if (tid() != ld32(&g_walk_tid)) return EXCEPTION_CONTINUE_SEARCH;
    walk_note(9);
    e->context->rip += 2; /* ud2 */
    return EXCEPTION_CONTINUE_EXECUTION;
}

static uint32_t t_nested(void *arg) {
    (void)arg;
    st32(&g_nest_tid, tid());
    *(volatile uint32_t *)g_nx = 0x1234;
    return *(volatile uint32_t *)g_nx;
}

__attribute__((noinline)) static void escape_once(void) {
    if (jb_set(g_jb) == 0) {
        *(volatile uint32_t *)g_reserved = 1; /* the handler longjmps back here */
        add32(&g_escape_other, 100);          /* never reached */
    } else {
        add32(&g_escapes, 1);
    }
}

static uint32_t t_escape(void *arg) {
    int i;
    (void)arg;
    st32(&g_escape_tid, tid());
    for (i = 0; i < 600; i++) escape_once();
    st32(&g_escape_tid, 0);
    /* After 600 handlers that never returned, an ordinary nested delivery still works. */
    st32(&g_nest_tid, tid());
    *(volatile uint32_t *)g_nx = 0x5678;
    return *(volatile uint32_t *)g_nx;
}

static void area_nested(void) {
    void *h1, *h2;
    uint64_t r, base;
    put("== nested\n");
    base = (uint64_t)valloc(0, 0x10000, MEM_RESERVE, PAGE_READWRITE);
    g_nx = base;
    g_ny = base + PAGE;
    g_nest_n = 0;
    g_nest_depth = 0;
    h1 = add_handler(h_nested);
    r = join(create(t_nested, 0));
    check("the faulting write completes after the nested fault", r, 0x1234);
    check("two deliveries", g_nest_n, 2);
    check("outer: write AV at X, depth 1",
          g_nest[0].code == STATUS_ACCESS_VIOLATION && g_nest[0].access == 1 && g_nest[0].address == g_nx && g_nest[0].depth == 1, 1);
    check("inner: read AV at Y, depth 2 (the handler re-entered on the same thread)",
          g_nest[1].code == STATUS_ACCESS_VIOLATION && g_nest[1].access == 0 && g_nest[1].address == g_ny && g_nest[1].depth == 2, 1);
    check("inner context's rip is in the handler", g_nest[1].rip >= (uint64_t)h_nested && g_nest[1].rip < (uint64_t)h_nested + 0x1000, 1);
    check("inner context's rsp is the handler's (below the first fault's rsp)", g_nest[1].ctx_rsp < g_nest[0].ctx_rsp - 128, 1);
    check("inner handler runs further down the same stack, below its context's rsp - 128",
          g_nest[1].local < g_nest[1].ctx_rsp - 128 && g_nest[1].local < g_nest[0].local, 1);
    check("the handler's read of Y saw zero after the inner commit", g_nest_read, 1);
    /* The list changed by the running handler (main thread, so the order is deterministic). */
    {
        void *last, *adds;
        check("remove the nested handler", g_services->remove_vectored_exception_handler(h1), 1);
        st32(&g_walk_tid, tid());
        g_walk_n = 0;
        last = add_handler(h_walk_last);
        g_walk_self = add_handler(h_walk_removes_itself);
        __asm__ volatile("ud2" ::: "memory");
        check("a handler removing itself: the next one is still called", g_walk_n == 2 && g_walk_log[0] == 1 && g_walk_log[1] == 9, 1);
        g_walk_n = 0;
        g_walk_self = 0;
        adds = add_handler(h_walk_adds_front);
        __asm__ volatile("ud2" ::: "memory");
        check("a handler adding one in front: it is not called again, the next one is",
              g_walk_n == 2 && g_walk_log[0] == 2 && g_walk_log[1] == 9, 1);
        g_walk_n = 0;
        __asm__ volatile("ud2" ::: "memory");
        check("... the next fault starts at the new front", g_walk_n == 3 && g_walk_log[0] == 3 && g_walk_log[1] == 2 && g_walk_log[2] == 9, 1);
        check("remove them", g_services->remove_vectored_exception_handler(g_walk_self) + g_services->remove_vectored_exception_handler(adds) +
                                 g_services->remove_vectored_exception_handler(last), 3);
        st32(&g_walk_tid, 0);
        h1 = add_handler(h_nested);
    }
    /* Handlers that leave by longjmp, 600 times, then nesting again. */
    g_v->VirtualFree(g_host, (void *)base, 0x10000, MEM_DECOMMIT);
    g_nest_n = 0;
    g_nest_depth = 0;
    st32(&g_nest_tid, 0);
    h2 = add_handler(h_escape);
    r = join(create(t_escape, 0));
    check("600 handlers leaving by longjmp: the thread goes on", ld32(&g_escapes), 600);
    check("... no other fault seen", ld32(&g_escape_other), 0);
    check("... then a nested delivery still works", r == 0x5678 && g_nest_n == 2 && g_nest[1].depth == 2, 1);
    check("remove both handlers",
          g_services->remove_vectored_exception_handler(h1) + g_services->remove_vectored_exception_handler(h2), 2);
    g_v->VirtualFree(g_host, (void *)base, 0, MEM_RELEASE);
}

/* ------------------------------------------------------------------------------------------ */
/* Exceptions on one thread while others allocate, and handlers added and removed meanwhile. */
static volatile uint32_t g_ex_tid, g_ex_calls, g_ex_foreign, g_ex_stop, g_ex_alloc_fail, g_ex_addrm_fail;
static uint64_t g_ex_region;

static int32_t h_commit(GUEST_EXCEPTION *e) {
    if (tid() != ld32(&g_ex_tid)) {
        add32(&g_ex_foreign, 1);
        return EXCEPTION_CONTINUE_SEARCH;
    }
    if (e->code == STATUS_ILLEGAL_INSTRUCTION) {
        e->context->rip += 2;
        add32(&g_ex_calls, 1);
        return EXCEPTION_CONTINUE_EXECUTION;
    }
    if (e->code != STATUS_ACCESS_VIOLATION || e->address < g_ex_region || e->address >= g_ex_region + 0x10000)
        return EXCEPTION_CONTINUE_SEARCH;
    if (!valloc((void *)(e->address & ~(PAGE - 1)), PAGE, MEM_COMMIT, PAGE_READWRITE)) return EXCEPTION_CONTINUE_SEARCH;
    add32(&g_ex_calls, 1);
    return EXCEPTION_CONTINUE_EXECUTION;
}
static int32_t h_noop(GUEST_EXCEPTION *e) {
    (void)e;
    return EXCEPTION_CONTINUE_SEARCH;
}

static uint32_t t_ex_faulter(void *arg) {
    int i, bad = 0;
    (void)arg;
    st32(&g_ex_tid, tid());
    for (i = 0; i < 300; i++) {
        volatile uint32_t *p = (volatile uint32_t *)(g_ex_region + (uint64_t)(i % 16) * PAGE + 8);
        *p = (uint32_t)i;
        if (*p != (uint32_t)i) bad++;
        if (i % 3 == 0) __asm__ volatile("ud2" ::: "memory");
        g_v->VirtualFree(g_host, (void *)(g_ex_region + (uint64_t)(i % 16) * PAGE), PAGE, MEM_DECOMMIT);
    }
    st32(&g_ex_stop, 1);
    return (uint32_t)bad;
}
static uint32_t t_ex_alloc(void *arg) {
    uint64_t n = 0;
    (void)arg;
    while (!ld32(&g_ex_stop)) {
        uint8_t *p = valloc(0, 0x20000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
        if (!p) {
            add32(&g_ex_alloc_fail, 1);
            continue;
        }
        p[0] = 1;
        p[0x1FFFF] = 2;
        if (g_v->VirtualFree(g_host, p, 0, MEM_RELEASE) != S_OK) add32(&g_ex_alloc_fail, 1);
        n++;
    }
    return (uint32_t)n;
}
static uint32_t t_ex_addrm(void *arg) {
    (void)arg;
    while (!ld32(&g_ex_stop)) {
        void *h = g_services->add_vectored_exception_handler((uint32_t)(now_ns() & 1), h_noop);
        if (!h || g_services->remove_vectored_exception_handler(h) != 1) add32(&g_ex_addrm_fail, 1);
    }
    return 0;
}

static void area_exceptions(void) {
    uint64_t th[4], before = committed_now();
    uint32_t bad, rounds = 0;
    void *hh;
    int i;
    put("== exceptions\n");
    g_ex_region = (uint64_t)valloc(0, 0x10000, MEM_RESERVE, PAGE_READWRITE);
    st32(&g_ex_tid, 0xFFFFFFFFu);
    st32(&g_ex_stop, 0);
    hh = add_handler(h_commit);
    th[1] = create(t_ex_alloc, 0);
    th[2] = create(t_ex_alloc, 0);
    th[3] = create(t_ex_addrm, 0);
    th[0] = create(t_ex_faulter, 0);
    bad = join(th[0]);
    for (i = 1; i < 3; i++) rounds += join(th[i]);
    join(th[3]);
    check("300 faults and 100 ud2 on one thread, each handled on it, while others allocate", ld32(&g_ex_calls), 400);
    check("... every faulting write landed", bad, 0);
    check("... no fault on the allocating threads", ld32(&g_ex_foreign), 0);
    check("... allocations beside it never failed", ld32(&g_ex_alloc_fail), 0);
    check("... adding and removing handlers meanwhile never failed", ld32(&g_ex_addrm_fail), 0);
    check("... the allocators made progress", rounds > 0, 1);
    check("remove the handler", g_services->remove_vectored_exception_handler(hh), 1);
    g_v->VirtualFree(g_host, (void *)g_ex_region, 0, MEM_RELEASE);
    check("commit back to where it was", committed_now(), before);
}

/* ------------------------------------------------------------------------------------------ */
/* A guard page touched by four threads at once: one guard exception per page in all (the bit
 * clears once; the others' accesses then succeed). */
static volatile uint32_t g_gr_arrived, g_gr_guard[64], g_gr_other;
static uint64_t g_gr_base;
static int32_t h_guard_count(GUEST_EXCEPTION *e) {
    if (e->address < g_gr_base || e->address >= g_gr_base + 64 * PAGE) return EXCEPTION_CONTINUE_SEARCH;
    if (e->code == STATUS_GUARD_PAGE_VIOLATION) add32(&g_gr_guard[(e->address - g_gr_base) / PAGE], 1);
    else add32(&g_gr_other, 1);
    return EXCEPTION_CONTINUE_EXECUTION; /* retried: succeeds */
}
static uint32_t t_guard_race(void *arg) {
    uint32_t page, sum = 0;
    (void)arg;
    for (page = 0; page < 64; page++) {
        add32(&g_gr_arrived, 1);
        uint32_t spins = 0;
        while (ld32(&g_gr_arrived) < 4 * (page + 1))
            if (++spins % 4096 == 0) g_services->yield(); /* one CPU: let the others arrive */
        sum += *(volatile uint32_t *)(g_gr_base + page * PAGE + ((uintptr_t)arg) * 8);
    }
    return sum;
}
static void area_guard_race(void) {
    uint64_t th[4];
    uint32_t i, ok = 1, bad = 0;
    void *hh;
    put("== guard-race\n");
    g_gr_base = (uint64_t)valloc(0, 64 * PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD);
    st32(&g_gr_arrived, 0);
    hh = add_handler(h_guard_count);
    for (i = 0; i < 4; i++) th[i] = create(t_guard_race, (void *)(uintptr_t)i);
    for (i = 0; i < 4; i++)
        if (join(th[i]) != 0) bad++;
    g_services->remove_vectored_exception_handler(hh);
    for (i = 0; i < 64; i++) ok &= ld32(&g_gr_guard[i]) == 1;
    check("64 guard pages each read by four threads at once: exactly one 0x80000001 per page", ok, 1);
    check("... no other exception", ld32(&g_gr_other), 0);
    check("... every read saw zero", bad, 0);
    check("... the pages are plain read-write now", query(g_gr_base).Protect == PAGE_READWRITE && query(g_gr_base).RegionSize == 64 * PAGE, 1);
    g_v->VirtualFree(g_host, (void *)g_gr_base, 0, MEM_RELEASE);
}

/* ------------------------------------------------------------------------------------------ */
/* Notification callbacks with threads (§10.3). */
struct cb {
    const ICLRMemoryNotificationCallbackVtbl *lpVtbl;
    volatile uint32_t refs;
};
static volatile uint32_t g_cb_in, g_cb_overlap, g_cb_calls, g_cb_last, g_cb_bad_tid, g_cb_worker_tids[4];

static HRESULT cb_qi(ICLRMemoryNotificationCallback *This, REFIID riid, void **ppv) {
    (void)riid;
    *ppv = This;
    add32(&((struct cb *)This)->refs, 1);
    return S_OK;
}
static ULONG cb_addref(ICLRMemoryNotificationCallback *This) { return add32(&((struct cb *)This)->refs, 1); }
static ULONG cb_release(ICLRMemoryNotificationCallback *This) { return add32(&((struct cb *)This)->refs, (uint32_t)-1); }
static HRESULT cb_notify(ICLRMemoryNotificationCallback *This, EMemoryAvailable band) {
    uint32_t me = tid(), load = 0;
    SIZE_T avail = 0;
    int i, known = 0;
    (void)This;
    if (add32(&g_cb_in, 1) != 1) add32(&g_cb_overlap, 1);
    for (i = 0; i < 4; i++) known |= ld32(&g_cb_worker_tids[i]) == me;
    if (!known) add32(&g_cb_bad_tid, 1);
    add32(&g_cb_calls, 1);
    g_v->GetMemoryLoad(g_host, &load, &avail); /* any host function may be called */
    g_services->sleep_ns(300000);              /* widen the window for a concurrent band change */
    st32(&g_cb_last, (uint32_t)band);
    add32(&g_cb_in, (uint32_t)-1);
    return S_OK;
}
static const ICLRMemoryNotificationCallbackVtbl g_cb_vtbl = {cb_qi, cb_addref, cb_release, cb_notify};
static struct cb g_cb = {&g_cb_vtbl, 1};
static struct cb g_cb2 = {&g_cb_vtbl, 1};

static uint64_t g_nt_chunk;
static volatile uint32_t g_nt_fail, g_nt_arrived;
/* Each round the four threads commit a chunk each (together: free commit below the low
 * threshold), meet, release them (back to high) and meet again. */
static uint32_t t_notify(void *arg) {
    uintptr_t i = (uintptr_t)arg;
    uint32_t r;
    st32(&g_cb_worker_tids[i], tid());
    for (r = 0; r < 8; r++) {
        void *p = 0;
        if (g_v->VirtualAlloc(g_host, 0, g_nt_chunk, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eProcessCritical, &p) != S_OK)
            add32(&g_nt_fail, 1);
        add32(&g_nt_arrived, 1);
        wait_until_ge(&g_nt_arrived, 4 * (2 * r + 1), 20000 * MS);
        if (p && g_v->VirtualFree(g_host, p, 0, MEM_RELEASE) != S_OK) add32(&g_nt_fail, 1);
        add32(&g_nt_arrived, 1);
        wait_until_ge(&g_nt_arrived, 4 * (2 * r + 2), 20000 * MS);
    }
    return 0;
}

static uint32_t band_now(void) {
    HOST_COMMIT_INFO ci;
    uint64_t free_;
    g_services->query_commit(&ci);
    free_ = ci.commit_limit - ci.committed;
    return free_ < ci.low_threshold ? 1 : free_ > ci.high_threshold ? 3 : 2;
}

static void area_notify(void) {
    HOST_COMMIT_INFO ci;
    uint64_t th[4], free_, target;
    int i;
    put("== notify\n");
    g_services->query_commit(&ci);
    free_ = ci.commit_limit - ci.committed;
    /* Four chunks together take free commit to half the low threshold (each crosses into a band). */
    target = ci.low_threshold / 2;
    if (free_ <= target + 4 * 0x10000) {
        check("room to cross the bands", 0, 1);
        return;
    }
    g_nt_chunk = ((free_ - target) / 4) & ~0xFFFFull;
    check("register the callback", (uint32_t)g_v->RegisterMemoryNotificationCallback(g_host, (ICLRMemoryNotificationCallback *)&g_cb), S_OK);
    check("... no call at registration", ld32(&g_cb_calls), 0);
    for (i = 0; i < 4; i++) st32(&g_cb_worker_tids[i], 0);
    st32(&g_nt_arrived, 0);
    for (i = 0; i < 4; i++) th[i] = create(t_notify, (void *)(uintptr_t)i);
    for (i = 0; i < 4; i++) join(th[i]);
    check("band changes from four threads: the callback ran (at least low and back)", ld32(&g_cb_calls) >= 2, 1);
    check("... never two callbacks at once", ld32(&g_cb_overlap), 0);
    check("... always on a thread whose call changed the band", ld32(&g_cb_bad_tid), 0);
    check("... every allocation succeeded", ld32(&g_nt_fail), 0);
    check("the last band delivered is the band now (the newest delivered after a callback returns)",
          ld32(&g_cb_last), band_now());
    check("re-register another object", (uint32_t)g_v->RegisterMemoryNotificationCallback(g_host, (ICLRMemoryNotificationCallback *)&g_cb2), S_OK);
    check("... the old object released to its own count", ld32(&g_cb.refs), 1);
    check("... the new one held", ld32(&g_cb2.refs), 2);
    check("unregister", (uint32_t)g_v->RegisterMemoryNotificationCallback(g_host, 0), S_OK);
    check("... released", ld32(&g_cb2.refs), 1);
    put("notify: calls ");
    put_dec(ld32(&g_cb_calls));
    put("\n");
}

/* A band change made inside an exception handler that then ends its thread with exit_thread:
 * the change is delivered anyway (at the latest at the next host call of another thread). */
static volatile uint32_t g_nh_tid;
static volatile uint64_t g_nh_block;
static int32_t h_commit_then_exit(GUEST_EXCEPTION *e) {
    void *p = 0;
    (void)e;
    if (tid() != ld32(&g_nh_tid)) return EXCEPTION_CONTINUE_SEARCH;
    if (g_v->VirtualAlloc(g_host, 0, g_nt_chunk, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eProcessCritical, &p) == S_OK)
        st64(&g_nh_block, (uint64_t)p);
    st64(&g_handle, create(t_ret, (void *)0x4F)); /* a handler may create threads too */
    g_services->exit_thread(0x4E);
    return EXCEPTION_CONTINUE_SEARCH;
}
static uint32_t t_fault_for_band(void *arg) {
    (void)arg;
    st32(&g_nh_tid, tid());
    st32(&g_cb_worker_tids[0], tid());
    return *(volatile uint32_t *)g_reserved;
}

static void area_notify_in_handler(void) {
    HOST_COMMIT_INFO ci;
    DWORD load;
    SIZE_T avail;
    void *hh;
    put("== notify-handler\n");
    g_services->query_commit(&ci);
    /* Free commit ends at half the low threshold plus 256 KiB: inside the low band, and above the
     * critical reserve (6 % of the limit, half the low threshold's 12 %) by more than the 64 KiB the
     * rounding may leave, so the handler's create_thread (its stack is a task-level commit, which
     * may not use the reserve) always has room. */
    g_nt_chunk = ((ci.commit_limit - ci.committed) - ci.low_threshold / 2 - 0x40000) & ~0xFFFFull;
    st32(&g_cb_calls, 0);
    st32(&g_cb_last, 0);
    st32(&g_cb_worker_tids[1], tid());
    st64(&g_nh_block, 0);
    st64(&g_handle, 0);
    g_v->RegisterMemoryNotificationCallback(g_host, (ICLRMemoryNotificationCallback *)&g_cb);
    hh = add_handler(h_commit_then_exit);
    check("a handler commits past the low threshold, then exit_thread", join(create(t_fault_for_band, 0)), 0x4E);
    g_services->remove_vectored_exception_handler(hh);
    check("... its block is there", ld64(&g_nh_block) != 0, 1);
    check("... the thread it created in the handler ran", join(ld64(&g_handle)), 0x4F);
    g_v->GetMemoryLoad(g_host, &load, &avail);
    check("... the low band was delivered (by the next host call at the latest)", ld32(&g_cb_last), eMemoryAvailableLow);
    g_v->VirtualFree(g_host, (void *)ld64(&g_nh_block), 0, MEM_RELEASE);
    check("releasing it: high again", ld32(&g_cb_last), (uint32_t)band_now());
    check("... never two callbacks at once", ld32(&g_cb_overlap), 0);
    check("... on known threads", ld32(&g_cb_bad_tid), 0);
    g_v->RegisterMemoryNotificationCallback(g_host, 0);
    check("... the callback object released", ld32(&g_cb.refs), 1);
}

/* A band change while a callback runs on another thread: the changing call does not wait, and the
 * thread in the callback delivers the newest band after it returns (§10.3). */
static volatile uint32_t g_ov_in, g_ov_calls, g_ov_freed, g_ov_timed_out, g_ov_overlap;
static uint32_t g_ov_band[8], g_ov_tid[8];
static HRESULT cb_hold(ICLRMemoryNotificationCallback *This, EMemoryAvailable band) {
    uint32_t n;
    (void)This;
    if (add32(&g_ov_in, 1) != 1) add32(&g_ov_overlap, 1);
    n = add32(&g_ov_calls, 1) - 1;
    if (n < 8) {
        g_ov_band[n] = (uint32_t)band;
        g_ov_tid[n] = tid();
    }
    if (n == 0 && !wait_until_eq(&g_ov_freed, 1, 5000 * MS)) st32(&g_ov_timed_out, 1);
    add32(&g_ov_in, (uint32_t)-1);
    return S_OK;
}
static const ICLRMemoryNotificationCallbackVtbl g_hold_vtbl = {cb_qi, cb_addref, cb_release, cb_hold};
static struct cb g_cb_hold = {&g_hold_vtbl, 1};
static volatile uint64_t g_ov_b;
static uint32_t t_cross_low(void *arg) {
    void *p = 0;
    (void)arg;
    g_v->VirtualAlloc(g_host, 0, 0x40000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eProcessCritical, &p);
    st64(&g_ov_b, (uint64_t)p);
    return tid();
}

static void area_notify_overlap(void) {
    HOST_COMMIT_INFO ci;
    uint64_t free_, a_size, w, t0, took;
    void *a = 0;
    uint32_t w_tid, after_free;
    put("== notify-overlap\n");
    g_services->query_commit(&ci);
    free_ = ci.commit_limit - ci.committed;
    if (free_ < ci.low_threshold + 0x100000 || free_ - 0x40000 <= ci.high_threshold) {
        check("room for the bands", 0, 1);
        return;
    }
    /* After A: just above the low threshold; after B (256 KiB) too: below it; A freed: high. */
    a_size = (free_ - ci.low_threshold - 0x20000) & ~0xFFFFull;
    check("commit A (to just above the low threshold)",
          (uint32_t)g_v->VirtualAlloc(g_host, 0, a_size, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eProcessCritical, &a), S_OK);
    g_v->RegisterMemoryNotificationCallback(g_host, (ICLRMemoryNotificationCallback *)&g_cb_hold);
    st64(&g_ov_b, 0);
    w = create(t_cross_low, 0);
    check("a worker's commit crosses into low: its callback starts", wait_until_eq(&g_ov_calls, 1, 10000 * MS), 1);
    t0 = now_ns();
    g_v->VirtualFree(g_host, a, 0, MEM_RELEASE); /* back to high while that callback runs */
    took = now_ns() - t0;
    after_free = (uint32_t)band_now();
    st32(&g_ov_freed, 1);
    g_services->wake_by_address((void *)&g_ov_freed, 1);
    w_tid = join(w);
    check("... the release changing the band meanwhile did not wait for the callback", took < 2000 * MS && !ld32(&g_ov_timed_out), 1);
    check("... no second callback ran meanwhile", ld32(&g_ov_overlap), 0);
    check("first call: low, on the worker", g_ov_band[0] == eMemoryAvailableLow && g_ov_tid[0] == w_tid, 1);
    check("then the newest band, delivered by the worker after its callback returned",
          ld32(&g_ov_calls) >= 2 && g_ov_band[1] == after_free && g_ov_tid[1] == w_tid, 1);
    check("... (the newest band is high)", after_free, eMemoryAvailableHigh);
    g_v->VirtualFree(g_host, (void *)ld64(&g_ov_b), 0, MEM_RELEASE);
    g_v->GetMemoryLoad(g_host, (DWORD *)&w_tid, &free_);
    check("the last band delivered is the band now", g_ov_band[(ld32(&g_ov_calls) - 1) & 7], (uint32_t)band_now());
    check("unregister", (uint32_t)g_v->RegisterMemoryNotificationCallback(g_host, 0), S_OK);
    check("... released", ld32(&g_cb_hold.refs), 1);
}

/* ------------------------------------------------------------------------------------------ */
/* A MALLOC_THREADSAFE heap from several threads: own blocks, blocks freed by other threads, a
 * double free raced from two threads. */
static IHostMalloc *g_heap;
static void *volatile g_mailbox[64];
static volatile uint32_t g_m_bad, g_m_gate;
static void *g_race_blocks[64];
static HRESULT g_race_ret[2][64];

static void stamp(uint8_t *p, uint64_t size, uint64_t tag) {
    uint64_t hdr[2] = {tag, size};
    if (size >= 16) memcpy(p, hdr, 16);
    if (size > 16) p[size - 1] = (uint8_t)tag;
}
static int stamped(const uint8_t *p, uint64_t *size) {
    uint64_t hdr[2];
    memcpy(hdr, p, 16);
    if ((hdr[0] >> 32) != 0x7A6 || hdr[1] < 16 || hdr[1] > 70000) return 0;
    *size = hdr[1];
    return hdr[1] == 16 || p[hdr[1] - 1] == (uint8_t)hdr[0];
}

static uint32_t t_malloc(void *arg) {
    uintptr_t me = (uintptr_t)arg;
    const IHostMallocVtbl *mv = g_heap->lpVtbl;
    void *slots[32] = {0};
    uint64_t sizes[32] = {0};
    uint64_t rng = 0x9E3779B97F4A7C15ull * (me + 1);
    int op;
    for (op = 0; op < 2500; op++) {
        uint64_t r = rng_next(&rng);
        unsigned s = (unsigned)(r % 32);
        if (!slots[s]) {
            uint64_t size = 16 + (r >> 8) % ((r >> 40) % 8 == 0 ? 66000 : 600);
            void *p = 0;
            HRESULT hr = (r >> 20) & 1 ? mv->Alloc(g_heap, size, eTaskCritical, &p)
                                       : mv->DebugAlloc(g_heap, size, eTaskCritical, (char *)"thread_edges.c", op, &p);
            if (hr != S_OK || !p || ((uint64_t)p & 15)) {
                add32(&g_m_bad, 1);
                continue;
            }
            stamp(p, size, (0x7A6ull << 32) | (me << 16) | (uint64_t)op);
            slots[s] = p;
            sizes[s] = size;
        } else {
            uint64_t size = 0;
            if (!stamped(slots[s], &size) || size != sizes[s]) add32(&g_m_bad, 1);
            if ((r >> 12) % 4 == 0) {
                /* Hand it to whoever takes it from the mailbox. */
                void *old = __atomic_exchange_n(&g_mailbox[(r >> 24) % 64], slots[s], __ATOMIC_ACQ_REL);
                if (old) {
                    if (!stamped(old, &size)) add32(&g_m_bad, 1);
                    memset(old, 0, 16);
                    if (mv->Free(g_heap, old) != S_OK) add32(&g_m_bad, 1);
                }
            } else {
                memset(slots[s], 0, 16);
                if (mv->Free(g_heap, slots[s]) != S_OK) add32(&g_m_bad, 1);
            }
            slots[s] = 0;
        }
    }
    for (op = 0; op < 32; op++)
        if (slots[op] && mv->Free(g_heap, slots[op]) != S_OK) add32(&g_m_bad, 1);
    return 0;
}

static uint32_t t_race_free(void *arg) {
    uintptr_t me = (uintptr_t)arg;
    int i;
    wait_until_eq(&g_m_gate, 1, 20000 * MS);
    for (i = 0; i < 64; i++) g_race_ret[me][i] = g_heap->lpVtbl->Free(g_heap, g_race_blocks[i]);
    return 0;
}

static void area_malloc(void) {
    uint64_t before = committed_now(), th[4];
    int i, oks = 0, invalid = 0, other = 0;
    void *p = (void *)1;
    put("== malloc\n");
    check("CreateMalloc(MALLOC_THREADSAFE)", (uint32_t)g_v->CreateMalloc(g_host, MALLOC_THREADSAFE, &g_heap), S_OK);
    for (i = 0; i < 64; i++) g_mailbox[i] = 0;
    for (i = 0; i < 4; i++) th[i] = create(t_malloc, (void *)(uintptr_t)i);
    for (i = 0; i < 4; i++) join(th[i]);
    for (i = 0; i < 64; i++)
        if (g_mailbox[i]) {
            uint64_t size;
            if (!stamped(g_mailbox[i], &size)) g_m_bad++;
            if (g_heap->lpVtbl->Free(g_heap, g_mailbox[i]) != S_OK) g_m_bad++;
        }
    check("four threads: every block aligned, intact, freed once (incl. by other threads)", ld32(&g_m_bad), 0);
    for (i = 0; i < 64; i++) g_heap->lpVtbl->Alloc(g_heap, 32 + (uint64_t)i * 24, eTaskCritical, &g_race_blocks[i]);
    st32(&g_m_gate, 0);
    th[0] = create(t_race_free, (void *)0);
    th[1] = create(t_race_free, (void *)1);
    g_services->sleep_ns(5 * MS);
    st32(&g_m_gate, 1);
    g_services->wake_by_address((void *)&g_m_gate, 1);
    join(th[0]);
    join(th[1]);
    for (i = 0; i < 64; i++) {
        int k;
        for (k = 0; k < 2; k++) {
            if (g_race_ret[k][i] == S_OK) oks++;
            else if (g_race_ret[k][i] == E_INVALIDARG) invalid++;
            else other++;
        }
    }
    check("a double free raced from two threads: exactly one S_OK per block", oks, 64);
    check("... and one E_INVALIDARG", invalid, 64);
    check("... nothing else", other, 0);
    check("the heap works after it", (uint32_t)g_heap->lpVtbl->Alloc(g_heap, 100, eTaskCritical, &p), S_OK);
    check("... Free", (uint32_t)g_heap->lpVtbl->Free(g_heap, p), S_OK);
    p = (void *)1;
    check("an impossible size: E_OUTOFMEMORY", (uint32_t)g_heap->lpVtbl->Alloc(g_heap, 1ull << 46, eTaskCritical, &p),
          (uint32_t)E_OUTOFMEMORY);
    check("... *ppMem NULL", (uint64_t)p, 0);
    check("release the heap: 0", g_heap->lpVtbl->Release(g_heap), 0);
    check("commit back to where it was", committed_now(), before);
}

/* ------------------------------------------------------------------------------------------ */
/* Every IHostMemoryManager method from four threads at once; exact accounting afterwards. */
static volatile uint32_t g_vm_bad[4];
static volatile uint32_t g_vm_gate;
static struct cb g_vm_cb[2] = {{&g_cb_vtbl, 1}, {&g_cb_vtbl, 1}};
static uint64_t g_vm_space;

static void vm_fail(uintptr_t me, int code) {
    if (!g_vm_bad[me]) g_vm_bad[me] = (uint32_t)code;
}

static uint32_t t_vm(void *arg) {
    uintptr_t me = (uintptr_t)arg;
    uint64_t rng = 0xC0FFEEull + me * 77;
    int r;
    wait_until_eq(&g_vm_gate, 1, 20000 * MS);
    for (r = 0; r < 150; r++) {
        uint8_t *p = 0;
        DWORD old = SENT, load;
        SIZE_T got = 0, avail;
        MEMORY_BASIC_INFORMATION m;
        void *q = 0;
        IHostMalloc *heap = 0;
        uint64_t size = 0x10000ull * (1 + rng_next(&rng) % 8);
        if (g_v->VirtualAlloc(g_host, 0, size, MEM_RESERVE, PAGE_NOACCESS, eTaskCritical, (void **)&p) != S_OK) vm_fail(me, 1);
        if (p && g_v->VirtualAlloc(g_host, p + PAGE, 3 * PAGE, MEM_COMMIT, PAGE_READWRITE, eTaskCritical, &q) != S_OK) vm_fail(me, 2);
        if (p) {
            p[PAGE] = (uint8_t)r;
            p[4 * PAGE - 1] = 1;
            if (g_v->VirtualProtect(g_host, p + PAGE, 2 * PAGE, PAGE_READONLY, &old) != S_OK || old != PAGE_READWRITE) vm_fail(me, 3);
            if (g_v->VirtualQuery(g_host, p + PAGE, &m, sizeof m, &got) != S_OK || got != 48 || m.Protect != PAGE_READONLY ||
                m.RegionSize != 2 * PAGE || m.AllocationBase != (uint64_t)p)
                vm_fail(me, 4);
            if (p[PAGE] != (uint8_t)r) vm_fail(me, 5);
            if (g_v->VirtualFree(g_host, p + PAGE, PAGE, MEM_DECOMMIT) != S_OK) vm_fail(me, 6);
            if (g_v->VirtualFree(g_host, p, 0, MEM_RELEASE) != S_OK) vm_fail(me, 7);
            /* (Another thread may reserve the same place at once: only the call's own result is checked.) */
            if (g_v->VirtualQuery(g_host, p, &m, sizeof m, &got) != S_OK || got != 48) vm_fail(me, 8);
        }
        if (g_v->GetMemoryLoad(g_host, &load, &avail) != S_OK || load > 100) vm_fail(me, 9);
        if (g_v->CreateMalloc(g_host, MALLOC_THREADSAFE, &heap) != S_OK) vm_fail(me, 10);
        if (heap) {
            if (heap->lpVtbl->Alloc(heap, 200, eTaskCritical, &q) != S_OK || heap->lpVtbl->Free(heap, q) != S_OK) vm_fail(me, 11);
            if (heap->lpVtbl->Release(heap) != 0) vm_fail(me, 12);
        }
        {
            void *ppv = 0;
            if (g_v->QueryInterface(g_host, &IID_IHostMemoryManager, &ppv) != S_OK || ppv != g_host) vm_fail(me, 13);
            if (g_v->AddRef(g_host) < 2) vm_fail(me, 14);
            g_v->Release(g_host);
            g_v->Release(g_host);
        }
        {
            uint64_t a = g_vm_space + me * 0x100000ull;
            if (g_v->NeedsVirtualAddressSpace(g_host, (void *)a, 0x100000) != S_OK) vm_fail(me, 15);
            if (g_v->AcquiredVirtualAddressSpace(g_host, (void *)a, 0x100000) != S_OK) vm_fail(me, 16);
            if (g_v->ReleasedVirtualAddressSpace(g_host, (void *)a) != S_OK) vm_fail(me, 17);
        }
        if (g_v->RegisterMemoryNotificationCallback(g_host, r % 3 == 2 ? 0 : (ICLRMemoryNotificationCallback *)&g_vm_cb[r & 1]) != S_OK)
            vm_fail(me, 18);
        if (r % 16 == 0) g_services->yield();
    }
    return 0;
}

static void area_vm(void) {
    uint64_t before, th[4];
    DWORD load0 = 0, load1 = 0;
    SIZE_T avail0 = 0, avail1 = 0;
    int i;
    put("== vm\n");
    /* Far from both the bottom-up allocations and the top-down stacks: nothing else lands there. */
    g_vm_space = 0x300000000000ull;
    before = committed_now();
    g_v->GetMemoryLoad(g_host, &load0, &avail0);
    st32(&g_vm_gate, 0);
    for (i = 0; i < 4; i++) th[i] = create(t_vm, (void *)(uintptr_t)i);
    st32(&g_vm_gate, 1);
    g_services->wake_by_address((void *)&g_vm_gate, 1);
    for (i = 0; i < 4; i++) {
        join(th[i]);
        check("a thread's every call gave the single-threaded answer (0 = yes, else the step)", g_vm_bad[i], 0);
    }
    check("unregister the callback", (uint32_t)g_v->RegisterMemoryNotificationCallback(g_host, 0), S_OK);
    check("the callback objects' counts are back to their own reference",
          ld32(&g_vm_cb[0].refs) == 1 && ld32(&g_vm_cb[1].refs) == 1, 1);
    check("the manager's count is back to 1: AddRef gives 2", g_v->AddRef(g_host), 2);
    check("... Release gives 1", g_v->Release(g_host), 1);
    check("every acquired range was released (releasing again: 487)",
          (uint32_t)g_v->ReleasedVirtualAddressSpace(g_host, (void *)g_vm_space), 0x800701E7u);
    check("commit exactly as before the threads (their stacks, heaps and pages all returned)", committed_now(), before);
    g_v->GetMemoryLoad(g_host, &load1, &avail1);
    check("GetMemoryLoad's available bytes as before", avail1, avail0);
}

/* ------------------------------------------------------------------------------------------ */
/* Modes that end the whole guest (tests/threads.rs patches the five letters after the marker;
 * AREAS runs the areas above):
 *   MAIN1  main, the only thread, calls exit_thread(0x61): the guest ends with 0x61;
 *   MAINX  main calls exit_thread while a chain of threads waits on each other: the guest ends
 *          with the last thread's code, 22;
 *   MAINE  main calls exit_thread, then a worker calls exit(0x33) while another sleeps: 0x33;
 *   DIV0W  an unhandled divide by zero on a worker while main waits on an address forever and
 *          another thread sleeps for a minute: the guest ends at once with 0xC0000094;
 *   NESTX  a handler that faults every time on a worker (nesting until no frame fits) while
 *          other threads allocate: the guest ends with 0xC0000005 or 0xC00000FD. */
static volatile const char g_mode[] = "THREAD-EDGES-MODE:AREAS";
#define MODE_AT 18

static int mode_is(const char *m) {
    int i;
    for (i = 0; i < 5; i++)
        if (g_mode[MODE_AT + i] != m[i]) return 0;
    return 1;
}

static volatile uint64_t g_chain[2];
static uint32_t t_chain_first(void *arg) {
    (void)arg;
    g_services->sleep_ns(30 * MS);
    return 11;
}
static uint32_t t_chain_second(void *arg) {
    uint32_t code = 0;
    (void)arg;
    while (ld64(&g_chain[0]) == 0) g_services->yield();
    if (g_services->wait_thread(ld64(&g_chain[0]), FOREVER, &code) != 0 || code != 11) return 99;
    g_services->sleep_ns(60 * MS); /* main is gone by now */
    return 22;
}
static uint32_t t_div0(void *arg) {
    volatile uint32_t zero = 0;
    g_services->sleep_ns(20 * MS);
    return (uint32_t)(uintptr_t)arg / zero;
}
static uint32_t t_sleep_long(void *arg) {
    (void)arg;
    g_services->sleep_ns(60000 * MS);
    return 0;
}
static uint32_t t_exit_guest_later(void *arg) {
    g_services->sleep_ns(50 * MS); /* main has called exit_thread by now */
    g_services->exit((int32_t)(uintptr_t)arg);
    return 0;
}
static volatile uint32_t g_nestx_tid;
static int32_t h_always_faults(GUEST_EXCEPTION *e) {
    (void)e;
    if (tid() != ld32(&g_nestx_tid)) return EXCEPTION_CONTINUE_SEARCH;
    return (int32_t) * (volatile uint32_t *)g_reserved; /* faults again, further down */
}
static uint32_t t_nestx(void *arg) {
    (void)arg;
    st32(&g_nestx_tid, tid());
    return *(volatile uint32_t *)g_reserved;
}
static volatile uint32_t g_churning = 1;
static uint32_t t_churn(void *arg) {
    (void)arg;
    while (ld32(&g_churning)) {
        void *p = valloc(0, 0x10000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
        if (p) g_v->VirtualFree(g_host, p, 0, MEM_RELEASE);
    }
    return 0;
}

static volatile uint32_t g_slept;
static uint32_t t_sleep_huge(void *arg) {
    (void)arg;
    g_services->sleep_ns(FOREVER - 1);
    st32(&g_slept, 1);
    return 0;
}

static int32_t run_mode(void) {
    if (mode_is("MAIN1")) {
        g_services->exit_thread(0x61); /* the only thread: the guest ends with its code */
    } else if (mode_is("MAINX")) {
        g_chain[1] = create(t_chain_second, 0);
        g_chain[0] = create(t_chain_first, 0);
        g_services->exit_thread(5);
    } else if (mode_is("MAINE")) {
        create(t_sleep_long, 0);
        create(t_exit_guest_later, (void *)0x33);
        g_services->exit_thread(5);
    } else if (mode_is("DIV0W")) {
        uint32_t never = 0, cmp = 0;
        add_handler(h_noop);
        create(t_sleep_long, 0);
        create(t_div0, (void *)7);
        g_services->wait_on_address(&never, &cmp, 4, FOREVER);
        return 0x55;
    } else if (mode_is("NESTX")) {
        add_handler(h_always_faults);
        create(t_churn, 0);
        create(t_churn, 0);
        g_services->wait_thread(g_services->create_thread(t_nestx, 0, 0x10000, 0), FOREVER, 0);
        return 0x56;
    }
    put("unknown mode\n");
    return 0x57;
}

int32_t guest_main(IHostMemoryManager *host, const HOST_SERVICES *services) {
    uint64_t start_commit;
    thread_guest_init(host, services);
    put("cpu_count ");
    put_dec(services->cpu_count);
    put("\n");
    g_ro = (uint64_t)valloc(0, PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READONLY);
    /* A PAGE_READWRITE page, then the PAGE_NOACCESS one (so g_noacc - 4 straddles into it). */
    g_noacc = (uint64_t)valloc(0, 2 * PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE) + PAGE;
    {
        DWORD old;
        g_v->VirtualProtect(host, (void *)g_noacc, PAGE, PAGE_NOACCESS, &old);
    }
    g_reserved = (uint64_t)valloc(0, 0x10000, MEM_RESERVE, PAGE_READWRITE);
    g_rw_ro = (uint64_t)valloc(0, 2 * PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
    {
        DWORD old;
        g_v->VirtualProtect(host, (void *)(g_rw_ro + PAGE), PAGE, PAGE_READONLY, &old);
    }
    if (!mode_is("AREAS")) return run_mode();
    start_commit = committed_now();
    area_wait_close();
    area_more_waits();
    area_limits();
    area_ids();
    area_wait_on_address();
    area_thread_pointer();
    area_fpu();
    area_stack();
    area_overflow();
    area_nested();
    area_exceptions();
    area_guard_race();
    area_notify();
    area_notify_in_handler();
    area_notify_overlap();
    area_malloc();
    area_vm();
    put("== final\n");
    check("commit back to the start after every area", committed_now(), start_commit);
    /* Left running when guest_main returns (which ends it): a sleep whose deadline overflows. */
    create(t_sleep_huge, 0);
    g_services->sleep_ns(100 * MS);
    check("sleep_ns(UINT64_MAX - 1) does not return at once", ld32(&g_slept), 0);
    return summary();
}
