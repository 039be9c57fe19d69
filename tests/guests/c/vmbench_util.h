/* rdtsc and one-write lines for the in-guest benchmarks (vmbench_guest.c, vmbench_threads.c): a
 * marker line is built on the stack and written with one HOST_SERVICES.write call, so the image's
 * write hook never sees it split. */
#ifndef VMBENCH_UTIL_H
#define VMBENCH_UTIL_H
#include "host_abi.h"

static inline uint64_t rdtsc(void) {
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

/* On the stack, not in the image's data: vmbench_guest.c's no-op calls run before any write to
 * it (see its guest_main). */
typedef struct LINE {
    char b[256];
    size_t n;
} LINE;
static inline void l_str(LINE *l, const char *s) {
    while (*s && l->n < sizeof l->b - 1) l->b[l->n++] = *s++;
}
static inline void l_dec(LINE *l, uint64_t v) {
    char b[21];
    int i = 20;
    b[i] = 0;
    do { b[--i] = (char)('0' + v % 10); v /= 10; } while (v);
    l_str(l, b + i);
}
static inline void l_hex(LINE *l, uint64_t v) {
    char b[19];
    int i;
    b[0] = '0';
    b[1] = 'x';
    for (i = 0; i < 16; i++) b[2 + i] = "0123456789abcdef"[(v >> (60 - 4 * i)) & 15];
    b[18] = 0;
    l_str(l, b);
}
static inline void l_flush(const HOST_SERVICES *hs, LINE *l) {
    l->b[l->n++] = '\n';
    hs->write(l->b, l->n);
    l->n = 0;
}

#endif
