/* Thread lifecycle (host-abi §10.2/§10.3): threads that end every way a thread can, and the ways
 * a guest with threads ends. One mode per run, chosen by the 5 letters after the marker
 * "LIFECYCLE-MODE:" (tests/threads.rs patches them), each ending the guest with a known code:
 *   JOINS  rounds of threads that return, exit_thread, or create and join threads of their own,
 *          all waited on; commit back to its start; exit code 0 (summary line)
 *   RETRN  guest_main returns 7 while workers spin, sleep and wait forever: the guest ends with 7
 *   CRASH  an unhandled access violation on a worker (a handler passes it on) while main waits:
 *          the guest ends with 0xC0000005
 *   EXITW  a worker calls exit(33) while the main thread waits forever: the guest ends with 33
 *   MAINX  exit_thread(5) on the main thread while workers run; the last worker ends with 23:
 *          the guest ends with 23
 *   OVFLW  unhandled stack overflow on a worker: the guest ends with 0xC00000FD
 *   MOVFL  stack overflow on the main thread, handled by redirecting it to exit_thread(1); a
 *          worker ends last with 0x44: the guest ends with 0x44 */
#include "host_abi.h"
#include "thread_util.h"

#define S g_services

static volatile const char g_mode[] = "LIFECYCLE-MODE:JOINS";
static int mode_is(const char *m) {
    int i;
    for (i = 0; i < 5; i++)
        if (g_mode[15 + i] != m[i]) return 0;
    return 1;
}

static volatile uint32_t g_forever; /* never changes: waits on it last until the guest ends */
static uint32_t wait_forever(void *arg) {
    uint32_t zero = 0;
    (void)arg;
    for (;;) S->wait_on_address(&g_forever, &zero, 4, FOREVER);
}
static uint32_t spin_forever(void *arg) {
    (void)arg;
    for (;;) __asm__ volatile("pause");
}
static uint32_t sleep_forever(void *arg) {
    (void)arg;
    for (;;) S->sleep_ns(1000 * MS);
}
static uint32_t wait_thread_forever(void *arg) {
    S->wait_thread((uint64_t)arg, FOREVER, 0);
    return 0;
}
static uint32_t return_arg(void *arg) { return (uint32_t)(uint64_t)arg; }
static uint32_t exit_with_arg(void *arg) {
    S->exit_thread((uint32_t)(uint64_t)arg);
    return 0xBAD;
}
static uint32_t spawn_and_join(void *arg) {
    uint64_t a = S->create_thread(return_arg, (void *)((uint64_t)arg + 1), 0, 0);
    uint64_t b = S->create_thread(exit_with_arg, (void *)((uint64_t)arg + 2), 0x10000, 0);
    return join(a) + join(b);
}
static uint32_t sleep_then_return(void *arg) {
    uint64_t a = (uint64_t)arg;
    S->sleep_ns((a >> 32) * MS);
    return (uint32_t)a;
}
static uint32_t sleep_then_exit_thread(void *arg) {
    uint64_t a = (uint64_t)arg;
    S->sleep_ns((a >> 32) * MS);
    S->exit_thread((uint32_t)a);
    return 0xBAD;
}
static uint32_t crash(void *arg) {
    (void)arg;
    S->sleep_ns(20 * MS);
    return *(volatile uint32_t *)0x5000000000ull;
}
static uint32_t exit_guest(void *arg) {
    (void)arg;
    S->sleep_ns(20 * MS);
    S->exit(33);
    return 0xBAD;
}
static uint64_t __attribute__((noinline)) recurse(uint64_t n) {
    volatile uint8_t pad[1000];
    pad[0] = (uint8_t)n;
    return recurse(n + 1) + pad[0];
}
static uint32_t overflow(void *arg) {
    (void)arg;
    return (uint32_t)recurse(0);
}
static volatile uint32_t g_passed_on;
static int32_t pass_on(GUEST_EXCEPTION *e) {
    (void)e;
    add32(&g_passed_on, 1);
    return EXCEPTION_CONTINUE_SEARCH;
}
static int32_t main_overflow_handler(GUEST_EXCEPTION *e) {
    if (e->code != STATUS_STACK_OVERFLOW || S->current_thread_id() != 1) return EXCEPTION_CONTINUE_SEARCH;
    e->context->rip = (uint64_t)S->exit_thread;
    e->context->rdi = 1;
    e->context->rsp = ((e->context->rsp - 64) & ~15ull) - 8;
    return EXCEPTION_CONTINUE_EXECUTION;
}

static void background(void) {
    uint64_t w = S->create_thread(wait_forever, 0, 0, 0);
    S->create_thread(spin_forever, 0, 0, 0);
    S->create_thread(sleep_forever, 0, 0, 0);
    S->create_thread(wait_thread_forever, (void *)w, 0, 0);
}

static int joins(void) {
    uint64_t start = committed_now();
    int round, i, codes_ok = 1, all_created = 1;
    for (round = 0; round < 20; round++) {
        uint64_t t[8];
        uint32_t want[8];
        for (i = 0; i < 8; i++) {
            uint64_t v = (uint64_t)(round * 100 + i * 10);
            switch (i % 3) {
            case 0: t[i] = S->create_thread(return_arg, (void *)v, 0, 0); want[i] = (uint32_t)v; break;
            case 1: t[i] = S->create_thread(exit_with_arg, (void *)v, 0x20000, 0x2000); want[i] = (uint32_t)v; break;
            default: t[i] = S->create_thread(spawn_and_join, (void *)v, 0, 0); want[i] = (uint32_t)(2 * v + 3); break;
            }
            if (!t[i]) all_created = 0;
        }
        for (i = 7; i >= 0; i--)
            if (join(t[i]) != want[i]) codes_ok = 0;
    }
    check("160 threads (and 80 nested ones) created", all_created, 1);
    check("each waited on for its exit code (return, exit_thread, nested create/join)", codes_ok, 1);
    check("commit back to its start (every stack released)", committed_now(), start);
    return summary();
}

int32_t guest_main(IHostMemoryManager *host, const HOST_SERVICES *services) {
    thread_guest_init(host, services);
    if (mode_is("JOINS")) return joins();
    if (mode_is("RETRN")) {
        background();
        S->sleep_ns(30 * MS);
        return 7;
    }
    if (mode_is("CRASH")) {
        uint64_t t;
        S->add_vectored_exception_handler(1, pass_on);
        background();
        t = S->create_thread(crash, 0, 0, 0);
        S->wait_thread(t, 10000 * MS, 0);
        return 1; /* reached only if the crash did not end the guest */
    }
    if (mode_is("EXITW")) {
        uint64_t t;
        background();
        t = S->create_thread(exit_guest, 0, 0, 0);
        S->wait_thread(t, FOREVER, 0);
        return 1;
    }
    if (mode_is("MAINX")) {
        S->create_thread(sleep_then_return, (void *)((100ull << 32) | 11), 0, 0);
        S->create_thread(sleep_then_exit_thread, (void *)((400ull << 32) | 23), 0, 0);
        S->exit_thread(5);
        return 1;
    }
    if (mode_is("OVFLW")) {
        uint64_t t;
        background();
        t = S->create_thread(overflow, 0, 0x40000, 0);
        S->wait_thread(t, 10000 * MS, 0);
        return 1;
    }
    if (mode_is("MOVFL")) {
        S->add_vectored_exception_handler(1, main_overflow_handler);
        S->create_thread(sleep_then_return, (void *)((300ull << 32) | 0x44), 0, 0);
        return (int32_t)recurse(0);
    }
    put("FAILED unknown mode\n");
    return 3;
}
