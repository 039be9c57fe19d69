/* The peer benchmark of tests/bench/report.sh: the virtual-memory workloads of the in-guest
 * benchmark (tests/guests/c/vmbench_guest.c) on Linux (mmap family) and on Windows semantics
 * (VirtualAlloc family, run under Wine), under the same workload names and units.
 * Derived from shared/peers/vmbench.c (B1-B5 unchanged); added here: the second 256 MiB pass,
 * the three queries, the 2 MiB page, the guard-page round trip and the no-op kernel entries.
 *
 * One line per workload:  "<name> <ns> ns/<unit> <cycles> cycles"  (wall clock and rdtsc per unit;
 * under QEMU TCG rdtsc is the host's TSC, the clock the in-guest benchmark counts too), plus
 * "peer-env ..." and "peer-note ..." lines. Nothing is asserted; a failed call prints
 * "peer-error ..." and the program exits 1.
 *
 * Run as /init of an initramfs (pid 1: tests/bench/report.sh boots Linux in QEMU with it), it
 * mounts /proc and /sys, prints the kernel's configuration (command line, THP mode, whether ERMS
 * and LA57 are visible), runs the workloads and powers the machine off.
 *
 *   gcc -O2 -static -o vmbench-peer vmbench_peer.c          (Linux; -static for the initramfs)
 *   x86_64-w64-mingw32-gcc -O2 -o vmbench-peer.exe vmbench_peer.c
 *
 * Linux equivalents of the Win32 workloads (what each pair can and cannot compare):
 *   reserve/commit/decommit/release: mmap(PROT_NONE)/mprotect(RW)/madvise(DONTNEED)+mprotect(NONE)/munmap
 *   query_*: mincore() of one page (a VMA lookup and, if mapped, a one-page table walk; VirtualQuery
 *            also finds the run of equal pages, mincore returns one residency byte)
 *   large_page_commit_2m: mmap at a 2 MiB-aligned fixed address + MADV_HUGEPAGE + touch + munmap;
 *            a THP only if the kernel's THP mode is "madvise" or "always" (peer-note says whether it was)
 *   guard_page_fault: mprotect(PROT_NONE) + touch -> SIGSEGV handler mprotect(RW) + sigreturn
 *            (4 kernel entries; Windows' guard clears itself: 3 entries in this kernel)
 *   host_call_addref_release: getppid() (a system call that does almost nothing)
 *   host_call_ticks_ns: syscall(SYS_clock_gettime) (the vDSO is bypassed: one kernel entry)
 *
 * Arguments name the parts to run: "workloads" (the default when there are none: the lines above)
 * and "scaling" (Linux only), the scaling workloads of the guest-thread benchmark
 * (tests/guests/c/vmbench_threads.c) under the same names, each op as there, with the
 * equivalents above:
 *   commit_touch_decommit_64k  commit the worker's own 64 KiB reservation, write each of its 16
 *                              pages, decommit them
 *   reserve_release_64k        reserve 64 KiB, release it
 * from 1, 2 and 4 workers at once (as many as there are online CPUs; "n/a" above), worker i
 * pinned to CPU i, started together on a barrier (a futex), each for 2 s (a deadline on rdtsc
 * calibrated against CLOCK_MONOTONIC), ops counted; first as threads of one process (one mm: its
 * mmap_lock, page-table locks and TLB shootdowns are shared, as this kernel's one space; Linux
 * places each worker's reservation, and may merge neighbouring ones into one VMA), then as one
 * process per worker (fork: the control, as the kernel's /space-per-cpu rows). One line per row:
 *   peer-scaling NAME mode=threads|processes n=N ops=.. ops_per_s=.. speed_up=..x cycles_per_op=..
 *                cpus_seen=..
 * ops_per_s counts all workers' ops over the time from the start to the last worker's end (as the
 * guest); speed_up is over the 1-worker row of the same mode; cycles_per_op is TSC cycles per op of
 * one worker; cpus_seen is how many CPUs the workers were seen on (sched_getcpu at their first and
 * last op). As /init the arguments come from the kernel command line after "--".
 *   cc -O2 -pthread -o vmbench-peer vmbench_peer.c && ./vmbench-peer scaling
 */
