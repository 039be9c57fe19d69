/* Helpers shared by the multi-threaded C guests (threads.c, shootdown.c, vm_concurrent.c,
 * lifecycle.c): atomics, waits with deadlines, a small PRNG. Only the main thread prints check
 * lines (check() is not thread-safe); workers record what they saw in globals. */
#ifndef THREAD_UTIL_H
#define THREAD_UTIL_H
#include "guest_util.h"

#define MS 1000000ull
#define FOREVER UINT64_MAX

static IHostMemoryManager *g_host;
static const IHostMemoryManagerVtbl *g_v;

static inline uint32_t ld32(volatile uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void st32(volatile uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline uint32_t add32(volatile uint32_t *p, uint32_t v) { return __atomic_add_fetch(p, v, __ATOMIC_ACQ_REL); }
static inline uint64_t ld64(volatile uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void st64(volatile uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline uint64_t add64(volatile uint64_t *p, uint64_t v) { return __atomic_add_fetch(p, v, __ATOMIC_ACQ_REL); }

static uint64_t now_ns(void) { return g_services->ticks_ns(); }

/* Waits until *p == want (re-checking at least every millisecond); 1 if it got there before
 * `timeout_ns` passed. */
__attribute__((unused)) static int wait_until_eq(volatile uint32_t *p, uint32_t want, uint64_t timeout_ns) {
    uint64_t end = now_ns() + timeout_ns;
    for (;;) {
        uint32_t v = ld32(p);
        if (v == want) return 1;
        if (now_ns() > end) return 0;
        g_services->wait_on_address(p, &v, 4, 1 * MS);
    }
}

/* Waits until *p >= want, as wait_until_eq. */
__attribute__((unused)) static int wait_until_ge(volatile uint32_t *p, uint32_t want, uint64_t timeout_ns) {
    uint64_t end = now_ns() + timeout_ns;
    for (;;) {
        uint32_t v = ld32(p);
        if (v >= want) return 1;
        if (now_ns() > end) return 0;
        g_services->wait_on_address(p, &v, 4, 1 * MS);
    }
}

/* Joins a thread (waiting up to 20 s) and closes it: its exit code, or 0xBAD0000 + the wait's
 * result if it did not end. */
__attribute__((unused)) static uint32_t join(uint64_t thread) {
    uint32_t code = 0;
    uint32_t r = g_services->wait_thread(thread, 20000 * MS, &code);
    g_services->close_thread(thread);
    return r == 0 ? code : 0xBAD0000u + r;
}

__attribute__((unused)) static uint64_t rng_next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static uint64_t committed_now(void) {
    HOST_COMMIT_INFO ci;
    g_services->query_commit(&ci);
    return ci.committed;
}

__attribute__((unused)) static MEMORY_BASIC_INFORMATION query(uint64_t addr) {
    MEMORY_BASIC_INFORMATION m;
    SIZE_T got = 0;
    memset(&m, 0xEE, sizeof m);
    if (g_v->VirtualQuery(g_host, (void *)addr, &m, sizeof m, &got) != S_OK) m.State = 0xFFFFFFFFu;
    return m;
}

__attribute__((unused)) static void *valloc(void *at, uint64_t size, uint32_t type, uint32_t protect) {
    void *p = 0;
    if (g_v->VirtualAlloc(g_host, at, size, type, protect, eTaskCritical, &p) != S_OK) return 0;
    return p;
}

static int is_v2(const HOST_SERVICES *s) { return s->version >= 2 && s->cbSize >= 192; }

/* Starts the guest: records the host, and refuses (exit code 2) on a version-1 host. */
static void thread_guest_init(IHostMemoryManager *host, const HOST_SERVICES *services) {
    g_services = services;
    g_host = host;
    g_v = host->lpVtbl;
    if (!is_v2(services)) {
        put("FAILED HOST_SERVICES is not version 2\n");
        services->exit(2);
    }
}
#endif
