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
    check("release", (uint32_t)v->VirtualFree(host, base, 0, MEM_RELEASE), S_OK);
    return summary();
}
