/* A guest cannot raise the kernel's device-interrupt vectors itself: `int 0x30` (the APIC timer),
 * `int 0xf0` (the wake-up IPI) and `int 0xff` (spurious) go through DPL-0 gates, so each is a
 * #GP that reaches the guest's handler as an access violation, and the guest goes on. */
#include "host_abi.h"
#include "guest_util.h"

static volatile uint64_t refused;

static int32_t skip_int(GUEST_EXCEPTION *e) {
    const uint8_t *at = (const uint8_t *)e->context->rip;
    if (e->code != STATUS_ACCESS_VIOLATION || at[0] != 0xCD) return EXCEPTION_CONTINUE_SEARCH;
    e->context->rip += 2;
    refused++;
    return EXCEPTION_CONTINUE_EXECUTION;
}

int32_t guest_main(IHostMemoryManager *host, const HOST_SERVICES *services) {
    (void)host;
    g_services = services;
    check("handler registered", services->add_vectored_exception_handler(1, skip_int) != 0, 1);
    __asm__ volatile("int $0x30" ::: "memory");
    check("int 0x30 refused", refused, 1);
    __asm__ volatile("int $0xf0" ::: "memory");
    check("int 0xf0 refused", refused, 2);
    __asm__ volatile("int $0xff" ::: "memory");
    check("int 0xff refused", refused, 3);
    return summary();
}
