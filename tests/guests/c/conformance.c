/* Conformance guest: checks the kernel against shared/spec/host-abi.md ("hN") and
 * shared/spec/win32-semantics.md ("sN"), written from those two files and host_abi.h only.
 *
 * Output: a line "== AREA" before each group of checks, then one line per check ("ok NAME" or
 * "FAILED NAME (got X, expected Y)"), and finally "N passed, M failed". Lines starting with "#"
 * are information only. Exit code 0 only if every check passed. Each group runs in its own
 * function and cleans up after itself, so a failure in one group does not stop the others.
 *
 * Where the spec allows two answers the check accepts both and prints "(saw X)". */
#include "host_abi.h"
#include "guest_util.h"

#define E87 0x80070057u  /* HRESULT_FROM_WIN32(ERROR_INVALID_PARAMETER) = E_INVALIDARG */
#define E487 0x800701E7u /* HRESULT_FROM_WIN32(ERROR_INVALID_ADDRESS) */
#define E998 0x800703E6u /* HRESULT_FROM_WIN32(ERROR_NOACCESS) */
#define E24 0x80070018u  /* HRESULT_FROM_WIN32(ERROR_BAD_LENGTH) */
#define E5 0x80070005u   /* HRESULT_FROM_WIN32(ERROR_ACCESS_DENIED) */
#define EOOM 0x8007000Eu
#define EPTR 0x80004003u
#define ENOI 0x80004002u
#define GUARDV 0x80000001u

#define KERNEL_ADDR ((void *)0xffff800000000000ull)
#define NONCANON ((void *)0x800000000000ull)
#define PAGE 0x1000ull
#define GRAN 0x10000ull
#define MIB (1ull << 20)

static IHostMemoryManager *H;
static const IHostMemoryManagerVtbl *V;
static const HOST_SERVICES *S;
static const char rodata_page[64] = "conformance guest read-only data";
static uint64_t g_start_committed;
/* Mode marker: tests/conformance.rs patches "ALL" to "DF_" in a copy of the file. */
static const volatile char g_mode[] = "CONFORMANCE-MODE:ALL";
static uint64_t g_main_sp;

/* ---------- output helpers ---------- */
static char g_nb[200];
static void nb_add(int *i, const char *s) {
    while (*s && *i < (int)sizeof g_nb - 1) g_nb[(*i)++] = *s++;
}
static void nb_hex(int *i, uint64_t v) {
    char t[19];
    int n = 0, k;
    t[n++] = '0';
    t[n++] = 'x';
    for (k = 60; k > 0 && ((v >> k) & 15) == 0; k -= 4) {}
    for (; k >= 0; k -= 4) t[n++] = "0123456789abcdef"[(v >> k) & 15];
    t[n] = 0;
    nb_add(i, t);
}
/* a + hex(v) + b, in a static buffer (check() prints it at once). */
static const char *nm(const char *a, uint64_t v, const char *b) {
    int i = 0;
    nb_add(&i, a);
    nb_hex(&i, v);
    nb_add(&i, b);
    g_nb[i] = 0;
    return g_nb;
}
/* a + s + b */
static const char *nms(const char *a, const char *x, const char *b) {
    int i = 0;
    nb_add(&i, a);
    nb_add(&i, x);
    nb_add(&i, b);
    g_nb[i] = 0;
    return g_nb;
}
static void area(const char *a) {
    put("== ");
    put(a);
    put("\n");
}
static void info(const char *what, uint64_t v) {
    put("# ");
    put(what);
    put(" ");
    put_hex(v);
    put("\n");
}
/* Accepts either documented answer and says which one was seen. */
static void check2(const char *name, uint64_t got, uint64_t a, uint64_t b) {
    if (got == a || got == b) {
        g_passed++;
        put("ok ");
        put(name);
        put(" (saw ");
        put_hex(got);
        put(")\n");
    } else {
        g_failed++;
        put("FAILED ");
        put(name);
        put(" (got ");
        put_hex(got);
        put(", expected ");
        put_hex(a);
        put(" or ");
        put_hex(b);
        put(")\n");
    }
}
static void skip(const char *name, const char *why) {
    g_failed++;
    put("FAILED ");
    put(name);
    put(" (skipped: ");
    put(why);
    put(")\n");
}

/* ---------- host call wrappers ---------- */
static uint32_t val(void *a, SIZE_T n, DWORD t, DWORD p, int lvl, void **out) {
    return (uint32_t)V->VirtualAlloc(H, a, n, t, p, (EMemoryCriticalLevel)lvl, out);
}
static uint32_t va(void *a, SIZE_T n, DWORD t, DWORD p, void **out) { return val(a, n, t, p, eTaskCritical, out); }
static uint32_t vf(void *a, SIZE_T n, DWORD t) { return (uint32_t)V->VirtualFree(H, a, n, t); }
static uint32_t vp(void *a, SIZE_T n, DWORD p, DWORD *old) { return (uint32_t)V->VirtualProtect(H, a, n, p, old); }
static uint32_t vq(void *a, MEMORY_BASIC_INFORMATION *m) {
    SIZE_T r = 0;
    memset(m, 0xCC, sizeof *m);
    return (uint32_t)V->VirtualQuery(H, a, m, sizeof *m, &r);
}
static void *reserve(SIZE_T n, DWORD t, DWORD p) {
    void *r = 0;
    if (va(0, n, t, p, &r) != 0) return 0;
    return r;
}
static void release(void *p) {
    if (p) vf(p, 0, MEM_RELEASE);
}
static uint64_t committed_now(void) {
    HOST_COMMIT_INFO ci;
    memset(&ci, 0, sizeof ci);
    S->query_commit(&ci);
    return ci.committed;
}
static int guid_eq(const GUID *a, const GUID *b) { return memcmp(a, b, sizeof *a) == 0; }

/* ---------- fault probes through a vectored handler ---------- */
static uint64_t g_resume;
static volatile int g_probing;
static volatile uint64_t g_av_count, g_av_access, g_av_addr, g_av_code;
static volatile uint64_t g_guard_count, g_guard_access, g_guard_addr;
static volatile int g_nested;
static volatile uint64_t g_nested_size, g_nested_delta;
static void *g_nested_mem;
static volatile int *g_nested_calls;
static volatile uint64_t g_h_rflags, g_h_sp, g_h_frame, g_ctx_rsp, g_ctx_rflags;

/* safe_call6(fn, a1..a6): calls fn(a1..a6); if an access violation happens before it returns,
 * the handler resumes at safe_recover, which returns SAFE_CRASHED from safe_call6 with the
 * callee-saved registers and rsp of the call restored. Used for host code that runs in ring 3
 * (IHostMalloc) given hostile pointers, so that a fault there fails one check, not the guest. */
#define SAFE_CRASHED 0xDEADDEADu
__attribute__((visibility("hidden"))) uint64_t g_jb[8];
__attribute__((visibility("hidden"))) volatile uint64_t g_safe;
uint64_t safe_call6(void *fn, uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6);
void safe_recover(void);
__asm__(".text\n"
        ".globl safe_call6\n.hidden safe_call6\n.type safe_call6,@function\n"
        "safe_call6:\n"
        "  lea g_jb(%rip), %rax\n"
        "  mov %rbx, 0(%rax)\n  mov %rbp, 8(%rax)\n  mov %r12, 16(%rax)\n"
        "  mov %r13, 24(%rax)\n  mov %r14, 32(%rax)\n  mov %r15, 40(%rax)\n"
        "  mov %rsp, 48(%rax)\n"
        "  movq $1, g_safe(%rip)\n"
        "  mov %rdi, %r11\n  mov %rsi, %rdi\n  mov %rdx, %rsi\n  mov %rcx, %rdx\n"
        "  mov %r8, %rcx\n  mov %r9, %r8\n  mov 8(%rsp), %r9\n"
        "  sub $8, %rsp\n"
        "  call *%r11\n"
        "  add $8, %rsp\n"
        "  movq $0, g_safe(%rip)\n"
        "  ret\n"
        ".globl safe_recover\n.hidden safe_recover\n.type safe_recover,@function\n"
        "safe_recover:\n"
        "  lea g_jb(%rip), %rcx\n"
        "  mov 0(%rcx), %rbx\n  mov 8(%rcx), %rbp\n  mov 16(%rcx), %r12\n"
        "  mov 24(%rcx), %r13\n  mov 32(%rcx), %r14\n  mov 40(%rcx), %r15\n"
        "  mov 48(%rcx), %rsp\n"
        "  movq $0, g_safe(%rip)\n"
        "  mov $0xDEADDEAD, %eax\n"
        "  ret\n");
#define SAFE(fn, a1, a2, a3, a4, a5, a6) \
    ((uint32_t)safe_call6((void *)(fn), (uint64_t)(a1), (uint64_t)(a2), (uint64_t)(a3), (uint64_t)(a4), (uint64_t)(a5), (uint64_t)(a6)))

static int32_t handler(GUEST_EXCEPTION *e) {
    if (g_safe && e->code == STATUS_ACCESS_VIOLATION) {
        g_av_count++;
        g_av_access = e->access;
        g_av_addr = e->address;
        e->context->rip = (uint64_t)safe_recover;
        return EXCEPTION_CONTINUE_EXECUTION;
    }
    if (e->code == STATUS_GUARD_PAGE_VIOLATION) {
        g_guard_count++;
        g_guard_access = e->access;
        g_guard_addr = e->address;
        return EXCEPTION_CONTINUE_EXECUTION; /* the retry succeeds (or faults on the base protection) */
    }
    if (g_probing && e->code == STATUS_ACCESS_VIOLATION && g_nested) {
        int before = *g_nested_calls;
        g_nested = 0;
        val(0, g_nested_size, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eProcessCritical, &g_nested_mem);
        g_nested_delta = (uint64_t)(*g_nested_calls - before);
    }
    if (g_probing && e->code == STATUS_ACCESS_VIOLATION) {
        uint64_t fl;
        __asm__ volatile("pushfq\n\tpop %0" : "=r"(fl));
        g_h_rflags = fl;
        g_h_sp = (uint64_t)&fl;
        g_h_frame = (uint64_t)__builtin_frame_address(0);
        g_ctx_rsp = e->context->rsp;
        g_ctx_rflags = e->context->rflags;
        g_av_count++;
        g_av_code = e->code;
        g_av_access = e->access;
        g_av_addr = e->address;
        if (e->access == 8 && e->context->rip == e->address) {
            /* a call into a non-executable page: return to the caller */
            e->context->rip = *(uint64_t *)e->context->rsp;
            e->context->rsp += 8;
        } else {
            e->context->rip = g_resume;
        }
        return EXCEPTION_CONTINUE_EXECUTION;
    }
    return EXCEPTION_CONTINUE_SEARCH;
}
static void probe_reset(void) {
    g_av_count = g_guard_count = 0;
    g_av_access = g_av_addr = g_guard_access = g_guard_addr = ~0ull;
    g_probing = 1;
}
static __attribute__((noinline)) uint8_t rd8(const void *p) {
    uint8_t v = 0;
    probe_reset();
    __asm__ volatile("lea 1f(%%rip), %%rax\n\t"
                     "mov %%rax, %[res]\n\t"
                     "movb (%[p]), %[v]\n"
                     "1:\n"
                     : [v] "+q"(v), [res] "=m"(g_resume)
                     : [p] "r"(p)
                     : "rax", "memory");
    g_probing = 0;
    return v;
}
static __attribute__((noinline)) void wr8(void *p, uint8_t v) {
    probe_reset();
    __asm__ volatile("lea 1f(%%rip), %%rax\n\t"
                     "mov %%rax, %[res]\n\t"
                     "movb %[v], (%[p])\n"
                     "1:\n"
                     : [res] "=m"(g_resume)
                     : [p] "r"(p), [v] "q"(v)
                     : "rax", "memory");
    g_probing = 0;
}
/* 8-byte write (may straddle two pages). */
static __attribute__((noinline)) void wr64(void *p, uint64_t v) {
    probe_reset();
    __asm__ volatile("lea 1f(%%rip), %%rax\n\t"
                     "mov %%rax, %[res]\n\t"
                     "movq %[v], (%[p])\n"
                     "1:\n"
                     : [res] "=m"(g_resume)
                     : [p] "r"(p), [v] "r"(v)
                     : "rax", "memory");
    g_probing = 0;
}
/* Calls code at p (expected to be "mov $42, %eax; ret"); returns its eax or 0 after a fault. */
static __attribute__((noinline)) uint64_t exec_at(void *p) {
    uint64_t r;
    probe_reset();
    r = (uint64_t)((int (*)(void))p)();
    g_probing = 0;
    return g_av_count ? 0 : (uint32_t)r;
}
static const uint8_t ret42[] = {0xB8, 0x2A, 0x00, 0x00, 0x00, 0xC3}; /* mov $42,%eax; ret */

static int all_zero(const void *p, uint64_t n) {
    const volatile uint64_t *q = (const volatile uint64_t *)p;
    uint64_t i;
    for (i = 0; i < n / 8; i++)
        if (q[i]) return 0;
    return 1;
}

/* ================= HOST_SERVICES (host-abi §7) ================= */
static int32_t dummy_handler(GUEST_EXCEPTION *e) {
    (void)e;
    return EXCEPTION_CONTINUE_SEARCH;
}
static void t_services(void) {
    HOST_COMMIT_INFO ci;
    uint64_t t1, t2;
    void *h;
    area("services");
    check("h7 cbSize >= sizeof(HOST_SERVICES v1) = 96", S->cbSize >= 96, 1);
    check("h7 version >= 1 (2: the thread services of §10.2)", S->version >= 1, 1);
    check("h7 page_size 4096", S->page_size, 4096);
    check("h7 allocation_granularity 65536", S->allocation_granularity, 65536);
    check("h7 min_application_address 0x10000", S->min_application_address, 0x10000);
    check("h9 max_application_address <= 0x7FFFFFFEFFFF", S->max_application_address <= 0x7FFFFFFEFFFFull, 1);
    check("h7 max_application_address is the last byte of a page", S->max_application_address & 0xFFF, 0xFFF);
    t1 = S->ticks_ns();
    t2 = S->ticks_ns();
    check("h7 ticks_ns monotonic", t2 >= t1 && t1 > 0, 1);
    memset(&ci, 0xCC, sizeof ci);
    S->query_commit(&ci);
    check("h9 query_commit committed > 0 (image and stack are charged)", ci.committed > 0 && ci.committed < ci.commit_limit, 1);
    check("h7 committed is a page multiple", ci.committed & 0xFFF, 0);
    check("h7 critical_reserve < commit_limit", ci.critical_reserve < ci.commit_limit, 1);
    check("h7 low_threshold <= high_threshold <= commit_limit", ci.low_threshold <= ci.high_threshold && ci.high_threshold <= ci.commit_limit, 1);
    info("commit_limit", ci.commit_limit);
    info("committed", ci.committed);
    info("critical_reserve", ci.critical_reserve);
    info("low_threshold", ci.low_threshold);
    info("high_threshold", ci.high_threshold);
    S->query_commit((HOST_COMMIT_INFO *)S); /* unwritable: does nothing */
    check("h9 query_commit to an unwritable out does nothing", S->version, 2);
    h = S->add_vectored_exception_handler(0, dummy_handler);
    check("h7 add_vectored_exception_handler returns a handle", h != 0, 1);
    check("h7 remove_vectored_exception_handler known -> 1", S->remove_vectored_exception_handler(h), 1);
    check("h7 remove_vectored_exception_handler again -> 0", S->remove_vectored_exception_handler(h), 0);
    check("h9 add_vectored_exception_handler(non-code) -> NULL",
          (uint64_t)S->add_vectored_exception_handler(0, (GUEST_EXCEPTION_HANDLER)(void *)rodata_page), 0);
}

/* ================= COM identity (host-abi §3, §4, §9) ================= */
static void t_com(void) {
    void *p;
    static const GUID other = {0x12345678, 0x1234, 0x5678, {1, 2, 3, 4, 5, 6, 7, 8}};
    area("com");
    check("h9 AddRef returns the new count 2 (starts at 1)", V->AddRef(H), 2);
    check("h9 AddRef -> 3", V->AddRef(H), 3);
    check("h9 Release -> 2", V->Release(H), 2);
    check("h9 Release -> 1", V->Release(H), 1);
    p = 0;
    check("h3 QueryInterface(IUnknown) S_OK", (uint32_t)V->QueryInterface(H, &IID_IUnknown, &p), S_OK);
    check("h3 QueryInterface(IUnknown) *ppv = the manager", (uint64_t)p, (uint64_t)H);
    check("h3 QueryInterface AddRefs (COM): Release -> 1", V->Release(H), 1);
    p = 0;
    check("h3 QueryInterface(IHostMemoryManager) S_OK", (uint32_t)V->QueryInterface(H, &IID_IHostMemoryManager, &p), S_OK);
    check("h3 QueryInterface(IHostMemoryManager) *ppv = the manager", (uint64_t)p, (uint64_t)H);
    check("h3 ... Release -> 1", V->Release(H), 1);
    p = (void *)1;
    check("h4 QueryInterface(IHostMalloc) -> E_NOINTERFACE", (uint32_t)V->QueryInterface(H, &IID_IHostMalloc, &p), ENOI);
    check("h4 E_NOINTERFACE sets *ppv NULL", (uint64_t)p, 0);
    p = (void *)1;
    check("h4 QueryInterface(ICLRMemoryNotificationCallback) -> E_NOINTERFACE",
          (uint32_t)V->QueryInterface(H, &IID_ICLRMemoryNotificationCallback, &p), ENOI);
    p = (void *)1;
    check("h4 QueryInterface(unknown IID) -> E_NOINTERFACE", (uint32_t)V->QueryInterface(H, &other, &p), ENOI);
    check("h4 ... *ppv NULL", (uint64_t)p, 0);
    p = (void *)1;
    check("h9 QueryInterface riid NULL -> E_POINTER", (uint32_t)V->QueryInterface(H, 0, &p), EPTR);
    check("h9 ... *ppv NULL", (uint64_t)p, 0);
    check("h4 QueryInterface ppv NULL -> E_POINTER", (uint32_t)V->QueryInterface(H, &IID_IUnknown, 0), EPTR);
    p = (void *)1;
    check("h9 QueryInterface riid unreadable -> 998", (uint32_t)V->QueryInterface(H, (REFIID)KERNEL_ADDR, &p), E998);
    check("h4 QueryInterface ppv read-only -> 998", (uint32_t)V->QueryInterface(H, &IID_IUnknown, (void **)rodata_page), E998);
    check("h9 bad this -> 998", (uint32_t)V->VirtualFree((IHostMemoryManager *)KERNEL_ADDR, 0, 0, MEM_RELEASE), E998);
    check("h9 count unchanged by failed QueryInterface: AddRef -> 2", V->AddRef(H), 2);
    V->Release(H);
    check("h9 Release of the last reference returns 0", V->Release(H), 0);
    check("h9 ... the manager is not destroyed: AddRef -> 1", V->AddRef(H), 1);
    {
        MEMORY_BASIC_INFORMATION mbi;
        check("h9 ... and still works", vq((void *)rodata_page, &mbi), 0);
    }
}

