/* bytes_map.h: growable C arrays and a bytes -> uint32 values hash map (cache, counts).
 * Included once by _bpe_encode.c (static functions; not a separate translation unit). */
#ifndef LMFORGE_BYTES_MAP_H
#define LMFORGE_BYTES_MAP_H

#include <sys/mman.h>

/* ------------------------------------------------------------------- growable C arrays */

/* memset through a pointer the compiler cannot see through: GCC turns malloc + memset(0) into
 * calloc, which leaves fresh pages unwritten. Pages of a fresh mapping that are read first map the
 * shared zero page, and the first write to such a page then costs a copy fault that interrupts
 * every core running this process (a TLB shootdown; 17% of the time of two threads encoding
 * 40 MB). Zeroing by writing makes every page an ordinary first-touch write. */
static void *(*volatile memset_written)(void *, int, size_t) = memset;

#define HUGE_PAGE ((size_t)2 << 20)

/* A zeroed block of n bytes, its pages written (see memset_written); NULL if out of memory.
 * Blocks of 2 MiB or more (the encoder's piece caches) are 2 MiB-aligned and asked for
 * transparent huge pages: their lookups land at random, and on 4 KiB pages most of them also
 * missed the TLB; 2 MiB pages also cut the page faults (measured: 14.3K -> 8.9K faults and
 * ~15% faster encoding of 40 MB in a fresh process). Where the kernel gives none, nothing
 * changes. */
static void *zalloc_written(size_t n)
{
    void *p;
#ifdef MADV_HUGEPAGE
    if (n >= HUGE_PAGE) {
        n = (n + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1); /* aligned_alloc: a multiple of the alignment */
        if ((p = aligned_alloc(HUGE_PAGE, n)))
            madvise(p, n, MADV_HUGEPAGE); /* a hint: failure is harmless */
    } else
#endif
        p = malloc(n);
    return p ? memset_written(p, 0, n) : NULL;
}

/* Make room for `need` items in *p (capacity *cap, item size `size`). 0 on success. */
static int reserve(void **p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 16;
    while (c < need)
        c *= 2;
    void *np = realloc(*p, c * size);
    if (!np)
        return -1;
    *p = np, *cap = c;
    return 0;
}

typedef struct {
    uint32_t *p;
    size_t n, cap;
} IdBuf;

/* ---------------------------------------------- bytes -> uint32 values, in insertion order */

/* Records lie back to back in one arena (so iterating it gives insertion order):
 *     [hash lo, hash hi, key length, value count][key bytes, padded to 4][values]
 * A slot is 0 (empty) or (hash's high 32 bits) << 32 | (record offset + 1): a lookup touches one
 * slot and one record, and the tag rejects almost every mismatch before the key compare. */
typedef struct {
    uint64_t *slot; /* linear probing on the hash's low bits */
    size_t mask, n;
    uint32_t *arena;
    size_t len, cap; /* in 32-bit words */
} BytesMap;

#define REC_HEAD 4
static inline size_t rec_words(uint32_t key_len, uint32_t n_vals)
{
    return REC_HEAD + (key_len + 3) / 4 + n_vals;
}
static inline uint32_t *rec_vals(uint32_t *r) { return r + REC_HEAD + (r[2] + 3) / 4; }
static inline uint64_t rec_hash(const uint32_t *r) { return (uint64_t)r[1] << 32 | r[0]; }

static uint64_t hash_bytes(const uint8_t *s, size_t n)
{
    uint64_t h = 0x243F6A8885A308D3ull ^ n, w;
    for (; n >= 8; s += 8, n -= 8) {
        memcpy(&w, s, 8);
        h = (h ^ w) * 0x9E3779B97F4A7C15ull;
        h ^= h >> 29;
    }
    if (n) {
        w = 0;
        memcpy(&w, s, n);
        h = (h ^ w) * 0x9E3779B97F4A7C15ull;
    }
    h *= 0xBF58476D1CE4E5B9ull;
    return h ^ (h >> 31);
}

