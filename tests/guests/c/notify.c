/* Memory notifications (host-abi §5, §9): AddRef at registration and no call, one
 * OnMemoryNotification per band change just before the causing call returns, Release of the old
 * callback when replaced or unregistered. */
#include "host_abi.h"
#include "guest_util.h"

static int adds, releases, calls, last_band;
/* The out-value of the call that causes the first notification, as the callback sees it: the
 * call's results are in place before its callbacks run. */
static void *volatile *watched;
static void *seen;
static HRESULT qi(ICLRMemoryNotificationCallback *t, REFIID r, void **p) { (void)t; (void)r; *p = 0; return E_NOINTERFACE; }
static ULONG add_ref(ICLRMemoryNotificationCallback *t) { (void)t; return (ULONG)++adds; }
static ULONG release(ICLRMemoryNotificationCallback *t) { (void)t; return (ULONG)++releases; }
static HRESULT on_notification(ICLRMemoryNotificationCallback *t, EMemoryAvailable band) {
    (void)t;
    calls++;
    last_band = (int)band;
    if (calls == 1 && watched) seen = *watched;
    return S_OK;
}
static const ICLRMemoryNotificationCallbackVtbl vtbl = {qi, add_ref, release, on_notification};
static ICLRMemoryNotificationCallback callback = {&vtbl};

/* ---- where a band change is reported: after a callback that replaced itself, by a thread
 * call. Callbacks A and B count their calls and note who was called with what. */
static const IHostMemoryManagerVtbl *V;
static IHostMemoryManager *H;
struct tagged {
    const ICLRMemoryNotificationCallbackVtbl *vt;
    int id;
};
static volatile int t_calls, t_band, t_who, t_replace;
static uint64_t t_size;
static void *t_block;
static volatile uint32_t t_hold;
static uint64_t free_commit(void) {
    HOST_COMMIT_INFO c;
    g_services->query_commit(&c);
    return c.commit_limit - c.committed;
}
static void *commit_bytes(uint64_t n) {
    void *p = 0;
    V->VirtualAlloc(H, 0, n & ~0xFFFull, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eProcessCritical, &p);
    return p;
}
static HRESULT t_on(ICLRMemoryNotificationCallback *t, EMemoryAvailable band);
static ULONG t_ref(ICLRMemoryNotificationCallback *t) { (void)t; return 1; }
static const ICLRMemoryNotificationCallbackVtbl t_vtbl = {qi, t_ref, t_ref, t_on};
static struct tagged cb_a = {&t_vtbl, 'A'}, cb_b = {&t_vtbl, 'B'};
static HRESULT t_on(ICLRMemoryNotificationCallback *t, EMemoryAvailable band) {
    t_calls++;
    t_band = (int)band;
    t_who = ((struct tagged *)t)->id;
    if (t_replace) {
        /* A change made while this callback runs, then the callback replaced: the change is
         * delivered after it returns, to the callback registered then. */
        t_replace = 0;
        t_block = commit_bytes(t_size);
        V->RegisterMemoryNotificationCallback(H, (ICLRMemoryNotificationCallback *)&cb_b);
    }
    return S_OK;
}
static uint32_t held_thread(void *arg) {
    uint32_t one = 1;
    (void)arg;
    while (t_hold) g_services->wait_on_address(&t_hold, &one, 4, ~0ull);
    return 0;
}
static void release_block(void) {
    V->VirtualFree(H, t_block, 0, MEM_RELEASE);
    t_block = 0;
}

