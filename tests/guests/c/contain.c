/* Containment (issue 12): hostile uses of exception handlers and callbacks, and the CPU state a
 * guest starts with. The argument string picks the case (tests/guests.rs runs each):
 *   fpu-dirty   leaves x87/SSE/AVX registers, MXCSR and FCW dirty, exits 0
 *   fpu-check   checks the clean start state of host-abi §10.1 (captured at the first instruction)
 *   seg-dirty   loads the user data selector into DS/ES/FS/GS, exits 0
 *   seg-check   checks DS/ES/FS/GS are null at the first instruction
 *   float       #MF and #XM codes of §10.1, each caught by a handler that longjmps out
 *   lar         lar/verr with LDT selectors fail with ZF = 0, no fault
 *   gp-guard    a #GP next to a guard page leaves the guard armed
 *   longjmp     a handler that leaves without returning, 10,000 times, grows nothing
 *   nested      a fault inside a handler is dispatched further down the same stack
 *   callbacks   callback methods at non-canonical and kernel addresses fault in ring 3
 *   stack-overflow  the main stack's overflow reaches a handler running on its last pages
 *   fpu-image   a handler scribbling over the saved register image: resumed, image made loadable
 *   fpu-frames  vector registers and MXCSR survive exception delivery at every place of the frame
 *   bad-rip, bad-rip-nc, nest-forever, addref-reregister, callback-nc
 *               end the guest (tests/guests.rs checks the code) */
#include "host_abi.h"
#include "guest_util.h"

static uint8_t start_fx[512] __attribute__((aligned(64)));
static uint8_t start_ymm_hi[16 * 16] __attribute__((aligned(64)));
static uint16_t start_sel[4] __attribute__((used)); /* ds, es, fs, gs at entry */

int32_t c_main(IHostMemoryManager *host, const HOST_SERVICES *services, const char *args);

/* The entry point records the register state before any compiled code runs. */
__asm__(".globl guest_main\n"
        "guest_main:\n"
        "  movw %ds, start_sel+0(%rip)\n"
        "  movw %es, start_sel+2(%rip)\n"
        "  movw %fs, start_sel+4(%rip)\n"
        "  movw %gs, start_sel+6(%rip)\n"
        "  fxsave64 start_fx(%rip)\n"
        "  vextractf128 $1, %ymm0, start_ymm_hi+0(%rip)\n"
        "  vextractf128 $1, %ymm1, start_ymm_hi+16(%rip)\n"
        "  vextractf128 $1, %ymm2, start_ymm_hi+32(%rip)\n"
        "  vextractf128 $1, %ymm3, start_ymm_hi+48(%rip)\n"
        "  vextractf128 $1, %ymm4, start_ymm_hi+64(%rip)\n"
        "  vextractf128 $1, %ymm5, start_ymm_hi+80(%rip)\n"
        "  vextractf128 $1, %ymm6, start_ymm_hi+96(%rip)\n"
        "  vextractf128 $1, %ymm7, start_ymm_hi+112(%rip)\n"
        "  vextractf128 $1, %ymm8, start_ymm_hi+128(%rip)\n"
        "  vextractf128 $1, %ymm9, start_ymm_hi+144(%rip)\n"
        "  vextractf128 $1, %ymm10, start_ymm_hi+160(%rip)\n"
        "  vextractf128 $1, %ymm11, start_ymm_hi+176(%rip)\n"
        "  vextractf128 $1, %ymm12, start_ymm_hi+192(%rip)\n"
        "  vextractf128 $1, %ymm13, start_ymm_hi+208(%rip)\n"
        "  vextractf128 $1, %ymm14, start_ymm_hi+224(%rip)\n"
        "  vextractf128 $1, %ymm15, start_ymm_hi+240(%rip)\n"
        "  jmp c_main\n");

static IHostMemoryManager *g_host;

static int eq(const char *a, const char *b) {
    while (*a && *a == *b) a++, b++;
    return *a == *b;
}

static int all_zero(const uint8_t *p, size_t n) {
    while (n--)
        if (*p++) return 0;
    return 1;
}

