/* IHostMalloc gives memory back (host-abi §6, issue 17): blocks freed leave their pages
 * decommitted (query_commit before and after), freed pages come back on reuse with the data
 * written to them, a block in a decommitted page is still refused by Free, a large block's own
 * region is released. With HOST_SERVICES version 2, threads hammer one MALLOC_THREADSAFE heap. */
#include "host_abi.h"
#include "guest_util.h"

#define BLOCKS 256
#define BLOCK_SIZE 8000
#define SLACK (64u << 10) /* what a heap may keep committed per region once its blocks are freed */

static uint64_t committed(void) {
    HOST_COMMIT_INFO info;
    g_services->query_commit(&info);
    return info.committed;
}

static void fill(uint64_t *p, uint64_t words, uint64_t tag) {
    uint64_t i;
    for (i = 0; i < words; i++) p[i] = tag ^ (i * 0x9E3779B97F4A7C15ull);
}
static int intact(const uint64_t *p, uint64_t words, uint64_t tag) {
    uint64_t i;
    for (i = 0; i < words; i++)
        if (p[i] != (tag ^ (i * 0x9E3779B97F4A7C15ull))) return 0;
    return 1;
}

/* ---- threads on one heap (version 2) ---------------------------------------------------- */

#define THREADS 4
#define ROUNDS 3000
#define SLOTS 64

static IHostMalloc *g_shared;
static volatile uint32_t g_bad, g_failed_allocs;

static uint32_t worker(void *arg) {
    uint64_t id = (uint64_t)arg, rng = 0x243F6A8885A308D3ull ^ (id << 32);
    void *slot[SLOTS] = {0};
    uint64_t words[SLOTS] = {0};
    int i, r;
    for (r = 0; r < ROUNDS; r++) {
        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
        i = (int)(rng % SLOTS);
        if (slot[i]) {
            if (!intact((uint64_t *)slot[i], words[i], id << 48 | (uint64_t)i)) __atomic_add_fetch(&g_bad, 1, __ATOMIC_SEQ_CST);
            if (g_shared->lpVtbl->Free(g_shared, slot[i]) != S_OK) __atomic_add_fetch(&g_bad, 1, __ATOMIC_SEQ_CST);
            slot[i] = 0;
        } else {
            /* Mostly small blocks, now and then one of 64-192 KiB (spans that decommit). */
            words[i] = (rng >> 20) % 16 == 0 ? 8192 + (rng >> 30) % 16384 : 1 + (rng >> 30) % 300;
            if (g_shared->lpVtbl->Alloc(g_shared, words[i] * 8, eTaskCritical, &slot[i]) != S_OK) {
                __atomic_add_fetch(&g_failed_allocs, 1, __ATOMIC_SEQ_CST);
                slot[i] = 0;
                continue;
            }
            fill((uint64_t *)slot[i], words[i], id << 48 | (uint64_t)i);
        }
    }
    for (i = 0; i < SLOTS; i++)
        if (slot[i]) {
            if (!intact((uint64_t *)slot[i], words[i], id << 48 | (uint64_t)i)) __atomic_add_fetch(&g_bad, 1, __ATOMIC_SEQ_CST);
            g_shared->lpVtbl->Free(g_shared, slot[i]);
        }
    return 7;
}

static void threads_share_a_threadsafe_heap(IHostMemoryManager *host) {
    uint64_t handles[THREADS], before;
    uint32_t code, i;
    before = committed();
    check("CreateMalloc(MALLOC_THREADSAFE) for threads", (uint32_t)host->lpVtbl->CreateMalloc(host, MALLOC_THREADSAFE, &g_shared), S_OK);
    if (!g_shared) return;
    for (i = 0; i < THREADS; i++) handles[i] = g_services->create_thread(worker, (void *)(uint64_t)(i + 1), 0, 0);
    for (i = 0; i < THREADS; i++) {
        check("thread started", handles[i] != 0, 1);
        if (!handles[i]) continue;
        code = 0;
        check("thread waited for", g_services->wait_thread(handles[i], UINT64_MAX, &code), 0);
        check("thread exit code", code, 7);
        g_services->close_thread(handles[i]);
    }
    check("threads: every block intact and freed", g_bad, 0);
    check("threads: no allocation failed", g_failed_allocs, 0);
    check("threads: the shared heap's commit went back", committed() <= before + 2 * SLACK, 1);
    check("threads: Release frees the heap", g_shared->lpVtbl->Release(g_shared), 0);
    check("threads: commit back to where it was", committed() <= before, 1);
}

/* CreateMalloc names no critical level: its heap is committed at eTaskCritical, so once free
 * commit is down to the critical reserve it fails with E_OUTOFMEMORY (host-abi §5) and charges
 * nothing, while a block of an existing heap may still be had at eProcessCritical. */
static void heap_in_the_critical_reserve(IHostMemoryManager *host) {
    HOST_COMMIT_INFO info;
    IHostMalloc *early = 0, *late = (IHostMalloc *)1;
    void *fill_to_reserve = 0, *block = 0;
    uint64_t before;
    DWORD load = 0;
    SIZE_T available = 1;
    check("a heap made before the reserve is reached", (uint32_t)host->lpVtbl->CreateMalloc(host, 0, &early), S_OK);
    if (!early) return;
    g_services->query_commit(&info);
    check("commit everything down to the critical reserve",
          (uint32_t)host->lpVtbl->VirtualAlloc(host, 0, info.commit_limit - info.critical_reserve - info.committed, MEM_RESERVE | MEM_COMMIT,
                                               PAGE_READWRITE, eTaskCritical, &fill_to_reserve),
          S_OK);
    host->lpVtbl->GetMemoryLoad(host, &load, &available);
    check("... nothing left at eTaskCritical", available, 0);
    before = committed();
    check("CreateMalloc in the critical reserve", (uint32_t)host->lpVtbl->CreateMalloc(host, 0, &late), (uint32_t)E_OUTOFMEMORY);
    check("... *ppMalloc NULL", (uint64_t)late, 0);
    check("... nothing charged", committed(), before);
    check("a 64 KiB block of the earlier heap at eProcessCritical", (uint32_t)early->lpVtbl->Alloc(early, 64u << 10, eProcessCritical, &block), S_OK);
    if (block) early->lpVtbl->Free(early, block);
    host->lpVtbl->VirtualFree(host, fill_to_reserve, 0, MEM_RELEASE);
    check("CreateMalloc once commit is back", (uint32_t)host->lpVtbl->CreateMalloc(host, 0, &late), S_OK);
    if (late && late != (IHostMalloc *)1) late->lpVtbl->Release(late);
    early->lpVtbl->Release(early);
}