#ifndef _WIN32
#define _GNU_SOURCE /* sched_getcpu */
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _WIN32
#include <windows.h>
static double now_ns(void) {
    static LARGE_INTEGER f;
    LARGE_INTEGER c;
    if (!f.QuadPart) QueryPerformanceFrequency(&f);
    QueryPerformanceCounter(&c);
    return (double)c.QuadPart * 1e9 / (double)f.QuadPart;
}
static char *reserve(size_t n) { return VirtualAlloc(NULL, n, MEM_RESERVE, PAGE_NOACCESS); }
static void release(char *p, size_t n) { (void)n; VirtualFree(p, 0, MEM_RELEASE); }
static void commit(char *p, size_t n) { VirtualAlloc(p, n, MEM_COMMIT, PAGE_READWRITE); }
static void decommit(char *p, size_t n) { VirtualFree(p, n, MEM_DECOMMIT); }
static void protect_ro(char *p, size_t n) { DWORD o; VirtualProtect(p, n, PAGE_READONLY, &o); }
static void protect_rw(char *p, size_t n) { DWORD o; VirtualProtect(p, n, PAGE_READWRITE, &o); }
static uint64_t query(char *p) {
    MEMORY_BASIC_INFORMATION m;
    return VirtualQuery(p, &m, sizeof m) ? (uint64_t)m.RegionSize : 0;
}
#define PEER "wine-virtualalloc"
#else
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}
static char *reserve(size_t n) {
    void *p = mmap(NULL, n, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}
static void release(char *p, size_t n) { munmap(p, n); }
static void commit(char *p, size_t n) { mprotect(p, n, PROT_READ | PROT_WRITE); }
static void decommit(char *p, size_t n) { madvise(p, n, MADV_DONTNEED); mprotect(p, n, PROT_NONE); }
static void protect_ro(char *p, size_t n) { mprotect(p, n, PROT_READ); }
static void protect_rw(char *p, size_t n) { mprotect(p, n, PROT_READ | PROT_WRITE); }
/* 1 if the page is resident, 0 if mapped but not resident, 2 if unmapped (ENOMEM). */
static uint64_t query(char *p) {
    unsigned char v = 0;
    return mincore(p, 4096, &v) == 0 ? (uint64_t)(v & 1) : 2;
}
#define PEER "linux-mmap"
#endif

#define PAGE 4096u
#define KB64 65536u
#define MIB (1u << 20)

static int g_errors;

static inline uint64_t rdtsc(void) { return __builtin_ia32_rdtsc(); }

/* A timed interval: wall clock and TSC. */
typedef struct SPAN {
    double ns;
    uint64_t tsc;
} SPAN;
static SPAN span_begin(void) {
    SPAN s;
    s.ns = now_ns();
    s.tsc = rdtsc();
    return s;
}
static void report(const char *name, SPAN s, double units, const char *unit) {
    uint64_t t1 = rdtsc();
    double ns = now_ns() - s.ns;
    printf("%-28s %12.1f ns/%s %14.1f cycles\n", name, ns / units, unit, (double)(t1 - s.tsc) / units);
}
static void peer_error(const char *what) {
    g_errors++;
    printf("peer-error %s\n", what);
}
static char *reserve_checked(size_t n) {
    char *p = reserve(n);
    if (!p) peer_error("reserve");
    return p;
}
static void touch(char *p, size_t n) {
    for (size_t o = 0; o < n; o += PAGE) ((volatile char *)p)[o] = 1;
}

#ifndef _WIN32
/* The resident transparent huge pages of this process, in kB (-1 if /proc is not readable). */
static long anon_huge_kb(void) {
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    char line[256];
    long kb = -1;
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "AnonHugePages: %ld kB", &kb) == 1) break;
    fclose(f);
    return kb;
}
#endif

/* B1: reserve + release of one 64 KiB region, per pair. */
static void reserve_release_64k(void) {
    int n = 20000;
    SPAN s = span_begin();
    for (int i = 0; i < n; i++) release(reserve(KB64), KB64);
    report("reserve_release_64k", s, n, "op");
}