static void where_changes_are_reported(const HOST_SERVICES *services) {
    HOST_COMMIT_INFO info;
    void *neutral = 0;
    services->query_commit(&info);
    check("register A", (uint32_t)V->RegisterMemoryNotificationCallback(H, (ICLRMemoryNotificationCallback *)&cb_a), S_OK);
    /* A callback that causes a change and then replaces itself: the new callback gets it. */
    t_calls = 0;
    t_size = (info.high_threshold - info.low_threshold) / 2 + info.low_threshold / 2;
    t_replace = 1;
    neutral = commit_bytes(free_commit() - (info.low_threshold + info.high_threshold) / 2);
    check("a callback that changed the band and replaced itself: two notifications", (uint64_t)t_calls, 2);
    check("... the second, low, to the new callback", (uint64_t)(t_band * 1000 + t_who), eMemoryAvailableLow * 1000 + 'B');
    release_block();
    V->VirtualFree(H, neutral, 0, MEM_RELEASE);
    check("... high again, to the new callback", (uint64_t)(t_band * 1000 + t_who), eMemoryAvailableHigh * 1000 + 'B');

    /* create_thread commits the new stack: a change it makes is reported before it returns. */
    if (services->version >= 2 && services->cbSize >= 192) {
        uint64_t thread;
        uint32_t code = 1;
        neutral = commit_bytes(free_commit() - info.low_threshold - (256u << 10));
        t_calls = 0;
        t_hold = 1;
        thread = services->create_thread(held_thread, 0, 4u << 20, 2u << 20);
        check("create_thread whose stack commit makes the band low", thread != 0, 1);
        check("... reports it before it returns", (uint64_t)(t_calls * 10 + t_band), 1 * 10 + eMemoryAvailableLow);
        t_hold = 0;
        services->wake_by_address((void *)&t_hold, 1);
        check("... the thread ends", services->wait_thread(thread, ~0ull, &code) == 0 && code == 0, 1);
        check("... and wait_thread reports the band its stack's release made", (uint64_t)(t_calls * 10 + t_band), 2 * 10 + eMemoryAvailableNeutral);
        services->close_thread(thread);
        V->VirtualFree(H, neutral, 0, MEM_RELEASE);
    }
    V->RegisterMemoryNotificationCallback(H, 0);
}

