/* Small freestanding helpers shared by the C guests (no libc: -nostdlib). */
#ifndef GUEST_UTIL_H
#define GUEST_UTIL_H
#include "host_abi.h"

/* gcc may emit calls to these even with -ffreestanding. */
void *memset(void *d, int c, size_t n) {
    unsigned char *p = (unsigned char *)d;
    while (n--) *p++ = (unsigned char)c;
    return d;
}
void *memcpy(void *d, const void *s, size_t n) {
    unsigned char *p = (unsigned char *)d;
    const unsigned char *q = (const unsigned char *)s;
    while (n--) *p++ = *q++;
    return d;
}
int memcmp(const void *a, const void *b, size_t n) {
    const unsigned char *p = (const unsigned char *)a, *q = (const unsigned char *)b;
    for (; n; n--, p++, q++)
        if (*p != *q) return *p - *q;
    return 0;
}

static const HOST_SERVICES *g_services;

static size_t str_len(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}
static void put(const char *s) { g_services->write(s, str_len(s)); }
static void put_hex(uint64_t v) {
    char b[19] = "0x";
    int i;
    for (i = 0; i < 16; i++) b[2 + i] = "0123456789abcdef"[(v >> (60 - 4 * i)) & 15];
    g_services->write(b, 18);
}
static void put_dec(uint64_t v) {
    char b[21];
    int i = 20;
    b[i] = 0;
    do { b[--i] = (char)('0' + v % 10); v /= 10; } while (v);
    put(b + i);
}

static int g_passed, g_failed;
/* One line per check: "ok NAME" or "FAILED NAME (got X, expected Y)". */
static void check(const char *name, uint64_t got, uint64_t expected) {
    if (got == expected) {
        g_passed++;
        put("ok ");
        put(name);
        put("\n");
    } else {
        g_failed++;
        put("FAILED ");
        put(name);
        put(" (got ");
        put_hex(got);
        put(", expected ");
        put_hex(expected);
        put(")\n");
    }
}
static int summary(void) {
    put_dec((uint64_t)g_passed);
    put(" passed, ");
    put_dec((uint64_t)g_failed);
    put(" failed\n");
    return g_failed == 0 ? 0 : 1;
}
#endif
