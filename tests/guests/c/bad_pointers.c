/* Every host call with hostile pointers and sizes: kernel addresses, unmapped addresses, read-only
 * memory (the host's own data page and our .rodata), NULL, bad `this`. Each must fail cleanly
 * with the contract's result and change nothing; the guest then checks it still works. */
#include "host_abi.h"
#include "guest_util.h"

#define KERNEL ((void *)0xffff800000000000ull)
#define KERNEL_HIGH ((void *)0xffffffff80000000ull)
#define UNMAPPED ((void *)0x500000000000ull)
#define NONCANON ((void *)0x800000000000ull)
#define NOACCESS_E ((uint32_t)HRESULT_FROM_WIN32(ERROR_NOACCESS))
#define INVALID_E ((uint32_t)E_INVALIDARG)

static const char rodata[64] = "read-only data of the guest";
static int32_t handler(GUEST_EXCEPTION *e) { (void)e; return EXCEPTION_CONTINUE_SEARCH; }

#define PAGE 4096u
#define GUARD_E ((uint32_t)STATUS_GUARD_PAGE_VIOLATION)

static void fill(void *at, unsigned n, unsigned char b) {
    for (unsigned k = 0; k < n; k++) ((volatile unsigned char *)at)[k] = b;
}
static int intact(const void *at, unsigned n, unsigned char b) {
    for (unsigned k = 0; k < n; k++)
        if (((const volatile unsigned char *)at)[k] != b) return 0;
    return 1;
}
static uint32_t protect_of(const IHostMemoryManagerVtbl *v, IHostMemoryManager *host, void *at) {
    MEMORY_BASIC_INFORMATION m;
    SIZE_T got = 0;
    v->VirtualQuery(host, at, &m, sizeof m, &got);
    return m.Protect;
}
static uint32_t state_of(const IHostMemoryManagerVtbl *v, IHostMemoryManager *host, void *at) {
    MEMORY_BASIC_INFORMATION m;
    SIZE_T got = 0;
    v->VirtualQuery(host, at, &m, sizeof m, &got);
    return m.State;
}
/* VirtualQuery of `at` into `buffer` fails with `expected`, leaving *pResult 0 and the good page
 * `good` (filled with `b`; none if NULL) as it was. */
static void query_fails(const IHostMemoryManagerVtbl *v, IHostMemoryManager *host, const char *name, void *at, char *buffer, uint32_t expected,
                        char *good, unsigned char b) {
    SIZE_T got = 77;
    check(name, (uint32_t)v->VirtualQuery(host, at, buffer, 48, &got), expected);
    check("... *pResult 0", got, 0);
    if (good) check("... the good page untouched", intact(good, PAGE, b), 1);
}
static void set_ac(int on) {
    if (on) __asm__ volatile("pushfq; orq $0x40000, (%%rsp); popfq" ::: "memory", "cc");
    else __asm__ volatile("pushfq; andq $~0x40000, (%%rsp); popfq" ::: "memory", "cc");
}

/* Results into guard, no-access and read-only pages, straddling two pages of which one is bad,
 * into demand-zero pages, and with RFLAGS.AC set: each exactly as host-abi §4 and §9 say (the
 * host's stubs store these results in ring 3; a fault there is the call's error, never ours). */
