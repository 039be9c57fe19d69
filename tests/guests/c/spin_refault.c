/* A guest whose exception handler always resumes at the faulting instruction: `ud2` faults, the
 * handler says EXCEPTION_CONTINUE_EXECUTION without changing anything, and the same `ud2` faults
 * again, forever. Only the CPU-time limit ends it. */
#include "host_abi.h"
#include "guest_util.h"

static volatile uint64_t rounds;

static int32_t resume_in_place(GUEST_EXCEPTION *e) {
    (void)e;
    rounds++;
    return EXCEPTION_CONTINUE_EXECUTION;
}

int32_t guest_main(IHostMemoryManager *host, const HOST_SERVICES *services) {
    (void)host;
    g_services = services;
    if (!services->add_vectored_exception_handler(1, resume_in_place)) return 1;
    put("spin_refault: ud2 with a handler that resumes at it\n");
    __asm__ volatile("ud2");
    return 2;
}