/* ================= protection values (win32 §2) ================= */
static int base_valid(uint32_t p) { return p == 1 || p == 2 || p == 4 || p == 0x10 || p == 0x20 || p == 0x40; }
static const uint32_t prot_list[] = {0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C,
                                     0x0D, 0x0E, 0x0F, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xA0,
                                     0xB0, 0xC0, 0xD0, 0xE0, 0xF0, 0x11, 0x12, 0x21, 0x24, 0x42, 0x44, 0xFF};
static const struct { uint32_t prot; int valid; const char *what; } mod_list[] = {
    {0x101, 0, "NOACCESS|GUARD"},      {0x104, 1, "READWRITE|GUARD"},      {0x120, 1, "EXECUTE_READ|GUARD"},
    {0x204, 1, "READWRITE|NOCACHE"},   {0x402, 1, "READONLY|WRITECOMBINE"}, {0x404, 1, "READWRITE|WRITECOMBINE"},
    {0x401, 0, "NOACCESS|WRITECOMBINE"}, {0x201, 0, "NOACCESS|NOCACHE"},   {0x304, 0, "RW|GUARD|NOCACHE"},
    {0x504, 0, "RW|GUARD|WRITECOMBINE"}, {0x604, 0, "RW|NOCACHE|WRITECOMBINE"}, {0x100, 0, "GUARD alone"},
    {0x200, 0, "NOCACHE alone"},       {0x400, 0, "WRITECOMBINE alone"},   {0x804, 0, "RW|0x800"},
    {0xFFFFFFFF, 0, "0xFFFFFFFF"},     {0x108, 0, "WRITECOPY|GUARD"},      {0x80000004, 0, "RW|0x80000000"},
};
static void t_protection(void) {
    unsigned i, bad;
    void *m, *r;
    DWORD old;
    MEMORY_BASIC_INFORMATION mbi;
    area("protection");
    /* VirtualAlloc RESERVE|COMMIT with each protection byte. */
    for (i = 0; i < sizeof prot_list / sizeof prot_list[0]; i++) {
        uint32_t p = prot_list[i], hr;
        m = 0;
        hr = va(0, PAGE, MEM_RESERVE | MEM_COMMIT, p, &m);
        check(nm("s2 VirtualAlloc protect ", p, base_valid(p) ? " -> S_OK" : " -> 87"), hr, base_valid(p) ? 0 : E87);
        if (hr == 0) release(m);
    }
    for (bad = 0, i = 0; i < 256; i++) {
        uint32_t hr;
        m = 0;
        hr = va(0, PAGE, MEM_RESERVE | MEM_COMMIT, i, &m);
        if (hr != (base_valid(i) ? 0 : E87)) bad++;
        if (hr == 0) release(m);
    }
    check("s2 VirtualAlloc 0x00..0xFF: only 01 02 04 10 20 40 accepted (mismatches)", bad, 0);
    for (i = 0; i < sizeof mod_list / sizeof mod_list[0]; i++) {
        uint32_t hr;
        m = 0;
        hr = va(0, PAGE, MEM_RESERVE | MEM_COMMIT, mod_list[i].prot, &m);
        check(nms("s2 VirtualAlloc ", mod_list[i].what, mod_list[i].valid ? " -> S_OK" : " -> 87"), hr, mod_list[i].valid ? 0 : E87);
        if (hr == 0) release(m);
    }
    check("s2 MEM_RESERVE with PAGE_WRITECOPY -> 87", va(0, PAGE, MEM_RESERVE, PAGE_WRITECOPY, &m), E87);
    check("s2 MEM_RESERVE with PAGE_EXECUTE_WRITECOPY -> 87", va(0, PAGE, MEM_RESERVE, PAGE_EXECUTE_WRITECOPY, &m), E87);
    m = 0;
    {
        uint32_t hr = va(0, PAGE, MEM_RESERVE | MEM_COMMIT, 0x40000000u | PAGE_EXECUTE_READ, &m);
        check2("s2 CFG bit 0x40000000|EXECUTE_READ: stripped (S_OK) or rejected (87)", hr, 0, E87);
        if (hr == 0) release(m);
    }

    /* VirtualProtect with the same values on a committed RW page. */
    r = reserve(GRAN, MEM_RESERVE, PAGE_READWRITE);
    if (!r || va(r, PAGE, MEM_COMMIT, PAGE_READWRITE, &m) != 0) {
        skip("s2 VirtualProtect table", "could not commit a page");
        return;
    }
    for (i = 0; i < sizeof prot_list / sizeof prot_list[0]; i++) {
        uint32_t p = prot_list[i], hr;
        old = 0xDEAD;
        hr = vp(r, PAGE, p, &old);
        check(nm("s2 VirtualProtect protect ", p, base_valid(p) ? " -> S_OK" : " -> 87"), hr, base_valid(p) ? 0 : E87);
        if (hr == 0) vp(r, PAGE, PAGE_READWRITE, &old);
        else if (old != 0xDEAD) check(nm("h9 failed VirtualProtect ", p, " leaves *pflOldProtect"), old, 0xDEAD);
    }
    for (bad = 0, i = 0; i < 256; i++) {
        uint32_t hr = vp(r, PAGE, i, &old);
        if (hr != (base_valid(i) ? 0 : E87)) bad++;
        if (hr == 0) vp(r, PAGE, PAGE_READWRITE, &old);
    }
    check("s2 VirtualProtect 0x00..0xFF: only 01 02 04 10 20 40 accepted (mismatches)", bad, 0);
    vq(r, &mbi);
    check("s5.1 failed VirtualProtects changed nothing (still READWRITE)", mbi.Protect, PAGE_READWRITE);
    for (i = 0; i < sizeof mod_list / sizeof mod_list[0]; i++) {
        uint32_t hr;
        hr = vp(r, PAGE, mod_list[i].prot, &old);
        check(nms("s2 VirtualProtect ", mod_list[i].what, mod_list[i].valid ? " -> S_OK" : " -> 87"), hr, mod_list[i].valid ? 0 : E87);
        vp(r, PAGE, PAGE_READWRITE, &old);
    }
    check("s2 VirtualProtect PAGE_WRITECOPY on private memory -> 87", vp(r, PAGE, PAGE_WRITECOPY, &old), E87);
    check("s2 VirtualProtect PAGE_EXECUTE_WRITECOPY on private memory -> 87", vp(r, PAGE, PAGE_EXECUTE_WRITECOPY, &old), E87);
    check("s2 commit with PAGE_WRITECOPY -> 87", va(r, PAGE, MEM_COMMIT, PAGE_WRITECOPY, &m), E87);
    release(r);

    /* NOCACHE / WRITECOMBINE memory is ordinary read/write memory to the guest */
    {
        static const uint32_t attrs[2] = {PAGE_READWRITE | PAGE_NOCACHE, PAGE_READWRITE | PAGE_WRITECOMBINE};
        int k;
        for (k = 0; k < 2; k++) {
            void *q = reserve(PAGE, MEM_RESERVE | MEM_COMMIT, attrs[k]);
            if (!q) {
                skip(k ? "s2 RW|WRITECOMBINE memory reads back what is written" : "s2 RW|NOCACHE memory reads back what is written", "allocation failed");
                continue;
            }
            wr64((char *)q + 8, 0x0102030405060708ull);
            check(k ? "s2 RW|WRITECOMBINE memory reads back what is written" : "s2 RW|NOCACHE memory reads back what is written",
                  g_av_count == 0 && *(volatile uint64_t *)((char *)q + 8) == 0x0102030405060708ull, 1);
            release(q);
        }
    }
    /* NOCACHE is an attribute of the allocation (s2, last paragraph). */
    r = 0;
    if (va(0, 2 * PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE | PAGE_NOCACHE, &r) == 0) {
        vq(r, &mbi);
        check("s2 NOCACHE allocation: Protect RW|NOCACHE", mbi.Protect, 0x204);
        check("s6 NOCACHE allocation: AllocationProtect keeps NOCACHE", mbi.AllocationProtect, 0x204);
        old = 0;
        check("s2 NOCACHE allocation: VirtualProtect READONLY", vp(r, PAGE, PAGE_READONLY, &old), 0);
        check("s5.7 old protect includes NOCACHE", old, 0x204);
        vq(r, &mbi);
        check("s2 NOCACHE allocation: Protect READONLY|NOCACHE after VirtualProtect", mbi.Protect, 0x202);
        release(r);
    } else
        skip("s2 NOCACHE allocation", "RW|NOCACHE allocation failed");
    r = reserve(PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
    if (r) {
        check("s2 VirtualProtect RW|NOCACHE on a normal allocation accepted", vp(r, PAGE, PAGE_READWRITE | PAGE_NOCACHE, &old), 0);
        vq(r, &mbi);
        check("s2 ... and the NOCACHE bit is ignored (Protect RW)", mbi.Protect, PAGE_READWRITE);
        release(r);
    }
}

/* ================= VirtualAlloc validation (win32 §3.1, host §9 order) ================= */
static void t_alloc_validation(void) {
    void *m, *img = (void *)0x140000000ull, *a;
    uint64_t top = S->max_application_address + 1;
    area("alloc-validation");
#define VA87(name, addr, size, type, prot)                              \
    do {                                                                \
        m = (void *)1;                                                  \
        check(name, va((void *)(addr), size, type, prot, &m), E87);     \
    } while (0)
    VA87("s3.1 type 0 -> 87", 0, PAGE, 0, PAGE_READWRITE);
    VA87("s3.1 AT_ROUND_TO_PAGE|RESERVE -> 87", 0, PAGE, 0x40000000u | MEM_RESERVE, PAGE_READWRITE);
    VA87("s3.1 type 0xFFFFFFFF -> 87", 0, PAGE, 0xFFFFFFFFu, PAGE_READWRITE);
    VA87("s3.1 MEM_DECOMMIT|RESERVE (outside the allowed bits) -> 87", 0, PAGE, MEM_DECOMMIT | MEM_RESERVE, PAGE_READWRITE);
    VA87("s3.1 MEM_RELEASE|COMMIT -> 87", 0, PAGE, MEM_RELEASE | MEM_COMMIT, PAGE_READWRITE);
    VA87("s3.1 MEM_TOP_DOWN alone -> 87", 0, PAGE, MEM_TOP_DOWN, PAGE_READWRITE);
    VA87("s3.1 MEM_WRITE_WATCH alone -> 87", 0, PAGE, MEM_WRITE_WATCH, PAGE_READWRITE);
    VA87("s3.1 MEM_PHYSICAL alone -> 87", 0, PAGE, MEM_PHYSICAL, PAGE_READWRITE);
    VA87("s3.1 MEM_LARGE_PAGES alone -> 87", 0, 2 * MIB, MEM_LARGE_PAGES, PAGE_READWRITE);
    check("s3.1 failed VirtualAlloc sets *ppMem NULL (h9)", (uint64_t)m, 0);
    a = reserve(GRAN, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
    VA87("s3.1 MEM_RESET|MEM_COMMIT -> 87", a, PAGE, MEM_RESET | MEM_COMMIT, PAGE_READWRITE);
    VA87("s3.1 MEM_RESET|MEM_TOP_DOWN -> 87", a, PAGE, MEM_RESET | MEM_TOP_DOWN, PAGE_READWRITE);
    VA87("s3.1 MEM_RESET|MEM_RESERVE -> 87", a, PAGE, MEM_RESET | MEM_RESERVE, PAGE_READWRITE);
    VA87("s3.1 MEM_RESET_UNDO|MEM_COMMIT -> 87", a, PAGE, MEM_RESET_UNDO | MEM_COMMIT, PAGE_READWRITE);
    VA87("s3.1 MEM_RESET|MEM_RESET_UNDO -> 87", a, PAGE, MEM_RESET | MEM_RESET_UNDO, PAGE_READWRITE);
    VA87("s3.1 MEM_LARGE_PAGES|RESERVE without COMMIT -> 87", 0, 2 * MIB, MEM_LARGE_PAGES | MEM_RESERVE, PAGE_READWRITE);
    VA87("s3.1 MEM_LARGE_PAGES|COMMIT without RESERVE -> 87", 0, 2 * MIB, MEM_LARGE_PAGES | MEM_COMMIT, PAGE_READWRITE);
    VA87("s3.1 MEM_LARGE_PAGES with WRITE_WATCH -> 87", 0, 2 * MIB, MEM_LARGE_PAGES | MEM_RESERVE | MEM_COMMIT | MEM_WRITE_WATCH, PAGE_READWRITE);
    VA87("s3.1 MEM_LARGE_PAGES with PHYSICAL -> 87", 0, 2 * MIB, MEM_LARGE_PAGES | MEM_RESERVE | MEM_COMMIT | MEM_PHYSICAL, PAGE_READWRITE);
    VA87("s3.1 MEM_WRITE_WATCH|COMMIT without RESERVE -> 87", a, PAGE, MEM_WRITE_WATCH | MEM_COMMIT, PAGE_READWRITE);
    VA87("s3.1 MEM_PHYSICAL|COMMIT without RESERVE -> 87", a, PAGE, MEM_PHYSICAL | MEM_COMMIT, PAGE_READWRITE);
    VA87("s3.1 MEM_PHYSICAL|RESERVE|COMMIT -> 87", 0, GRAN, MEM_PHYSICAL | MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
    VA87("s3.1 MEM_PHYSICAL|RESERVE with READONLY -> 87", 0, GRAN, MEM_PHYSICAL | MEM_RESERVE, PAGE_READONLY);
    VA87("s3.1 MEM_PHYSICAL|RESERVE|WRITE_WATCH -> 87", 0, GRAN, MEM_PHYSICAL | MEM_RESERVE | MEM_WRITE_WATCH, PAGE_READWRITE);
    VA87("s3.1 protect 0 with MEM_RESERVE -> 87", 0, PAGE, MEM_RESERVE, 0);
    VA87("s3.1 protect 0 with MEM_COMMIT -> 87", a, PAGE, MEM_COMMIT, 0);
    VA87("s3.1 MEM_RESET with protect 0 -> 87", a, PAGE, MEM_RESET, 0);
    VA87("s3.1 MEM_RESET with protect 0x03 -> 87", a, PAGE, MEM_RESET, 0x03);
    VA87("s3.1 address in kernel space -> 87", KERNEL_ADDR, PAGE, MEM_RESERVE, PAGE_READWRITE);
    VA87("s3.1 non-canonical address -> 87", NONCANON, PAGE, MEM_RESERVE, PAGE_READWRITE);
    VA87("s3.1 address just above max_application_address -> 87", top, PAGE, MEM_RESERVE, PAGE_READWRITE);
    VA87("s3.1 dwSize 0 (reserve at NULL) -> 87", 0, 0, MEM_RESERVE, PAGE_READWRITE);
    VA87("s3.1 dwSize 0 (commit in a reservation) -> 87", a, 0, MEM_COMMIT, PAGE_READWRITE);
    VA87("s3.1 dwSize ~0 -> 87", 0, ~0ull, MEM_RESERVE, PAGE_READWRITE);
    VA87("s3.1 range wraps -> 87", 0x7FFF00000000ull, ~0ull - 0x1000, MEM_RESERVE, PAGE_READWRITE);
    VA87("s3.1 range exceeds the user range -> 87", top - GRAN, 2 * GRAN, MEM_RESERVE, PAGE_READWRITE);
    /* Two failing checks: the first in the order wins. */
    VA87("s3.1 order: bad protect (0) + conflicting address (image) -> 87 not 487", img, PAGE, MEM_RESERVE, 0);
    VA87("s3.1 order: bad type + conflicting address -> 87 not 487", img, PAGE, MEM_RESERVE | 0x40000000u, PAGE_READWRITE);
    VA87("s3.1 order: size 0 + conflicting address -> 87 not 487", img, 0, MEM_RESERVE, PAGE_READWRITE);
    VA87("s3.1 order: WRITECOPY reserve + conflicting address -> 87 not 487", img, PAGE, MEM_RESERVE, PAGE_WRITECOPY);
    VA87("s3.1 order: commit in free memory with protect 0x03 -> 87 not 487", 0x3FF000000000ull, PAGE, MEM_COMMIT, 0x03);
    VA87("s3.1 order: commit in free memory with WRITE_WATCH -> 87 not 487", 0x3FF000000000ull, PAGE, MEM_COMMIT | MEM_WRITE_WATCH, PAGE_READWRITE);
    VA87("s3.1 order: kernel address + bad protect -> 87", KERNEL_ADDR, PAGE, MEM_RESERVE, 0);
    check("h9 order: ppMem NULL + type 0 -> E_POINTER first", va(0, PAGE, 0, PAGE_READWRITE, 0), EPTR);
    check("h9 order: ppMem NULL + size 0 -> E_POINTER first", va(0, 0, MEM_RESERVE, PAGE_READWRITE, 0), EPTR);
    m = (void *)1;
    check("h5 critical level 3 -> E_INVALIDARG", val(0, PAGE, MEM_RESERVE, PAGE_READWRITE, 3, &m), E87);
    check("h9 ... *ppMem NULL", (uint64_t)m, 0);
    check("h9 order: ppMem NULL + critical level 3 -> E_POINTER first", val(0, PAGE, MEM_RESERVE, PAGE_READWRITE, 3, 0), EPTR);
    check("h5 critical level 0xFFFFFFFF -> E_INVALIDARG", val(0, PAGE, MEM_RESERVE, PAGE_READWRITE, -1, &m), E87);
    release(a);
#undef VA87
}

/* ================= reserve path (win32 §3.2) ================= */
#define RB 0x300000000000ull
static void t_reserve(void) {
    static const struct { uint64_t off, size, base_off, rsize; } ex[] = {
        {0x0, 1, 0, 0x1000},          {0x8000, 1, 0, 0x9000},         {0x10, 0x1000, 0, 0x2000},
        {0xFFFF, 0x3000, 0, 0x13000}, {0x1010, 0x7000, 0, 0x9000},    {0x1010, 0xC000, 0, 0xE000},
        {0x10025000, 200, 0x10020000, 0x6000},
    };
    unsigned i;
    void *m, *a, *b;
    MEMORY_BASIC_INFORMATION mbi;
    area("reserve");
    for (i = 0; i < sizeof ex / sizeof ex[0]; i++) {
        uint32_t hr;
        m = 0;
        hr = va((void *)(RB + ex[i].off), ex[i].size, MEM_RESERVE, PAGE_READWRITE, &m);
        check(nm("s3.2 reserve at +", ex[i].off, " S_OK"), hr, 0);
        check(nm("s3.2 reserve at +", ex[i].off, ": base rounded down to 64K"), (uint64_t)m, RB + ex[i].base_off);
        vq((void *)(RB + ex[i].base_off), &mbi);
        check(nm("s3.2 reserve at +", ex[i].off, ": size rounded to the end page"), mbi.RegionSize, ex[i].rsize);
        if (hr == 0) check(nm("s3.2 release reservation +", ex[i].off, ""), vf(m, 0, MEM_RELEASE), 0);
    }
    a = reserve(1, MEM_RESERVE, PAGE_READWRITE);
    check("s3.2 NULL reserve is 64K aligned", (uint64_t)a & 0xFFFF, 0);
    check("s3.2 NULL reserve is at or above min_application_address", (uint64_t)a >= 0x10000, 1);
    vq(a, &mbi);
    check("s3.2 NULL reserve of 1 byte: one page", mbi.RegionSize, PAGE);
    check("s3.2 ... State MEM_RESERVE", mbi.State, MEM_RESERVE);
    check("s3.2 ... AllocationProtect = flProtect", mbi.AllocationProtect, PAGE_READWRITE);
    check("s3.2 ... Type MEM_PRIVATE", mbi.Type, MEM_PRIVATE);
    release(a);
    /* RESERVE|COMMIT commits every page from the rounded-down base. */
    m = 0;
    check("s3.2 RESERVE|COMMIT at +0x4080 size 0x1000", va((void *)(RB + 0x4080), 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, &m), 0);
    check("s3.2 ... returns the 64K base", (uint64_t)m, RB);
    vq((void *)RB, &mbi);
    check("s3.2 ... pages below the address committed (RegionSize 0x6000 COMMIT)", mbi.RegionSize == 0x6000 && mbi.State == MEM_COMMIT, 1);
    if (m == (void *)RB) {
        wr8((void *)RB, 0x5A);
        check("s3.2 ... write to the base succeeds", g_av_count == 0 && rd8((void *)RB) == 0x5A, 1);
    }
    release(m);
    /* Conflicts, the dead tail of a 64K block. */
    a = 0;
    check("s3.2 reserve 0x3000 at RB", va((void *)RB, 0x3000, MEM_RESERVE, PAGE_READWRITE, &a), 0);
    m = (void *)1;
    check("s3.2 reserve in the dead tail (+0x8000) -> 487", va((void *)(RB + 0x8000), 1, MEM_RESERVE, PAGE_READWRITE, &m), E487);
    check("h9 ... *ppMem NULL", (uint64_t)m, 0);
    check("s3.2 reserve at +0x3000 (free page of the dead tail) -> 487", va((void *)(RB + 0x3000), 0x1000, MEM_RESERVE, PAGE_READWRITE, &m), E487);
    check("s3.2 RESERVE|COMMIT next to the allocation -> 487", va((void *)(RB + 0x3000), 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, &m), E487);
    check("s3.2 reserve over the same range -> 487", va((void *)RB, 0x1000, MEM_RESERVE, PAGE_READWRITE, &m), E487);
    vq((void *)(RB + 0x3000), &mbi);
    check("s1.2 dead tail shows MEM_FREE", mbi.State, MEM_FREE);
    b = 0;
    check("s3.2 reserve 0x30000 at +0x40000", va((void *)(RB + 0x40000), 0x30000, MEM_RESERVE, PAGE_READWRITE, &b), 0);
    vq((void *)(RB + 0x3000), &mbi);
    check("s6 free dead tail RegionSize runs to the next allocation (0x3D000)", mbi.RegionSize, 0x3D000);
    check("s3.2 reserve starting free, ending inside another -> 487", va((void *)(RB + 0x20000), 0x30000, MEM_RESERVE, PAGE_READWRITE, &m), E487);
    check("s3.2 reserve starting inside another, ending free -> 487", va((void *)(RB + 0x60000), 0x30000, MEM_RESERVE, PAGE_READWRITE, &m), E487);
    check("s3.2 reserve covering another -> 487", va((void *)(RB + 0x30000), 0x60000, MEM_RESERVE, PAGE_READWRITE, &m), E487);
    m = 0;
    check("s3.2 reserve at the next 64K boundary after the dead tail succeeds", va((void *)(RB + GRAN), PAGE, MEM_RESERVE, PAGE_READWRITE, &m) == 0 && m == (void *)(RB + GRAN), 1);
    release(m);
    release(b);
    release(a);
    m = 0;
    check("s3.2 reserve where a released allocation was -> same address", va((void *)RB, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, &m) == 0 && m == (void *)RB, 1);
    release(m);
    check("s1.1 reserve below 0x10000 -> 87", va((void *)0x8000, PAGE, MEM_RESERVE, PAGE_READWRITE, &m), E87);
    {
        MEMORY_BASIC_INFORMATION im;
        uint64_t tail;
        vq((void *)0x140000000ull, &im);
        /* find the end of the image allocation */
        tail = 0x140000000ull;
        while (vq((void *)tail, &im) == 0 && im.State != MEM_FREE && im.AllocationBase == 0x140000000ull) tail = im.BaseAddress + im.RegionSize;
        if (tail & 0xFFFF)
            check("s3.2 reserve in the dead tail of the image -> 487", va((void *)tail, PAGE, MEM_RESERVE, PAGE_READWRITE, &m), E487);
        else
            info("image ends on a 64K boundary; no dead tail at", tail);
    }
    check("h9 reserve over the guest image -> 487", va((void *)0x140000000ull, PAGE, MEM_RESERVE, PAGE_READWRITE, &m), E487);
    check("h9 reserve over the host pages -> 487", va((void *)((uint64_t)S & ~0xFFFFull), PAGE, MEM_RESERVE, PAGE_READWRITE, &m), E487);
    /* Big reservations: the whole user range is reservable; exhaustion is E_OUTOFMEMORY. */
    m = 0;
    check("h9 reserve 64 TiB at NULL", va(0, 0x400000000000ull, MEM_RESERVE, PAGE_NOACCESS, &m), 0);
    if (m) {
        vq((char *)m + 0x123456789000ull, &mbi);
        check("s6 ... one reserved region of 64 TiB (queried in the middle)", mbi.State == MEM_RESERVE && mbi.AllocationBase == (uint64_t)m &&
                  mbi.BaseAddress + mbi.RegionSize == (uint64_t)m + 0x400000000000ull, 1);
    }
    release(m);
    m = 0;
    check("s3.5 MEM_TOP_DOWN with an address: placed at that address", va((void *)(RB + 0x7000000), GRAN, MEM_RESERVE | MEM_TOP_DOWN, PAGE_READWRITE, &m) == 0 && m == (void *)(RB + 0x7000000), 1);
    release(m);
    m = (void *)1;
    check("s3.2 address-space exhaustion -> E_OUTOFMEMORY", va(0, S->max_application_address - 0x20000, MEM_RESERVE, PAGE_NOACCESS, &m), EOOM);
    check("h9 ... *ppMem NULL", (uint64_t)m, 0);
}

/* ================= commit path (win32 §3.3) ================= */
#define RC 0x301000000000ull
static void t_commit(void) {
    void *r, *m, *a1, *a2;
    MEMORY_BASIC_INFORMATION mbi;
    uint64_t c0, i;
    DWORD old;
    area("commit");
    r = reserve(GRAN, MEM_RESERVE, PAGE_READWRITE);
    if (!r) {
        skip("s3.3 commit group", "reserve failed");
        return;
    }
    c0 = committed_now();
    m = 0;
    check("s3.3 commit at +0x1800 size 0x1000", va((char *)r + 0x1800, 0x1000, MEM_COMMIT, PAGE_READWRITE, &m), 0);
    check("s3.3 ... returns the page-rounded base", (uint64_t)m, (uint64_t)r + 0x1000);
    vq((char *)r + 0x1000, &mbi);
    check("s3.3 ... both touched pages committed (RegionSize 0x2000)", mbi.RegionSize, 0x2000);
    check("s3.3 ... State MEM_COMMIT, Protect RW", mbi.State == MEM_COMMIT && mbi.Protect == PAGE_READWRITE, 1);
    check("h9 commit charge +0x2000", committed_now() - c0, 0x2000);
    check("s3.3 new pages read zero", all_zero((char *)r + 0x1000, 0x2000), 1);
    check("s3.3 commit +0x8000 size 0x1000 (ends on a page boundary)", va((char *)r + 0x8000, 0x1000, MEM_COMMIT, PAGE_READONLY, &m), 0);
    vq((char *)r + 0x8000, &mbi);
    check("s3.3 ... exactly one page committed", mbi.State == MEM_COMMIT && mbi.RegionSize == PAGE, 1);
    vf((char *)r + 0x8000, PAGE, MEM_DECOMMIT);
    for (i = 0; i < 0x2000; i += 8) *(volatile uint64_t *)((char *)r + 0x1000 + i) = 0x0123456789ABCDEFull ^ i;
    check("s3.3 recommit (RW) S_OK", va((char *)r + 0x1000, 0x2000, MEM_COMMIT, PAGE_READWRITE, &m), 0);
    check("s3.3 recommit keeps the data", *(volatile uint64_t *)((char *)r + 0x1008), 0x0123456789ABCDEFull ^ 8);
    check("h9 recommit charges nothing more", committed_now() - c0, 0x2000);
    check("s3.3 recommit READONLY over RW pages S_OK", va((char *)r + 0x1000, 0x3000, MEM_COMMIT, PAGE_READONLY, &m), 0);
    vq((char *)r + 0x1000, &mbi);
    check("s3.3 ... protection changed to READONLY (3 pages)", mbi.Protect == PAGE_READONLY && mbi.RegionSize == 0x3000, 1);
    check("s3.3 ... data kept", *(volatile uint64_t *)((char *)r + 0x1FF8), 0x0123456789ABCDEFull ^ 0xFF8);
    check("s3.3 ... third page zero", all_zero((char *)r + 0x3000, 0x1000), 1);
    wr8((char *)r + 0x1010, 1);
    check("s3.3 ... write now faults (access violation, write)", g_av_count == 1 && g_av_access == 1 && g_av_addr == (uint64_t)r + 0x1010, 1);
    check("s3.3 recommit NOACCESS S_OK", va((char *)r + 0x1000, 0x1000, MEM_COMMIT, PAGE_NOACCESS, &m), 0);
    check("s3.3 recommit the NOACCESS page READWRITE S_OK", va((char *)r + 0x1000, 0x1000, MEM_COMMIT, PAGE_READWRITE, &m), 0);
    check("s3.3 ... data still there", *(volatile uint64_t *)((char *)r + 0x1000), 0x0123456789ABCDEFull);
    check("s3.3 commit with GUARD S_OK", va((char *)r + 0x5000, 0x1000, MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD, &m), 0);
    vq((char *)r + 0x5000, &mbi);
    check("s3.3 ... GUARD bit applied (Protect 0x104)", mbi.Protect, 0x104);
    check("s3.5 MEM_TOP_DOWN|COMMIT in a reservation S_OK", va((char *)r + 0x6000, 0x1000, MEM_COMMIT | MEM_TOP_DOWN, PAGE_READWRITE, &m), 0);
    m = (void *)1;
    check("s3.3 commit running past the allocation end -> 487", va((char *)r + 0xF000, 0x2000, MEM_COMMIT, PAGE_READWRITE, &m), E487);
    check("h9 ... *ppMem NULL", (uint64_t)m, 0);
    vq((char *)r + 0xF000, &mbi);
    check("s3.3 ... nothing committed", mbi.State, MEM_RESERVE);
    check("s3.1 commit with a wrapping size -> 87", va((char *)r + 0x1000, ~0ull - 0x1000, MEM_COMMIT, PAGE_READWRITE, &m), E87);
    check("s3.3 commit in free memory -> 487", va((void *)(RC + 0x100000), 0x1000, MEM_COMMIT, PAGE_READWRITE, &m), E487);
    vf(r, 0, MEM_DECOMMIT);
    check("h9 decommit returns the charge", committed_now(), c0);
    va(r, 0x8000, MEM_COMMIT, PAGE_READWRITE, &m);
    check("h9 commit over 8 committed + 8 reserved pages charges only the 8 new ones",
          va(r, GRAN, MEM_COMMIT, PAGE_READWRITE, &m) == 0 && committed_now() - c0 == GRAN, 1);
    vf(r, 0, MEM_DECOMMIT);
    check("s3.3 recommit after decommit reads zero", va((char *)r + 0x1000, 0x1000, MEM_COMMIT, PAGE_READWRITE, &m) == 0 && all_zero((char *)r + 0x1000, 0x1000), 1);
    release(r);
    /* Two adjacent allocations. */
    a1 = a2 = 0;
    va((void *)RC, GRAN, MEM_RESERVE, PAGE_READWRITE, &a1);
    va((void *)(RC + GRAN), GRAN, MEM_RESERVE, PAGE_READWRITE, &a2);
    check("s3.3 adjacent reservations made", a1 == (void *)RC && a2 == (void *)(RC + GRAN), 1);
    check("s3.3 commit over two allocations -> 487", va((void *)(RC + 0xF000), 0x2000, MEM_COMMIT, PAGE_READWRITE, &m), E487);
    vq((void *)(RC + 0xF000), &mbi);
    check("s3.3 ... first allocation's page not committed", mbi.State, MEM_RESERVE);
    vq((void *)(RC + GRAN), &mbi);
    check("s3.3 ... second allocation's page not committed", mbi.State, MEM_RESERVE);
    release(a1);
    release(a2);
    /* Dead tail of a small allocation. */
    a1 = 0;
    va((void *)RC, 0x3000, MEM_RESERVE, PAGE_READWRITE, &a1);
    check("s3.3 commit in the dead tail -> 487", va((void *)(RC + 0x3000), 0x1000, MEM_COMMIT, PAGE_READWRITE, &m), E487);
    release(a1);
    /* NULL-address MEM_COMMIT reserves too. */
    m = 0;
    check("s3.2 NULL-address MEM_COMMIT implies reserve", va(0, 0x3000, MEM_COMMIT, PAGE_READWRITE, &m), 0);
    vq(m, &mbi);
    check("s3.2 ... 64K aligned, committed, zero", ((uint64_t)m & 0xFFFF) == 0 && mbi.State == MEM_COMMIT && mbi.RegionSize == 0x3000 && all_zero(m, 0x3000), 1);
    release(m);
    /* Image and host pages. */
    {
        uint8_t before = *(volatile const uint8_t *)rodata_page;
        uint32_t hr = va((void *)rodata_page, 1, MEM_COMMIT, PAGE_READONLY, &m);
        check2("s3.3 commit on the image (a mapped view: 5; else 487)", hr, E5, E487);
        check("s3.3 ... image page unchanged", *(volatile const uint8_t *)rodata_page, before);
        (void)old;
    }
    check("h9 commit on the host pages -> 487", va((void *)S, 1, MEM_COMMIT, PAGE_READONLY, &m), E487);
}

/* ================= MEM_RESET / MEM_RESET_UNDO (win32 §3.4) ================= */
static void t_reset(void) {
    void *a, *m;
    MEMORY_BASIC_INFORMATION mbi;
    uint64_t c0;
    area("reset");
    a = reserve(GRAN, MEM_RESERVE, PAGE_READWRITE);
    if (!a || va(a, PAGE, MEM_COMMIT, PAGE_READWRITE, &m) != 0) {
        skip("s3.4 reset group", "reserve/commit failed");
        return;
    }
    memset(a, 0xAB, PAGE);
    c0 = committed_now();
    check("s3.4 reset over the allocation end (+0xF000, 0x2000) -> 487", va((char *)a + 0xF000, 0x2000, MEM_RESET, PAGE_READWRITE, &m), E487);
    check("s3.4 reset of free memory -> 487", va((void *)0x3FE000000000ull, PAGE, MEM_RESET, PAGE_READWRITE, &m), E487);
    m = 0;
    check("s3.4 reset of a reserved page S_OK", va((char *)a + 0x1000, PAGE, MEM_RESET, PAGE_READWRITE, &m), 0);
    check("s3.4 ... returns the page address", (uint64_t)m, (uint64_t)a + 0x1000);
    vq((char *)a + 0x1000, &mbi);
    check("s3.4 ... still MEM_RESERVE, 0xF000, Protect 0", mbi.State == MEM_RESERVE && mbi.RegionSize == 0xF000 && mbi.Protect == 0, 1);
    m = 0;
    check("s3.4 reset of a committed page (unaligned +0x10, 0x10) S_OK", va((char *)a + 0x10, 0x10, MEM_RESET, PAGE_NOACCESS, &m), 0);
    check("s3.4 ... returns the page-rounded address", (uint64_t)m, (uint64_t)a);
    vq(a, &mbi);
    check("s3.4 ... still MEM_COMMIT / READWRITE / 0x1000 (protect value ignored)", mbi.State == MEM_COMMIT && mbi.Protect == PAGE_READWRITE && mbi.RegionSize == PAGE, 1);
    check2("s3.4 ... contents kept (0xAB) or zero", *(volatile uint8_t *)((char *)a + 100), 0xAB, 0);
    check("s3.4 ... commit charge unchanged", committed_now(), c0);
    check("s3.4 MEM_RESET_UNDO S_OK", va(a, PAGE, MEM_RESET_UNDO, PAGE_READWRITE, &m), 0);
    check("s3.4 MEM_RESET_UNDO with protect 0 -> 87", va(a, PAGE, MEM_RESET_UNDO, 0, &m), E87);
    check("s3.4 MEM_RESET_UNDO of free memory -> 487", va((void *)0x3FE000000000ull, PAGE, MEM_RESET_UNDO, PAGE_READWRITE, &m), E487);
    *(volatile uint8_t *)a = 0x11;
    check("s3.4 ... memory still usable", *(volatile uint8_t *)a, 0x11);
    release(a);
}

/* ================= placement, MEM_TOP_DOWN, MEM_LARGE_PAGES (win32 §3.5, host §9) ================= */
/* 1 if a free 64K-aligned fit of `size` exists in [from, to). */
static int free_fit_between(uint64_t from, uint64_t to, uint64_t size) {
    MEMORY_BASIC_INFORMATION mbi;
    uint64_t addr = from;
    int n = 0;
    while (addr < to && n++ < 100000) {
        if (vq((void *)addr, &mbi) != 0) break;
        if (mbi.State == MEM_FREE) {
            uint64_t s = (mbi.BaseAddress + GRAN - 1) & ~(GRAN - 1), e = mbi.BaseAddress + mbi.RegionSize;
            if (e > to) e = to;
            if (s >= 0x10000 && s + size <= e) return 1;
        }
        if (mbi.RegionSize == 0) break;
        addr = mbi.BaseAddress + mbi.RegionSize;
    }
    return 0;
}
static void t_placement(void) {
    void *a, *b, *b2, *m;
    MEMORY_BASIC_INFORMATION mbi;
    uint64_t c0;
    uint32_t hr;
    area("placement");
    a = reserve(GRAN, MEM_RESERVE, PAGE_READWRITE);
    b = reserve(GRAN, MEM_RESERVE | MEM_TOP_DOWN, PAGE_READWRITE);
    check("h9 MEM_TOP_DOWN reservation above a bottom-up one", (uint64_t)b > (uint64_t)a && a != 0, 1);
    check("s3.2 MEM_TOP_DOWN reservation is 64K aligned", (uint64_t)b & 0xFFFF, 0);
    check("h9 bottom-up: no free fit below it (lowest free fit)", free_fit_between(0x10000, (uint64_t)a, GRAN), 0);
    check("h9 top-down: no free fit above it (highest free fit)", free_fit_between((uint64_t)b + GRAN, S->max_application_address + 1, GRAN), 0);
    b2 = reserve(GRAN, MEM_RESERVE | MEM_TOP_DOWN, PAGE_READWRITE);
    check("h9 second top-down reservation lies below the first", (uint64_t)b2 < (uint64_t)b && b2 != 0, 1);
    m = 0;
    check("s3.5 MEM_TOP_DOWN|COMMIT at NULL S_OK", va(0, PAGE, MEM_COMMIT | MEM_TOP_DOWN, PAGE_READWRITE, &m), 0);
    check("s3.5 ... placed top-down (above the bottom-up one)", (uint64_t)m > (uint64_t)a, 1);
    release(m);
    release(b2);
    release(b);
    release(a);
    /* MEM_LARGE_PAGES */
    c0 = committed_now();
    check("h9 MEM_LARGE_PAGES size 0x1000 -> 87", va(0, PAGE, MEM_LARGE_PAGES | MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, &m), E87);
    check("h9 MEM_LARGE_PAGES size 3 MiB -> 87", va(0, 3 * MIB, MEM_LARGE_PAGES | MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, &m), E87);
    check("h9 MEM_LARGE_PAGES address not 2 MiB aligned -> 87", va((void *)(RB + GRAN), 2 * MIB, MEM_LARGE_PAGES | MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, &m), E87);
    m = 0;
    hr = va(0, 2 * MIB, MEM_LARGE_PAGES | MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, &m);
    check2("h9 MEM_LARGE_PAGES 2 MiB: S_OK, or E_OUTOFMEMORY without 2 MiB frames", hr, 0, EOOM);
    if (hr == 0) {
        info("MEM_LARGE_PAGES 2 MiB succeeded at", (uint64_t)m);
        check("s3.5 large-page allocation is 2 MiB aligned", (uint64_t)m & (2 * MIB - 1), 0);
        vq(m, &mbi);
        check("s3.5 ... committed read/write, RegionSize 2 MiB", mbi.State == MEM_COMMIT && mbi.Protect == PAGE_READWRITE && mbi.RegionSize == 2 * MIB, 1);
        check("s3.5 ... reads zero", all_zero(m, 2 * MIB), 1);
        check("h9 ... charged 2 MiB", committed_now() - c0, 2 * MIB);
        ((volatile uint8_t *)m)[0] = 1;
        ((volatile uint8_t *)m)[2 * MIB - 1] = 2;
        check("s3.5 ... writable first and last byte", ((volatile uint8_t *)m)[0] + ((volatile uint8_t *)m)[2 * MIB - 1], 3);
        check("s3.5 ... release S_OK", vf(m, 0, MEM_RELEASE), 0);
    } else {
        info("MEM_LARGE_PAGES 2 MiB returned", hr);
        check("h9 ... *ppMem NULL", (uint64_t)m, 0);
    }
    {
        void *at = 0;
        hr = va((void *)(RB + 0x200000), 2 * MIB, MEM_LARGE_PAGES | MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, &at);
        check2("h9 MEM_LARGE_PAGES at a 2 MiB-aligned address: S_OK or E_OUTOFMEMORY", hr, 0, EOOM);
        if (hr == 0) {
            check("s3.5 ... at that address", (uint64_t)at, RB + 0x200000);
            release(at);
        }
    }
    check("h9 MEM_LARGE_PAGES: commit charge back", committed_now(), c0);
}

/* ================= scale (host §9: 100,000 live allocations) ================= */
#define RS 0x306000000000ull
static void t_scale(void) {
    uint64_t i, fails = 0, c0 = committed_now(), t0 = S->ticks_ns();
    MEMORY_BASIC_INFORMATION mbi;
    void *m;
    area("scale");
    for (i = 0; i < 100000; i++)
        if (va((void *)(RS + i * GRAN), (i & 1) ? PAGE : 3 * PAGE, MEM_RESERVE, PAGE_READWRITE, &m) != 0) fails++;
    check("h9 100,000 live reservations at chosen addresses", fails, 0);
    vq((void *)(RS + 500 * GRAN + 0x3000), &mbi);
    check("s6 dead tail between two of them is free up to the next", mbi.State == MEM_FREE && mbi.RegionSize == GRAN - 0x3000, 1);
    vq((void *)(RS + 99999 * GRAN), &mbi);
    check("s6 the last one is there", mbi.State == MEM_RESERVE && mbi.AllocationBase == RS + 99999 * GRAN, 1);
    m = reserve(GRAN, MEM_RESERVE, PAGE_READWRITE);
    check("h9 a NULL reservation still works among them", m != 0, 1);
    release(m);
    for (fails = 0, i = 0; i < 100000; i++)
        if (vf((void *)(RS + i * GRAN), 0, MEM_RELEASE) != 0) fails++;
    check("h9 ... all released", fails, 0);
    vq((void *)RS, &mbi);
    check("h9 ... their range is free again", mbi.State == MEM_FREE && mbi.RegionSize >= 100000 * GRAN, 1);
    check("h9 ... no commit charge", committed_now(), c0);
    info("100,000 reserve+release pairs took ns", S->ticks_ns() - t0);
}

/* ================= VirtualFree (win32 §4) ================= */
#define RF 0x302000000000ull
static void t_free(void) {
    void *a, *m, *a2;
    MEMORY_BASIC_INFORMATION mbi;
    uint64_t c0;
    uint32_t hr;
    area("free");
    a = reserve(GRAN, MEM_RESERVE, PAGE_READWRITE);
    if (!a || va(a, 0x4000, MEM_COMMIT, PAGE_READWRITE, &m) != 0) {
        skip("s4 VirtualFree group", "reserve/commit failed");
        return;
    }
    check("s4 type 0 -> 87", vf(a, 0, 0), E87);
    check("s4 type MEM_FREE -> 87", vf(a, 0, MEM_FREE), E87);
    check("s4 type DECOMMIT|RELEASE -> 87", vf(a, 0, MEM_DECOMMIT | MEM_RELEASE), E87);
    check("s4 type RELEASE|0x100 -> 87", vf(a, 0, MEM_RELEASE | 0x100), E87);
    check("s4 type MEM_COMMIT -> 87", vf(a, 0, MEM_COMMIT), E87);
    check("s4 type 0xFFFFFFFF -> 87", vf(a, 0, 0xFFFFFFFFu), E87);
    check("s4 MEM_RELEASE with dwSize != 0 -> 87", vf(a, GRAN, MEM_RELEASE), E87);
    check("s4 address in kernel space -> 87", vf(KERNEL_ADDR, 0, MEM_RELEASE), E87);
    check("s4 non-canonical address -> 87", vf(NONCANON, 0, MEM_DECOMMIT), E87);
    check("s4 free page, MEM_RELEASE -> 487", vf((void *)(RF + 0x100000), 0, MEM_RELEASE), E487);
    check("s4 free page, MEM_DECOMMIT -> 487", vf((void *)(RF + 0x100000), PAGE, MEM_DECOMMIT), E487);
    check("s4 order: bad type at a free page -> 87 not 487", vf((void *)(RF + 0x100000), 0, 0), E87);
    check("s4 order: MEM_RELEASE size != 0 at a free page -> 87 not 487", vf((void *)(RF + 0x100000), PAGE, MEM_RELEASE), E87);
    check("s4 MEM_RELEASE not at the base (+0x1001) -> 487", vf((char *)a + 0x1001, 0, MEM_RELEASE), E487);
    check("s4 MEM_RELEASE not at the base (+0x1000) -> 487", vf((char *)a + 0x1000, 0, MEM_RELEASE), E487);
    check("s4 MEM_DECOMMIT size 0 not at the base (+0x1001) -> 487", vf((char *)a + 0x1001, 0, MEM_DECOMMIT), E487);
    vq(a, &mbi);
    check("s4 failed frees changed nothing (0x4000 committed)", mbi.State == MEM_COMMIT && mbi.RegionSize == 0x4000, 1);
    c0 = committed_now();
    check("s4 MEM_DECOMMIT +0x1fff size 2 S_OK", vf((char *)a + 0x1fff, 2, MEM_DECOMMIT), 0);
    vq((char *)a + 0x1000, &mbi);
    check("s4 ... decommits the two touched pages (RESERVE, 0x2000, Protect 0)", mbi.State == MEM_RESERVE && mbi.RegionSize == 0x2000 && mbi.Protect == 0, 1);
    vq(a, &mbi);
    check("s4 ... page before still committed", mbi.State == MEM_COMMIT && mbi.RegionSize == 0x1000, 1);
    vq((char *)a + 0x3000, &mbi);
    check("s4 ... page after still committed", mbi.State, MEM_COMMIT);
    check("h9 ... charge returned (0x2000)", c0 - committed_now(), 0x2000);
    check("s4 MEM_DECOMMIT +0x3000 size 0x1000 S_OK", vf((char *)a + 0x3000, 0x1000, MEM_DECOMMIT), 0);
    vq((char *)a + 0x3000, &mbi);
    check("s4 ... that page is reserved (and merges with the reserved rest: 0xD000)", mbi.State == MEM_RESERVE && mbi.BaseAddress == (uint64_t)a + 0x3000 && mbi.RegionSize == 0xD000, 1);
    vq(a, &mbi);
    check("s4 ... the first page is still committed", mbi.State == MEM_COMMIT && mbi.RegionSize == PAGE, 1);
    check("s4 MEM_DECOMMIT with a wrapping size -> 87", vf((char *)a + 0x1000, ~0ull, MEM_DECOMMIT), E87);
    check("s4 MEM_DECOMMIT past the allocation end -> 87", vf((char *)a + 0xF000, 0x2000, MEM_DECOMMIT), E87);
    check("s4 MEM_DECOMMIT of reserved pages S_OK", vf((char *)a + 0x8000, 0x4000, MEM_DECOMMIT), 0);
    {
        void *t = reserve(0x3000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
        check("s4 MEM_DECOMMIT running into the dead tail -> 87", vf(t, 0x4000, MEM_DECOMMIT), E87);
        check("s4 MEM_DECOMMIT in the dead tail (free) -> 487", vf((char *)t + 0x3000, PAGE, MEM_DECOMMIT), E487);
        check("s4 MEM_RELEASE in the dead tail (free) -> 487", vf((char *)t + 0x3000, 0, MEM_RELEASE), E487);
        {
            DWORD o = 0xDEAD;
            check("s5.5 VirtualProtect in the dead tail -> 487", vp((char *)t + 0x3000, PAGE, PAGE_READONLY, &o), E487);
            check("s3.4 MEM_RESET in the dead tail -> 487", va((char *)t + 0x3000, PAGE, MEM_RESET, PAGE_READWRITE, &m), E487);
        }
        release(t);
    }
    check("s4 recommit after decommit reads zero", va((char *)a + 0x1000, 0x1000, MEM_COMMIT, PAGE_READWRITE, &m) == 0 && all_zero((char *)a + 0x1000, PAGE), 1);
    check("s4 MEM_DECOMMIT size 0 at +0xffe (base page) S_OK", vf((char *)a + 0xffe, 0, MEM_DECOMMIT), 0);
    vq(a, &mbi);
    check("s4 ... whole allocation reserved (0x10000, Protect 0)", mbi.State == MEM_RESERVE && mbi.RegionSize == GRAN && mbi.Protect == 0, 1);
    check("s4 MEM_RELEASE size 0 at +0xfff (base page) S_OK", vf((char *)a + 0xfff, 0, MEM_RELEASE), 0);
    vq(a, &mbi);
    check("s4 ... pages MEM_FREE", mbi.State, MEM_FREE);
    check("s4 release twice -> 487", vf(a, 0, MEM_RELEASE), E487);
    m = 0;
    check("s4 ... address reusable", va(a, GRAN, MEM_RESERVE, PAGE_READWRITE, &m) == 0 && m == a, 1);
    vq(a, &mbi);
    check("s4 ... as a fresh allocation (reserved, AllocationProtect of the new call)", mbi.State == MEM_RESERVE && mbi.RegionSize == GRAN && mbi.AllocationProtect == PAGE_READWRITE, 1);
    release(m);
    /* Adjacent allocations: release of one leaves the other; decommit may not cross. */
    a = a2 = 0;
    va((void *)RF, GRAN, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, &a);
    va((void *)(RF + GRAN), GRAN, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, &a2);
    check("s4 MEM_DECOMMIT across two allocations -> 87", vf((void *)(RF + 0xF000), 0x2000, MEM_DECOMMIT), E87);
    check("s4 release the first of two adjacent allocations", vf(a, 0, MEM_RELEASE), 0);
    vq(a2, &mbi);
    check("s4 ... the second is intact", mbi.State == MEM_COMMIT && mbi.RegionSize == GRAN, 1);
    release(a2);
    /* Whole allocation with committed and reserved pages. */
    a = reserve(0x20000, MEM_RESERVE, PAGE_READWRITE);
    va(a, 0x3000, MEM_COMMIT, PAGE_READWRITE, &m);
    c0 = committed_now();
    check("s4 MEM_RELEASE of a partly committed allocation", vf(a, 0, MEM_RELEASE), 0);
    check("h9 ... its charge returned", c0 - committed_now(), 0x3000);
    hr = vf(0, 0, MEM_RELEASE);
    check2("s4 VirtualFree(NULL, 0, MEM_RELEASE): 487 (Windows/PAL) or 87 (Wine)", hr, E487, E87);
    check("h9 VirtualFree on the image -> 87", vf((void *)0x140000000ull, 0, MEM_RELEASE), E87);
    check("h9 VirtualFree MEM_DECOMMIT on the image -> 87", vf((void *)rodata_page, 1, MEM_DECOMMIT), E87);
    check("h9 VirtualFree on the host pages -> 487", vf((void *)((uint64_t)S & ~0xFFFull), 0, MEM_RELEASE), E487);
}

/* ================= VirtualProtect (win32 §5) ================= */
#define RP 0x303000000000ull
static void t_protect(void) {
    void *a, *m, *a2;
    MEMORY_BASIC_INFORMATION mbi;
    DWORD old;
    uint32_t hr;
    area("protect");
    a = reserve(GRAN, MEM_RESERVE, PAGE_READWRITE);
    if (!a || va(a, 0x8000, MEM_COMMIT, PAGE_READWRITE, &m) != 0) {
        skip("s5 VirtualProtect group", "reserve/commit failed");
        return;
    }
    old = 0xDEAD;
    check("s5.1 protect 0 -> 87", vp(a, PAGE, 0, &old), E87);
    check("h9 ... *pflOldProtect untouched", old, 0xDEAD);
    check("s5.1 READWRITE|EXECUTE_WRITECOPY -> 87", vp(a, PAGE, PAGE_READWRITE | PAGE_EXECUTE_WRITECOPY, &old), E87);
    check("s5 order: bad protection over uncommitted pages -> 87 not 487", vp((char *)a + 0x9000, PAGE, 0x03, &old), E87);
    check("s5 order: bad protection with NULL old -> 87 not 998", vp(a, PAGE, 0, 0), E87);
    check("s5.2 NULL lpflOldProtect -> 998", vp(a, PAGE, PAGE_READONLY, 0), E998);
    vq(a, &mbi);
    check("s5.2 ... protection not changed", mbi.Protect, PAGE_READWRITE);
    check("s5.2 read-only lpflOldProtect -> 998", vp(a, PAGE, PAGE_READONLY, (DWORD *)rodata_page), E998);
    vq(a, &mbi);
    check("s5.2 ... protection not changed", mbi.Protect, PAGE_READWRITE);
    check("s5 order: NULL old on free memory -> 998 not 487", vp((void *)(RP + 0x100000), PAGE, PAGE_READONLY, 0), E998);
    check("s5 order: NULL old on uncommitted pages -> 998 not 487", vp((char *)a + 0x9000, PAGE, PAGE_READONLY, 0), E998);
    old = 0xDEAD;
    check("s5.3 address in kernel space -> 87", vp(KERNEL_ADDR, PAGE, PAGE_READONLY, &old), E87);
    check("s5.3 non-canonical address -> 87", vp(NONCANON, PAGE, PAGE_READONLY, &old), E87);
    check("s5.3 address above max_application_address -> 87", vp((void *)(S->max_application_address + 1), PAGE, PAGE_READONLY, &old), E87);
    hr = vp(a, 0, PAGE_READONLY, &old);
    check2("s5.3 dwSize 0: 87 (ReactOS) or S_OK (Wine)", hr, E87, 0);
    vp(a, PAGE, PAGE_READWRITE, &old);
    old = 0xDEAD;
    check("s5.4 protect a+1, size 1 S_OK", vp((char *)a + 1, 1, PAGE_READONLY, &old), 0);
    check("s5.7 ... old = READWRITE", old, PAGE_READWRITE);
    vq(a, &mbi);
    check("s5.4 ... exactly one page changed", mbi.Protect == PAGE_READONLY && mbi.RegionSize == PAGE, 1);
    check("s5.4 protect +0x5000 size 0x1001 changes two pages", vp((char *)a + 0x5000, 0x1001, PAGE_READONLY, &old), 0);
    vq((char *)a + 0x5000, &mbi);
    check("s5.4 ... RegionSize 0x2000 READONLY", mbi.Protect == PAGE_READONLY && mbi.RegionSize == 0x2000, 1);
    vp((char *)a + 0x5000, 0x2000, PAGE_READWRITE, &old);
    old = 0xDEAD;
    check("s5.5 free memory -> 487", vp((void *)(RP + 0x100000), PAGE, PAGE_READONLY, &old), E487);
    check("h9 ... *pflOldProtect untouched (not PAGE_NOACCESS)", old, 0xDEAD);
    check("s5.5 past the allocation end -> 487", vp((char *)a + 0xF000, 0x2000, PAGE_READONLY, &old), E487);
    check("s5.6 range with an uncommitted page -> 487", vp((char *)a + 0x7000, 0x2000, PAGE_READONLY, &old), E487);
    vq((char *)a + 0x7000, &mbi);
    check("s5.6 ... no page changed", mbi.Protect == PAGE_READWRITE && mbi.RegionSize == PAGE, 1);
    check("s5.6 reserved page only -> 487", vp((char *)a + 0x9000, PAGE, PAGE_READONLY, &old), E487);
    old = 0xDEAD;
    check("s5.7 protect 2 pages whose first is READONLY", vp(a, 0x2000, PAGE_EXECUTE_READ, &old), 0);
    check("s5.7 ... old = protection of the first page (READONLY)", old, PAGE_READONLY);
    vq(a, &mbi);
    check("s5.7 ... both pages EXECUTE_READ", mbi.Protect == PAGE_EXECUTE_READ && mbi.RegionSize == 0x2000, 1);
    check("s5.7 protect first page RW|GUARD", vp((char *)a + 0x2000, PAGE, PAGE_READWRITE | PAGE_GUARD, &old), 0);
    check("s5.7 protect it RW: old includes GUARD (0x104)", (vp((char *)a + 0x2000, PAGE, PAGE_READWRITE, &old), old), 0x104);
    /* Contents survive any protection change; the protections are enforced. */
    *(volatile uint8_t *)((char *)a + 0x3000) = 0xFF;
    vp((char *)a + 0x3000, PAGE, PAGE_READONLY, &old);
    vp((char *)a + 0x3000, PAGE, PAGE_NOACCESS, &old);
    check("s5 NOACCESS committed page can be re-protected", vp((char *)a + 0x3000, PAGE, PAGE_READONLY, &old), 0);
    check("s5 ... old NOACCESS", old, PAGE_NOACCESS);
    check("s5 contents survive RW->READONLY->NOACCESS->READONLY", rd8((char *)a + 0x3000), 0xFF);
    wr8((char *)a + 0x3004, 1);
    check("s8 READONLY write -> access violation (write, address)", g_av_count == 1 && g_av_access == 1 && g_av_addr == (uint64_t)a + 0x3004, 1);
    vp((char *)a + 0x3000, PAGE, PAGE_NOACCESS, &old);
    rd8((char *)a + 0x3008);
    check("s8 NOACCESS read -> access violation (read, address)", g_av_count == 1 && g_av_access == 0 && g_av_addr == (uint64_t)a + 0x3008, 1);
    memcpy((char *)a + 0x4000, ret42, sizeof ret42);
    check("s8 execute in a READWRITE page -> access violation (execute)", (exec_at((char *)a + 0x4000), g_av_count == 1 && g_av_access == 8 && g_av_addr == (uint64_t)a + 0x4000), 1);
    vp((char *)a + 0x4000, PAGE, PAGE_EXECUTE_READ, &old);
    check("s5 EXECUTE_READ page runs code", exec_at((char *)a + 0x4000), 42);
    vp((char *)a + 0x4000, PAGE, PAGE_EXECUTE_READWRITE, &old);
    check("s5 EXECUTE_READWRITE page runs code", exec_at((char *)a + 0x4000), 42);
    release(a);
    /* Two adjacent allocations. */
    a = a2 = 0;
    va((void *)RP, GRAN, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, &a);
    va((void *)(RP + GRAN), GRAN, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, &a2);
    old = 0xDEAD;
    check("s5.5 range spanning two allocations -> 487", vp((void *)(RP + 0xF000), 0x2000, PAGE_READONLY, &old), E487);
    vq((void *)(RP + 0xF000), &mbi);
    check("s5.5 ... nothing changed", mbi.Protect, PAGE_READWRITE);
    release(a);
    release(a2);
    /* Image and host pages. */
    vq((void *)rodata_page, &mbi);
    old = 0xDEAD;
    check("h9 VirtualProtect on image pages works (same protection)", vp((void *)rodata_page, 1, mbi.Protect, &old), 0);
    check("h9 ... old = the image page's protection", old, mbi.Protect);
    check("h9 VirtualProtect on the host pages -> 487", vp((void *)S, 1, PAGE_READONLY, &old), E487);
}

/* ================= VirtualQuery (win32 §6, host §4) ================= */
/* Walks all of user space with VirtualQuery and checks the region invariants of s6. */
static void walk_user_space(void) {
    MEMORY_BASIC_INFORMATION mbi, prev;
    uint64_t addr = 0, end = S->max_application_address + 1;
    int n = 0, tiles = 1, free_adj = 0, same_adj = 0, free_fields = 0, resv_prot = 0, crosses = 0;
    memset(&prev, 0, sizeof prev);
    while (addr < end && n < 20000) {
        if (vq((void *)addr, &mbi) != 0 || mbi.BaseAddress != addr || mbi.RegionSize == 0 || (mbi.RegionSize & 0xFFF)) {
            tiles = 0;
            break;
        }
        if (mbi.BaseAddress + mbi.RegionSize > end) crosses++;
        if (mbi.State == MEM_FREE) {
            if (mbi.AllocationBase || mbi.AllocationProtect || mbi.Type || mbi.Protect != PAGE_NOACCESS) free_fields++;
            if (n && prev.State == MEM_FREE) free_adj++;
        } else {
            if (mbi.State == MEM_RESERVE && mbi.Protect != 0) resv_prot++;
            if (n && prev.State != MEM_FREE && prev.AllocationBase == mbi.AllocationBase && prev.State == mbi.State && prev.Protect == mbi.Protect) same_adj++;
        }
        prev = mbi;
        addr += mbi.RegionSize;
        n++;
    }
    info("regions in user space", (uint64_t)n);
    check("s6 walk: regions tile user space exactly up to max_application_address + 1", tiles && addr == end && crosses == 0, 1);
    check("s6 walk: no two adjacent free regions (a free region runs to the next allocation)", free_adj, 0);
    check("s6 walk: adjacent regions of one allocation differ in State or Protect (maximal runs)", same_adj, 0);
    check("s6 walk: free regions: AllocationBase 0, AllocationProtect 0, Type 0, Protect NOACCESS", free_fields, 0);
    check("s6 walk: reserved regions report Protect 0", resv_prot, 0);
}

#define RQ 0x304000000000ull
static void t_query(void) {
    MEMORY_BASIC_INFORMATION mbi;
    uint8_t big[64];
    SIZE_T r;
    void *a, *m, *a2;
    DWORD old;
    area("query");
    a = 0;
    va((void *)(RQ + 0x100000), GRAN, MEM_RESERVE, PAGE_READWRITE, &a);
    r = 0;
    memset(&mbi, 0xCC, sizeof mbi);
    check("s6 query free memory S_OK", (uint32_t)V->VirtualQuery(H, (void *)RQ, &mbi, 48, &r), 0);
    check("h4 *pResult = 48", r, 48);
    check("s6 free: BaseAddress", mbi.BaseAddress, RQ);
    check("s6 free: AllocationBase NULL", mbi.AllocationBase, 0);
    check("s6 free: AllocationProtect 0", mbi.AllocationProtect, 0);
    check("s6 free: State MEM_FREE", mbi.State, MEM_FREE);
    check("s6 free: Protect PAGE_NOACCESS", mbi.Protect, PAGE_NOACCESS);
    check("s6 free: Type 0", mbi.Type, 0);
    check("s6 free: RegionSize up to the next allocation", mbi.RegionSize, 0x100000);
    check("h9 PartitionId and padding written as zero", mbi.PartitionId | mbi._padding1 | mbi._padding2, 0);
    vq((void *)(RQ + 0x1234), &mbi);
    check("s6 BaseAddress rounded down to a page", mbi.BaseAddress, RQ + 0x1000);
    check("s6 ... RegionSize from there", mbi.RegionSize, 0xFF000);
    release(a);
    /* reserve 0xFFFC */
    a = 0;
    va((void *)RQ, 0xFFFC, MEM_RESERVE, PAGE_READWRITE, &a);
    vq(a, &mbi);
    check("s6 reserve 0xFFFC: RegionSize 0x10000, MEM_RESERVE, Protect 0", mbi.RegionSize == GRAN && mbi.State == MEM_RESERVE && mbi.Protect == 0, 1);
    check("s6 ... AllocationBase, AllocationProtect, Type MEM_PRIVATE", mbi.AllocationBase == RQ && mbi.AllocationProtect == PAGE_READWRITE && mbi.Type == MEM_PRIVATE, 1);
    va(a, PAGE, MEM_COMMIT, PAGE_NOACCESS, &m);
    vq(a, &mbi);
    check("s6 commit first page NOACCESS: RegionSize 0x1000, MEM_COMMIT, Protect 1", mbi.RegionSize == PAGE && mbi.State == MEM_COMMIT && mbi.Protect == PAGE_NOACCESS, 1);
    check("s6 ... AllocationProtect unchanged by commit", mbi.AllocationProtect, PAGE_READWRITE);
    vq((void *)(RQ + 0xF700), &mbi);
    check("s6 query +0xF700: BaseAddress +0xF000, AllocationBase the base", mbi.BaseAddress == RQ + 0xF000 && mbi.AllocationBase == RQ, 1);
    check("s6 ... reserved run to the end (0x1000)", mbi.RegionSize, PAGE);
    /* coalescing */
    va(a, GRAN, MEM_COMMIT, PAGE_READWRITE, &m);
    vq(a, &mbi);
    check("s6 16 committed RW pages: one region 0x10000", mbi.RegionSize, GRAN);
    vp((char *)a + 0x4000, 0x3000, PAGE_READONLY, &old);
    vq((char *)a + 0x4000, &mbi);
    check("s6 3 pages READONLY: RegionSize 0x3000", mbi.RegionSize, 0x3000);
    vq(a, &mbi);
    check("s6 run before them: RegionSize 0x4000", mbi.RegionSize, 0x4000);
    vq((char *)a + 0x7000, &mbi);
    check("s6 run after them: RegionSize 0x9000", mbi.RegionSize, 0x9000);
    vp((char *)a + 0x5000, PAGE, PAGE_READONLY | PAGE_GUARD, &old);
    vq((char *)a + 0x4000, &mbi);
    check("s6 GUARD bit splits a run", mbi.RegionSize, PAGE);
    vp((char *)a + 0x4000, 0x3000, PAGE_READWRITE, &old);
    vq(a, &mbi);
    check("s6 runs re-merge once attributes equalise (0x10000)", mbi.RegionSize, GRAN);
    vq((char *)a + 0x2345, &mbi);
    check("s6 query in the middle of a run: RegionSize from its page", mbi.RegionSize, GRAN - 0x2000);
    /* a fully decommitted allocation is one reserved region whatever the former protections */
    vp((char *)a + 0x3000, 0x2000, PAGE_EXECUTE_READ, &old);
    vp((char *)a + 0x8000, 0x1000, PAGE_NOACCESS, &old);
    vf(a, GRAN, MEM_DECOMMIT);
    vq((char *)a + 0x1000, &mbi);
    check("s6 after decommit of mixed protections: one reserved region (0xF000, Protect 0)", mbi.State == MEM_RESERVE && mbi.RegionSize == GRAN - PAGE && mbi.Protect == 0, 1);
    va(a, GRAN, MEM_COMMIT, PAGE_READWRITE, &m);
    /* adjacent allocations never merge */
    a2 = 0;
    va((void *)(RQ + GRAN), GRAN, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, &a2);
    vq(a, &mbi);
    check("s6 adjacent identical allocations are not merged", mbi.RegionSize, GRAN);
    /* errors */
    r = 0x1234;
    check("h4 dwLength 47 -> 24 (ERROR_BAD_LENGTH)", (uint32_t)V->VirtualQuery(H, a, &mbi, 47, &r), E24);
    check("h4 ... *pResult 0", r, 0);
    r = 0x1234;
    check("h4 dwLength 0 -> 24", (uint32_t)V->VirtualQuery(H, a, &mbi, 0, &r), E24);
    memset(big, 0xEE, sizeof big);
    r = 0;
    check("s6 dwLength 64 S_OK", (uint32_t)V->VirtualQuery(H, a, big, sizeof big, &r), 0);
    check("s6 ... writes 48 bytes only", r == 48 && big[48] == 0xEE && big[63] == 0xEE, 1);
    r = 0x1234;
    check("h4 beyond user space (non-canonical) -> 87", (uint32_t)V->VirtualQuery(H, NONCANON, &mbi, 48, &r), E87);
    check("h4 ... *pResult 0", r, 0);
    check("h4 kernel address -> 87", (uint32_t)V->VirtualQuery(H, KERNEL_ADDR, &mbi, 48, &r), E87);
    check("h4 last page of the address space -> 87", (uint32_t)V->VirtualQuery(H, (void *)0xFFFFFFFFFFFFF000ull, &mbi, 48, &r), E87);
    check("h9 max_application_address + 1 -> 87", (uint32_t)V->VirtualQuery(H, (void *)(S->max_application_address + 1), &mbi, 48, &r), E87);
    check("s6 max_application_address itself S_OK", (uint32_t)V->VirtualQuery(H, (void *)S->max_application_address, &mbi, 48, &r), 0);
    check("s6 NULL address: free page S_OK", vq(0, &mbi) == 0 && mbi.State == MEM_FREE && mbi.BaseAddress == 0, 1);
    r = 0x1234;
    check("s6 lpBuffer NULL -> 998", (uint32_t)V->VirtualQuery(H, a, 0, 48, &r), E998);
    check("h9 ... *pResult 0", r, 0);
    check("s6 lpBuffer read-only -> 998", (uint32_t)V->VirtualQuery(H, a, (void *)rodata_page, 48, &r), E998);
    check("h4 pResult NULL -> E_POINTER", (uint32_t)V->VirtualQuery(H, a, &mbi, 48, 0), EPTR);
    check("h9 order: pResult NULL + lpBuffer NULL -> E_POINTER", (uint32_t)V->VirtualQuery(H, a, 0, 48, 0), EPTR);
    check("h9 order: pResult NULL + short length -> E_POINTER", (uint32_t)V->VirtualQuery(H, a, &mbi, 1, 0), EPTR);
    check("h9 order: short length + lpBuffer NULL -> 24 (validation before lpBuffer)", (uint32_t)V->VirtualQuery(H, a, 0, 1, &r), E24);
    check("h9 order: beyond user space + lpBuffer NULL -> 87", (uint32_t)V->VirtualQuery(H, NONCANON, 0, 48, &r), E87);
    walk_user_space();
    release(a);
    release(a2);
    /* the guest's stack (h1): 1 MiB reserved, committed RW top, one PAGE_GUARD page below */
    {
        volatile int local = 0;
        uint64_t base;
        vq((void *)&local, &mbi);
        base = mbi.AllocationBase;
        check("h1 stack: committed READWRITE, MEM_PRIVATE", mbi.State == MEM_COMMIT && mbi.Protect == PAGE_READWRITE && mbi.Type == MEM_PRIVATE, 1);
        vq((void *)base, &mbi);
        check("h1 stack: bottom of the reservation is reserved", mbi.State, MEM_RESERVE);
        vq((void *)(base + mbi.RegionSize), &mbi);
        check("h1 stack: a single PAGE_GUARD page above the reserved part", mbi.State == MEM_COMMIT && mbi.Protect == (PAGE_READWRITE | PAGE_GUARD) && mbi.RegionSize == PAGE, 1);
        vq((void *)(mbi.BaseAddress + PAGE), &mbi);
        check("h1 stack: committed READWRITE from there to the top, 1 MiB in all", mbi.Protect == PAGE_READWRITE && mbi.BaseAddress + mbi.RegionSize - base == MIB, 1);
        (void)local;
    }
    {
        uint8_t *ro = (uint8_t *)((uint64_t)rodata_page & ~0xFFFull);
        check("h9 image page VirtualProtect READONLY -> READWRITE", vp(ro, 1, PAGE_READWRITE, &old) == 0 && old == PAGE_READONLY, 1);
        wr8(ro + 8, rd8(ro + 8));
        check("h9 ... then writable", g_av_count, 0);
        check("h9 ... and back to READONLY", vp(ro, 1, PAGE_READONLY, &old) == 0 && old == PAGE_READWRITE, 1);
        wr8(ro + 8, 0);
        check("h9 ... then a write faults again", g_av_count, 1);
    }
    /* the image and the host pages */
    vq((void *)guest_main, &mbi);
    check("h9 image: Type MEM_IMAGE", mbi.Type, MEM_IMAGE);
    check("h9 image: AllocationProtect PAGE_EXECUTE_WRITECOPY", mbi.AllocationProtect, PAGE_EXECUTE_WRITECOPY);
    check("h1 image: code page PAGE_EXECUTE_READ", mbi.Protect, PAGE_EXECUTE_READ);
    check("h9 image: AllocationBase is the static-PIE base 0x140000000", mbi.AllocationBase, 0x140000000ull);
    vq((void *)rodata_page, &mbi);
    check("h1 image: .rodata page PAGE_READONLY", mbi.Protect, PAGE_READONLY);
    vq((void *)S, &mbi);
    check("h9 host data page: MEM_IMAGE, PAGE_READONLY", mbi.Type == MEM_IMAGE && mbi.Protect == PAGE_READONLY, 1);
    vq((void *)(uint64_t)S->write, &mbi);
    check("h9 host stub page: MEM_IMAGE, PAGE_EXECUTE_READ", mbi.Type == MEM_IMAGE && mbi.Protect == PAGE_EXECUTE_READ, 1);
}

/* ================= write watch (win32 §7, host §7) ================= */
static void t_write_watch(void) {
    void *w, *n, *m, *addrs[32];
    uint64_t count;
    uint32_t gran, r;
    DWORD old;
    MEMORY_BASIC_INFORMATION mbi;
    char *c;
    area("write-watch");
    w = reserve(GRAN, MEM_RESERVE | MEM_WRITE_WATCH, PAGE_NOACCESS);
    if (!w) {
        skip("s7 write watch group", "MEM_RESERVE|MEM_WRITE_WATCH failed");
        return;
    }
    c = (char *)w;
    check("s7 commit later in a write-watch reservation", va(w, GRAN, MEM_COMMIT, PAGE_READWRITE, &m), 0);
    count = 32;
    gran = 0;
    check("s7 get_write_watch fresh -> 0", S->get_write_watch(0, w, GRAN, addrs, &count, &gran), 0);
    check("s7 ... count 0", count, 0);
    check("s7 ... granularity 0x1000", gran, 0x1000);
    c[0x1000] = 1;
    c[0x5010] = 1;
    (void)*(volatile char *)(c + 0x2000);
    wr64(c + 0x7FFC, 0x1122334455667788ull);
    count = 32;
    check("s7 get_write_watch after writes -> 0", S->get_write_watch(0, w, GRAN, addrs, &count, &gran), 0);
    check("s7 ... 4 pages (reads do not dirty; a straddling write marks both)", count, 4);
    check("s7 ... ascending page addresses", (uint64_t)addrs[0] == (uint64_t)c + 0x1000 && (uint64_t)addrs[1] == (uint64_t)c + 0x5000 &&
                                                 (uint64_t)addrs[2] == (uint64_t)c + 0x7000 && (uint64_t)addrs[3] == (uint64_t)c + 0x8000, 1);
    vq(w, &mbi);
    check("s6 dirty bits do not split a VirtualQuery run", mbi.RegionSize, GRAN);
    count = 2;
    check("s7 count 2 with 4 dirty pages -> 0", S->get_write_watch(0, w, GRAN, addrs, &count, &gran), 0);
    check("s7 ... returns the first 2 (count 2)", count == 2 && (uint64_t)addrs[1] == (uint64_t)c + 0x5000, 1);
    count = 1;
    check("s7 RESET with count 1 -> 0", S->get_write_watch(WRITE_WATCH_FLAG_RESET, w, GRAN, addrs, &count, &gran), 0);
    check("s7 ... returns the first dirty page only", count == 1 && (uint64_t)addrs[0] == (uint64_t)c + 0x1000, 1);
    count = 32;
    S->get_write_watch(0, w, GRAN, addrs, &count, &gran);
    check("s7 ... only that page was reset (3 remain)", count, 3);
    count = 32;
    check("s7 get_write_watch on a sub-range", (S->get_write_watch(0, c + 0x6000, 0x2000, addrs, &count, &gran), count == 1 && (uint64_t)addrs[0] == (uint64_t)c + 0x7000), 1);
    /* An unaligned base: every page touching [base, base + size) counts (c + 0x5000, c + 0x7000
     * and c + 0x8000 are dirty here). */
    count = 32;
    check("s7 unaligned base: pages touching the range (c+0x4800, 0x1000 -> 0x4000, 0x5000)",
          (S->get_write_watch(0, c + 0x4800, 0x1000, addrs, &count, &gran), count == 1 && (uint64_t)addrs[0] == (uint64_t)c + 0x5000), 1);
    count = 32;
    check("s7 unaligned base and end: c+0x6FFF, 2 bytes touch 0x6000 and 0x7000",
          (S->get_write_watch(0, c + 0x6FFF, 2, addrs, &count, &gran), count == 1 && (uint64_t)addrs[0] == (uint64_t)c + 0x7000), 1);
    count = 32;
    check("s7 unaligned: c+0x7800, 0x801 bytes touch 0x7000 and 0x8000, both dirty",
          (S->get_write_watch(0, c + 0x7800, 0x801, addrs, &count, &gran), count), 2);
    count = 32;
    check("s7 unaligned RESET: c+0x7FFF, 2 bytes return and reset both",
          (S->get_write_watch(WRITE_WATCH_FLAG_RESET, c + 0x7FFF, 2, addrs, &count, &gran), count), 2);
    count = 32;
    check("s7 ... both were reset (0x5000 left)",
          (S->get_write_watch(0, w, GRAN, addrs, &count, &gran), count == 1 && (uint64_t)addrs[0] == (uint64_t)c + 0x5000), 1);
    check("s7 reset_write_watch -> 0", S->reset_write_watch(w, GRAN), 0);
    count = 32;
    S->get_write_watch(0, w, GRAN, addrs, &count, &gran);
    check("s7 ... nothing dirty after reset", count, 0);
    /* protection changes do not touch dirty state */
    c[0x3000] = 1;
    vp(c + 0x3000, 0x2000, PAGE_READONLY, &old);
    vp(c + 0x3000, 0x2000, PAGE_READWRITE, &old);
    count = 32;
    S->get_write_watch(0, w, GRAN, addrs, &count, &gran);
    check("s7 VirtualProtect keeps the dirty page and dirties nothing", count == 1 && (uint64_t)addrs[0] == (uint64_t)c + 0x3000, 1);
    S->reset_write_watch(w, GRAN);
    /* a faulting write does not mark */
    vp(c + 0x9000, PAGE, PAGE_READONLY, &old);
    wr8(c + 0x9000, 1);
    count = 32;
    S->get_write_watch(0, w, GRAN, addrs, &count, &gran);
    check("h9 a write that faults does not mark the page", g_av_count == 1 && count == 0, 1);
    /* guard page write: guard exception, then the retried write marks */
    vp(c + 0xA000, PAGE, PAGE_READWRITE | PAGE_GUARD, &old);
    g_guard_count = 0;
    c[0xA000] = 5;
    count = 32;
    S->get_write_watch(0, w, GRAN, addrs, &count, &gran);
    check("s7 guard-page write: one guard exception, then the page is dirty", g_guard_count == 1 && count == 1 && (uint64_t)addrs[0] == (uint64_t)c + 0xA000, 1);
    S->reset_write_watch(w, GRAN);
    /* decommit clears dirty state */
    c[0xB000] = 1;
    vf(c + 0xB000, PAGE, MEM_DECOMMIT);
    count = 32;
    S->get_write_watch(0, w, GRAN, addrs, &count, &gran);
    check("s7 decommit clears the page's dirty state", count, 0);
    va(c + 0xB000, PAGE, MEM_COMMIT, PAGE_READWRITE, &m);
    count = 32;
    S->get_write_watch(0, w, GRAN, addrs, &count, &gran);
    check("s7 ... recommit does not dirty it", count, 0);
    /* kernel-side writes count as writes */
    {
        SIZE_T rr;
        S->reset_write_watch(w, GRAN);
        V->VirtualQuery(H, (void *)rodata_page, c + 0xC000, 48, &rr);
        count = 32;
        S->get_write_watch(0, w, GRAN, addrs, &count, &gran);
        check("s7 a host write (VirtualQuery into the buffer) marks the page", count == 1 && (uint64_t)addrs[0] == (uint64_t)c + 0xC000, 1);
    }
    /* out-pointers of get_write_watch in a guard page */
    {
        uint64_t *gp = (uint64_t *)(c + 0xD000);
        vp(gp, PAGE, PAGE_READWRITE | PAGE_GUARD, &old);
        check("h9 get_write_watch count in a guard page -> 0x80000001", S->get_write_watch(0, w, GRAN, addrs, gp, &gran), GUARDV);
        vq(gp, &mbi);
        check("h9 ... the page lost its guard bit", mbi.Protect, PAGE_READWRITE);
        vp(gp, PAGE, PAGE_READWRITE | PAGE_GUARD, &old);
        count = 32;
        check("h9 get_write_watch addresses in a guard page -> 0x80000001", S->get_write_watch(0, w, GRAN, (void **)gp, &count, &gran), GUARDV);
        vp(gp, PAGE, PAGE_READWRITE | PAGE_GUARD, &old);
        count = 32;
        check("h9 get_write_watch granularity in a guard page -> 0x80000001", S->get_write_watch(0, w, GRAN, addrs, &count, (uint32_t *)gp), GUARDV);
        vp(gp, PAGE, PAGE_READWRITE, &old);
        *gp = 32;
        check("h9 ... retry succeeds", S->get_write_watch(0, w, GRAN, addrs, gp, &gran), 0);
    }
    n = reserve(GRAN, MEM_RESERVE | MEM_COMMIT | MEM_WRITE_WATCH, PAGE_READWRITE);
    count = 32;
    check("s7 RESERVE|COMMIT|WRITE_WATCH: fresh committed pages are not dirty", n ? (S->get_write_watch(0, n, GRAN, addrs, &count, &gran) == 0 && count == 0) : 0, 1);
    release(n);
    /* errors */
    n = reserve(GRAN, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
    count = 32;
    check("s7 region without MEM_WRITE_WATCH -> 87", S->get_write_watch(0, n, GRAN, addrs, &count, &gran), ERROR_INVALID_PARAMETER);
    count = 32;
    check("s7 the image -> 87", S->get_write_watch(0, (void *)0x140000000ull, PAGE, addrs, &count, &gran), ERROR_INVALID_PARAMETER);
    count = 32;
    check("s7 NULL base -> 87", S->get_write_watch(0, 0, PAGE, addrs, &count, &gran), ERROR_INVALID_PARAMETER);
    count = 32;
    check("s7 size 0 -> 87", S->get_write_watch(0, w, 0, addrs, &count, &gran), ERROR_INVALID_PARAMETER);
    count = 32;
    check("s7 size past the region end -> 87", S->get_write_watch(0, w, GRAN + PAGE, addrs, &count, &gran), ERROR_INVALID_PARAMETER);
    count = 32;
    check("s7 flags 2 -> 87", S->get_write_watch(2, w, GRAN, addrs, &count, &gran), ERROR_INVALID_PARAMETER);
    count = 32;
    check("s7 flags 0xFFFFFFFF -> 87", S->get_write_watch(0xFFFFFFFFu, w, GRAN, addrs, &count, &gran), ERROR_INVALID_PARAMETER);
    count = 0;
    check("s7 *count == 0 -> 87", S->get_write_watch(0, w, GRAN, addrs, &count, &gran), ERROR_INVALID_PARAMETER);
    check("s7 count pointer NULL -> 998", S->get_write_watch(0, w, GRAN, addrs, 0, &gran), ERROR_NOACCESS);
    count = 32;
    check("s7 granularity pointer NULL -> 998", S->get_write_watch(0, w, GRAN, addrs, &count, 0), ERROR_NOACCESS);
    count = 32;
    check("s7 addresses NULL with *count > 0 -> 998", S->get_write_watch(0, w, GRAN, 0, &count, &gran), ERROR_NOACCESS);
    count = 32;
    check("s7 addresses array read-only -> 998", S->get_write_watch(0, w, GRAN, (void **)rodata_page, &count, &gran), ERROR_NOACCESS);
    check("s7 count pointer read-only -> 998", S->get_write_watch(0, w, GRAN, addrs, (uint64_t *)rodata_page, &gran), ERROR_NOACCESS);
    /* The array is checked for all *count entries, as Windows probes it, however few pages the
     * range has (16 here). */
    {
        char *t = (char *)reserve(GRAN, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
        if (t) {
            vp(t + PAGE, PAGE, PAGE_READONLY, &old);
            count = 17;
            check("s7 *count 17, the array's room 16 entries before a read-only page -> 998",
                  S->get_write_watch(0, w, GRAN, (void **)(t + PAGE - 16 * 8), &count, &gran), ERROR_NOACCESS);
            check("s7 ... *count untouched", count, 17);
            count = 16;
            check("s7 *count 16 in the same room -> 0", S->get_write_watch(0, w, GRAN, (void **)(t + PAGE - 16 * 8), &count, &gran), 0);
            count = ~0ull;
            check("s7 *count ~0 (its bytes wrap) -> 998", S->get_write_watch(0, w, GRAN, addrs, &count, &gran), ERROR_NOACCESS);
            count = 1ull << 44;
            check("s7 *count 2^44 (past user space) -> 998", S->get_write_watch(0, w, GRAN, addrs, &count, &gran), ERROR_NOACCESS);
            release(t);
        }
    }
    check("s7 reset_write_watch size 0 -> 87", S->reset_write_watch(w, 0), ERROR_INVALID_PARAMETER);
    check("s7 reset_write_watch on a region without MEM_WRITE_WATCH -> 87", S->reset_write_watch(n, GRAN), ERROR_INVALID_PARAMETER);
    check("s7 reset_write_watch past the region end -> 87", S->reset_write_watch(w, 2 * GRAN), ERROR_INVALID_PARAMETER);
    release(n);
    r = vf(w, 0, MEM_RELEASE);
    count = 32;
    check("s7 tracking ends at release: get_write_watch -> 87", r == 0 ? S->get_write_watch(0, w, GRAN, addrs, &count, &gran) : 0, ERROR_INVALID_PARAMETER);
}

/* ================= guard pages (win32 §8, host §8) ================= */
static void t_guard(void) {
    void *a, *m, *g;
    MEMORY_BASIC_INFORMATION mbi;
    DWORD old;
    char *c;
    uint8_t v;
    area("guard");
    a = reserve(GRAN, MEM_RESERVE, PAGE_READWRITE | PAGE_GUARD);
    if (!a || va(a, 0x6000, MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD, &m) != 0) {
        skip("s8 guard group", "reserve/commit with PAGE_GUARD failed");
        return;
    }
    c = (char *)a;
    vq(a, &mbi);
    check("s6 AllocationProtect keeps GUARD", mbi.AllocationProtect, PAGE_READWRITE | PAGE_GUARD);
    check("s8 committed guard pages: Protect RW|GUARD", mbi.Protect, PAGE_READWRITE | PAGE_GUARD);
    v = rd8(c + 0x10);
    check("s8 read of a guard page: one 0x80000001", g_guard_count, 1);
    check("s8 ... access 0 (read)", g_guard_access, 0);
    check("s8 ... address of the access", g_guard_addr, (uint64_t)c + 0x10);
    check("s8 ... the retried read succeeds (zero) without an access violation", v == 0 && g_av_count == 0, 1);
    rd8(c + 0x20);
    check("s8 second read: no exception", g_guard_count, 0);
    vq(a, &mbi);
    check("s8 guard bit cleared: Protect RW", mbi.Protect == PAGE_READWRITE && mbi.RegionSize == PAGE, 1);
    check("s8 ... AllocationProtect keeps GUARD", mbi.AllocationProtect, PAGE_READWRITE | PAGE_GUARD);
    vq(c + 0x1000, &mbi);
    check("s8 only the touched page lost its guard", mbi.Protect == (PAGE_READWRITE | PAGE_GUARD) && mbi.RegionSize == 0x5000, 1);
    wr8(c + 0x1234, 0x77);
    check("s8 write to a guard page: one 0x80000001, access 1, address", g_guard_count == 1 && g_guard_access == 1 && g_guard_addr == (uint64_t)c + 0x1234, 1);
    check("s8 ... the retried write happened", *(volatile uint8_t *)(c + 0x1234), 0x77);
    old = 0;
    check("s8 re-arm with VirtualProtect RW|GUARD", vp(c + 0x1000, PAGE, PAGE_READWRITE | PAGE_GUARD, &old), 0);
    check("s8 ... old = RW", old, PAGE_READWRITE);
    rd8(c + 0x1000);
    check("s8 re-armed guard fires again", g_guard_count, 1);
    /* execute */
    memcpy(c + 0x2000, ret42, sizeof ret42);
    vp(c + 0x2000, PAGE, PAGE_EXECUTE_READ | PAGE_GUARD, &old);
    check("s8 execute in a guard page: the retried call runs", exec_at(c + 0x2000), 42);
    check("s8 ... one 0x80000001, access 8, address = the code", g_guard_count == 1 && g_guard_access == 8 && g_guard_addr == (uint64_t)c + 0x2000, 1);
    /* an access straddling two guard pages: one exception per page, then it succeeds */
    {
        char *t = reserve(2 * PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD);
        if (t) {
            wr64(t + PAGE - 4, 0xA1A2A3A4A5A6A7A8ull);
            check("s8 write straddling two guard pages: two guard exceptions, then the write", g_guard_count == 2 && g_av_count == 0 && *(volatile uint64_t *)(t + PAGE - 4) == 0xA1A2A3A4A5A6A7A8ull, 1);
            release(t);
        }
    }
    /* a guard page read by the host (riid of QueryInterface) */
    {
        char *t = reserve(PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
        void *pv = 0;
        if (t) {
            memcpy(t, &IID_IUnknown, sizeof(GUID));
            vp(t, PAGE, PAGE_READWRITE | PAGE_GUARD, &old);
            check("s8 host read of a guard page (QueryInterface riid) -> 0x80000001", (uint32_t)V->QueryInterface(H, (REFIID)t, &pv), GUARDV);
            check("s8 ... retry S_OK", (uint32_t)V->QueryInterface(H, (REFIID)t, &pv), 0);
            if (pv) V->Release(H);
            release(t);
        }
    }
    /* guard first, then protection */
    vp(c + 0x3000, PAGE, PAGE_READONLY | PAGE_GUARD, &old);
    wr8(c + 0x3000, 1);
    check("s8 write to READONLY|GUARD: guard exception first, then access violation", g_guard_count == 1 && g_av_count == 1 && g_av_access == 1, 1);
    /* reserved page of a GUARD reservation: plain access violation */
    rd8(c + 0x8000);
    check("s8 reserved page of a GUARD reservation: access violation, no guard exception", g_guard_count == 0 && g_av_count == 1 && g_av_access == 0 && g_av_addr == (uint64_t)c + 0x8000, 1);
    /* reserved page whose earlier commit had GUARD */
    vf(c + 0x5000, PAGE, MEM_DECOMMIT);
    rd8(c + 0x5000);
    check("s8 decommitted former guard page: access violation, no guard exception", g_guard_count == 0 && g_av_count == 1, 1);
    va(c + 0x5000, PAGE, MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD, &m);
    /* free page */
    rd8((void *)0x3FD000000000ull);
    check("s8 free page read: access violation", g_av_count == 1 && g_av_addr == 0x3FD000000000ull, 1);
    /* committed NOACCESS */
    vp(c + 0x4000, PAGE, PAGE_NOACCESS, &old);
    wr8(c + 0x4000, 1);
    check("s8 NOACCESS write: access violation (write)", g_av_count == 1 && g_av_access == 1, 1);
    /* guard status from a host write into a guard page (s8 system service) */
    g = c + 0x5000; /* still RW|GUARD */
    {
        SIZE_T res = 0;
        check("s8 host write into a guard page -> 0x80000001", (uint32_t)V->VirtualQuery(H, a, g, 48, &res), GUARDV);
    }
    vq(g, &mbi);
    check("s8 ... clears that guard bit", mbi.Protect, PAGE_READWRITE);
    release(a);
}

/* ================= HRESULT mapping and out-values (host §4, §9) ================= */
static void t_hresults(void) {
    void *m, *g, *a;
    HOST_COMMIT_INFO ci;
    MEMORY_BASIC_INFORMATION mbi;
    SIZE_T r, avail;
    DWORD load, old;
    uint64_t c0;
    uint32_t hr;
    area("hresults");
    m = 0;
    check("h4 S_OK", va(0, PAGE, MEM_RESERVE, PAGE_READWRITE, &m), 0);
    release(m);
    S->query_commit(&ci);
    c0 = ci.committed;
    m = (void *)1;
    check("h4 E_OUTOFMEMORY: commit more than commit_limit", val(0, ci.commit_limit + GRAN, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eProcessCritical, &m), EOOM);
    check("h9 ... *ppMem NULL", (uint64_t)m, 0);
    m = (void *)1;
    check("h4 E_OUTOFMEMORY: commit one page more than what is free", val(0, ((ci.commit_limit - ci.committed) & ~0xFFFull) + PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eProcessCritical, &m), EOOM);
    check("h4 ... nothing charged", committed_now(), c0);
    a = reserve(ci.commit_limit + GRAN, MEM_RESERVE, PAGE_READWRITE);
    check("h4 E_OUTOFMEMORY: commit beyond the limit inside a reservation", a ? val(a, ci.commit_limit + GRAN, MEM_COMMIT, PAGE_READWRITE, eProcessCritical, &m) : 0, EOOM);
    if (a) {
        vq(a, &mbi);
        check("h4 ... no page committed", mbi.State == MEM_RESERVE && mbi.RegionSize == ((ci.commit_limit + GRAN + 0xFFF) & ~0xFFFull), 1);
    }
    release(a);
    check("h4 87 -> 0x80070057", va(0, PAGE, 0, PAGE_READWRITE, &m), 0x80070057u);
    check("h4 487 -> 0x800701E7", vf((void *)0x3FC000000000ull, 0, MEM_RELEASE), 0x800701E7u);
    check("h4 998 -> 0x800703E6", va(0, PAGE, MEM_RESERVE, PAGE_READWRITE, (void **)rodata_page), 0x800703E6u);
    r = 5;
    check("h4 24 -> 0x80070018", (uint32_t)V->VirtualQuery(H, (void *)rodata_page, &mbi, 8, &r), 0x80070018u);
    /* E_POINTER for the COM out-pointers */
    check("h4 E_POINTER: VirtualAlloc ppMem NULL", va(0, PAGE, MEM_RESERVE, PAGE_READWRITE, 0), EPTR);
    check("h4 E_POINTER: VirtualQuery pResult NULL", (uint32_t)V->VirtualQuery(H, (void *)rodata_page, &mbi, 48, 0), EPTR);
    load = 0xDEAD;
    check("h4 E_POINTER: GetMemoryLoad pAvailableBytes NULL", (uint32_t)V->GetMemoryLoad(H, &load, 0), EPTR);
    check("h9 ... *pMemoryLoad untouched", load, 0xDEAD);
    avail = 0xDEAD;
    check("h4 E_POINTER: GetMemoryLoad pMemoryLoad NULL", (uint32_t)V->GetMemoryLoad(H, 0, &avail), EPTR);
    check("h9 ... *pAvailableBytes untouched", avail, 0xDEAD);
    check("h9 order: GetMemoryLoad NULL + read-only -> E_POINTER", (uint32_t)V->GetMemoryLoad(H, 0, (SIZE_T *)rodata_page), EPTR);
    check("h4 998: GetMemoryLoad pMemoryLoad read-only", (uint32_t)V->GetMemoryLoad(H, (DWORD *)rodata_page, &avail), E998);
    check("h4 998: GetMemoryLoad pAvailableBytes read-only", (uint32_t)V->GetMemoryLoad(H, &load, (SIZE_T *)rodata_page), E998);
    /* out-pointers in a guard page: 0x80000001, the guard bit goes, the retry succeeds */
    g = reserve(PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD);
    if (!g) {
        skip("h9 out-pointer in a guard page", "no guard page");
        return;
    }
    c0 = committed_now();
    check("h9 VirtualAlloc ppMem in a guard page -> 0x80000001", va(0, PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, (void **)g), GUARDV);
    check("h9 ... nothing else changes (no commit charged)", committed_now(), c0);
    vq(g, &mbi);
    check("h9 ... the page lost its guard bit", mbi.Protect, PAGE_READWRITE);
    check("h9 ... the retried call succeeds", va(0, PAGE, MEM_RESERVE, PAGE_READWRITE, (void **)g) == 0 && *(void **)g != 0, 1);
    release(*(void **)g);
    vp(g, PAGE, PAGE_READWRITE | PAGE_GUARD, &old);
    r = 7;
    check("h9 VirtualQuery lpBuffer in a guard page -> 0x80000001", (uint32_t)V->VirtualQuery(H, (void *)rodata_page, g, 48, &r), GUARDV);
    check("h9 ... *pResult 0", r, 0);
    check("h9 ... retry S_OK", (uint32_t)V->VirtualQuery(H, (void *)rodata_page, g, 48, &r), 0);
    vp(g, PAGE, PAGE_READWRITE | PAGE_GUARD, &old);
    check("h9 VirtualQuery pResult in a guard page -> 0x80000001", (uint32_t)V->VirtualQuery(H, (void *)rodata_page, &mbi, 48, (SIZE_T *)g), GUARDV);
    vp(g, PAGE, PAGE_READWRITE | PAGE_GUARD, &old);
    check("h9 GetMemoryLoad pMemoryLoad in a guard page -> 0x80000001", (uint32_t)V->GetMemoryLoad(H, (DWORD *)g, &avail), GUARDV);
    a = reserve(PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
    vp(g, PAGE, PAGE_READWRITE | PAGE_GUARD, &old);
    hr = vp(a, PAGE, PAGE_READONLY, (DWORD *)g);
    check("h9 VirtualProtect pflOldProtect in a guard page -> 0x80000001", hr, GUARDV);
    vq(a, &mbi);
    check("h9 ... protection not changed", mbi.Protect, PAGE_READWRITE);
    check("h9 ... retry S_OK, old = RW", vp(a, PAGE, PAGE_READONLY, (DWORD *)g) == 0 && *(DWORD *)g == PAGE_READWRITE, 1);
    release(a);
    release(g);
    /* an out-buffer that straddles into a non-writable or guard page: nothing is written */
    {
        char *two = reserve(2 * PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
        if (two) {
            SIZE_T rr = 9;
            memset(two + PAGE - 16, 0x5C, 16);
            vp(two + PAGE, PAGE, PAGE_READONLY, &old);
            check("h4 VirtualQuery lpBuffer straddling into a READONLY page -> 998", (uint32_t)V->VirtualQuery(H, (void *)rodata_page, two + PAGE - 16, 48, &rr), E998);
            check("h4 ... nothing written to the writable part", all_zero(two + PAGE - 16, 16) == 0 && two[PAGE - 16] == 0x5C && two[PAGE - 1] == 0x5C, 1);
            vp(two + PAGE, PAGE, PAGE_READWRITE | PAGE_GUARD, &old);
            check("h9 VirtualQuery lpBuffer straddling into a guard page -> 0x80000001", (uint32_t)V->VirtualQuery(H, (void *)rodata_page, two + PAGE - 16, 48, &rr), GUARDV);
            check("h9 ... nothing written to the writable part", two[PAGE - 16] == 0x5C && two[PAGE - 1] == 0x5C, 1);
            vp(two + PAGE, PAGE, PAGE_READONLY, &old);
            c0 = committed_now();
            check("h4 ppMem straddling into a READONLY page -> 998", va(0, PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, (void **)(two + PAGE - 4)), E998);
            check("h4 ... nothing allocated or charged", committed_now() == c0 && two[PAGE - 4] == 0x5C, 1);
            release(two);
        }
    }
    /* pointers into non-writable guest memory: 998 and nothing changes */
    a = reserve(PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READONLY);
    c0 = committed_now();
    check("h4 ppMem in a READONLY page -> 998", va(0, PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, (void **)a), E998);
    check("h4 ... nothing charged", committed_now(), c0);
    check("h4 ppMem unmapped -> 998", va(0, PAGE, MEM_RESERVE, PAGE_READWRITE, (void **)0x3FB000000000ull), E998);
    release(a);
    info("not reachable by a single-threaded guest without corrupting the kernel: E_FAIL, HOST_E_CLRNOTAVAILABLE, HOST_E_TIMEOUT/NOT_OWNER/ABANDONED", 0);
}

/* ================= host-abi §9 fine points: syscalls ================= */
static void t_fine(void) {
    uint64_t rax;
    area("fine-points");
    __asm__ volatile("syscall" : "=a"(rax) : "a"(0x7FFF1234ull) : "rcx", "r11", "memory");
    check("h9 a syscall the stubs do not make returns E_NOTIMPL in rax", (uint32_t)rax, 0x80004001u);
    probe_reset();
    __asm__ volatile("lea 1f(%%rip), %%rax\n\t"
                     "mov %%rax, %[res]\n\t"
                     "int $0x80\n"
                     "1:\n"
                     : [res] "=m"(g_resume)
                     :
                     : "rax", "memory");
    g_probing = 0;
    check("h9 int 0x80 (not user-callable) raises 0xC0000005", g_av_count == 1 && g_av_code == STATUS_ACCESS_VIOLATION, 1);
    rd8((void *)0x3FA000000000ull);
    check("h8 handler runs below the faulting rsp minus 128 bytes", g_av_count == 1 && g_h_sp < g_ctx_rsp - 128, 1);
    check("h9 handler entered as at a call (its frame pointer is 16-byte aligned)", g_h_frame & 15, 0);
    check("h9 handler entered with DF = 0", g_h_rflags & 0x400, 0);
    check("h9 context rflags has IF = 1", g_ctx_rflags & 0x200, 0x200);
}

/* Run only when the test image patches the mode marker to DF (tests/conformance.rs): a fault
 * raised with DF set. Kept apart because a kernel that does not clear DF on exception entry can
 * crash on it, which would take every other result with it. */
static void t_fault_with_df(void) {
    uint64_t after = 0, rax;
    area("fault-with-df");
    __asm__ volatile("std\n\tsyscall\n\tcld" : "=a"(rax) : "a"(0x7FFF1234ull) : "rcx", "r11", "memory");
    check("h9 a stray syscall with DF set returns E_NOTIMPL (and the kernel survives)", (uint32_t)rax, 0x80004001u);
    probe_reset();
    __asm__ volatile("lea 1f(%%rip), %%rax\n\t"
                     "mov %%rax, %[res]\n\t"
                     "std\n\t"
                     "movb (%[p]), %%al\n"
                     "1:\n\t"
                     "pushfq\n\t"
                     "pop %[fl]\n\t"
                     "cld\n"
                     : [res] "=m"(g_resume), [fl] "=r"(after)
                     : [p] "r"(0x3FA000000000ull)
                     : "rax", "memory");
    g_probing = 0;
    check("h9 fault with DF set: delivered to the handler", g_av_count, 1);
    check("h9 ... handler entered with DF = 0", g_h_rflags & 0x400, 0);
    check("h9 ... context shows DF as set at the fault", g_ctx_rflags & 0x400, 0x400);
    check("h9 ... resume keeps DF as set and IF = 1", after & 0x600, 0x600);
}

/* ================= memory load and critical levels (host §5) ================= */
static void t_levels(void) {
    HOST_COMMIT_INFO ci, ci2;
    DWORD load = 0xDEAD;
    SIZE_T avail = 0, avail2;
    void *p1 = 0, *p2 = 0, *p3 = 0, *m;
    uint64_t task, half, rem, exp_load;
    area("levels");
    S->query_commit(&ci);
    check("h5 GetMemoryLoad S_OK", (uint32_t)V->GetMemoryLoad(H, &load, &avail), 0);
    check("h5 memory load 0..100", load <= 100, 1);
    exp_load = ci.committed * 100 / ci.commit_limit;
    check("h5 memory load = percentage of the commit limit in use (+-1)", load + 1 >= exp_load && load <= exp_load + 1, 1);
    check("h5 available bytes = limit - reserve - committed (eTaskCritical)", avail, ci.commit_limit - ci.critical_reserve - ci.committed);
    m = reserve(0x100000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
    V->GetMemoryLoad(H, &load, &avail2);
    check("h5 available bytes drop by what is committed", avail - avail2, 0x100000);
    release(m);
    check("h5 invalid level 3 -> E_INVALIDARG", val(0, PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, 3, &m), E87);
    /* Fill up to the reserve at eTaskCritical. */
    S->query_commit(&ci);
    task = (ci.commit_limit - ci.critical_reserve - ci.committed) & ~0xFFFull;
    if (ci.critical_reserve < 0x100000) {
        skip("h5 critical levels", "critical reserve under 1 MiB");
        return;
    }
    check("h5 eTaskCritical: one page beyond what is free above the reserve -> E_OUTOFMEMORY", val(0, task + 2 * PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eTaskCritical, &m), EOOM);
    check("h5 eTaskCritical: up to the reserve S_OK", val(0, task, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eTaskCritical, &p1), 0);
    check("h5 eTaskCritical: one more page -> E_OUTOFMEMORY", val(0, 2 * PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eTaskCritical, &m), EOOM);
    V->GetMemoryLoad(H, &load, &avail);
    check("h5 GetMemoryLoad available ~0 at the reserve", avail < PAGE, 1);
    check("h5 recommitting committed pages at eTaskCritical needs no new charge (S_OK at the reserve)",
          p1 ? val(p1, 4 * PAGE, MEM_COMMIT, PAGE_READWRITE, eTaskCritical, &m) : 1, 0);
    half = (ci.critical_reserve / 2) & ~0xFFFull;
    check("h5 eAppDomainCritical: more than half the reserve -> E_OUTOFMEMORY", val(0, half + 2 * PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eAppDomainCritical, &m), EOOM);
    check("h5 eAppDomainCritical: half the reserve S_OK", val(0, half - PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eAppDomainCritical, &p2), 0);
    check("h5 eAppDomainCritical: one more page beyond half -> E_OUTOFMEMORY", val(0, 3 * PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eAppDomainCritical, &m), EOOM);
    S->query_commit(&ci2);
    rem = (ci2.commit_limit - ci2.committed) & ~0xFFFull;
    check("h5 eProcessCritical: beyond the limit -> E_OUTOFMEMORY", val(0, rem + PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eProcessCritical, &m), EOOM);
    check("h5 eProcessCritical: into the rest of the reserve S_OK", rem > 0x20000 ? val(0, rem - 0x10000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eProcessCritical, &p3) : 1, 0);
    check("h5 eTaskCritical still refused", val(0, PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eTaskCritical, &m), EOOM);
    V->GetMemoryLoad(H, &load, &avail);
    check("h5 memory load near 100 when full", load >= 90 && load <= 100, 1);
    release(p3);
    release(p2);
    release(p1);
    check("h5 all charge returned", committed_now(), ci.committed);
}

/* ================= Needs/Acquired/ReleasedVirtualAddressSpace (host §5, §9) ================= */
#define RV 0x305000000000ull
static void t_vas(void) {
    uint64_t c0;
    SIZE_T avail0 = 0, avail1 = 0;
    DWORD load;
    void *a;
    area("virtual-address-space");
    check("h5 NeedsVirtualAddressSpace valid range S_OK", (uint32_t)V->NeedsVirtualAddressSpace(H, (void *)RV, GRAN), 0);
    check("h5 ... records nothing: Released -> 487", (uint32_t)V->ReleasedVirtualAddressSpace(H, (void *)RV), E487);
    check("h5 NeedsVirtualAddressSpace size 0 -> E_INVALIDARG", (uint32_t)V->NeedsVirtualAddressSpace(H, (void *)RV, 0), E87);
    check("h5 NeedsVirtualAddressSpace kernel address -> E_INVALIDARG", (uint32_t)V->NeedsVirtualAddressSpace(H, KERNEL_ADDR, GRAN), E87);
    check("h5 NeedsVirtualAddressSpace past the user range -> E_INVALIDARG", (uint32_t)V->NeedsVirtualAddressSpace(H, (void *)(S->max_application_address - PAGE), 2 * GRAN), E87);
    check("h5 NeedsVirtualAddressSpace wrapping -> E_INVALIDARG", (uint32_t)V->NeedsVirtualAddressSpace(H, (void *)RV, ~0ull), E87);
    c0 = committed_now();
    V->GetMemoryLoad(H, &load, &avail0);
    check("h5 AcquiredVirtualAddressSpace S_OK", (uint32_t)V->AcquiredVirtualAddressSpace(H, (void *)RV, 16 * MIB), 0);
    check("h9 ... not commit: committed unchanged", committed_now(), c0);
    check("h9 ... GetMemoryLoad still S_OK", (uint32_t)V->GetMemoryLoad(H, &load, &avail1), 0);
    check("h9 ... not commit: available bytes unchanged", avail1, avail0);
    check("h5 AcquiredVirtualAddressSpace size 0 -> E_INVALIDARG", (uint32_t)V->AcquiredVirtualAddressSpace(H, (void *)(RV + 32 * MIB), 0), E87);
    check("h5 AcquiredVirtualAddressSpace kernel address -> E_INVALIDARG", (uint32_t)V->AcquiredVirtualAddressSpace(H, KERNEL_ADDR, GRAN), E87);
    check("h9 AcquiredVirtualAddressSpace over the image -> E_INVALIDARG", (uint32_t)V->AcquiredVirtualAddressSpace(H, (void *)0x140000000ull, GRAN), E87);
    a = reserve(GRAN, MEM_RESERVE, PAGE_READWRITE);
    check("h9 AcquiredVirtualAddressSpace over a VirtualAlloc allocation -> E_INVALIDARG", (uint32_t)V->AcquiredVirtualAddressSpace(H, a, GRAN), E87);
    release(a);
    check("h5 ReleasedVirtualAddressSpace of the recorded range S_OK", (uint32_t)V->ReleasedVirtualAddressSpace(H, (void *)RV), 0);
    check("h5 ReleasedVirtualAddressSpace again -> 487", (uint32_t)V->ReleasedVirtualAddressSpace(H, (void *)RV), E487);
    check("h5 AcquiredVirtualAddressSpace again S_OK", (uint32_t)V->AcquiredVirtualAddressSpace(H, (void *)RV, 16 * MIB), 0);
    check("h5 ReleasedVirtualAddressSpace inside the range (not its start) -> 487", (uint32_t)V->ReleasedVirtualAddressSpace(H, (void *)(RV + PAGE)), E487);
    check("h5 ReleasedVirtualAddressSpace of its start S_OK", (uint32_t)V->ReleasedVirtualAddressSpace(H, (void *)RV), 0);
    check("h5 ReleasedVirtualAddressSpace of an address never recorded -> 487", (uint32_t)V->ReleasedVirtualAddressSpace(H, (void *)(RV + 0x1000000)), E487);
}

/* ================= IHostMalloc (host §6) ================= */
static void t_malloc(void) {
    IHostMalloc *hm = 0, *hx = 0, *ht = 0;
    const IHostMallocVtbl *mv;
    void *p, *q, *blocks[8], *px = 0;
    static const SIZE_T sizes[8] = {1, 7, 16, 24, 100, 4096, 5000, 100000};
    uint64_t c0, i, j;
    uint32_t hr;
    int bad;
    MEMORY_BASIC_INFORMATION mbi;
    area("malloc");
    c0 = committed_now();
    hm = (IHostMalloc *)1;
    check("h6 CreateMalloc flags 4 -> E_INVALIDARG", (uint32_t)V->CreateMalloc(H, 4, &hm), E87);
    check("h9 ... *ppMalloc NULL", (uint64_t)hm, 0);
    check("h6 CreateMalloc flags 0xFFFFFFFF -> E_INVALIDARG", (uint32_t)V->CreateMalloc(H, 0xFFFFFFFFu, &hm), E87);
    check("h4 CreateMalloc ppMalloc NULL -> E_POINTER", (uint32_t)V->CreateMalloc(H, 0, 0), EPTR);
    check("h9 order: CreateMalloc bad flags + ppMalloc NULL -> E_POINTER first", (uint32_t)V->CreateMalloc(H, 4, 0), EPTR);
    check("h4 CreateMalloc ppMalloc read-only -> 998", (uint32_t)V->CreateMalloc(H, 0, (IHostMalloc **)rodata_page), E998);
    {
        void **g = reserve(PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD);
        if (g) {
            uint64_t c1 = committed_now();
            check("h9 CreateMalloc ppMalloc in a guard page -> 0x80000001", (uint32_t)V->CreateMalloc(H, 0, (IHostMalloc **)g), GUARDV);
            check("h9 ... nothing created (charge unchanged)", committed_now(), c1);
            release(g);
        }
    }
    hm = 0;
    hr = (uint32_t)V->CreateMalloc(H, 0, &hm);
    check("h6 CreateMalloc(0) S_OK", hr, 0);
    if (hr != 0 || !hm) {
        skip("h6 IHostMalloc checks", "CreateMalloc gave no heap");
        return;
    }
    mv = hm->lpVtbl;
    check("h6 refcount 1: AddRef -> 2", mv->AddRef(hm), 2);
    check("h6 Release -> 1", mv->Release(hm), 1);
    p = 0;
    check("h3 IHostMalloc QueryInterface(IHostMalloc) S_OK, same object", mv->QueryInterface(hm, &IID_IHostMalloc, &p) == 0 && p == hm, 1);
    check("h3 ... AddRef'd: Release -> 1", mv->Release(hm), 1);
    p = (void *)1;
    check("h4 IHostMalloc QueryInterface(IHostMemoryManager) -> E_NOINTERFACE", (uint32_t)mv->QueryInterface(hm, &IID_IHostMemoryManager, &p), ENOI);
    check("h4 ... *ppv NULL", (uint64_t)p, 0);
    check("h6 CreateMalloc(THREADSAFE) S_OK, a new heap", V->CreateMalloc(H, MALLOC_THREADSAFE, &ht) == 0 && ht && ht != hm, 1);
    check("h6 CreateMalloc(THREADSAFE|EXECUTABLE) S_OK", V->CreateMalloc(H, MALLOC_THREADSAFE | MALLOC_EXECUTABLE, &hx) == 0 && hx != 0, 1);
    if (hx) hx->lpVtbl->Release(hx);
    hx = 0;
    check("h6 CreateMalloc(EXECUTABLE) S_OK", V->CreateMalloc(H, MALLOC_EXECUTABLE, &hx) == 0 && hx != 0, 1);
    p = q = 0;
    check("h6 Alloc(0) S_OK non-NULL", mv->Alloc(hm, 0, eTaskCritical, &p) == 0 && p != 0, 1);
    check("h6 second Alloc(0) is a different block", mv->Alloc(hm, 0, eTaskCritical, &q) == 0 && q != 0 && q != p, 1);
    for (bad = 0, i = 0; i < 8; i++) {
        blocks[i] = 0;
        if (mv->Alloc(hm, sizes[i], eTaskCritical, &blocks[i]) != 0 || !blocks[i]) bad++;
        else if ((uint64_t)blocks[i] & 15) bad += 100;
        else memset(blocks[i], (int)(0x10 + i), sizes[i]);
    }
    check("h6 Alloc of 1..100000 bytes: all succeed, 16-byte aligned", bad, 0);
    for (bad = 0, i = 0; i < 8; i++)
        for (j = 0; blocks[i] && j < sizes[i]; j++)
            if (((uint8_t *)blocks[i])[j] != 0x10 + i) { bad++; break; }
    check("h6 blocks do not overlap (patterns intact)", bad, 0);
    check("h6 heap memory is charged as commit (h9)", committed_now() > c0, 1);
    p = (void *)1;
    check("h5 Alloc critical level 3 -> E_INVALIDARG", (uint32_t)mv->Alloc(hm, 16, (EMemoryCriticalLevel)3, &p), E87);
    check("h9 ... *ppMem NULL", (uint64_t)p, 0);
    check("h4 Alloc ppMem NULL -> E_POINTER", (uint32_t)mv->Alloc(hm, 16, eTaskCritical, 0), EPTR);
    check("h9 order: Alloc level 3 + ppMem NULL -> E_POINTER first", (uint32_t)mv->Alloc(hm, 16, (EMemoryCriticalLevel)3, 0), EPTR);
    p = (void *)1;
    check("h5 DebugAlloc critical level 3 -> E_INVALIDARG", (uint32_t)mv->DebugAlloc(hm, 16, (EMemoryCriticalLevel)3, (char *)"x.c", 1, &p), E87);
    check("h9 ... *ppMem NULL", (uint64_t)p, 0);
    p = 0;
    check("h6 Alloc at eProcessCritical S_OK", mv->Alloc(hm, 48, eProcessCritical, &p) == 0 && p != 0 && mv->Free(hm, p) == 0, 1);
    p = (void *)1;
    check("h4 IHostMalloc QueryInterface(ICLRMemoryNotificationCallback) -> E_NOINTERFACE", (uint32_t)mv->QueryInterface(hm, &IID_ICLRMemoryNotificationCallback, &p), ENOI);
    p = (void *)1;
    check("h6 Alloc(2^62) -> E_OUTOFMEMORY", (uint32_t)mv->Alloc(hm, 1ull << 62, eTaskCritical, &p), EOOM);
    check("h6 ... *ppMem NULL", (uint64_t)p, 0);
    p = (void *)1;
    check("h6 Alloc(~0) -> E_OUTOFMEMORY", (uint32_t)mv->Alloc(hm, ~0ull, eTaskCritical, &p), EOOM);
    {
        HOST_COMMIT_INFO ci;
        S->query_commit(&ci);
        p = (void *)1;
        check("h6 Alloc(more than the commit limit) -> E_OUTOFMEMORY", (uint32_t)mv->Alloc(hm, ci.commit_limit + MIB, eTaskCritical, &p), EOOM);
        check("h6 ... *ppMem NULL", (uint64_t)p, 0);
    }
    p = 0;
    check("h6 Alloc(1 MiB) S_OK, 16-byte aligned", mv->Alloc(hm, MIB, eTaskCritical, &p) == 0 && p && ((uint64_t)p & 15) == 0, 1);
    if (p) {
        memset(p, 0x5A, MIB);
        check("h6 ... Free S_OK", (uint32_t)mv->Free(hm, p), 0);
    }
    p = 0;
    check("h3 IHostMalloc QueryInterface(IUnknown) S_OK, same object", mv->QueryInterface(hm, &IID_IUnknown, &p) == 0 && p == hm, 1);
    if (p) mv->Release(hm);
    p = 0;
    check("h6 DebugAlloc S_OK, 16-byte aligned", mv->DebugAlloc(hm, 40, eTaskCritical, (char *)"conformance.c", 42, &p) == 0 && p && ((uint64_t)p & 15) == 0, 1);
    check("h6 Free(DebugAlloc block) S_OK", (uint32_t)mv->Free(hm, p), 0);
    check("h9 DebugAlloc pszFileName NULL -> E_POINTER", (uint32_t)mv->DebugAlloc(hm, 40, eTaskCritical, 0, 1, &p), EPTR);
    check("h9 DebugAlloc pszFileName unreadable -> 998", (uint32_t)mv->DebugAlloc(hm, 40, eTaskCritical, (char *)KERNEL_ADDR, 1, &p), E998);
    check("h4 DebugAlloc ppMem NULL -> E_POINTER", (uint32_t)mv->DebugAlloc(hm, 40, eTaskCritical, (char *)"x.c", 1, 0), EPTR);
    check("h6 Free(NULL) S_OK", (uint32_t)mv->Free(hm, 0), 0);
    check("h6 Free(block) S_OK", (uint32_t)mv->Free(hm, blocks[1]), 0);
    check("h6 double Free -> E_INVALIDARG", (uint32_t)mv->Free(hm, blocks[1]), E87);
    check("h6 Free of an interior pointer -> E_INVALIDARG", (uint32_t)mv->Free(hm, (char *)blocks[4] + 16), E87);
    check("h6 Free of a stack address -> E_INVALIDARG", (uint32_t)mv->Free(hm, &p), E87);
    if (ht) {
        void *o = 0;
        ht->lpVtbl->Alloc(ht, 32, eTaskCritical, &o);
        check("h6 Free of another heap's block -> E_INVALIDARG", (uint32_t)mv->Free(hm, o), E87);
        check("h6 ... the other heap can still free it", (uint32_t)ht->lpVtbl->Free(ht, o), 0);
    }
    /* hostile pointers into the ring-3 heap code: E_INVALIDARG / 998, never a fault */
    check("h6 Free of an unmapped address -> E_INVALIDARG", SAFE(mv->Free, hm, 0x3F9000000000ull, 0, 0, 0, 0), E87);
    check("h6 Free of a kernel address -> E_INVALIDARG", SAFE(mv->Free, hm, KERNEL_ADDR, 0, 0, 0, 0), E87);
    check("h6 Free of a non-canonical address -> E_INVALIDARG", SAFE(mv->Free, hm, NONCANON, 0, 0, 0, 0), E87);
    check("h6 Free of a block + 1 -> E_INVALIDARG", SAFE(mv->Free, hm, (char *)blocks[5] + 1, 0, 0, 0, 0), E87);
    check("h6 Free of a page start just past a block -> E_INVALIDARG", SAFE(mv->Free, hm, ((uint64_t)blocks[6] + 0x2000) & ~0xFFFull, 0, 0, 0, 0), E87);
    check("h6 Free of our read-only data -> E_INVALIDARG", SAFE(mv->Free, hm, rodata_page + 16, 0, 0, 0, 0), E87);
    {
        void *na = reserve(2 * PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_NOACCESS);
        check("h6 Free of a pointer into a NOACCESS page -> E_INVALIDARG", SAFE(mv->Free, hm, (char *)na + 0x1010, 0, 0, 0, 0), E87);
        release(na);
    }
    check("h4 Alloc ppMem read-only -> 998", SAFE(mv->Alloc, hm, 16, eTaskCritical, rodata_page, 0, 0), E998);
    check("h4 Alloc ppMem unmapped -> 998", SAFE(mv->Alloc, hm, 16, eTaskCritical, 0x3F9000000000ull, 0, 0), E998);
    check("h4 Alloc ppMem kernel address -> 998", SAFE(mv->Alloc, hm, 16, eTaskCritical, KERNEL_ADDR, 0, 0), E998);
    check("h9 IHostMalloc bad this (kernel address) -> 998", SAFE(mv->Alloc, KERNEL_ADDR, 16, eTaskCritical, &p, 0, 0), E998);
    check("h9 IHostMalloc bad this (unmapped) -> 998", SAFE(mv->Free, 0x3F9000000000ull, 0, 0, 0, 0, 0), E998);
    check("h4 IHostMalloc QueryInterface ppv NULL -> E_POINTER", SAFE(mv->QueryInterface, hm, &IID_IUnknown, 0, 0, 0, 0), EPTR);
    check("h9 IHostMalloc QueryInterface riid NULL -> E_POINTER", SAFE(mv->QueryInterface, hm, 0, &p, 0, 0, 0), EPTR);
    check("h9 IHostMalloc QueryInterface riid unreadable -> 998", SAFE(mv->QueryInterface, hm, KERNEL_ADDR, &p, 0, 0, 0), E998);
    check("h4 DebugAlloc ppMem read-only -> 998", SAFE(mv->DebugAlloc, hm, 16, eTaskCritical, "x.c", 1, rodata_page), E998);
    blocks[1] = 0;
    for (bad = 0, i = 0; i < 8; i++)
        for (j = 0; blocks[i] && j < sizes[i]; j++)
            if (((uint8_t *)blocks[i])[j] != 0x10 + i) { bad++; break; }
    check("h6 bad frees corrupt nothing (patterns intact)", bad, 0);
    p = 0;
    check("h6 Alloc after bad frees works", mv->Alloc(hm, 64, eTaskCritical, &p) == 0 && p != 0, 1);
    /* executable heap */
    if (hx) {
        hr = (uint32_t)hx->lpVtbl->Alloc(hx, 64, eTaskCritical, &px);
        if (hr == 0 && px) {
            check("h6 MALLOC_EXECUTABLE heap block 16-byte aligned", (uint64_t)px & 15, 0);
            memcpy(px, ret42, sizeof ret42);
            check("h6 MALLOC_EXECUTABLE heap runs code", exec_at(px), 42);
        } else
            skip("h6 MALLOC_EXECUTABLE heap runs code", "Alloc failed");
    }
    if (blocks[7]) {
        memcpy(blocks[7], ret42, sizeof ret42);
        exec_at(blocks[7]);
        check("h6 a heap without MALLOC_EXECUTABLE does not execute (access violation, execute)", g_av_count == 1 && g_av_access == 8, 1);
    }
    /* Release frees the heap and its address space. */
    q = blocks[7];
    check("h6 last Release -> 0", mv->Release(hm), 0);
    if (q) {
        vq(q, &mbi);
        check("h6 ... the heap's address space is free", mbi.State, MEM_FREE);
    }
    if (hx) hx->lpVtbl->Release(hx);
    if (ht) ht->lpVtbl->Release(ht);
    check("h6 all heaps released: commit charge back", committed_now(), c0);
}

/* ================= memory notifications (host §5, §9) ================= */
typedef struct CB {
    ICLRMemoryNotificationCallback iface;
    volatile int refs, calls, last;
    volatile uint64_t sp;
} CB;
static HRESULT cb_qi(ICLRMemoryNotificationCallback *t, REFIID riid, void **ppv) {
    if (guid_eq(riid, &IID_IUnknown) || guid_eq(riid, &IID_ICLRMemoryNotificationCallback)) {
        *ppv = t;
        ((CB *)t)->refs++;
        return S_OK;
    }
    *ppv = 0;
    return E_NOINTERFACE;
}
static ULONG cb_addref(ICLRMemoryNotificationCallback *t) { return (ULONG)++((CB *)t)->refs; }
static ULONG cb_release(ICLRMemoryNotificationCallback *t) { return (ULONG)--((CB *)t)->refs; }
static HRESULT cb_notify(ICLRMemoryNotificationCallback *t, EMemoryAvailable a) {
    volatile int x = 0;
    CB *c = (CB *)t;
    c->calls++;
    c->last = (int)a;
    c->sp = (uint64_t)&x;
    return S_OK;
}
static const ICLRMemoryNotificationCallbackVtbl cb_vtbl = {cb_qi, cb_addref, cb_release, cb_notify};
static CB cb1 = {{&cb_vtbl}, 1, 0, 0, 0}, cb2 = {{&cb_vtbl}, 1, 0, 0, 0};

static void t_notify(void) {
    HOST_COMMIT_INFO ci;
    uint64_t f0, fN, fL, x1, x2;
    void *pa = 0, *pb = 0, *pc = 0;
    uint32_t hr;
    area("notifications");
    hr = (uint32_t)V->RegisterMemoryNotificationCallback(H, &cb1.iface);
    check("h5 RegisterMemoryNotificationCallback S_OK", hr, 0);
    check("h5 ... the host holds a reference (refcount 2)", cb1.refs, 2);
    check("h9 ... no call at registration", cb1.calls, 0);
    if (hr != 0) {
        skip("h5 notification bands", "registration failed");
        return;
    }
    S->query_commit(&ci);
    f0 = ci.commit_limit - ci.committed;
    fN = ((ci.low_threshold + ci.high_threshold) / 2) & ~0xFFFull;
    fL = (ci.low_threshold - 0x10000) & ~0xFFFull;
    if (!(f0 > ci.high_threshold + PAGE) || ci.high_threshold < ci.low_threshold + 4 * PAGE || ci.low_threshold < 0x30000) {
        skip("h5 notification bands", "thresholds do not allow a High->Neutral->Low walk with margins");
    } else {
        x1 = (f0 - fN) & ~0xFFFull;
        check("h5 commit into the neutral band S_OK", val(0, x1, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eProcessCritical, &pa), 0);
        check("h5 ... one call, eMemoryAvailableNeutral, before the call returned", cb1.calls == 1 && cb1.last == eMemoryAvailableNeutral, 1);
        S->query_commit(&ci);
        x2 = (ci.commit_limit - ci.committed - fL) & ~0xFFFull;
        check("h5 commit below the low threshold S_OK", val(0, x2, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eProcessCritical, &pb), 0);
        check("h5 ... one call, eMemoryAvailableLow", cb1.calls == 2 && cb1.last == eMemoryAvailableLow, 1);
        check("h5 callback ran on the guest's stack", cb1.sp < g_main_sp && cb1.sp > g_main_sp - MIB, 1);
        check("h9 a further commit in the same band: no call", val(0, PAGE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eProcessCritical, &pc) == 0 && cb1.calls == 2, 1);
        release(pc);
        check("h9 release within the low band: no call", cb1.calls, 2);
        release(pb);
        check("h5 back to neutral: one call, eMemoryAvailableNeutral", cb1.calls == 3 && cb1.last == eMemoryAvailableNeutral, 1);
        release(pa);
        check("h5 back above the high threshold: one call, eMemoryAvailableHigh", cb1.calls == 4 && cb1.last == eMemoryAvailableHigh, 1);
    }
    check("h5 registering the same callback again S_OK", (uint32_t)V->RegisterMemoryNotificationCallback(H, &cb1.iface), 0);
    check("h5 ... still one reference held (refcount 2)", cb1.refs, 2);
    /* replace, unregister */
    check("h5 register a second callback S_OK", (uint32_t)V->RegisterMemoryNotificationCallback(H, &cb2.iface), 0);
    check("h5 ... the old one is Released (refcount 1)", cb1.refs, 1);
    check("h5 ... the new one is AddRef'd (refcount 2)", cb2.refs, 2);
    check("h9 ... no call at registration", cb2.calls, 0);
    check("h5 register NULL (unregister) S_OK", (uint32_t)V->RegisterMemoryNotificationCallback(H, 0), 0);
    check("h5 ... the callback is Released (refcount 1)", cb2.refs, 1);
    S->query_commit(&ci);
    f0 = ci.commit_limit - ci.committed;
    if (f0 > ci.high_threshold + PAGE && ci.high_threshold > ci.low_threshold + 4 * PAGE) {
        fN = ((ci.low_threshold + ci.high_threshold) / 2) & ~0xFFFull;
        int before = cb1.calls + cb2.calls;
        pa = 0;
        val(0, (f0 - fN) & ~0xFFFull, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, eProcessCritical, &pa);
        release(pa);
        check("h5 after unregistering: band changes call nothing", (uint64_t)(cb1.calls + cb2.calls - before), 0);
    }
    /* a band change made inside an exception handler: the callback must not run during the handler */
    S->query_commit(&ci);
    f0 = ci.commit_limit - ci.committed;
    if (f0 > ci.high_threshold + PAGE && ci.high_threshold > ci.low_threshold + 4 * PAGE &&
        V->RegisterMemoryNotificationCallback(H, &cb1.iface) == 0) {
        int c_before = cb1.calls;
        fN = ((ci.low_threshold + ci.high_threshold) / 2) & ~0xFFFull;
        g_nested_size = (f0 - fN) & ~0xFFFull;
        g_nested_calls = &cb1.calls;
        g_nested_mem = 0;
        g_nested = 1;
        rd8((void *)0x3F8000000000ull);
        check("h9 band change inside an exception handler: the callback is not entered during the handler", g_nested_mem != 0 && g_nested_delta == 0, 1);
        release(g_nested_mem);
        V->RegisterMemoryNotificationCallback(H, 0);
        info("callback calls after the nested band change and its release", (uint64_t)(cb1.calls - c_before));
    }
    check("h9 Register a bad callback pointer -> 998", (uint32_t)V->RegisterMemoryNotificationCallback(H, (ICLRMemoryNotificationCallback *)KERNEL_ADDR), E998);
    V->RegisterMemoryNotificationCallback(H, 0);
}

/* Grow the stack now so that later stack growth does not change the commit charge. */
static __attribute__((noinline)) void pregrow_stack(void) {
    volatile uint8_t buf[96 * 1024];
    int i;
    for (i = (int)sizeof buf - 1; i >= 0; i -= 512) buf[i] = 1;
}

static __attribute__((noinline)) void grow_stack_more(void) {
    volatile uint8_t buf[288 * 1024];
    int i;
    for (i = (int)sizeof buf - 1; i >= 0; i -= 512) buf[i] = 2;
}

int32_t guest_main(IHostMemoryManager *host, const HOST_SERVICES *services) {
    volatile int here = 0;
    void *veh;
    H = host;
    V = host->lpVtbl;
    S = services;
    g_services = services;
    g_main_sp = (uint64_t)&here;
    put("conformance: hello from ring 3\n");
    pregrow_stack();
    veh = S->add_vectored_exception_handler(1, handler);
    g_start_committed = committed_now();
    if (g_mode[17] == 'D') {
        t_fault_with_df();
        S->remove_vectored_exception_handler(veh);
        return summary();
    }

    t_services();
    t_com();
    t_protection();
    t_alloc_validation();
    t_reserve();
    t_commit();
    t_reset();
    t_placement();
    t_scale();
    t_free();
    t_protect();
    t_query();
    t_write_watch();
    t_guard();
    t_hresults();
    t_fine();
    t_levels();
    t_vas();
    t_malloc();
    t_notify();

    area("final");
    {
        uint64_t c1 = committed_now(), grown;
        g_guard_count = 0;
        grow_stack_more();
        grown = committed_now() - c1;
        check("h9 stack growth is charged (>= 128 KiB more after touching 192 KiB below the pre-grown part)", grown >= 128 * 1024, 1);
        check("h8 growth of the guest's own stack raises no guard exception", g_guard_count, 0);
        check("h9 every allocation of this guest released: commit charge back to its start (plus stack growth)", committed_now() - grown, g_start_committed);
    }
    check("h7 vectored handler removed", S->remove_vectored_exception_handler(veh), 1);
    return summary();
}
