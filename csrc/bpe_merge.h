/* bpe_merge.h: byte-level BPE within one pre-token (array scan for short pieces, heap for long).
 * Included once by _bpe_encode.c (static functions; not a separate translation unit). */
#ifndef LMFORGE_BPE_MERGE_H
#define LMFORGE_BPE_MERGE_H

/* ------------------------------------------------------------------------- BPE merging */

/* The merges as (left id, right id) -> rank, open addressing with linear probing at load <= 1/2,
 * and merged[rank] = the id that merge makes (read only when a merge is applied). A slot is one
 * word, left << 44 | right << 24 | rank, when ids are below 2**20 - 1 and ranks below 2**24 - 1
 * (GPT-2's table is then 1 MiB, not 2, so more of it stays in L2); otherwise two words,
 * left << 32 | right and the rank ("wide"). */
typedef struct {
    uint64_t *slot;
    uint32_t *merged;
    size_t mask;
    int wide;
} PairMap;

#define EMPTY UINT64_MAX
#define NO_RANK UINT32_MAX
#define COMPACT_IDS ((1u << 20) - 1)  /* ids below this (and ranks below 2**24 - 1): compact */
#define COMPACT_RANKS ((1u << 24) - 1)

static inline size_t pair_slot(const PairMap *p, uint32_t a, uint32_t b)
{
    return (size_t)((((uint64_t)a << 32 | b) * 0x9E3779B97F4A7C15ull) >> 20) & p->mask;
}

/* Address of the slot to prefetch before pair_rank(p, a, b). */
static inline const uint64_t *pair_addr(const PairMap *p, uint32_t a, uint32_t b)
{
    return p->slot + (pair_slot(p, a, b) << p->wide);
}

/* The rank of merge (a, b), or NO_RANK. */
static inline uint32_t pair_rank(const PairMap *p, uint32_t a, uint32_t b)
{
    if (!p->wide) {
        uint64_t key = (uint64_t)a << 44 | (uint64_t)b << 24;
        for (size_t i = pair_slot(p, a, b);; i = (i + 1) & p->mask) {
            uint64_t x = p->slot[i];
            if ((x & ~(uint64_t)COMPACT_RANKS) == key)
                return (uint32_t)(x & COMPACT_RANKS);
            if (x == EMPTY)
                return NO_RANK;
        }
    }
    uint64_t key = (uint64_t)a << 32 | b;
    for (size_t i = pair_slot(p, a, b);; i = (i + 1) & p->mask) {
        if (p->slot[2 * i] == key)
            return (uint32_t)p->slot[2 * i + 1];
        if (p->slot[2 * i] == EMPTY)
            return NO_RANK;
    }
}

/* An empty map for n merges of ids up to max_id; -1 if out of memory. */
static int pair_map_init(PairMap *p, size_t n, uint32_t max_id)
{
    size_t cap = 1024;
    while (cap < 2 * n + 2)
        cap *= 2;
    p->wide = !(max_id < COMPACT_IDS && n < COMPACT_RANKS);
    p->mask = cap - 1;
    p->slot = malloc((cap << p->wide) * sizeof(uint64_t));
    p->merged = calloc(n + 1, sizeof(uint32_t));
    if (!p->slot || !p->merged)
        return -1;
    memset(p->slot, 0xFF, (cap << p->wide) * sizeof(uint64_t));
    return 0;
}

/* Add merge `rank` (a, b) -> m, inserted in rank order: a pair already present keeps its lower
 * rank. */
static void pair_map_add(PairMap *p, uint32_t a, uint32_t b, uint32_t rank, uint32_t m)
{
    p->merged[rank] = m;
    if (pair_rank(p, a, b) != NO_RANK)
        return;
    size_t i = pair_slot(p, a, b);
    if (!p->wide) {
        while (p->slot[i] != EMPTY)
            i = (i + 1) & p->mask;
        p->slot[i] = (uint64_t)a << 44 | (uint64_t)b << 24 | rank;
        return;
    }
    while (p->slot[2 * i] != EMPTY)
        i = (i + 1) & p->mask;
    p->slot[2 * i] = (uint64_t)a << 32 | b, p->slot[2 * i + 1] = rank;
}

static void pair_map_free(PairMap *p)
{
    free(p->slot), free(p->merged);
    p->slot = NULL, p->merged = NULL;
}

/* What BPE needs: the id of each byte, the merges, and the rank of every byte pair as a dense
 * table (byte_pair[a << 8 | b] = pair_rank of the ids of bytes a and b; 256 KiB), so the first
 * round of lookups of a piece - one per byte pair - needs no hashing. */
typedef struct {
    uint32_t byte_id[256];
    PairMap pairs;
    uint32_t *byte_pair;
} Bpe;

/* Fill bpe->byte_pair from byte_id and pairs; 0, or -1 if out of memory. */
static int bpe_init_byte_pairs(Bpe *m)
{
    if (!(m->byte_pair = malloc(65536 * sizeof(uint32_t))))
        return -1;
    for (int a = 0; a < 256; a++)
        for (int b = 0; b < 256; b++)
            m->byte_pair[a << 8 | b] = pair_rank(&m->pairs, m->byte_id[a], m->byte_id[b]);
    return 0;
}

/* Array scan for short pieces: s[0:n] are the piece's bytes, ids[0:n] their ids on entry;
 * returns the merged count. */
static size_t bpe_small(const Bpe *m, const uint8_t *s, uint32_t *ids, size_t n)
{
    const PairMap *pm = &m->pairs;
    uint32_t rk[SMALL_PIECE]; /* rk[i] = rank of merging (ids[i], ids[i+1]), NO_RANK if none */
    for (size_t i = 0; i + 1 < n; i++)
        rk[i] = m->byte_pair[(size_t)s[i] << 8 | s[i + 1]];
    while (n > 1) {
        size_t b = 0;
        uint32_t best = rk[0];
        for (size_t i = 1; i + 1 < n; i++) { /* branch-free: the minimum's place is random */
            int lower = rk[i] < best; /* strict: leftmost of equal ranks */
            best = lower ? rk[i] : best, b = lower ? i : b;
        }
        if (best == NO_RANK)
            break;
        uint32_t merged = ids[b] = pm->merged[best];
        /* the two new pairs' slots start loading while the arrays close the gap */
        if (b > 0)
            __builtin_prefetch(pair_addr(pm, ids[b - 1], merged));
        if (b + 2 < n)
            __builtin_prefetch(pair_addr(pm, merged, ids[b + 2]));
        for (size_t i = b + 1; i + 1 < n; i++)
            ids[i] = ids[i + 1];
        for (size_t i = b + 1; i + 2 < n; i++)
            rk[i] = rk[i + 1];
        n--;
        if (b > 0)
            rk[b - 1] = pair_rank(pm, ids[b - 1], merged);
        if (b + 1 < n)
            rk[b] = pair_rank(pm, merged, ids[b + 1]);
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
        uint32_t r = pair_rank(pm, ids[p], ids[nx[p]]);
        if (r != NO_RANK)
            heap_push(h, hn, (uint64_t)r << 32 | (uint32_t)p);
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
        uint32_t r = pair_rank(pm, ids[p], ids[q]);
        if (r == NO_RANK || r != top >> 32)
            continue;
        ids[p] = pm->merged[r], ids[q] = DEAD, nx[p] = nx[q];
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