int32_t guest_main(IHostMemoryManager *host, const HOST_SERVICES *services) {
    const IHostMemoryManagerVtbl *v = host->lpVtbl;
    HOST_COMMIT_INFO info;
    void *a = 0, *b = 0;
    uint64_t free_now, to_neutral, to_low;
    g_services = services;
    services->query_commit(&info);
    check("thresholds ordered", info.low_threshold <= info.high_threshold && info.high_threshold < info.commit_limit, 1);
    check("register", (uint32_t)v->RegisterMemoryNotificationCallback(host, &callback), S_OK);
    check("AddRef at registration", (uint64_t)adds, 1);
    check("no call at registration", (uint64_t)calls, 0);

    free_now = info.commit_limit - info.committed;
    to_neutral = (free_now - (info.low_threshold + info.high_threshold) / 2) & ~0xFFFull;
    watched = (void *volatile *)&a;
    check("commit into the neutral band", (uint32_t)v->VirtualAlloc(host, 0, to_neutral, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eTaskCritical, &a), S_OK);
    check("one notification, before the call returned", (uint64_t)calls, 1);
    check("... with *ppMem already stored", seen != 0 && seen == a, 1);
    check("neutral", (uint64_t)last_band, eMemoryAvailableNeutral);
    services->query_commit(&info);
    to_low = (info.commit_limit - info.committed - info.low_threshold / 2) & ~0xFFFull;
    check("commit into the low band", (uint32_t)v->VirtualAlloc(host, 0, to_low, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eProcessCritical, &b), S_OK);
    check("second notification", (uint64_t)calls, 2);
    check("low", (uint64_t)last_band, eMemoryAvailableLow);
    check("a call that changes no band", (uint32_t)v->VirtualFree(host, b, 4096, MEM_DECOMMIT), S_OK);
    check("... notifies nobody", (uint64_t)calls, 2);
    check("release the low-band commit", (uint32_t)v->VirtualFree(host, b, 0, MEM_RELEASE), S_OK);
    check("third notification", (uint64_t)calls, 3);
    check("neutral again", (uint64_t)last_band, eMemoryAvailableNeutral);
    check("release the rest", (uint32_t)v->VirtualFree(host, a, 0, MEM_RELEASE), S_OK);
    check("fourth notification", (uint64_t)calls, 4);
    check("high", (uint64_t)last_band, eMemoryAvailableHigh);
    check("unregister", (uint32_t)v->RegisterMemoryNotificationCallback(host, 0), S_OK);
    check("Release of the old callback", (uint64_t)releases, 1);
    check("bad callback object", (uint32_t)v->RegisterMemoryNotificationCallback(host, (ICLRMemoryNotificationCallback *)0xffff800000000000ull),
          (uint32_t)HRESULT_FROM_WIN32(ERROR_NOACCESS));
    {
        /* A callback object in a guard page: 0x80000001, the guard cleared, nothing registered
         * (host-abi §9); the retried call reads it. */
        ICLRMemoryNotificationCallback *g = 0;
        DWORD old = 0;
        MEMORY_BASIC_INFORMATION m;
        SIZE_T got = 0;
        uint32_t adds_before = (uint32_t)adds;
        check("a page for a callback object", (uint32_t)v->VirtualAlloc(host, 0, 4096, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eTaskCritical, (void **)&g), S_OK);
        g->lpVtbl = callback.lpVtbl;
        v->VirtualProtect(host, g, 4096, PAGE_READWRITE | PAGE_GUARD, &old);
        check("callback object in a guard page", (uint32_t)v->RegisterMemoryNotificationCallback(host, g), 0x80000001u);
        v->VirtualQuery(host, g, &m, sizeof m, &got);
        check("... the guard is cleared", m.Protect, PAGE_READWRITE);
        check("... nothing AddRef'd", (uint32_t)adds, adds_before);
        check("... the retried call registers it", (uint32_t)v->RegisterMemoryNotificationCallback(host, g), S_OK);
        check("unregister it", (uint32_t)v->RegisterMemoryNotificationCallback(host, 0), S_OK);
        v->VirtualFree(host, g, 0, MEM_RELEASE);
    }
    {
        /* GetMemoryLoad is the load of the commit limit (host-abi §5): a reservation is not. */
        DWORD before = 101, after = 101;
        SIZE_T avail = 0;
        void *big = 0;
        v->GetMemoryLoad(host, &before, &avail);
        check("a 32 TiB reservation", (uint32_t)v->VirtualAlloc(host, 0, 32ull << 40, MEM_RESERVE, PAGE_READWRITE, eTaskCritical, &big), S_OK);
        v->GetMemoryLoad(host, &after, &avail);
        check("... leaves the memory load as it was", after, before);
        v->VirtualFree(host, big, 0, MEM_RELEASE);
    }
    /* Acquired address space (host-abi §5, §9). */
    check("Needs: size 0", (uint32_t)v->NeedsVirtualAddressSpace(host, (void *)0x200000000ull, 0), (uint32_t)E_INVALIDARG);
    check("Needs: kernel space", (uint32_t)v->NeedsVirtualAddressSpace(host, (void *)0xffff800000000000ull, 4096), (uint32_t)E_INVALIDARG);
    check("Needs", (uint32_t)v->NeedsVirtualAddressSpace(host, (void *)0x200000000ull, 1 << 20), S_OK);
    check("Acquired", (uint32_t)v->AcquiredVirtualAddressSpace(host, (void *)0x200000000ull, 1 << 20), S_OK);
    check("Acquired overlapping", (uint32_t)v->AcquiredVirtualAddressSpace(host, (void *)0x200080000ull, 1 << 20), (uint32_t)E_INVALIDARG);
    check("Acquired over the image", (uint32_t)v->AcquiredVirtualAddressSpace(host, (void *)0x140000000ull, 4096), (uint32_t)E_INVALIDARG);
    check("Released", (uint32_t)v->ReleasedVirtualAddressSpace(host, (void *)0x200000000ull), S_OK);
    check("Released twice", (uint32_t)v->ReleasedVirtualAddressSpace(host, (void *)0x200000000ull), (uint32_t)HRESULT_FROM_WIN32(ERROR_INVALID_ADDRESS));
    V = v;
    H = host;
    where_changes_are_reported(services);
    return summary();
}
