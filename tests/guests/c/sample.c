/* The bundled C sample guest: reserve, commit, protect, query, a guard page and a handled access
 * violation, through IHostMemoryManager and HOST_SERVICES (host_abi.h). */
#include "host_abi.h"
#include "guest_util.h"

static IHostMemoryManager *g_host;
static volatile int g_guard_hits, g_av_hits;

/* Commits the page of a faulting access in our lazy region and resumes; counts guard hits. */
static int32_t handler(GUEST_EXCEPTION *e) {
    if (e->code == STATUS_GUARD_PAGE_VIOLATION) {
        g_guard_hits++;
        return EXCEPTION_CONTINUE_EXECUTION; /* the guard is gone: the retry succeeds */
    }
    if (e->code == STATUS_ACCESS_VIOLATION && e->access == 1) {
        void *p;
        g_av_hits++;
        if (g_host->lpVtbl->VirtualAlloc(g_host, (void *)(e->address & ~0xFFFull), 4096, MEM_COMMIT,
                                         PAGE_READWRITE, eTaskCritical, &p) == S_OK)
            return EXCEPTION_CONTINUE_EXECUTION;
    }
    return EXCEPTION_CONTINUE_SEARCH;
}

int32_t guest_main(IHostMemoryManager *host, const HOST_SERVICES *services) {
    const IHostMemoryManagerVtbl *v = host->lpVtbl;
    void *base = 0, *p = 0, *h;
    MEMORY_BASIC_INFORMATION mbi;
    SIZE_T got = 0;
    DWORD old = 0;
    volatile char *c;
    g_host = host;
    g_services = services;
    put("sample-c: hello from ring 3\n");
    check("HOST_SERVICES.version", services->version, 2);
    check("HOST_SERVICES.page_size", services->page_size, 4096);

    /* Reserve 1 MiB, commit 64 KiB of it. */
    check("reserve", (uint32_t)v->VirtualAlloc(host, 0, 1 << 20, MEM_RESERVE, PAGE_READWRITE, eTaskCritical, &base), S_OK);
    check("reserve is 64 KiB aligned", (uint64_t)base & 0xFFFF, 0);
    check("commit", (uint32_t)v->VirtualAlloc(host, base, 0x10000, MEM_COMMIT, PAGE_READWRITE, eTaskCritical, &p), S_OK);
    c = (volatile char *)p;
    check("committed memory reads zero", c[0x1234], 0);
    c[0x1234] = 42;
    check("and keeps what is written", c[0x1234], 42);

    /* Query: a committed run of 16 pages, then the reserved rest. */
    check("query", (uint32_t)v->VirtualQuery(host, p, &mbi, sizeof mbi, &got), S_OK);
    check("query result size", got, 48);
    check("query state", mbi.State, MEM_COMMIT);
    check("query region size", mbi.RegionSize, 0x10000);
    check("query protect", mbi.Protect, PAGE_READWRITE);
    check("query type", mbi.Type, MEM_PRIVATE);
    v->VirtualQuery(host, (char *)base + 0x10000, &mbi, sizeof mbi, &got);
    check("query reserved rest", mbi.State | mbi.Protect, MEM_RESERVE);
    check("query reserved size", mbi.RegionSize, (1 << 20) - 0x10000);

    /* Protect read-only: old protection reported; a bad protection is refused. */
    check("protect", (uint32_t)v->VirtualProtect(host, p, 4096, PAGE_READONLY, &old), S_OK);
    check("old protection", old, PAGE_READWRITE);
    check("invalid protection", (uint32_t)v->VirtualProtect(host, p, 4096, PAGE_READONLY | PAGE_EXECUTE, &old),
          (uint32_t)E_INVALIDARG);
    check("data survives protect", c[0x1234] + 0, 42);

    /* A guard page: the first touch raises the guard exception once, the retry succeeds. */
    h = services->add_vectored_exception_handler(1, handler);
    check("handler registered", h != 0, 1);
    check("guard", (uint32_t)v->VirtualProtect(host, (char *)p + 0x8000, 4096, PAGE_READWRITE | PAGE_GUARD, &old), S_OK);
    c[0x8010] = 7;
    check("guard exception raised once", (uint64_t)g_guard_hits, 1);
    c[0x8011] = 8;
    check("no second guard exception", (uint64_t)g_guard_hits, 1);
    v->VirtualQuery(host, (char *)p + 0x8000, &mbi, sizeof mbi, &got);
    check("guard bit cleared", mbi.Protect, PAGE_READWRITE);

    /* A handled access violation: writing reserved memory; the handler commits it. */
    c = (volatile char *)base + 0x40000;
    c[5] = 9;
    check("access violation handled", (uint64_t)g_av_hits, 1);
    check("write landed after commit", c[5], 9);

    /* A heap (IHostMalloc): blocks, a double free caught, an executable heap running code. */
    {
        IHostMalloc *heap = 0, *exec = 0;
        void *a = 0, *b = 0, *code = 0;
        static const unsigned char ret42[] = {0xB8, 42, 0, 0, 0, 0xC3}; /* mov eax, 42; ret */
        check("CreateMalloc", (uint32_t)v->CreateMalloc(host, MALLOC_THREADSAFE, &heap), S_OK);
        if (heap) {
            check("Alloc", (uint32_t)heap->lpVtbl->Alloc(heap, 100, eTaskCritical, &a), S_OK);
            check("16-byte aligned", (uint64_t)a & 15, 0);
            check("DebugAlloc", (uint32_t)heap->lpVtbl->DebugAlloc(heap, 5000, eTaskCritical, (char *)"sample.c", __LINE__, &b), S_OK);
            memset(a, 0xAB, 100);
            memset(b, 0xCD, 5000);
            check("blocks hold data", ((unsigned char *)a)[99] + ((unsigned char *)b)[4999], 0xAB + 0xCD);
            check("Free", (uint32_t)heap->lpVtbl->Free(heap, a), S_OK);
            check("double Free caught", (uint32_t)heap->lpVtbl->Free(heap, a), (uint32_t)E_INVALIDARG);
            check("foreign Free caught", (uint32_t)heap->lpVtbl->Free(heap, (void *)&g_av_hits), (uint32_t)E_INVALIDARG);
            check("Free debug block", (uint32_t)heap->lpVtbl->Free(heap, b), S_OK);
            check("Release frees the heap", heap->lpVtbl->Release(heap), 0);
        }
        check("CreateMalloc executable", (uint32_t)v->CreateMalloc(host, MALLOC_EXECUTABLE, &exec), S_OK);
        if (exec) {
            check("Alloc code", (uint32_t)exec->lpVtbl->Alloc(exec, sizeof ret42, eTaskCritical, &code), S_OK);
            memcpy(code, ret42, sizeof ret42);
            check("code in an executable heap runs", (uint64_t)((int (*)(void))code)(), 42);
            exec->lpVtbl->Free(exec, code);
            exec->lpVtbl->Release(exec);
        }
    }

    /* Release everything; the address is free again. */
    check("release", (uint32_t)v->VirtualFree(host, base, 0, MEM_RELEASE), S_OK);
    v->VirtualQuery(host, base, &mbi, sizeof mbi, &got);
    check("released memory is free", mbi.State, MEM_FREE);
    check("handler removed", services->remove_vectored_exception_handler(h), 1);
    return summary();
}