/* B2: commit + first touch + decommit of 1 MiB, per page; one warm-up round first (as the guest). */
static void commit_touch_decommit(void) {
    size_t sz = MIB;
    int rounds = 200;
    char *p = reserve_checked(sz);
    if (!p) return;
    commit(p, sz);
    touch(p, sz);
    decommit(p, sz);
    SPAN s = span_begin();
    for (int r = 0; r < rounds; r++) {
        commit(p, sz);
        touch(p, sz);
        decommit(p, sz);
    }
    report("commit_touch_decommit", s, (double)rounds * (sz / PAGE), "page");
    release(p, sz);
}

/* B3: protect 256 committed pages read-only and back, per call. */
static void protect_256_pages(void) {
    size_t sz = 256 * PAGE;
    int rounds = 5000;
    char *p = reserve_checked(sz);
    if (!p) return;
    commit(p, sz);
    touch(p, sz);
    SPAN s = span_begin();
    for (int r = 0; r < rounds; r++) {
        protect_ro(p, sz);
        protect_rw(p, sz);
    }
    report("protect_256_pages", s, 2.0 * rounds, "call");
    release(p, sz);
}

/* B4: 10,000 live 64 KiB reservations, then release them all; per operation. */
static void reserve_release_10k_live(void) {
    int n = 10000;
    char **v = malloc(sizeof(char *) * n);
    if (!v) { peer_error("malloc"); return; }
    memset(v, 0, sizeof(char *) * n);
    SPAN s = span_begin();
    for (int i = 0; i < n; i++) v[i] = reserve(KB64);
    for (int i = 0; i < n; i++) release(v[i], KB64);
    report("reserve_release_10k_live", s, 2.0 * n, "op");
    free(v);
}

/* B5: commit and touch 256 MiB of a fresh reservation, per page (twice: the second pass reuses
 * memory the host has already backed, as the guest's _again pass does). */
static void commit_touch_256m(const char *name) {
    size_t sz = 256u << 20;
    char *p = reserve_checked(sz);
    if (!p) return;
    SPAN s = span_begin();
    commit(p, sz);
    touch(p, sz);
    report(name, s, (double)(sz / PAGE), "page");
#ifndef _WIN32
    printf("peer-note %s AnonHugePages=%ld kB (transparent huge pages backing the 256 MiB)\n", name, anon_huge_kb());
#endif
    release(p, sz);
}

/* The guest's three queries: a committed (touched) 64 KiB allocation, a 64 MiB reservation, free
 * memory at 0x4000_0000_0000. */
static void query_one(const char *name, char *addr) {
    int n = 20000;
    uint64_t sum = 0;
    SPAN s = span_begin();
    for (int i = 0; i < n; i++) sum += query(addr);
    report(name, s, n, "call");
    if (sum == 0 && strcmp(name, "query_reserved_64m") != 0) peer_error(name);
}
static void queries(void) {
    char *c = reserve_checked(KB64), *r;
    if (!c) return;
    commit(c, KB64);
    touch(c, KB64);
    query_one("query_committed_64k", c);
    r = reserve_checked(64u << 20);
    if (r) {
        query_one("query_reserved_64m", r);
        release(r, 64u << 20);
    }
    query_one("query_free", (char *)0x400000000000ull);
    release(c, KB64);
}

#ifndef _WIN32
/* Reserve + commit one 2 MiB page at a fixed 2 MiB-aligned address (3 TiB, the guest's slot),
 * touch it, release it; per 2 MiB page. The first round is the warm-up, and checks the page
 * was a THP. */