static void result_pages(const IHostMemoryManagerVtbl *v, IHostMemoryManager *host) {
    char *r = 0;
    void *p = 0, *x = 0;
    DWORD old = 0;
    SIZE_T got = 0;
    MEMORY_BASIC_INFORMATION mbi;
    put("-- result pages\n");
    /* page 0 rw, 1 rw+guard, 2 rw, 3 noaccess, 4 rw, 5 readonly, 6.. rw untouched */
    check("a region for results", (uint32_t)v->VirtualAlloc(host, 0, 0x10000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eTaskCritical, (void **)&r), S_OK);
    fill(r + PAGE, PAGE, 0x5A);
    fill(r + 2 * PAGE, PAGE, 0x5B);
    fill(r + 4 * PAGE, PAGE, 0x5C);
    v->VirtualProtect(host, r + PAGE, PAGE, PAGE_READWRITE | PAGE_GUARD, &old);
    v->VirtualProtect(host, r + 3 * PAGE, PAGE, PAGE_NOACCESS, &old);
    v->VirtualProtect(host, r + 5 * PAGE, PAGE, PAGE_READONLY, &old);
    /* A free address for fixed reservations that must not happen. */
    check("a free address", (uint32_t)v->VirtualAlloc(host, 0, 0x10000, MEM_RESERVE, PAGE_READWRITE, eTaskCritical, &x), S_OK);
    v->VirtualFree(host, x, 0, MEM_RELEASE);

    got = 77;
    check("VirtualQuery lpBuffer on a guard page", (uint32_t)v->VirtualQuery(host, r, r + PAGE + 64, 48, &got), GUARD_E);
    check("... *pResult 0", got, 0);
    check("... the guard is cleared", protect_of(v, host, r + PAGE), PAGE_READWRITE);
    check("... the buffer untouched", intact(r + PAGE, PAGE, 0x5A), 1);
    check("... the retried call succeeds", (uint32_t)v->VirtualQuery(host, r, r + PAGE + 64, 48, &got), S_OK);
    check("... with 48", got, 48);
    check("... and the structure", ((MEMORY_BASIC_INFORMATION *)(r + PAGE + 64))->BaseAddress == r, 1);
    fill(r + PAGE, PAGE, 0x5A);
    v->VirtualProtect(host, r + PAGE, PAGE, PAGE_READWRITE | PAGE_GUARD, &old);

    fill(&mbi, sizeof mbi, 0xEE);
    check("VirtualQuery pResult on a guard page", (uint32_t)v->VirtualQuery(host, r, &mbi, 48, (SIZE_T *)(r + PAGE + 8)), GUARD_E);
    check("... the structure untouched", intact(&mbi, sizeof mbi, 0xEE), 1);
    check("... the guard is cleared", protect_of(v, host, r + PAGE), PAGE_READWRITE);
    check("... the page untouched", intact(r + PAGE, PAGE, 0x5A), 1);
    v->VirtualProtect(host, r + PAGE, PAGE, PAGE_READWRITE | PAGE_GUARD, &old);

    check("VirtualAlloc ppMem on a guard page", (uint32_t)v->VirtualAlloc(host, x, 0x10000, MEM_RESERVE, PAGE_READWRITE, eTaskCritical, (void **)(r + PAGE + 16)), GUARD_E);
    check("... nothing reserved", state_of(v, host, x), MEM_FREE);
    check("... the guard is cleared", protect_of(v, host, r + PAGE), PAGE_READWRITE);
    check("... the page untouched", intact(r + PAGE, PAGE, 0x5A), 1);
    check("... the retried call succeeds", (uint32_t)v->VirtualAlloc(host, x, 0x10000, MEM_RESERVE, PAGE_READWRITE, eTaskCritical, (void **)(r + PAGE + 16)), S_OK);
    check("... with the base", *(void **)(r + PAGE + 16) == x, 1);
    v->VirtualFree(host, x, 0, MEM_RELEASE);
    fill(r + PAGE, PAGE, 0x5A);
    v->VirtualProtect(host, r + PAGE, PAGE, PAGE_READWRITE | PAGE_GUARD, &old);

    check("bad this with ppMem on a guard page", (uint32_t)v->VirtualAlloc((IHostMemoryManager *)(r + 64), x, 0x10000, MEM_RESERVE, PAGE_READWRITE, eTaskCritical, (void **)(r + PAGE + 16)), NOACCESS_E);
    check("... the guard stays", protect_of(v, host, r + PAGE), PAGE_READWRITE | PAGE_GUARD);
    check("... nothing reserved", state_of(v, host, x), MEM_FREE);
    check("CreateMalloc: bad this with ppMalloc on a guard page",
          (uint32_t)v->CreateMalloc((IHostMemoryManager *)(r + 64), 0, (IHostMalloc **)(r + PAGE + 16)), NOACCESS_E);
    check("... the guard stays", protect_of(v, host, r + PAGE), PAGE_READWRITE | PAGE_GUARD);
    {
        /* A bad `this` fails with ERROR_NOACCESS and, like every failure, leaves NULL (0) in a
         * writable *ppv, *ppMem, *pResult, *ppMalloc (host-abi §9). */
        IHostMemoryManager *bad = (IHostMemoryManager *)(r + 64);
        void *out = (void *)1;
        SIZE_T res = 5;
        IHostMalloc *heap = (IHostMalloc *)1, *good = 0;
        check("bad this: VirtualAlloc", (uint32_t)v->VirtualAlloc(bad, 0, 0x10000, MEM_RESERVE, PAGE_READWRITE, eTaskCritical, &out), NOACCESS_E);
        check("... *ppMem NULL", (uint64_t)out, 0);
        out = (void *)1;
        check("bad this: QueryInterface", (uint32_t)v->QueryInterface(bad, &IID_IUnknown, &out), NOACCESS_E);
        check("... *ppv NULL", (uint64_t)out, 0);
        check("bad this: VirtualQuery", (uint32_t)v->VirtualQuery(bad, r, &mbi, 48, &res), NOACCESS_E);
        check("... *pResult 0", res, 0);
        check("bad this: CreateMalloc", (uint32_t)v->CreateMalloc(bad, 0, &heap), NOACCESS_E);
        check("... *ppMalloc NULL", (uint64_t)heap, 0);
        if (v->CreateMalloc(host, 0, &good) == S_OK) {
            out = (void *)1;
            check("bad this: IHostMalloc::Alloc", (uint32_t)good->lpVtbl->Alloc((IHostMalloc *)(r + 64), 16, eTaskCritical, &out), NOACCESS_E);
            check("... *ppMem NULL", (uint64_t)out, 0);
            good->lpVtbl->Release(good);
        }
    }

    query_fails(v, host, "VirtualQuery lpBuffer on a no-access page", r, r + 3 * PAGE, NOACCESS_E, 0, 0);
    query_fails(v, host, "VirtualQuery lpBuffer on a read-only page", r, r + 5 * PAGE + 8, NOACCESS_E, 0, 0);
    query_fails(v, host, "VirtualQuery lpBuffer into a no-access page", r, r + 3 * PAGE - 24, NOACCESS_E, r + 2 * PAGE, 0x5B);
    query_fails(v, host, "VirtualQuery lpBuffer out of a no-access page", r, r + 4 * PAGE - 24, NOACCESS_E, r + 4 * PAGE, 0x5C);
    query_fails(v, host, "VirtualQuery lpBuffer into a read-only page", r, r + 5 * PAGE - 16, NOACCESS_E, r + 4 * PAGE, 0x5C);
    query_fails(v, host, "VirtualQuery lpBuffer into a guard page", r, r + 2 * PAGE - 24, GUARD_E, r + 2 * PAGE, 0x5B);
    check("... the guard is cleared", protect_of(v, host, r + PAGE), PAGE_READWRITE);
    fill(r + PAGE, PAGE, 0x5A);
    v->VirtualProtect(host, r + PAGE, PAGE, PAGE_READWRITE | PAGE_GUARD, &old);

    /* A buffer longer than the structure is checked whole, as Windows probes lpBuffer for
     * dwLength bytes: when a later byte of it is not writable nothing is written. */
    got = 77;
    check("VirtualQuery dwLength 49, the 49th byte on a no-access page", (uint32_t)v->VirtualQuery(host, r, r + 3 * PAGE - 48, 49, &got), NOACCESS_E);
    check("... *pResult 0", got, 0);
    check("... the good page untouched", intact(r + 2 * PAGE, PAGE, 0x5B), 1);
    check("VirtualQuery dwLength two pages, the second read-only", (uint32_t)v->VirtualQuery(host, r, r + 4 * PAGE, 2 * PAGE, &got), NOACCESS_E);
    check("... the good page untouched", intact(r + 4 * PAGE, PAGE, 0x5C), 1);
    check("VirtualQuery dwLength ~0 (wraps)", (uint32_t)v->VirtualQuery(host, r, r + 2 * PAGE, ~(SIZE_T)0, &got), NOACCESS_E);
    check("... the good page untouched", intact(r + 2 * PAGE, PAGE, 0x5B), 1);
    check("VirtualQuery dwLength past user space", (uint32_t)v->VirtualQuery(host, r, r + 2 * PAGE, (SIZE_T)1 << 47, &got), NOACCESS_E);
    check("... the good page untouched", intact(r + 2 * PAGE, PAGE, 0x5B), 1);
    check("VirtualQuery dwLength into a guard page", (uint32_t)v->VirtualQuery(host, r, r + PAGE - 48, 64, &got), GUARD_E);
    check("... the guard is cleared", protect_of(v, host, r + PAGE), PAGE_READWRITE);
    check("... the guard page untouched", intact(r + PAGE, PAGE, 0x5A), 1);
    v->VirtualProtect(host, r + PAGE, PAGE, PAGE_READWRITE | PAGE_GUARD, &old);
    got = 77;
    check("VirtualQuery dwLength a whole good page", (uint32_t)v->VirtualQuery(host, r, r + 2 * PAGE, PAGE, &got), S_OK);
    check("... *pResult 48", got, 48);
    check("... the structure", (uint64_t)((MEMORY_BASIC_INFORMATION *)(r + 2 * PAGE))->BaseAddress, (uint64_t)r);
    check("... the rest of the buffer untouched", intact(r + 2 * PAGE + 48, PAGE - 48, 0x5B), 1);
    fill(r + 2 * PAGE, PAGE, 0x5B);

    fill(&mbi, sizeof mbi, 0xEE);
    check("VirtualQuery pResult into a no-access page", (uint32_t)v->VirtualQuery(host, r, &mbi, 48, (SIZE_T *)(r + 3 * PAGE - 4)), NOACCESS_E);
    check("... the structure untouched", intact(&mbi, sizeof mbi, 0xEE), 1);
    check("... the good page untouched", intact(r + 2 * PAGE, PAGE, 0x5B), 1);
    check("VirtualAlloc ppMem into a no-access page", (uint32_t)v->VirtualAlloc(host, x, 0x10000, MEM_RESERVE, PAGE_READWRITE, eTaskCritical, (void **)(r + 3 * PAGE - 4)), NOACCESS_E);
    check("... nothing reserved", state_of(v, host, x), MEM_FREE);
    check("... the good page untouched", intact(r + 2 * PAGE, PAGE, 0x5B), 1);
    check("VirtualAlloc ppMem out of a no-access page", (uint32_t)v->VirtualAlloc(host, x, 0x10000, MEM_RESERVE, PAGE_READWRITE, eTaskCritical, (void **)(r + 4 * PAGE - 4)), NOACCESS_E);
    check("... nothing reserved", state_of(v, host, x), MEM_FREE);
    check("... the good page untouched", intact(r + 4 * PAGE, PAGE, 0x5C), 1);
    check("VirtualAlloc ppMem on a read-only page", (uint32_t)v->VirtualAlloc(host, x, 0x10000, MEM_RESERVE, PAGE_READWRITE, eTaskCritical, (void **)(r + 5 * PAGE)), NOACCESS_E);
    check("... nothing reserved", state_of(v, host, x), MEM_FREE);

    /* Demand-zero pages (committed, never touched) and two good pages. */
    check("VirtualQuery into untouched pages", (uint32_t)v->VirtualQuery(host, r + 3 * PAGE, r + 7 * PAGE - 24, 48, (SIZE_T *)(r + 8 * PAGE)), S_OK);
    check("... *pResult 48", *(SIZE_T *)(r + 8 * PAGE), 48);
    check("... BaseAddress", (uint64_t)((MEMORY_BASIC_INFORMATION *)(r + 7 * PAGE - 24))->BaseAddress, (uint64_t)(r + 3 * PAGE));
    check("... Protect", ((MEMORY_BASIC_INFORMATION *)(r + 7 * PAGE - 24))->Protect, PAGE_NOACCESS);
    check("... RegionSize", ((MEMORY_BASIC_INFORMATION *)(r + 7 * PAGE - 24))->RegionSize, PAGE);
    check("VirtualAlloc into an untouched page", (uint32_t)v->VirtualAlloc(host, x, 0x10000, MEM_RESERVE, PAGE_READWRITE, eTaskCritical, (void **)(r + 9 * PAGE - 4)), S_OK);
    check("... the base", (uint64_t)*(void *volatile *)(r + 9 * PAGE - 4), (uint64_t)x);
    v->VirtualFree(host, x, 0, MEM_RELEASE);

    /* VirtualProtect's lpflOldProtect: left untouched, and the protection unchanged, when bad. */
    check("VirtualProtect old on a guard page", (uint32_t)v->VirtualProtect(host, r + 6 * PAGE, PAGE, PAGE_READONLY, (DWORD *)(r + PAGE + 32)), GUARD_E);
    check("... the protection unchanged", protect_of(v, host, r + 6 * PAGE), PAGE_READWRITE);
    check("... the guard is cleared", protect_of(v, host, r + PAGE), PAGE_READWRITE);
    check("... the page untouched", intact(r + PAGE, PAGE, 0x5A), 1);
    check("... the retried call succeeds", (uint32_t)v->VirtualProtect(host, r + 6 * PAGE, PAGE, PAGE_READONLY, (DWORD *)(r + PAGE + 32)), S_OK);
    check("... with the old protection", *(volatile uint32_t *)(r + PAGE + 32), PAGE_READWRITE);
    check("... and the new one", protect_of(v, host, r + 6 * PAGE), PAGE_READONLY);
    check("VirtualProtect old on a read-only page", (uint32_t)v->VirtualProtect(host, r + 6 * PAGE, PAGE, PAGE_READWRITE, (DWORD *)(r + 5 * PAGE + 4)), NOACCESS_E);
    check("... the protection unchanged", protect_of(v, host, r + 6 * PAGE), PAGE_READONLY);
    check("VirtualProtect old into a no-access page", (uint32_t)v->VirtualProtect(host, r + 6 * PAGE, PAGE, PAGE_READWRITE, (DWORD *)(r + 3 * PAGE - 2)), NOACCESS_E);
    check("... the protection unchanged", protect_of(v, host, r + 6 * PAGE), PAGE_READONLY);
    check("... the good page untouched", intact(r + 2 * PAGE, PAGE, 0x5B), 1);
    check("VirtualProtect old into an untouched page", (uint32_t)v->VirtualProtect(host, r + 6 * PAGE, PAGE, PAGE_READWRITE, (DWORD *)(r + 12 * PAGE + 8)), S_OK);
    check("... the old protection", *(volatile uint32_t *)(r + 12 * PAGE + 8), PAGE_READONLY);

    /* RFLAGS.AC set (alignment checks on in ring 3) with misaligned results: the host's stores
     * raise nothing in the guest. */
    set_ac(1);
    uint32_t hp = (uint32_t)v->VirtualProtect(host, r + 6 * PAGE, PAGE, PAGE_READONLY, (DWORD *)(r + 10 * PAGE + 91));
    uint32_t hq = (uint32_t)v->VirtualQuery(host, r, r + 10 * PAGE + 1, 48, (SIZE_T *)(r + 10 * PAGE + 61));
    uint32_t ha = (uint32_t)v->VirtualAlloc(host, 0, 0x10000, MEM_RESERVE, PAGE_READWRITE, eTaskCritical, (void **)(r + 10 * PAGE + 73));
    set_ac(0);
    check("VirtualQuery with AC set and misaligned results", hq, S_OK);
    check("... *pResult 48", *(volatile uint64_t *)(r + 10 * PAGE + 61), 48);
    check("... BaseAddress", *(volatile uint64_t *)(r + 10 * PAGE + 1), (uint64_t)r);
    check("VirtualProtect with AC set and misaligned old", hp, S_OK);
    check("... the old protection", *(volatile uint32_t *)(r + 10 * PAGE + 91), PAGE_READWRITE);
    check("VirtualAlloc with AC set and misaligned ppMem", ha, S_OK);
    p = *(void *volatile *)(r + 10 * PAGE + 73);
    check("... a reservation", state_of(v, host, p), MEM_RESERVE);
    v->VirtualFree(host, p, 0, MEM_RELEASE);
    check("release the region", (uint32_t)v->VirtualFree(host, r, 0, MEM_RELEASE), S_OK);
}

