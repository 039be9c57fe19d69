/* E_FAIL poisoning (host-abi §4): the test arms the kernel's test-only switch so that the second
 * manager call reports an internal inconsistency; from then on every method but the IUnknown ones
 * returns HOST_E_CLRNOTAVAILABLE. */
#include "host_abi.h"
#include "guest_util.h"

int32_t guest_main(IHostMemoryManager *host, const HOST_SERVICES *services) {
    const IHostMemoryManagerVtbl *v = host->lpVtbl;
    void *p = 0, *q = (void *)1;
    DWORD load = 0;
    SIZE_T avail = 0, got = 0;
    MEMORY_BASIC_INFORMATION mbi;
    IHostMalloc *heap = (IHostMalloc *)1;
    g_services = services;
    check("first call works", (uint32_t)v->VirtualAlloc(host, 0, 0x10000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eTaskCritical, &p), S_OK);
    check("second call: E_FAIL", (uint32_t)v->GetMemoryLoad(host, &load, &avail), (uint32_t)E_FAIL);
    check("then VirtualAlloc is unavailable", (uint32_t)v->VirtualAlloc(host, 0, 0x10000, MEM_RESERVE, PAGE_READWRITE, eTaskCritical, &q), (uint32_t)HOST_E_CLRNOTAVAILABLE);
    check("VirtualQuery too", (uint32_t)v->VirtualQuery(host, p, &mbi, 48, &got), (uint32_t)HOST_E_CLRNOTAVAILABLE);
    check("VirtualFree too", (uint32_t)v->VirtualFree(host, p, 0, MEM_RELEASE), (uint32_t)HOST_E_CLRNOTAVAILABLE);
    check("GetMemoryLoad too", (uint32_t)v->GetMemoryLoad(host, &load, &avail), (uint32_t)HOST_E_CLRNOTAVAILABLE);
    check("CreateMalloc fails", (uint32_t)v->CreateMalloc(host, 0, &heap), (uint32_t)HOST_E_CLRNOTAVAILABLE);
    check("... with *ppMalloc NULL", (uint64_t)heap, 0);
    heap = (IHostMalloc *)1;
    check("CreateMalloc with bad flags: unavailable all the same", (uint32_t)v->CreateMalloc(host, 4, &heap), (uint32_t)HOST_E_CLRNOTAVAILABLE);
    check("... with *ppMalloc NULL", (uint64_t)heap, 0);
    check("CreateMalloc with ppMalloc NULL: unavailable", (uint32_t)v->CreateMalloc(host, 0, 0), (uint32_t)HOST_E_CLRNOTAVAILABLE);
    check("QueryInterface still works", (uint32_t)v->QueryInterface(host, &IID_IUnknown, &q), S_OK);
    check("AddRef still works", v->AddRef(host), 3);
    check("Release still works", v->Release(host), 2);
    check("memory committed before is still usable", (((volatile char *)p)[7] = 5, ((volatile char *)p)[7]), 5);
    return summary();
}