/* a[0:n] == b[0:n] with word loads (pieces are short; libc memcmp is a call away). */
static inline int key_eq(const uint8_t *a, const uint8_t *b, size_t n)
{
    uint64_t x, y;
    uint32_t u, v;
    if (n >= 8) {
        for (size_t i = 0; i + 8 < n; i += 8) {
            memcpy(&x, a + i, 8), memcpy(&y, b + i, 8);
            if (x != y)
                return 0;
        }
        memcpy(&x, a + n - 8, 8), memcpy(&y, b + n - 8, 8);
        return x == y;
    }
    if (n >= 4) {
        memcpy(&u, a, 4), memcpy(&v, b, 4);
        if (u != v)
            return 0;
        memcpy(&u, a + n - 4, 4), memcpy(&v, b + n - 4, 4);
        return u == v;
    }
    for (size_t i = 0; i < n; i++)
        if (a[i] != b[i])
            return 0;
    return 1;
}

static BytesMap *bm_new(void)
{
    BytesMap *m = calloc(1, sizeof *m);
    if (!m || !(m->slot = calloc(1024, sizeof(uint64_t)))) {
        free(m);
        return NULL;
    }
    m->mask = 1023;
    return m;
}

static void bm_free(BytesMap *m)
{
    if (m) {
        free(m->slot), free(m->arena);
        free(m);
    }
}

static void bm_clear(BytesMap *m)
{
    memset(m->slot, 0, (m->mask + 1) * sizeof(uint64_t));
    m->n = m->len = 0;
}

/* The record for key s[0:n] (hash h), or NULL; *at receives the slot where it would go. */
static inline uint32_t *bm_find(const BytesMap *m, const uint8_t *s, size_t n, uint64_t h,
                                size_t *at)
{
    for (size_t i = h & m->mask;; i = (i + 1) & m->mask) {
        uint64_t x = m->slot[i];
        if (!x) {
            *at = i;
            return NULL;
        }
        uint32_t *r = m->arena + (uint32_t)x - 1;
        if (((x ^ h) >> 32) == 0 && r[2] == n && key_eq((const uint8_t *)(r + REC_HEAD), s, n))
            return r;
    }
}

static int bm_grow(BytesMap *m)
{
    size_t cap = (m->mask + 1) * 2;
    uint64_t *slot = zalloc_written(cap * sizeof(uint64_t));
    if (!slot)
        return -1;
    for (size_t off = 0; off < m->len; off += rec_words(m->arena[off + 2], m->arena[off + 3])) {
        uint64_t h = rec_hash(m->arena + off);
        size_t i = h & (cap - 1);
        while (slot[i])
            i = (i + 1) & (cap - 1);
        slot[i] = (h & 0xFFFFFFFF00000000ull) | (off + 1);
    }
    free(m->slot);
    m->slot = slot, m->mask = cap - 1;
    return 0;
}

/* Add key s[0:n] (hash h, known absent, would go to slot `at`) with n_vals values, which the
 * caller fills in; returns the values, or NULL if out of memory. */
static uint32_t *bm_insert(BytesMap *m, const uint8_t *s, size_t n, uint64_t h, size_t at,
                           uint32_t n_vals)
{
    size_t w = rec_words((uint32_t)n, n_vals);
    if (m->len + w >= UINT32_MAX || reserve((void **)&m->arena, &m->cap, m->len + w, 4) < 0)
        return NULL;
    if ((m->n + 1) * 2 > m->mask + 1) {
        if (bm_grow(m) < 0)
            return NULL;
        bm_find(m, s, n, h, &at);
    }
    uint32_t *r = m->arena + m->len;
    r[0] = (uint32_t)h, r[1] = (uint32_t)(h >> 32), r[2] = (uint32_t)n, r[3] = n_vals;
    if (n)
        r[REC_HEAD + (n - 1) / 4] = 0; /* zero the padding */
    memcpy(r + REC_HEAD, s, n);
    m->slot[at] = (h & 0xFFFFFFFF00000000ull) | (m->len + 1);
    m->len += w, m->n++;
    return rec_vals(r);
}


#endif /* LMFORGE_BYTES_MAP_H */
