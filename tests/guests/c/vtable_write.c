/* A guest that writes to the IHostMalloc vtable (host-abi §10.1: the host library's vtables and
 * code are read-only). Checks first that the vtable's page shows as read-only MEM_IMAGE memory
 * the guest cannot reprotect, then writes: the kernel must end it with 0xC0000005
 * (tests/guests.rs). */
#include "host_abi.h"
#include "guest_util.h"

int32_t guest_main(IHostMemoryManager *host, const HOST_SERVICES *services) {
    IHostMalloc *heap = 0;
    MEMORY_BASIC_INFORMATION info;
    SIZE_T got = 0;
    DWORD old = 0;
    g_services = services;
    check("CreateMalloc", (uint64_t)host->lpVtbl->CreateMalloc(host, 0, &heap), 0);
    if (!heap) return summary();
    void *vtable = (void *)heap->lpVtbl;
    check("VirtualQuery of the vtable", (uint64_t)host->lpVtbl->VirtualQuery(host, vtable, &info, sizeof info, &got), 0);
    check("vtable page type", info.Type, MEM_IMAGE);
    check("vtable page protection", info.Protect, PAGE_READONLY);
    check("VirtualProtect of the vtable", (uint64_t)(uint32_t)host->lpVtbl->VirtualProtect(host, vtable, 8, PAGE_READWRITE, &old),
          (uint32_t)HRESULT_FROM_WIN32(ERROR_INVALID_ADDRESS));
    summary();
    put("vtable_write: about to write to the IHostMalloc vtable\n");
    *(volatile uint64_t *)vtable = 0;
    put("vtable_write: still alive?\n");
    return 0;
}
