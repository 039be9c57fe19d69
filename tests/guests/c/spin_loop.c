/* A guest that never ends on its own: `for (;;);` in ring 3. Only the CPU-time limit
 * (guest_cpu_limit_s, host-abi §10.1) ends it, with HOST_E_TIMEOUT. */
#include "host_abi.h"
#include "guest_util.h"

int32_t guest_main(IHostMemoryManager *host, const HOST_SERVICES *services) {
    (void)host;
    g_services = services;
    put("spin_loop: spinning\n");
    for (;;)
        __asm__ volatile("");
}