int32_t guest_main(IHostMemoryManager *host, const HOST_SERVICES *services) {
    IHostMalloc *heap = 0;
    void *blocks[BLOCKS], *big = 0, *huge = 0;
    uint64_t c0, c1, c2, c3, start;
    MEMORY_BASIC_INFORMATION mbi;
    SIZE_T got = 0;
    int i, ok;
    g_services = services;
    put("malloc-commit: hello from ring 3\n");
    start = committed();
    check("CreateMalloc", (uint32_t)host->lpVtbl->CreateMalloc(host, MALLOC_THREADSAFE, &heap), S_OK);
    if (!heap) return summary();
    c0 = committed();

    /* 2 MiB of blocks, every one written. */
    ok = 1;
    for (i = 0; i < BLOCKS; i++) {
        ok &= heap->lpVtbl->Alloc(heap, BLOCK_SIZE, eTaskCritical, &blocks[i]) == S_OK;
        if (blocks[i]) fill((uint64_t *)blocks[i], BLOCK_SIZE / 8, (uint64_t)i);
    }
    check("256 blocks of 8000 bytes", ok, 1);
    c1 = committed();
    check("their pages were committed", c1 - c0 >= BLOCKS * BLOCK_SIZE, 1);

    /* Every other block freed: the holes are too small to give back; the rest is intact. */
    for (i = 0; i < BLOCKS; i += 2) heap->lpVtbl->Free(heap, blocks[i]);
    ok = 1;
    for (i = 1; i < BLOCKS; i += 2) ok &= intact((uint64_t *)blocks[i], BLOCK_SIZE / 8, (uint64_t)i);
    check("blocks left are intact", ok, 1);
    for (i = 1; i < BLOCKS; i += 2) heap->lpVtbl->Free(heap, blocks[i]);
    c2 = committed();
    put("malloc-commit: committed before ");
    put_dec(c0 >> 10);
    put(" KiB, with the blocks ");
    put_dec(c1 >> 10);
    put(" KiB, after freeing them ");
    put_dec(c2 >> 10);
    put(" KiB\n");
    check("commit went back after the frees", c2 <= c0 + SLACK, 1);
    /* A block whose pages were decommitted: Free refuses it and faults on nothing. */
    check("Free of a block in decommitted pages", (uint32_t)heap->lpVtbl->Free(heap, blocks[BLOCKS / 2]), (uint32_t)E_INVALIDARG);

    /* Reuse: the pages are committed again and hold what is written. */
    ok = 1;
    for (i = 0; i < BLOCKS; i++) {
        ok &= heap->lpVtbl->Alloc(heap, BLOCK_SIZE, eTaskCritical, &blocks[i]) == S_OK;
        if (blocks[i]) fill((uint64_t *)blocks[i], BLOCK_SIZE / 8, (uint64_t)i + 1000);
    }
    for (i = 0; i < BLOCKS; i++) ok &= blocks[i] && intact((uint64_t *)blocks[i], BLOCK_SIZE / 8, (uint64_t)i + 1000);
    check("freed pages are recommitted on reuse", ok, 1);
    for (i = 0; i < BLOCKS; i++) heap->lpVtbl->Free(heap, blocks[i]);
    check("and given back again", committed() <= c0 + SLACK, 1);

    /* A 4 MiB block inside a region, and a 40 MiB one with a region of its own. */
    check("Alloc 4 MiB", (uint32_t)heap->lpVtbl->Alloc(heap, 4u << 20, eTaskCritical, &big), S_OK);
    check("Alloc 40 MiB", (uint32_t)heap->lpVtbl->Alloc(heap, 40u << 20, eTaskCritical, &huge), S_OK);
    if (big && huge) {
        ((volatile char *)big)[(4u << 20) - 1] = 1;
        ((volatile char *)huge)[(40u << 20) - 1] = 2;
        c3 = committed();
        /* (Part of the 4 MiB block may lie in pages the heap kept committed.) */
        check("the large blocks are committed", c3 - c0 >= (44u << 20) - SLACK, 1);
        heap->lpVtbl->Free(heap, big);
        heap->lpVtbl->Free(heap, huge);
        check("their commit went back", committed() <= c0 + 2 * SLACK, 1);
        host->lpVtbl->VirtualQuery(host, huge, &mbi, sizeof mbi, &got);
        check("the 40 MiB block's region was released", mbi.State, MEM_FREE);
    }
    check("Release frees the heap", heap->lpVtbl->Release(heap), 0);
    check("commit back to where it was before CreateMalloc", committed(), start);
    heap_in_the_critical_reserve(host);

    if (services->version >= 2 && services->cbSize >= 192)
        threads_share_a_threadsafe_heap(host);
    else
        put("malloc-commit: HOST_SERVICES version 1: no threads to share a heap with\n");
    return summary();
}