static void large_page_commit_2m(void) {
    char *const at = (char *)0x30000000000ull;
    size_t sz = 2u << 20;
    int n = 200;
    SPAN s = span_begin();
    for (int i = 0; i <= n; i++) {
        if (i == 1) s = span_begin();
        char *p = mmap(at, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        if (p != at) { peer_error("large_page_commit_2m mmap"); return; }
        madvise(p, sz, MADV_HUGEPAGE);
        ((volatile char *)p)[12345] = 1;
        if (i == 0)
            printf("peer-note large_page_commit_2m AnonHugePages=%ld kB after the first touch (2048 = a THP)\n",
                   anon_huge_kb());
        munmap(p, sz);
    }
    report("large_page_commit_2m", s, n, "2MiB-page");
}

static char *volatile g_guard;
static volatile long g_guard_hits;
static void on_segv(int sig, siginfo_t *si, void *ctx) {
    (void)sig;
    (void)ctx;
    char *a = (char *)si->si_addr;
    if (a < g_guard || a >= g_guard + PAGE) {
        signal(SIGSEGV, SIG_DFL); /* a real crash: die of it on return */
        return;
    }
    g_guard_hits++;
    mprotect(g_guard, PAGE, PROT_READ | PROT_WRITE);
}

/* The guard-page round trip: arm (mprotect PROT_NONE), touch; the SIGSEGV handler disarms
 * (mprotect RW) and returns through rt_sigreturn; the retried store succeeds. */
static void guard_page_fault(void) {
    int n = 5000;
    struct sigaction sa, old;
    char *p = reserve_checked(KB64);
    if (!p) return;
    commit(p, KB64);
    touch(p, PAGE);
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSEGV, &sa, &old) != 0) { peer_error("sigaction"); return; }
    g_guard = p;
    g_guard_hits = 0;
    SPAN s = span_begin();
    for (int i = 0; i < n; i++) {
        mprotect(p, PAGE, PROT_NONE);
        ((volatile char *)p)[0] = 2;
    }
    report("guard_page_fault", s, n, "round-trip");
    sigaction(SIGSEGV, &old, NULL);
    if (g_guard_hits != n) peer_error("guard_page_fault: not every touch faulted");
    release(p, KB64);
}

/* The cheapest kernel entries, per call. */
static void noop_calls(void) {
    int n = 100000;
    long sum = 0;
    SPAN s = span_begin();
    for (int i = 0; i < n; i++) sum += syscall(SYS_getppid);
    report("host_call_addref_release", s, n, "call");
    n = 50000;
    struct timespec t;
    s = span_begin();
    for (int i = 0; i < n; i++) sum += syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &t);
    report("host_call_ticks_ns", s, n, "call");
    if (sum < 0) peer_error("no-op calls");
}

