/* A guest that tries to keep the timer out: `cli` in a loop. `cli` is privileged in ring 3
 * (IOPL 0), so each one faults; the handler skips it and the loop goes on, forever. Only the
 * CPU-time limit ends it. */
#include "host_abi.h"
#include "guest_util.h"

static volatile uint64_t skipped;

static int32_t skip_cli(GUEST_EXCEPTION *e) {
    if (e->code != STATUS_PRIVILEGED_INSTRUCTION) return EXCEPTION_CONTINUE_SEARCH;
    e->context->rip += 1; /* cli is one byte (0xFA) */
    skipped++;
    return EXCEPTION_CONTINUE_EXECUTION;
}

int32_t guest_main(IHostMemoryManager *host, const HOST_SERVICES *services) {
    (void)host;
    g_services = services;
    if (!services->add_vectored_exception_handler(1, skip_cli)) return 1;
    put("spin_cli: cli in a loop\n");
    for (;;)
        __asm__ volatile("cli\n sti" ::: "memory");
}
