/* bpe_merge.h: byte-level BPE within one pre-token (array scan for short pieces, heap for long).
 * Included once by _bpe_encode.c (static functions; not a separate translation unit). */
#ifndef LMFORGE_BPE_MERGE_H
#define LMFORGE_BPE_MERGE_H

/* ------------------------------------------------------------------------- BPE merging */

typedef struct {
    uint64_t key, val; /* key = left << 32 | right (EMPTY if free); val = rank << 32 | merged */
} PairSlot;            /* key and value side by side: a lookup touches one cache line */

typedef struct {
    PairSlot *slot;
    size_t mask;
} PairMap;

#define EMPTY UINT64_MAX
#define NO_MERGE UINT64_MAX

static inline size_t pair_slot(const PairMap *p, uint64_t key)
{
    return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 20) & p->mask;
}

static inline uint64_t pair_get(const PairMap *p, uint32_t a, uint32_t b)
{
    uint64_t key = (uint64_t)a << 32 | b;
    for (size_t i = pair_slot(p, key);; i = (i + 1) & p->mask) {
        if (p->slot[i].key == key)
            return p->slot[i].val;
        if (p->slot[i].key == EMPTY)
            return NO_MERGE;
    }
}

/* What BPE needs: the id of each byte, the merges, and the merges of every byte pair as a dense
 * table (byte_pair[a << 8 | b] = pair_get of the ids of bytes a and b; 512 KiB), so the first
 * round of lookups of a piece - one per byte pair - needs no hashing. */
typedef struct {
    uint32_t byte_id[256];
    PairMap pairs;
    uint64_t *byte_pair;
} Bpe;

/* Fill bpe->byte_pair from byte_id and pairs; 0, or -1 if out of memory. */
static int bpe_init_byte_pairs(Bpe *m)
{
    if (!(m->byte_pair = malloc(65536 * sizeof(uint64_t))))
        return -1;
    for (int a = 0; a < 256; a++)
        for (int b = 0; b < 256; b++)
            m->byte_pair[a << 8 | b] = pair_get(&m->pairs, m->byte_id[a], m->byte_id[b]);
    return 0;
}

/* Array scan for short pieces: s[0:n] are the piece's bytes, ids[0:n] their ids on entry;
 * returns the merged count. */
static size_t bpe_small(const Bpe *m, const uint8_t *s, uint32_t *ids, size_t n)
{
    const PairMap *pm = &m->pairs;
    uint64_t pv[SMALL_PIECE]; /* pv[i] = packed merge of (ids[i], ids[i+1]) */
    for (size_t i = 0; i + 1 < n; i++)
        pv[i] = m->byte_pair[(size_t)s[i] << 8 | s[i + 1]];
    while (n > 1) {
        size_t b = 0;
        uint64_t best = pv[0];
        for (size_t i = 1; i + 1 < n; i++) { /* branch-free: the minimum's place is random */
            int lower = pv[i] < best; /* strict: leftmost of equal ranks */
            best = lower ? pv[i] : best, b = lower ? i : b;
        }
        if (best == NO_MERGE)
            break;
        uint32_t merged = ids[b] = (uint32_t)best;
        /* the two new pairs' slots start loading while the arrays close the gap */
        if (b > 0)
            __builtin_prefetch(&pm->slot[pair_slot(pm, (uint64_t)ids[b - 1] << 32 | merged)]);
        if (b + 2 < n)
            __builtin_prefetch(&pm->slot[pair_slot(pm, (uint64_t)merged << 32 | ids[b + 2])]);
        for (size_t i = b + 1; i + 1 < n; i++)
            ids[i] = ids[i + 1];
        for (size_t i = b + 1; i + 2 < n; i++)
            pv[i] = pv[i + 1];
        n--;
        if (b > 0)
            pv[b - 1] = pair_get(pm, ids[b - 1], merged);
        if (b + 1 < n)
            pv[b] = pair_get(pm, merged, ids[b + 1]);
    }
    return n;
}

static void heap_push(uint64_t *h, size_t *n, uint64_t x)
{
    size_t i = (*n)++;
    for (; i > 0 && h[(i - 1) / 2] > x; i = (i - 1) / 2)
        h[i] = h[(i - 1) / 2];
    h[i] = x;
}

static uint64_t heap_pop(uint64_t *h, size_t *n)
{
    uint64_t top = h[0], x = h[--(*n)];
    size_t i = 0, m = *n;
    for (size_t c = 1; c < m; i = c, c = 2 * c + 1) {
        if (c + 1 < m && h[c + 1] < h[c])
            c++;
        if (x <= h[c])
            break;
        h[i] = h[c];
    }
    if (m)
        h[i] = x;
    return top;
}

#define DEAD UINT32_MAX

/* Push (rank, p) if tokens p and nx[p] form a merge. */
static void push_pair(const PairMap *pm, const uint32_t *ids, const int32_t *nx, uint64_t *h,
                      size_t *hn, int32_t p)
{
    if (p >= 0 && nx[p] >= 0) {
        uint64_t v = pair_get(pm, ids[p], ids[nx[p]]);
        if (v != NO_MERGE)
            heap_push(h, hn, (v & 0xFFFFFFFF00000000ull) | (uint32_t)p);
    }
}

/* Linked list + min-heap of (rank, position) for long pieces, O(n log n). Same result as
 * bpe_small: the heap's minimum is the lowest-rank, leftmost pair; stale entries are skipped. */
static Py_ssize_t bpe_large(const PairMap *pm, uint32_t *ids, size_t n)
{
    int32_t *nx = malloc(n * sizeof *nx), *pr = malloc(n * sizeof *pr);
    uint64_t *h = malloc(3 * n * sizeof *h); /* n - 1 initial pairs + 2 per merge */
    size_t hn = 0, k = 0;
    if (!nx || !pr || !h) {
        free(nx), free(pr), free(h);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        nx[i] = i + 1 < n ? (int32_t)(i + 1) : -1, pr[i] = (int32_t)i - 1;
    for (size_t i = 0; i + 1 < n; i++)
        push_pair(pm, ids, nx, h, &hn, (int32_t)i);
    while (hn) {
        uint64_t top = heap_pop(h, &hn);
        int32_t p = (int32_t)(uint32_t)top, q = nx[p];
        if (ids[p] == DEAD || q < 0)
            continue;
        uint64_t v = pair_get(pm, ids[p], ids[q]);
        if (v == NO_MERGE || v >> 32 != top >> 32)
            continue;
        ids[p] = (uint32_t)v, ids[q] = DEAD, nx[p] = nx[q];
        if (nx[q] >= 0)
            pr[nx[q]] = p;
        push_pair(pm, ids, nx, h, &hn, pr[p]);
        push_pair(pm, ids, nx, h, &hn, p);
    }
    for (int32_t p = 0; p >= 0; p = nx[p])
        ids[k++] = ids[p];
    free(nx), free(pr), free(h);
    return (Py_ssize_t)k;
}

/* BPE-encode the piece s[0:n] into out[0:n]; returns the number of ids, -1 if out of memory. */
static Py_ssize_t bpe(const Bpe *m, const uint8_t *s, size_t n, uint32_t *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = m->byte_id[s[i]];
    return n <= SMALL_PIECE ? (Py_ssize_t)bpe_small(m, s, out, n) : bpe_large(&m->pairs, out, n);
}


#endif /* LMFORGE_BPE_MERGE_H */