int32_t guest_main(IHostMemoryManager *host, const HOST_SERVICES *services) {
    const IHostMemoryManagerVtbl *v = host->lpVtbl;
    void *readonly = (void *)services; /* the host's data page is read-only to us */
    void *bad[] = {KERNEL, KERNEL_HIGH, UNMAPPED, NONCANON, readonly, (void *)rodata};
    const char *names[] = {"kernel", "kernel-high", "unmapped", "non-canonical", "host-readonly", "rodata"};
    void *p = 0, *base = 0;
    MEMORY_BASIC_INFORMATION mbi;
    SIZE_T got = 0;
    DWORD old = 0, load = 0;
    HOST_COMMIT_INFO info;
    unsigned i;
    g_services = services;

    check("reserve a test region", (uint32_t)v->VirtualAlloc(host, 0, 0x10000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eTaskCritical, &base), S_OK);
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        put("-- ");
        put(names[i]);
        put("\n");
        check("VirtualAlloc ppMem", (uint32_t)v->VirtualAlloc(host, 0, 4096, MEM_RESERVE, PAGE_READWRITE, eTaskCritical, (void **)bad[i]), NOACCESS_E);
        check("VirtualQuery lpBuffer", (uint32_t)v->VirtualQuery(host, base, bad[i], 48, &got), NOACCESS_E);
        check("VirtualQuery pResult zeroed", got, 0);
        check("VirtualQuery pResult", (uint32_t)v->VirtualQuery(host, base, &mbi, 48, (SIZE_T *)bad[i]), NOACCESS_E);
        check("VirtualProtect pflOldProtect", (uint32_t)v->VirtualProtect(host, base, 4096, PAGE_READONLY, (DWORD *)bad[i]), NOACCESS_E);
        check("GetMemoryLoad pMemoryLoad", (uint32_t)v->GetMemoryLoad(host, (DWORD *)bad[i], &got), NOACCESS_E);
        check("GetMemoryLoad pAvailableBytes", (uint32_t)v->GetMemoryLoad(host, &load, (SIZE_T *)bad[i]), NOACCESS_E);
        /* Readable memory (the last two) is a legal, unknown IID; the rest is unreadable. */
        check("QueryInterface riid", (uint32_t)v->QueryInterface(host, (REFIID)bad[i], &p), i >= 4 ? (uint32_t)E_NOINTERFACE : NOACCESS_E);
        check("QueryInterface ppv", (uint32_t)v->QueryInterface(host, &IID_IUnknown, (void **)bad[i]), NOACCESS_E);
        check("bad this", (uint32_t)v->VirtualFree((IHostMemoryManager *)bad[i], base, 0, MEM_RELEASE), NOACCESS_E);
        check("VirtualAlloc at the address", (uint32_t)v->VirtualAlloc(host, bad[i], 4096, MEM_COMMIT, PAGE_READWRITE, eTaskCritical, &p) != S_OK, 1);
        check("VirtualFree of the address", (uint32_t)v->VirtualFree(host, bad[i], 0, MEM_RELEASE) != S_OK, 1);
        services->write((const char *)bad[i], 16); /* writes nothing when unreadable */
        services->query_commit((HOST_COMMIT_INFO *)bad[i]);
        check("add_vectored_exception_handler(non-code)", (uint64_t)services->add_vectored_exception_handler(0, (GUEST_EXCEPTION_HANDLER)bad[i]), 0);
        check("remove_vectored_exception_handler(bogus)", services->remove_vectored_exception_handler(bad[i]), 0);
        check("get_write_watch count", services->get_write_watch(0, base, 4096, (void **)&p, (uint64_t *)bad[i], (uint32_t *)&load), ERROR_NOACCESS);
        check("reset_write_watch", services->reset_write_watch(bad[i], 4096), ERROR_INVALID_PARAMETER);
        /* Our own image pages may be re-protected, as on Windows; nothing else here may. */
        check("VirtualProtect of the address", (uint32_t)v->VirtualProtect(host, bad[i], 4096, PAGE_READONLY, &old) == S_OK, i == 5);
    }
    /* NULL COM out-pointers: E_POINTER; Windows' own pointers: ERROR_NOACCESS. */
    check("VirtualAlloc ppMem NULL", (uint32_t)v->VirtualAlloc(host, 0, 4096, MEM_RESERVE, PAGE_READWRITE, eTaskCritical, 0), (uint32_t)E_POINTER);
    check("VirtualQuery pResult NULL", (uint32_t)v->VirtualQuery(host, base, &mbi, 48, 0), (uint32_t)E_POINTER);
    check("VirtualQuery lpBuffer NULL", (uint32_t)v->VirtualQuery(host, base, 0, 48, &got), NOACCESS_E);
    check("VirtualProtect old NULL", (uint32_t)v->VirtualProtect(host, base, 4096, PAGE_READONLY, 0), NOACCESS_E);
    check("QueryInterface riid NULL", (uint32_t)v->QueryInterface(host, 0, &p), (uint32_t)E_POINTER);
    check("QueryInterface ppv NULL", (uint32_t)v->QueryInterface(host, &IID_IUnknown, 0), (uint32_t)E_POINTER);
    check("invalid critical level", (uint32_t)v->VirtualAlloc(host, 0, 4096, MEM_RESERVE, PAGE_READWRITE, (EMemoryCriticalLevel)3, &p), INVALID_E);
    check("... and *ppMem NULL", (uint64_t)p, 0);
    /* Huge and wrapping sizes. */
    check("size ~0", (uint32_t)v->VirtualAlloc(host, 0, ~0ull, MEM_RESERVE, PAGE_READWRITE, eTaskCritical, &p), INVALID_E);
    check("wrapping range", (uint32_t)v->VirtualAlloc(host, (void *)0x7fffffff0000ull, 0x20000, MEM_RESERVE, PAGE_READWRITE, eTaskCritical, &p), INVALID_E);
    check("query beyond user space", (uint32_t)v->VirtualQuery(host, KERNEL, &mbi, 48, &got), INVALID_E);
    check("write watch addresses too small", services->get_write_watch(0, base, 4096, 0, &info.committed, &load) != 0, 1);
    /* Nothing changed: the region is intact and usable. */
    check("region still committed", (uint32_t)v->VirtualQuery(host, base, &mbi, 48, &got), S_OK);
    check("... read-write", mbi.Protect, PAGE_READWRITE);
    ((volatile char *)base)[100] = 1;
    check("... writable", ((volatile char *)base)[100], 1);
    check("host pages refuse VirtualProtect", (uint32_t)v->VirtualProtect(host, readonly, 4096, PAGE_READWRITE, &old), (uint32_t)HRESULT_FROM_WIN32(ERROR_INVALID_ADDRESS));
    check("host pages refuse VirtualFree", (uint32_t)v->VirtualFree(host, readonly, 0, MEM_RELEASE), (uint32_t)HRESULT_FROM_WIN32(ERROR_INVALID_ADDRESS));
    v->VirtualQuery(host, readonly, &mbi, 48, &got);
    check("host data page is MEM_IMAGE", mbi.Type, MEM_IMAGE);
    check("host data page is PAGE_READONLY", mbi.Protect, PAGE_READONLY);
    v->VirtualQuery(host, (void *)services->write, &mbi, 48, &got);
    check("host code page is PAGE_EXECUTE_READ", mbi.Protect, PAGE_EXECUTE_READ);
    check("a good handler registers", services->add_vectored_exception_handler(0, handler) != 0, 1);
    result_pages(v, host);
    check("release", (uint32_t)v->VirtualFree(host, base, 0, MEM_RELEASE), S_OK);
    return summary();
}
