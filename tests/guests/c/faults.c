/* A guest that dies of one fault, chosen at build time with -DFAULT=n; the kernel must end it
 * with the right exception code (checked by tests/guests.rs). */
#include "host_abi.h"
#include "guest_util.h"

static int bounded(int n) {
    volatile char pad[512];
    pad[0] = (char)n;
    return n == 0 ? 0 : bounded(n - 1) + pad[0] - (char)n;
}

static int depth(int n) {
    volatile char pad[512];
    pad[0] = (char)n;
    return depth(n + 1) + pad[0];
}

int32_t guest_main(IHostMemoryManager *host, const HOST_SERVICES *services) {
    volatile int zero = 0;
    (void)host;
    g_services = services;
    put("faults: about to fault\n");
    switch (FAULT) {
    case 0: __asm__ volatile("hlt"); break;                                   /* privileged */
    case 1: __asm__ volatile("cli"); break;                                   /* privileged */
    case 2: __asm__ volatile("mov %%rax, %%cr3" ::"a"(0ull)); break;          /* privileged */
    case 3: (void)*(volatile uint64_t *)0xffff800000000000ull; break;        /* kernel memory */
    case 4: *(volatile uint64_t *)((const char *)services + 8) = 1; break;   /* host read-only page */
    case 5: __asm__ volatile("ud2"); break;                                   /* illegal instruction */
    case 6: return 10 / zero;                                                 /* divide by zero */
    case 7: __asm__ volatile("int3"); break;                                  /* breakpoint */
    case 8: __asm__ volatile("int $0x80"); break;                             /* kernel gate */
    case 9: return depth(0);                                                  /* stack overflow */
    case 10: (void)*(volatile uint64_t *)0x8000000000000000ull; break;       /* non-canonical */
    case 11: __asm__ volatile("in $0x60, %%al" ::: "al"); break;             /* port I/O */
    case 12: return bounded(1200);                                            /* ~600 KiB of stack: grows silently */
    }
    put("faults: still alive?\n");
    return 0;
}