static uint16_t u16_at(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t u32_at(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

/* ---- fpu-dirty / fpu-check ---- */

static void fpu_dirty(void) {
    static const uint32_t mxcsr = 0xDFBF; /* flush-to-zero, round up, every flag set */
    static const uint16_t fcw = 0x0C72;   /* round toward zero, some exceptions unmasked */
    __asm__ volatile("vpcmpeqd %%ymm0, %%ymm0, %%ymm0\n vmovdqa %%ymm0, %%ymm1\n vmovdqa %%ymm0, %%ymm2\n"
                     "vmovdqa %%ymm0, %%ymm3\n vmovdqa %%ymm0, %%ymm4\n vmovdqa %%ymm0, %%ymm5\n"
                     "vmovdqa %%ymm0, %%ymm6\n vmovdqa %%ymm0, %%ymm7\n vmovdqa %%ymm0, %%ymm8\n"
                     "vmovdqa %%ymm0, %%ymm9\n vmovdqa %%ymm0, %%ymm10\n vmovdqa %%ymm0, %%ymm11\n"
                     "vmovdqa %%ymm0, %%ymm12\n vmovdqa %%ymm0, %%ymm13\n vmovdqa %%ymm0, %%ymm14\n"
                     "vmovdqa %%ymm0, %%ymm15\n"
                     "fldpi\n fld1\n fldl2e\n"
                     "ldmxcsr %0\n fldcw %1\n"
                     :: "m"(mxcsr), "m"(fcw)
                     : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
                       "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "st", "st(1)", "st(2)");
    g_services->exit(0);
}

static void fpu_check(void) {
    check("FCW 0x037F at start", u16_at(start_fx), 0x037F);
    check("FSW 0 at start", u16_at(start_fx + 2), 0);
    check("x87 stack empty at start (abridged tag word 0)", start_fx[4], 0);
    check("FOP/FIP/FDP zero at start", all_zero(start_fx + 6, 18), 1);
    check("MXCSR 0x1F80 at start", u32_at(start_fx + 24), 0x1F80);
    check("st0..st7 zero at start", all_zero(start_fx + 32, 128), 1);
    check("xmm0..xmm15 zero at start", all_zero(start_fx + 160, 256), 1);
    check("ymm upper halves zero at start", all_zero(start_ymm_hi, sizeof start_ymm_hi), 1);
}

/* ---- seg-dirty / seg-check: data selectors a guest loads do not reach the next guest ---- */

static void seg_dirty(void) {
    /* 0x1B is the user data selector: a ring-3 guest may load it into every data register. */
    __asm__ volatile("mov $0x1B, %%eax\n mov %%eax, %%ds\n mov %%eax, %%es\n mov %%eax, %%fs\n mov %%eax, %%gs"
                     ::: "eax", "memory");
    g_services->exit(0);
}

static void seg_check(void) {
    check("DS null at start", start_sel[0], 0);
    check("ES null at start", start_sel[1], 0);
    check("FS null at start", start_sel[2], 0);
    check("GS null at start", start_sel[3], 0);
}

/* ---- handlers that leave by longjmp ---- */

static void *g_jb[5];
static volatile uint32_t g_code;
static volatile uint64_t g_access, g_address, g_rip, g_record, g_count;

static int32_t record_and_leave(GUEST_EXCEPTION *e) {
    g_code = e->code;
    g_access = e->access;
    g_address = e->address;
    g_rip = e->context->rip;
    g_record = (uint64_t)e;
    g_count++;
    __builtin_longjmp(g_jb, 1);
}

/* Runs f; returns the code a handler caught (0: none). The FPU is reset afterwards. */
static uint32_t __attribute__((noinline)) catch_fault(void (*f)(void)) {
    static const uint32_t mxcsr = 0x1F80;
    g_code = 0;
    if (__builtin_setjmp(g_jb) == 0) f();
    __asm__ volatile("fninit\n ldmxcsr %0" ::"m"(mxcsr));
    return g_code;
}

static void sse_op(uint32_t mxcsr, float a, float b, int op) {
    __asm__ volatile("ldmxcsr %0" ::"m"(mxcsr));
    switch (op) {
    case 0: __asm__ volatile("movss %0, %%xmm0\n divss %1, %%xmm0" ::"m"(a), "m"(b) : "xmm0"); break;
    case 1: __asm__ volatile("movss %0, %%xmm0\n mulss %1, %%xmm0" ::"m"(a), "m"(b) : "xmm0"); break;
    case 2: __asm__ volatile("movss %0, %%xmm0\n addss %1, %%xmm0" ::"m"(a), "m"(b) : "xmm0"); break;
    }
}
static volatile float f_one = 1.0f, f_zero = 0.0f, f_three = 3.0f, f_big = 1e38f, f_tiny = 1e-38f, f_denormal = 1e-45f;
static void xm_div0(void) { sse_op(0x1F80 & ~0x0200, f_one, f_zero, 0); }
static void xm_invalid(void) { sse_op(0x1F80 & ~0x0080, f_zero, f_zero, 0); }
static void xm_overflow(void) { sse_op(0x1F80 & ~0x0400, f_big, f_big, 1); }
static void xm_underflow(void) { sse_op(0x1F80 & ~0x0800, f_tiny, f_tiny, 1); }
static void xm_inexact(void) { sse_op(0x1F80 & ~0x1000, f_one, f_three, 0); }
static void xm_denormal(void) { sse_op(0x1F80 & ~0x0100, f_denormal, f_one, 2); }
static volatile double d_zero = 0.0;
static void x87_op(uint16_t fcw, int invalid) {
    __asm__ volatile("fldcw %0" ::"m"(fcw));
    if (invalid)
        __asm__ volatile("fldz\n fdivl %0\n fwait" ::"m"(d_zero) : "st"); /* 0 / 0 */
    else
        __asm__ volatile("fld1\n fdivl %0\n fwait" ::"m"(d_zero) : "st"); /* 1 / 0 */
}
static void mf_div0(void) { x87_op(0x037F & ~0x4, 0); }
static void mf_invalid(void) { x87_op(0x037F & ~0x1, 1); }

static void float_codes(void) {
    static const struct { const char *name; void (*f)(void); uint32_t code; } cases[] = {
        {"#XM divide by zero", xm_div0, 0xC000008E}, {"#XM invalid", xm_invalid, 0xC0000090},
        {"#XM overflow", xm_overflow, 0xC0000091},   {"#XM underflow", xm_underflow, 0xC0000093},
        {"#XM inexact", xm_inexact, 0xC000008F},     {"#XM denormal", xm_denormal, 0xC000008D},
        {"#MF divide by zero", mf_div0, 0xC000008E}, {"#MF invalid", mf_invalid, 0xC0000090},
    };
    void *h = g_services->add_vectored_exception_handler(1, record_and_leave);
    unsigned i;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint32_t code = catch_fault(cases[i].f);
        if (code == 0 && i < 6) {
            /* QEMU's TCG sets MXCSR flags but never raises #XM; a CPU that does is checked. */
            put("note: ");
            put(cases[i].name);
            put(" not raised by this CPU\n");
            continue;
        }
        check(cases[i].name, code, cases[i].code);
        check("... access 0, address = rip", g_access == 0 && g_address == g_rip && g_rip != 0, 1);
    }
    {
        /* Masked exceptions only set flags. */
        uint32_t m = 0;
        sse_op(0x1F80, f_one, f_zero, 0);
        __asm__ volatile("stmxcsr %0" : "=m"(m));
        check("masked divide by zero sets ZE only", m, 0x1F80 | 0x4);
    }
    g_services->remove_vectored_exception_handler(h);
}

/* ---- lar ---- */

static void lar_ldt(void) {
    uint64_t sels[] = {0x4, 0x7, 0xF, 0xFFFC};
    unsigned i;
    for (i = 0; i < 4; i++) {
        uint32_t r = 0x1234;
        uint8_t zf = 1, zf2 = 1;
        __asm__ volatile("lar %k2, %0\n setz %1" : "+r"(r), "=q"(zf) : "r"(sels[i]) : "cc");
        __asm__ volatile("verr %w1\n setz %0" : "=q"(zf2) : "r"(sels[i]) : "cc");
        check("lar with an LDT selector: ZF = 0, no fault", zf, 0);
        check("... destination unchanged", r, 0x1234);
        check("verr with an LDT selector: ZF = 0", zf2, 0);
    }
}

/* ---- gp-guard ---- */

static void (*g_code_ptr)(void);
static void call_code(void) {
    __asm__ volatile("call *%0" ::"r"(g_code_ptr), "a"(0x8000000000000000ull) : "memory", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11");
}

static void gp_guard(void) {
    const IHostMemoryManagerVtbl *v = g_host->lpVtbl;
    uint8_t *p = 0;
    DWORD old;
    MEMORY_BASIC_INFORMATION mbi;
    SIZE_T got;
    void *h;
    check("alloc code", (uint32_t)v->VirtualAlloc(g_host, 0, 0x2000, MEM_RESERVE | MEM_COMMIT, PAGE_EXECUTE_READWRITE, eTaskCritical, (void **)&p), S_OK);
    /* mov (%rax), %rax in the last 3 bytes before a guard page: #GP on a non-canonical rax. */
    p[0xFFD] = 0x48, p[0xFFE] = 0x8B, p[0xFFF] = 0x00;
    check("arm the guard", (uint32_t)v->VirtualProtect(g_host, p + 0x1000, 0x1000, PAGE_EXECUTE_READWRITE | PAGE_GUARD, &old), S_OK);
    g_code_ptr = (void (*)(void))(p + 0xFFD);
    h = g_services->add_vectored_exception_handler(1, record_and_leave);
    check("#GP next to a guard page: access violation", catch_fault(call_code), STATUS_ACCESS_VIOLATION);
    check("... address all ones", g_address, ~0ull);
    v->VirtualQuery(g_host, p + 0x1000, &mbi, sizeof mbi, &got);
    check("the guard page is still armed", mbi.Protect, PAGE_EXECUTE_READWRITE | PAGE_GUARD);
    g_services->remove_vectored_exception_handler(h);
}

/* ---- longjmp ---- */

static void do_ud2(void) { __asm__ volatile("ud2"); }

static void leave_repeatedly(void) {
    HOST_COMMIT_INFO before, after;
    uint64_t first_record, i, same = 1;
    void *h = g_services->add_vectored_exception_handler(1, record_and_leave);
    g_count = 0;
    catch_fault(do_ud2);
    first_record = g_record;
    g_services->query_commit(&before);
    for (i = 0; i < 10000; i++) {
        catch_fault(do_ud2);
        same &= g_record == first_record;
    }
    g_services->query_commit(&after);
    check("10,001 exceptions delivered, the handler left each by longjmp", g_count, 10001);
    check("every frame at the same place (nothing grows)", same, 1);
    check("commit unchanged", after.committed, before.committed);
    g_services->remove_vectored_exception_handler(h);
}

/* ---- nested ---- */

static volatile uint32_t g_seen[4];
static volatile uint64_t g_records[4];
static volatile int g_depth, g_max_depth, g_n_seen;

static int32_t nesting_handler(GUEST_EXCEPTION *e) {
    int32_t r = EXCEPTION_CONTINUE_EXECUTION;
    g_depth++;
    if (g_depth > g_max_depth) g_max_depth = g_depth;
    if (g_n_seen < 4) g_records[g_n_seen] = (uint64_t)e, g_seen[g_n_seen++] = e->code;
    switch (e->code) {
    case STATUS_ILLEGAL_INSTRUCTION:
        __asm__ volatile("int3"); /* a fault inside the handler */
        e->context->rip += 2;
        break;
    case STATUS_BREAKPOINT: e->context->rip += 1; break;
    default: r = EXCEPTION_CONTINUE_SEARCH;
    }
    g_depth--;
    return r;
}

static void nested(void) {
    void *h = g_services->add_vectored_exception_handler(1, nesting_handler);
    __asm__ volatile("ud2");
    check("resumed after the nested exceptions", 1, 1);
    check("two exceptions seen", (uint64_t)g_n_seen, 2);
    check("the outer one first", g_seen[0], STATUS_ILLEGAL_INSTRUCTION);
    check("then the one raised inside the handler", g_seen[1], STATUS_BREAKPOINT);
    check("nesting depth 2", (uint64_t)g_max_depth, 2);
    check("the nested frame lies further down the stack", g_records[1] < g_records[0], 1);
    g_services->remove_vectored_exception_handler(h);
}

/* ---- a handler that scribbles over the saved register image ---- */

static int32_t scribble_image(GUEST_EXCEPTION *e) {
    /* The image lies right above the context (kernel/src/guest/exceptions.rs); every header field
     * the CPU would fault on is garbage, and xmm0 gets a value the resumed code must see. */
    uint8_t *image = (uint8_t *)e->context + sizeof(GUEST_CONTEXT);
    int i;
    for (i = 0; i < 4; i++) image[24 + i] = 0xFF;        /* MXCSR: reserved bits set */
    for (i = 0; i < 16; i++) image[160 + i] = (uint8_t)(0xA0 + i); /* xmm0 */
    for (i = 512; i < 576; i++) image[i] = 0xFF;          /* XSTATE_BV, XCOMP_BV, reserved */
    e->context->rip += 2;
    return EXCEPTION_CONTINUE_EXECUTION;
}

/* Which fields scribble_some() spoils: each one alone makes the CPU refuse the image as it
 * stands (a #GP of XRSTOR/FXRSTOR), with a header the kernel wrote otherwise. */
enum { SPOIL_MXCSR, SPOIL_XSTATE_BV, SPOIL_HEADER16 };
static int g_spoil;
static int32_t scribble_some(GUEST_EXCEPTION *e) {
    uint8_t *image = (uint8_t *)e->context + sizeof(GUEST_CONTEXT);
    int i;
    for (i = 0; i < 16; i++) image[160 + i] = (uint8_t)(0xB0 + i); /* xmm0 */
    image[512] |= 0x02;                                             /* XSTATE_BV: SSE from the image */
    if (g_spoil == SPOIL_MXCSR) image[27] = 0xFF;                   /* MXCSR bits 24..31 */
    if (g_spoil == SPOIL_XSTATE_BV) image[512 + 7] |= 0x40;          /* XSTATE_BV bit 62 */
    if (g_spoil == SPOIL_HEADER16) image[528] = 1;                   /* bytes 23:8 of the header */
    e->context->rip += 2;
    return EXCEPTION_CONTINUE_EXECUTION;
}

static void fpu_image(void) {
    static uint8_t fx[512] __attribute__((aligned(16)));
    static const uint32_t clean = 0x1F80;
    static const char *const loaded[] = {"xmm0 loaded from an image with MXCSR reserved bits",
                                         "xmm0 loaded from an image with XSTATE_BV beyond XCR0",
                                         "xmm0 loaded from an image with XSAVE header bytes 8..15 set"};
    static const char *const masked[] = {"MXCSR masked after an image with MXCSR reserved bits",
                                         "MXCSR loaded after an image with XSTATE_BV beyond XCR0",
                                         "MXCSR loaded after an image with XSAVE header bytes 8..15 set"};
    uint8_t xmm0[16];
    uint32_t mxcsr = 0, mask;
    int i, k, same = 1;
    void *h = g_services->add_vectored_exception_handler(1, scribble_image);
    __asm__ volatile("ud2\n movdqu %%xmm0, %0\n stmxcsr %1" : "=m"(xmm0), "=m"(mxcsr) :: "xmm0", "memory");
    __asm__ volatile("fxsave64 %0" : "=m"(fx));
    mask = u32_at(fx + 28) ? u32_at(fx + 28) : 0xFFBF;
    check("resumed after a scribbled register image (no kernel fault)", 1, 1);
    check("MXCSR masked with MXCSR_MASK on resume", mxcsr, 0xFFFFFFFFu & mask);
    for (i = 0; i < 16; i++) same &= xmm0[i] == (uint8_t)(0xA0 + i);
    check("xmm0 loaded from the image", same, 1);
    __asm__ volatile("ldmxcsr %0" ::"m"(clean));
    g_services->remove_vectored_exception_handler(h);
    /* One field at a time: the image is made loadable all the same, and the rest of it loads. */
    h = g_services->add_vectored_exception_handler(1, scribble_some);
    for (k = SPOIL_MXCSR; k <= SPOIL_HEADER16; k++) {
        g_spoil = k;
        mxcsr = 0;
        __asm__ volatile("ud2\n movdqu %%xmm0, %0\n stmxcsr %1" : "=m"(xmm0), "=m"(mxcsr) :: "xmm0", "memory");
        for (same = 1, i = 0; i < 16; i++) same &= xmm0[i] == (uint8_t)(0xB0 + i);
        check(loaded[k], same, 1);
        check(masked[k], mxcsr, k == SPOIL_MXCSR ? (0xFF001F80u & mask) : 0x1F80u);
        __asm__ volatile("ldmxcsr %0" ::"m"(clean));
    }
    g_services->remove_vectored_exception_handler(h);
}

/* ---- every register preserved across exception delivery, wherever the frame lands ---- */

static int32_t clobber_and_skip(GUEST_EXCEPTION *e) {
    static const uint32_t odd = 0x7F80; /* every exception masked, round toward zero */
    __asm__ volatile("vpcmpeqd %%ymm0, %%ymm0, %%ymm0\n vmovdqa %%ymm0, %%ymm7\n vmovdqa %%ymm0, %%ymm15\n"
                     "ldmxcsr %0\n fld1\n fstp %%st(0)"
                     :: "m"(odd) : "xmm0", "xmm7", "xmm15");
    e->context->rip += 2;
    return EXCEPTION_CONTINUE_EXECUTION;
}

/* ud2 with ymm0/ymm7/ymm15 and MXCSR holding values made from `seed`, `depth` bytes further down
 * the stack; 1 if all of them read back the same after a handler that clobbered them. */
static int __attribute__((noinline)) registers_survive(uint32_t seed, unsigned depth) {
    uint8_t in[3][32] __attribute__((aligned(32))), out[3][32] __attribute__((aligned(32)));
    uint32_t mx_in = 0x1F80 | (seed & 0x6000), mx_out = 0; /* the rounding mode varies */
    volatile uint8_t *pad = __builtin_alloca(depth + 16);
    int r, i, same;
    pad[0] = 1;
    for (r = 0; r < 3; r++)
        for (i = 0; i < 32; i++) in[r][i] = (uint8_t)(seed * 7 + r * 32 + i);
    __asm__ volatile("vmovdqa %4, %%ymm0\n vmovdqa %5, %%ymm7\n vmovdqa %6, %%ymm15\n ldmxcsr %7\n"
                     "ud2\n"
                     "vmovdqa %%ymm0, %0\n vmovdqa %%ymm7, %1\n vmovdqa %%ymm15, %2\n stmxcsr %3\n vzeroupper"
                     : "=m"(out[0]), "=m"(out[1]), "=m"(out[2]), "=m"(mx_out)
                     : "m"(in[0]), "m"(in[1]), "m"(in[2]), "m"(mx_in)
                     : "xmm0", "xmm7", "xmm15", "memory");
    same = mx_out == mx_in;
    for (r = 0; r < 3; r++)
        for (i = 0; i < 32; i++) same &= out[r][i] == in[r][i];
    {
        static const uint32_t clean = 0x1F80;
        __asm__ volatile("ldmxcsr %0" ::"m"(clean));
    }
    return same;
}

static void fpu_frames(void) {
    unsigned depth, failed = 0;
    void *h = g_services->add_vectored_exception_handler(1, clobber_and_skip);
    /* 64-byte steps over two pages: the register image lands at every place in a page, within
     * one page and across a page boundary. */
    for (depth = 0; depth < 8192; depth += 64)
        if (!registers_survive(depth / 64 + 1, depth)) failed++;
    check("ymm0/ymm7/ymm15 and MXCSR survive a clobbering handler at 128 stack depths (failures)", failed, 0);
    g_services->remove_vectored_exception_handler(h);
}

/* ---- stack overflow on the main stack (host-abi §10.3) ---- */

static int depth_rec(int n) {
    volatile char pad[512];
    pad[0] = (char)n;
    return depth_rec(n + 1) + pad[0];
}
static void recurse(void) { depth_rec(0); }

static void stack_overflow(void) {
    MEMORY_BASIC_INFORMATION mbi;
    SIZE_T got;
    uint64_t base;
    void *h = g_services->add_vectored_exception_handler(1, record_and_leave);
    check("unbounded recursion raises 0xC00000FD to the handler", catch_fault(recurse), STATUS_STACK_OVERFLOW);
    g_host->lpVtbl->VirtualQuery(g_host, (void *)g_record, &mbi, sizeof mbi, &got);
    base = (uint64_t)mbi.AllocationBase;
    check("the handler ran on the last pages of the stack reservation", g_record >= base + 0x1000 && g_record < base + 0x4000, 1);
    g_services->remove_vectored_exception_handler(h);
}

/* ---- guests that end ---- */

static volatile uint64_t g_bad_rip;
static int32_t resume_outside(GUEST_EXCEPTION *e) {
    g_count++;
    e->context->rip = g_bad_rip;
    return EXCEPTION_CONTINUE_EXECUTION;
}

static int32_t fault_again(GUEST_EXCEPTION *e) {
    (void)e;
    __asm__ volatile("ud2");
    return EXCEPTION_CONTINUE_SEARCH;
}

static ULONG cb_addref_reregister(ICLRMemoryNotificationCallback *t) {
    g_count++;
    g_host->lpVtbl->RegisterMemoryNotificationCallback(g_host, t);
    return 1;
}
static ULONG cb_plain(ICLRMemoryNotificationCallback *t) { (void)t; return 1; }
static HRESULT cb_qi(ICLRMemoryNotificationCallback *t, REFIID r, void **p) { (void)t, (void)r, *p = 0; return E_NOINTERFACE; }
static HRESULT cb_notify(ICLRMemoryNotificationCallback *t, EMemoryAvailable b) { (void)t, (void)b; return S_OK; }

static ICLRMemoryNotificationCallbackVtbl g_bad_vtbl;
static ICLRMemoryNotificationCallback g_bad_cb = {&g_bad_vtbl};
static ICLRMemoryNotificationCallback *g_cb_arg;
static void register_cb(void) { g_host->lpVtbl->RegisterMemoryNotificationCallback(g_host, g_cb_arg); }

static void callbacks_at_bad_addresses(void) {
    static const ICLRMemoryNotificationCallbackVtbl good = {cb_qi, cb_plain, cb_plain, cb_notify};
    static ICLRMemoryNotificationCallback good_cb = {&good};
    const uint64_t bad[2] = {0x8000000000000000ull, 0xFFFF800000000000ull};
    void *h = g_services->add_vectored_exception_handler(1, record_and_leave);
    int i;
    for (i = 0; i < 2; i++) {
        g_bad_vtbl = good;
        g_bad_vtbl.AddRef = (ULONG(*)(ICLRMemoryNotificationCallback *))bad[i];
        g_cb_arg = &g_bad_cb;
        check("AddRef at a bad address faults in ring 3", catch_fault(register_cb), STATUS_ACCESS_VIOLATION);
        g_bad_vtbl.Release = (ULONG(*)(ICLRMemoryNotificationCallback *))bad[i];
        g_cb_arg = &good_cb;
        check("Release at a bad address faults in ring 3", catch_fault(register_cb), STATUS_ACCESS_VIOLATION);
        g_cb_arg = 0;
        check("unregister", catch_fault(register_cb), 0);
    }
    check("... an execute access at the kernel address", g_access == 8 && g_address == bad[1], 1);
    g_services->remove_vectored_exception_handler(h);
}

int32_t c_main(IHostMemoryManager *host, const HOST_SERVICES *services, const char *args) {
    g_services = services;
    g_host = host;
    put("contain: ");
    put(args);
    put("\n");
    if (eq(args, "fpu-dirty")) {
        fpu_dirty();
    } else if (eq(args, "fpu-check")) {
        fpu_check();
    } else if (eq(args, "seg-dirty")) {
        seg_dirty();
    } else if (eq(args, "seg-check")) {
        seg_check();
    } else if (eq(args, "float")) {
        float_codes();
    } else if (eq(args, "lar")) {
        lar_ldt();
    } else if (eq(args, "gp-guard")) {
        gp_guard();
    } else if (eq(args, "longjmp")) {
        leave_repeatedly();
    } else if (eq(args, "nested")) {
        nested();
    } else if (eq(args, "fpu-image")) {
        fpu_image();
    } else if (eq(args, "fpu-frames")) {
        fpu_frames();
    } else if (eq(args, "stack-overflow")) {
        stack_overflow();
    } else if (eq(args, "callbacks")) {
        callbacks_at_bad_addresses();
    } else if (eq(args, "bad-rip") || eq(args, "bad-rip-nc")) {
        g_bad_rip = eq(args, "bad-rip") ? 0xFFFF800000001000ull : 0x8000000000000000ull;
        g_services->add_vectored_exception_handler(1, resume_outside);
        __asm__ volatile("ud2");
        put("contain: still alive?\n");
    } else if (eq(args, "nest-forever")) {
        g_services->add_vectored_exception_handler(1, fault_again);
        __asm__ volatile("ud2");
        put("contain: still alive?\n");
    } else if (eq(args, "addref-reregister")) {
        static const ICLRMemoryNotificationCallbackVtbl vtbl = {cb_qi, cb_addref_reregister, cb_plain, cb_notify};
        static ICLRMemoryNotificationCallback cb = {&vtbl};
        host->lpVtbl->RegisterMemoryNotificationCallback(host, &cb);
        put("contain: still alive?\n");
    } else if (eq(args, "callback-nc")) {
        g_bad_vtbl.AddRef = (ULONG(*)(ICLRMemoryNotificationCallback *))0x8000000000000000ull;
        host->lpVtbl->RegisterMemoryNotificationCallback(host, &g_bad_cb);
        put("contain: still alive?\n");
    } else {
        put("contain: unknown case\n");
        return 1;
    }
    return summary();
}
