/* Exception delivery as host-abi §8 describes it: handler order, CONTINUE_SEARCH chaining,
 * editing the context to resume, breakpoint and divide errors, vector registers preserved across
 * a handler that clobbers them, a guard page on a buffer the host writes, and single stepping
 * across a system call. */
#include "host_abi.h"
#include "guest_util.h"

static int order[64], n_order;
static volatile uint64_t seen_code, seen_access, seen_address, seen_rip;

static int32_t first(GUEST_EXCEPTION *e) {
    order[n_order++] = 1;
    seen_code = e->code;
    seen_access = e->access;
    seen_address = e->address;
    seen_rip = e->context->rip;
    return EXCEPTION_CONTINUE_SEARCH;
}

static int32_t fixer(GUEST_EXCEPTION *e) {
    order[n_order++] = 2;
    switch (e->code) {
    case STATUS_ILLEGAL_INSTRUCTION: e->context->rip += 2; break;      /* skip ud2 */
    case STATUS_BREAKPOINT: e->context->rip += 1; break;               /* skip int3 */
    case STATUS_INTEGER_DIVIDE_BY_ZERO: e->context->rcx = 1; break;    /* retry with divisor 1 */
    case STATUS_ACCESS_VIOLATION: e->context->rip += 3; e->context->rax = 77; break; /* skip mov (%rbx),%rax */
    default: return EXCEPTION_CONTINUE_SEARCH;
    }
    /* Clobber vector registers: the resumed code must not see it. */
    __asm__ volatile("pxor %%xmm0, %%xmm0\n pcmpeqd %%xmm1, %%xmm1" ::: "xmm0", "xmm1");
    return EXCEPTION_CONTINUE_EXECUTION;
}

/* Single stepping (TF): the rip of every step reported, until `step_stop` (then TF is cleared). */
#define MAX_STEPS 16
extern char step_syscall[], step_stop[];
static volatile uint64_t step_rips[MAX_STEPS], n_steps;
static int32_t stepper(GUEST_EXCEPTION *e) {
    if (e->code != STATUS_SINGLE_STEP) return EXCEPTION_CONTINUE_SEARCH;
    if (n_steps < MAX_STEPS) step_rips[n_steps] = e->context->rip;
    if (++n_steps >= MAX_STEPS || e->context->rip == (uint64_t)step_stop) e->context->rflags &= ~0x100ull;
    return EXCEPTION_CONTINUE_EXECUTION;
}

/* Steps across a `syscall` (an unknown call: E_NOTIMPL) and three nops. The step after the
 * `syscall` is reported at the instruction after it, and a handler resuming with TF still set
 * runs that instruction before the next step: six steps (after the lea, the mov, the syscall and
 * each nop), at six different places. */
static void single_step_across_a_syscall(const HOST_SERVICES *services) {
    void *h = services->add_vectored_exception_handler(1, stepper);
    uint64_t rax = 0, i, repeats = 0;
    n_steps = 0;
    __asm__ volatile("lea -128(%%rsp), %%rsp\n" /* pushfq below the red zone */
                     "pushfq\n"
                     "orq $0x100, (%%rsp)\n"
                     "popfq\n"
                     "lea 128(%%rsp), %%rsp\n" /* TF on: the first step is after this */
                     "mov $0x7777, %%eax\n"
                     ".globl step_syscall\nstep_syscall: syscall\n"
                     "nop\n"
                     "nop\n"
                     "nop\n"
                     ".globl step_stop\nstep_stop: nop\n"
                     : "=a"(rax)
                     :
                     : "rcx", "r11", "memory", "cc");
    check("single steps from TF to the last nop (across a syscall)", n_steps, 6);
    check("... the second at the syscall", step_rips[1], (uint64_t)step_syscall);
    check("... the third right after it", step_rips[2], (uint64_t)step_syscall + 2);
    check("... the last at the stop", step_rips[5], (uint64_t)step_stop);
    for (i = 1; i < n_steps && i < MAX_STEPS; i++) repeats += step_rips[i] == step_rips[i - 1];
    check("... none reported twice at one place", repeats, 0);
    check("... the unknown call's E_NOTIMPL", rax, (uint64_t)(uint32_t)E_NOTIMPL);
    check("... TF clear afterwards", (__builtin_ia32_readeflags_u64() >> 8) & 1, 0);
    services->remove_vectored_exception_handler(h);
}