/* Prints what the comparison depends on. */
static void print_env(int as_init) {
    struct utsname u;
    char buf[1024];
    FILE *f;
    if (uname(&u) == 0) printf("peer-env kernel=%s %s\n", u.sysname, u.release);
    printf("peer-env pid1=%d\n", as_init);
    /* The command line only of the kernel booted for the benchmark (a host's is not ours to log). */
    if (as_init && (f = fopen("/proc/cmdline", "r"))) {
        if (fgets(buf, sizeof buf, f)) printf("peer-env cmdline=%s", buf);
        fclose(f);
    }
    if ((f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r"))) {
        if (fgets(buf, sizeof buf, f)) printf("peer-env thp=%s", buf);
        fclose(f);
    }
    if ((f = fopen("/proc/cpuinfo", "r"))) {
        int erms = 0, la57 = 0;
        while (fgets(buf, sizeof buf, f)) {
            if (strncmp(buf, "flags", 5) != 0) continue;
            erms = strstr(buf, " erms") != NULL;
            la57 = strstr(buf, " la57") != NULL;
            break;
        }
        fclose(f);
        printf("peer-env cpu_flags erms=%d la57=%d\n", erms, la57);
    }
    if ((f = fopen("/sys/devices/system/cpu/vulnerabilities/spectre_v2", "r"))) {
        if (fgets(buf, sizeof buf, f)) printf("peer-env spectre_v2=%s", buf);
        fclose(f);
    }
}
#endif

#ifdef _WIN32
static volatile long g_guard_hits;
static LONG CALLBACK on_guard(EXCEPTION_POINTERS *e) {
    if (e->ExceptionRecord->ExceptionCode == STATUS_GUARD_PAGE_VIOLATION) {
        g_guard_hits++;
        return EXCEPTION_CONTINUE_EXECUTION;
    }
    return EXCEPTION_CONTINUE_SEARCH;
}
/* PAGE_GUARD + vectored handler, as the in-guest benchmark. */
static void guard_page_fault(void) {
    int n = 5000;
    DWORD o;
    char *p = reserve_checked(KB64);
    if (!p) return;
    commit(p, KB64);
    touch(p, PAGE);
    void *h = AddVectoredExceptionHandler(1, on_guard);
    g_guard_hits = 0;
    SPAN s = span_begin();
    for (int i = 0; i < n; i++) {
        VirtualProtect(p, PAGE, PAGE_READWRITE | PAGE_GUARD, &o);
        ((volatile char *)p)[0] = 2;
    }
    report("guard_page_fault", s, n, "round-trip");
    RemoveVectoredExceptionHandler(h);
    if (g_guard_hits != n) peer_error("guard_page_fault: not every touch faulted");
    release(p, KB64);
}
#endif

#ifndef _WIN32
/* ---- The scaling workloads (argument "scaling"): see the top of the file. ---- */

#define SCALING_MAX 4
#define SCALING_WARM_UP_OPS 8
#define SCALING_RUN_MS 2000

typedef enum { SCALING_COMMIT_TOUCH_DECOMMIT, SCALING_RESERVE_RELEASE } SCALING_WORKLOAD;
static const char *const SCALING_NAMES[] = {"commit_touch_decommit_64k", "reserve_release_64k"};

typedef struct SCALING_WORKER {
    uint64_t ops;
    uint64_t end_tsc;
    uint64_t cpus; /* bit i: seen on CPU i (CPUs 0-63) */
    uint32_t errors;
} SCALING_WORKER;

/* One row's shared state, in a MAP_SHARED mapping so that forked workers share it too. The
 * futexes are not FUTEX_PRIVATE for the same reason. */
typedef struct SCALING_ROW {
    volatile uint32_t ready, go, done, leave;
    volatile uint64_t deadline;
    SCALING_WORKLOAD workload;
    SCALING_WORKER w[SCALING_MAX];
} SCALING_ROW;

static void futex_wait(volatile uint32_t *word, uint32_t seen) {
    syscall(SYS_futex, word, FUTEX_WAIT, seen, NULL, NULL, 0);
}
static void futex_wake_all(volatile uint32_t *word) {
    syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}
/* Waits until *word is at least `target`. */
static void wait_until(volatile uint32_t *word, uint32_t target) {
    uint32_t seen;
    while ((seen = __atomic_load_n(word, __ATOMIC_ACQUIRE)) < target) futex_wait(word, seen);
}
static void arrive(volatile uint32_t *word) {
    __atomic_fetch_add(word, 1, __ATOMIC_ACQ_REL);
    futex_wake_all(word);
}

static uint64_t cpu_bit(void) {
    int c = sched_getcpu();
    return c >= 0 && c < 64 ? 1ull << c : 0;
}

/* One op, as vmbench_threads.c's one_op. Returns 0 if a reservation failed. */
static int scaling_op(SCALING_WORKLOAD workload, char *region) {
    if (workload == SCALING_COMMIT_TOUCH_DECOMMIT) {
        commit(region, KB64);
        touch(region, KB64);
        decommit(region, KB64);
        return 1;
    }
    char *p = reserve(KB64);
    if (!p) return 0;
    release(p, KB64);
    return 1;
}

/* Worker i of a row: its own reservation (commit_touch_decommit), a few warm-up ops, the
 * barrier, ops until the deadline, then it waits for the row's end before releasing. */
static void scaling_worker(SCALING_ROW *row, int i) {
    SCALING_WORKER *w = &row->w[i];
    char *region = NULL;
    uint64_t n = 0, deadline;
    cpu_set_t on;
    /* Worker i runs on CPU i (as the in-kernel rows): where the scheduler would put it is not the
     * question here, and Linux may start a forked child on its parent's CPU and leave it there. */
    CPU_ZERO(&on);
    CPU_SET(i, &on);
    if (sched_setaffinity(0, sizeof on, &on) != 0) w->errors++;
    if (row->workload == SCALING_COMMIT_TOUCH_DECOMMIT && !(region = reserve(KB64))) w->errors++;
    for (int k = 0; k < SCALING_WARM_UP_OPS && !w->errors; k++)
        if (!scaling_op(row->workload, region)) w->errors++;
    arrive(&row->ready);
    wait_until(&row->go, 1);
    deadline = row->deadline;
    w->cpus = cpu_bit();
    while (!w->errors) {
        if (!scaling_op(row->workload, region)) w->errors++;
        n++;
        if (rdtsc() >= deadline) break;
    }
    w->end_tsc = rdtsc();
    w->cpus |= cpu_bit();
    w->ops = n;
    arrive(&row->done);
    wait_until(&row->leave, 1);
    if (region) release(region, KB64);
}

typedef struct SCALING_THREAD_ARG {
    SCALING_ROW *row;
    int i;
} SCALING_THREAD_ARG;
static void *scaling_thread(void *arg) {
    SCALING_THREAD_ARG *a = arg;
    scaling_worker(a->row, a->i);
    return NULL;
}

/* One row: n workers (threads of this process, or forked processes) on `workload` for
 * `run_cycles` TSC cycles. Prints the row; returns its ops/s (0 if it failed). */
static double scaling_row(SCALING_WORKLOAD workload, int processes, int n, uint64_t run_cycles, uint64_t tsc_hz,
                          double single) {
    const char *mode = processes ? "processes" : "threads";
    SCALING_ROW *row = mmap(NULL, sizeof *row, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    pthread_t threads[SCALING_MAX];
    SCALING_THREAD_ARG args[SCALING_MAX];
    pid_t pids[SCALING_MAX];
    uint64_t t0, last = 0, ops = 0, cpus = 0;
    uint32_t errors = 0;
    int started = 0;
    if (row == MAP_FAILED) {
        peer_error("scaling: mmap of the row's shared state");
        return 0;
    }
    memset((void *)row, 0, sizeof *row);
    row->workload = workload;
    for (; started < n; started++) {
        if (processes) {
            pid_t pid = fork();
            if (pid == 0) {
                scaling_worker(row, started);
                _exit(0);
            }
            if (pid < 0) break;
            pids[started] = pid;
        } else {
            args[started].row = row;
            args[started].i = started;
            if (pthread_create(&threads[started], NULL, scaling_thread, &args[started]) != 0) break;
        }
    }
    if (started < n) {
        /* Release the ones started (they wait on the barrier) with a zero-length run. */
        peer_error(processes ? "scaling: fork" : "scaling: pthread_create");
        errors++;
    }
    wait_until(&row->ready, started);
    t0 = rdtsc();
    row->deadline = started < n ? t0 : t0 + run_cycles;
    __atomic_store_n(&row->go, 1, __ATOMIC_RELEASE);
    futex_wake_all(&row->go);
    wait_until(&row->done, started);
    for (int i = 0; i < started; i++) {
        ops += row->w[i].ops;
        cpus |= row->w[i].cpus;
        errors += row->w[i].errors;
        if (row->w[i].end_tsc > last) last = row->w[i].end_tsc;
    }
    __atomic_store_n(&row->leave, 1, __ATOMIC_RELEASE);
    futex_wake_all(&row->leave);
    for (int i = 0; i < started; i++) {
        if (processes) {
            int status = 0;
            if (waitpid(pids[i], &status, 0) != pids[i] || !WIFEXITED(status) || WEXITSTATUS(status) != 0) errors++;
        } else {
            pthread_join(threads[i], NULL);
        }
    }
    munmap((void *)row, sizeof *row);
    if (errors || last <= t0 || ops == 0) {
        printf("peer-error scaling %s mode=%s n=%d: %u errors\n", SCALING_NAMES[workload], mode, n, errors);
        g_errors++;
        return 0;
    }
    double per_s = (double)ops * (double)tsc_hz / (double)(last - t0);
    double base = single > 0 ? single : per_s;
    printf("peer-scaling %s mode=%s n=%d ops=%llu ops_per_s=%.0f speed_up=%.2fx cycles_per_op=%.0f cpus_seen=%d\n",
           SCALING_NAMES[workload], mode, n, (unsigned long long)ops, per_s, per_s / base,
           (double)(last - t0) * n / (double)ops, __builtin_popcountll(cpus));
    return per_s;
}

/* The TSC's rate against CLOCK_MONOTONIC over about 50 ms, for the fixed run time. */
static uint64_t tsc_hz_measured(void) {
    struct timespec pause = {0, 50 * 1000 * 1000};
    double n0 = now_ns();
    uint64_t c0 = rdtsc();
    nanosleep(&pause, NULL);
    double n1 = now_ns();
    uint64_t c1 = rdtsc();
    return n1 > n0 ? (uint64_t)((double)(c1 - c0) * 1e9 / (n1 - n0)) : 2000000000ull;
}

static void scaling(void) {
    static const int COUNTS[] = {1, 2, SCALING_MAX};
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    uint64_t tsc_hz = tsc_hz_measured();
    uint64_t run_cycles = tsc_hz / 1000 * SCALING_RUN_MS;
    printf("peer-env cpus_online=%ld\n", online);
    printf("peer-env tsc_hz=%llu\n", (unsigned long long)tsc_hz);
    for (int w = SCALING_COMMIT_TOUCH_DECOMMIT; w <= SCALING_RESERVE_RELEASE; w++)
        for (int processes = 0; processes <= 1; processes++) {
            double single = 0;
            for (size_t k = 0; k < sizeof COUNTS / sizeof COUNTS[0]; k++) {
                int n = COUNTS[k];
                if (n > online) {
                    printf("peer-scaling %s mode=%s n=%d n/a (only %ld CPUs online)\n", SCALING_NAMES[w],
                           processes ? "processes" : "threads", n, online);
                    continue;
                }
                double per_s = scaling_row((SCALING_WORKLOAD)w, processes, n, run_cycles, tsc_hz, single);
                if (n == 1) single = per_s;
            }
        }
}
#endif

static void run_workloads(void) {
#ifndef _WIN32
    noop_calls(); /* first, as in the guest */
#endif
    reserve_release_64k();
    commit_touch_decommit();
    protect_256_pages();
    reserve_release_10k_live();
    commit_touch_256m("commit_touch_256m");
    commit_touch_256m("commit_touch_256m_again");
    queries();
#ifndef _WIN32
    large_page_commit_2m();
#endif
    guard_page_fault();
}

/* Runs the parts the arguments name ("workloads", "scaling"; none of them: "workloads"), then
 * prints "peer-done errors=N". Returns the exit status. Other arguments are noted and ignored (as
 * /init, the kernel passes on the command-line words it does not know). */
static int run_parts(int argc, char **argv) {
    int workloads = 0, scaling_part = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "workloads") == 0) workloads = 1;
        else if (strcmp(argv[i], "scaling") == 0) scaling_part = 1;
        else printf("peer-note ignored argument %s (known: workloads, scaling)\n", argv[i]);
    }
    if (workloads || !scaling_part) run_workloads();
    if (scaling_part) {
#ifdef _WIN32
        printf("peer-note scaling: not built for Windows\n");
#else
        scaling();
#endif
    }
    printf("peer-done errors=%d\n", g_errors);
    fflush(stdout);
    return g_errors ? 1 : 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("peer %s\n", PEER);
#ifdef _WIN32
    return run_parts(argc, argv);
#else
    if (getpid() != 1) {
        print_env(0);
        return run_parts(argc, argv);
    }
    /* As /init: the workloads run in a child, an ordinary process (the kernel logs every fault
     * signal of pid 1 to the console, which would be timed with the guard-page round trip). */
    mount("proc", "/proc", "proc", 0, NULL);
    mount("sysfs", "/sys", "sysfs", 0, NULL);
    print_env(1);
    pid_t child = fork();
    if (child == 0) _exit(run_parts(argc, argv));
    int status = 0;
    if (child < 0 || waitpid(child, &status, 0) != child) printf("peer-error fork/wait\n");
    else if (!WIFEXITED(status)) printf("peer-error the workloads died of signal %d\n", WTERMSIG(status));
    fflush(stdout);
    sync();
    reboot(RB_POWER_OFF); /* QEMU exits; if it returns, the kernel panics on init's exit */
    return 0;
#endif
}