int32_t guest_main(IHostMemoryManager *host, const HOST_SERVICES *services) {
    const IHostMemoryManagerVtbl *v = host->lpVtbl;
    void *h1, *h2, *buf = 0;
    uint64_t xmm_lo = 0, result = 0;
    MEMORY_BASIC_INFORMATION mbi;
    SIZE_T got;
    DWORD old;
    g_services = services;
    h2 = services->add_vectored_exception_handler(0, fixer);
    h1 = services->add_vectored_exception_handler(1, first); /* first != 0: called before fixer */
    check("handlers registered", h1 && h2, 1);

    {
        /* The context names the ud2 itself; the handler's rip + 2 resumes at the mov after it. */
        uint64_t ud2_at, after = 0;
        __asm__ volatile("lea 1f(%%rip), %0\n"
                         "1: ud2\n"
                         "mov $0x55, %1"
                         : "=&r"(ud2_at), "+r"(after));
        check("ud2 reported at its address", seen_rip, ud2_at);
        check("ud2 resumed at the next instruction", after, 0x55);
    }
    check("handlers in order", (uint64_t)(order[0] * 10 + order[1]), 12);
    check("code", seen_code, STATUS_ILLEGAL_INSTRUCTION);

    __asm__ volatile("int3");
    check("breakpoint code", seen_code, STATUS_BREAKPOINT);

    {
        uint64_t q, num = 42, den = 0;
        __asm__ volatile("xor %%edx, %%edx\n div %%rcx" : "=a"(q), "+c"(den) : "a"(num) : "rdx");
        check("divide retried with the edited divisor", q, 42);
        check("divide code", seen_code, STATUS_INTEGER_DIVIDE_BY_ZERO);
    }

    /* An access violation with a value in xmm0 that the handler clobbers. */
    __asm__ volatile("movq %2, %%xmm0\n"
                     "mov (%%rbx), %%rax\n" /* 3 bytes: faults on the unmapped address */
                     "movq %%xmm0, %0\n"
                     : "=&r"(xmm_lo), "=&a"(result)
                     : "r"(0x1122334455667788ull), "b"(0x600000000000ull)
                     : "xmm0", "memory");
    check("access violation resumed with edited rax", result, 77);
    check("xmm0 preserved across the handler", xmm_lo, 0x1122334455667788ull);
    check("access kind read", seen_access, 0);
    check("faulting address", seen_address, 0x600000000000ull);

    /* A guard page under a buffer the host writes: the call fails with the guard status once. */
    v->VirtualAlloc(host, 0, 0x2000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eTaskCritical, &buf);
    check("guard", (uint32_t)v->VirtualProtect(host, buf, 0x1000, PAGE_READWRITE | PAGE_GUARD, &old), S_OK);
    check("host write into a guard page", (uint32_t)v->VirtualQuery(host, buf, buf, 48, &got), STATUS_GUARD_PAGE_VIOLATION);
    check("retry succeeds", (uint32_t)v->VirtualQuery(host, buf, buf, 48, &got), S_OK);
    v->VirtualQuery(host, buf, &mbi, 48, &got);
    check("guard gone", mbi.Protect, PAGE_READWRITE);

    single_step_across_a_syscall(services);

    {
        /* sysenter is not how the host is called: E_NOTIMPL in rax and the guest goes on after it
         * (host-abi §9), whether the CPU raises #UD for it in long mode (AMD, QEMU) or #GP. */
        uint64_t rax = 0, before = n_order;
        __asm__ volatile("mov %%rsp, %%rcx\n sysenter" : "+a"(rax) : : "rcx", "rdx", "memory");
        check("sysenter returns E_NOTIMPL", rax, (uint64_t)(uint32_t)E_NOTIMPL);
        check("... raising nothing", (uint64_t)n_order, before);
    }

    check("remove first", services->remove_vectored_exception_handler(h1), 1);
    check("remove again", services->remove_vectored_exception_handler(h1), 0);
    check("remove fixer", services->remove_vectored_exception_handler(h2), 1);
    return summary();
}
