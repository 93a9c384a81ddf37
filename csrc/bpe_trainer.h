/* bpe_trainer.h: the incremental BPE merge loop of _bpe_train.c (see the design note there).
 * Included once by _bpe_train.c (static functions; not a separate translation unit).
 *
 * Data layout (what makes it fast: a merge is memory-bound, so every step below is about
 * touching fewer cache lines):
 * - words: one int32 arena, each word [len, count (2 slots), token ids...], named by offset;
 * - pairs: a Pair array (count, the words that contain it) found through an open-addressing
 *   table of (tag, index) slots, and a lazy max-heap of (count, pair);
 * - per merge (a, b) -> z, the neighbour pairs' changes go to arrays indexed by token id
 *   (d_left[x] for (x, a), d_right[y] for (b, y), new_left[x] / new_right[y] for the new pairs
 *   (x, z) / (z, y)), so the hash table is probed once per distinct neighbour, not per
 *   occurrence;
 * - word lists are scanned with the word 8 entries ahead prefetched.
 *
 * -DBPE_PROFILE prints the time of each stage and the words/tokens scanned on stderr.
 */
#ifndef LMFORGE_BPE_TRAINER_H
#define LMFORGE_BPE_TRAINER_H

#ifdef BPE_PROFILE   /* -DBPE_PROFILE: time the stages on stderr (a profiling build only) */
#include <stdio.h>
static double prof_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}
static double prof_t[8];
#define PROF_START(k) double prof_s##k = prof_now()
#define PROF_END(k) (prof_t[k] += prof_now() - prof_s##k)
static long long prof_n[4]; /* words scanned, tokens scanned, occurrences merged */
#define PROF_COUNT(k, v) (prof_n[k] += (v))
#define PROF_REPORT() fprintf(stderr, "count %.3f load %.3f pairs %.3f pop %.3f apply %.3f " \
                              "(first 1000: %.3f) scans %lld toks %lld occ %lld\n", prof_t[0], \
                              prof_t[1], prof_t[2], prof_t[3], prof_t[4], prof_t[5], prof_n[0], \
                              prof_n[1], prof_n[2])
#else
#define PROF_START(k) (void)0
#define PROF_END(k) (void)0
#define PROF_REPORT() (void)0
#define PROF_COUNT(k, v) (void)0
#endif

typedef struct {
    int32_t a, b;      /* token ids */
    int64_t count;     /* sum over words of count[w] * occurrences */
    int32_t *words;    /* words that contain (or once contained) the pair; no duplicates */
    int32_t nwords, cap;
} Pair;

typedef struct { int64_t count; int32_t pair; } Entry;   /* heap entry, count may be stale */
typedef struct { uint32_t tag; int32_t pair; } Slot;     /* hash slot, pair == -1 when empty */

/* Words live back to back in one int32 arena, each as [len, count (int64, 2 slots), ids...];
 * a word is named by its offset, so a merge reaches everything it needs about a word with one
 * (prefetched) cache miss. The arena is filled once; merging shrinks len in place. */
#define W_HEAD 3
static inline int64_t word_count(const int32_t *r)
{
    int64_t c;
    memcpy(&c, r + 1, 8);
    return c;
}

typedef struct {
    int32_t *toks;     /* the word arena */
    int64_t toks_len;
    uint8_t *tbuf;     /* token bytes: token t is tbuf[toff[t] .. toff[t] + tlen[t]) */
    int64_t *toff, tbuf_len, tbuf_cap, tok_cap;
    int32_t *tlen, ntok;
    Pair *pairs;
    int32_t npairs, pairs_cap;
    Slot *slots;       /* open addressing, linear probing, power-of-two size */
    uint64_t mask;
    Entry *heap;
    int64_t nheap, heap_cap;
    int32_t *fresh;    /* pairs created since the last flush_fresh */
    int32_t nfresh, fresh_cap;
    /* Scratch of one merge (a, b) -> z, indexed by token id (so no hashing per occurrence):
     * d_left[x], d_right[y]: count changes of (x, a) and (b, y), applied when the merge ends;
     * new_left[x], new_right[y]: index of the new pair (x, z) or (z, y), -1 if none yet. */
    int64_t *d_left, *d_right;
    int32_t *new_left, *new_right, *touched_l, *touched_r, ntl, ntr;
} Trainer;

static void trainer_free(Trainer *T)
{
    for (int32_t i = 0; i < T->npairs; i++)
        free(T->pairs[i].words);
    free(T->toks);
    free(T->tbuf); free(T->toff); free(T->tlen);
    free(T->pairs); free(T->slots); free(T->heap); free(T->fresh);
    free(T->d_left); free(T->d_right); free(T->new_left); free(T->new_right);
    free(T->touched_l); free(T->touched_r);
    memset(T, 0, sizeof *T);   /* so that a second call is harmless */
}

/* Grow *buf (elements of size `size`) to hold at least `need`; 0 on success, -1 + MemoryError. */
static int grow(void **buf, int64_t *cap, int64_t need, size_t size)
{
    if (need <= *cap)
        return 0;
    int64_t c = *cap ? *cap : 2;
    while (c < need)
        c *= 2;
    void *p = realloc(*buf, (size_t)c * size);
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    *buf = p;
    *cap = c;
    return 0;
}

static int grow32(void **buf, int32_t *cap, int64_t need, size_t size)
{
    int64_t c = *cap;
    if (need > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "BPE trainer: more than 2^31 pairs or entries");
        return -1;
    }
    int r = grow(buf, &c, need, size);
    *cap = (int32_t)c;
    return r;
}

/* ---- token bytes and the tie-break order ---- */

/* memcmp on the common prefix, then the shorter is smaller (Python's bytes order). */
static int cmp_tokens(const Trainer *T, int32_t x, int32_t y)
{
    if (x == y)
        return 0;
    int32_t lx = T->tlen[x], ly = T->tlen[y];
    int c = memcmp(T->tbuf + T->toff[x], T->tbuf + T->toff[y], (size_t)(lx < ly ? lx : ly));
    return c ? c : (lx > ly) - (lx < ly);
}

/* Does heap entry e rank above f? Greater count, then greater bytes(a), bytes(b); if even the
 * bytes are equal (two tokens can share bytes, e.g. "aaa" as (aa, a) and (a, aa)), the smaller
 * ids (a, b), as in train.py's heap of (-count, bytes, (a, b)). */
static int ranks_above(const Trainer *T, Entry e, Entry f)
{
    if (e.count != f.count)
        return e.count > f.count;
    const Pair *p = &T->pairs[e.pair], *q = &T->pairs[f.pair];
    int c = cmp_tokens(T, p->a, q->a);
    if (!c)
        c = cmp_tokens(T, p->b, q->b);
    if (!c)
        c = p->a != q->a ? (p->a < q->a ? 1 : -1) : (p->b < q->b) - (p->b > q->b);
    return c > 0;
}

/* Room for one more token id and `n` more bytes. */
static int reserve_token(Trainer *T, int64_t n)
{
    int64_t cap = T->tok_cap;
    if (T->ntok == INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "BPE trainer: more than 2^31 - 1 tokens");
        return -1;
    }
    if (grow((void **)&T->toff, &cap, T->ntok + 1, sizeof(int64_t)) < 0 ||
        grow((void **)&T->tlen, &T->tok_cap, T->ntok + 1, sizeof(int32_t)) < 0)
        return -1;
    return grow((void **)&T->tbuf, &T->tbuf_cap, T->tbuf_len + n + 1, 1);
}

static int add_token(Trainer *T, const uint8_t *bytes, int32_t n)
{
    if (reserve_token(T, n) < 0)
        return -1;
    memcpy(T->tbuf + T->tbuf_len, bytes, (size_t)n);
    T->toff[T->ntok] = T->tbuf_len;
    T->tlen[T->ntok++] = n;
    T->tbuf_len += n;
    return 0;
}

/* New token = bytes(a) + bytes(b); its id is the next one (ntok). */
static int add_merged_token(Trainer *T, int32_t a, int32_t b)
{
    int32_t la = T->tlen[a], lb = T->tlen[b];
    if (reserve_token(T, (int64_t)la + lb) < 0)
        return -1;
    uint8_t *dst = T->tbuf + T->tbuf_len;   /* tbuf may have moved: copy after growing */
    memcpy(dst, T->tbuf + T->toff[a], (size_t)la);
    memcpy(dst + la, T->tbuf + T->toff[b], (size_t)lb);
    T->toff[T->ntok] = T->tbuf_len;
    T->tlen[T->ntok++] = la + lb;
    T->tbuf_len += la + lb;
    return 0;
}

/* ---- the max-heap of pairs ---- */

static void sift_up(Trainer *T, int64_t i)
{
    Entry e = T->heap[i];
    while (i > 0 && ranks_above(T, e, T->heap[(i - 1) / 2])) {
        T->heap[i] = T->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    T->heap[i] = e;
}

static void sift_down(Trainer *T, int64_t i)
{
    Entry e = T->heap[i];
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= T->nheap)
            break;
        if (c + 1 < T->nheap && ranks_above(T, T->heap[c + 1], T->heap[c]))
            c++;
        if (!ranks_above(T, T->heap[c], e))
            break;
        T->heap[i] = T->heap[c];
        i = c;
    }
    T->heap[i] = e;
}

static int heap_push(Trainer *T, int32_t pair)
{
    if (grow((void **)&T->heap, &T->heap_cap, T->nheap + 1, sizeof(Entry)) < 0)
        return -1;
    T->heap[T->nheap] = (Entry){T->pairs[pair].count, pair};
    sift_up(T, T->nheap++);
    return 0;
}

/* Index of the best pair with a positive count, or -1 when none is left. */
static int32_t pop_best(Trainer *T)
{
    while (T->nheap > 0) {
        Entry e = T->heap[0];
        T->heap[0] = T->heap[--T->nheap];
        if (T->nheap > 0)
            sift_down(T, 0);
        int64_t now = T->pairs[e.pair].count;
        if (now == e.count)
            return e.pair;
        if (now > 0) {   /* stale: the count fell since the push (it never rises) */
            T->heap[T->nheap] = (Entry){now, e.pair};
            sift_up(T, T->nheap++);
        }
    }
    return -1;
}

/* ---- the pair table ---- */

/* Fibonacci hashing of the pair; the low bits pick the slot, the high 32 are the slot's tag. */
static inline uint64_t pair_hash(int32_t a, int32_t b)
{
    uint64_t h = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) * 0x9E3779B97F4A7C15ull;
    return h ^ (h >> 29);
}

static void slot_put(Trainer *T, uint64_t h, int32_t pair)
{
    uint64_t s = h & T->mask;
    while (T->slots[s].pair >= 0)
        s = (s + 1) & T->mask;
    T->slots[s] = (Slot){(uint32_t)(h >> 32), pair};
}

static int32_t pair_find(const Trainer *T, int32_t a, int32_t b)
{
    uint64_t h = pair_hash(a, b);
    uint32_t tag = (uint32_t)(h >> 32);
    for (uint64_t s = h & T->mask;; s = (s + 1) & T->mask) {
        const Slot *q = &T->slots[s];
        if (q->pair < 0)
            return -1;
        if (q->tag == tag && T->pairs[q->pair].a == a && T->pairs[q->pair].b == b)
            return q->pair;
    }
}

static int resize_slots(Trainer *T, uint64_t n)
{
    free(T->slots);
    T->slots = malloc(n * sizeof(Slot));
    if (!T->slots) {
        PyErr_NoMemory();
        return -1;
    }
    memset(T->slots, 0xff, n * sizeof(Slot));   /* pair = -1 everywhere */
    T->mask = n - 1;
    for (int32_t i = 0; i < T->npairs; i++)
        slot_put(T, pair_hash(T->pairs[i].a, T->pairs[i].b), i);
    return 0;
}

/* Index of the new pair (a, b) (count 0, recorded in `fresh`), known absent; -1 on error. */
static int32_t pair_new(Trainer *T, int32_t a, int32_t b)
{
    if ((uint64_t)T->npairs * 2 >= T->mask && resize_slots(T, 2 * (T->mask + 1)) < 0)
        return -1;
    if (grow32((void **)&T->pairs, &T->pairs_cap, T->npairs + 1, sizeof(Pair)) < 0 ||
        grow32((void **)&T->fresh, &T->fresh_cap, T->nfresh + 1, sizeof(int32_t)) < 0)
        return -1;
    int32_t i = T->npairs++;
    T->pairs[i] = (Pair){a, b, 0, NULL, 0, 0};
    T->fresh[T->nfresh++] = i;
    slot_put(T, pair_hash(a, b), i);
    return i;
}

/* Index of pair (a, b), created if absent; -1 on error. */
static int32_t pair_get(Trainer *T, int32_t a, int32_t b)
{
    int32_t i = pair_find(T, a, b);
    return i >= 0 ? i : pair_new(T, a, b);
}

/* Add `c` to pair i's count and note that word w contains it (once per word). */
static inline int pair_add(Trainer *T, int32_t i, int64_t c, int32_t w)
{
    Pair *p = &T->pairs[i];
    p->count += c;
    if (p->nwords > 0 && p->words[p->nwords - 1] == w)
        return 0;
    if (grow32((void **)&p->words, &p->cap, p->nwords + 1, sizeof(int32_t)) < 0)
        return -1;
    p->words[p->nwords++] = w;
    return 0;
}

/* Add `c` to the count of (a, b) and note that word w contains it. */
static int pair_inc(Trainer *T, int32_t a, int32_t b, int64_t c, int32_t w)
{
    int32_t i = pair_get(T, a, b);
    return i < 0 ? -1 : pair_add(T, i, c, w);
}

/* Push every pair created since the last call that has a positive count. */
static int flush_fresh(Trainer *T)
{
    for (int32_t k = 0; k < T->nfresh; k++)
        if (T->pairs[T->fresh[k]].count > 0 && heap_push(T, T->fresh[k]) < 0)
            return -1;
    T->nfresh = 0;
    return 0;
}

/* ---- merging ---- */

/* Scratch arrays for ids < n (the final vocabulary size); 0, or -1 with MemoryError. */
static int alloc_scratch(Trainer *T, int64_t n)
{
    T->d_left = calloc((size_t)n, sizeof(int64_t));
    T->d_right = calloc((size_t)n, sizeof(int64_t));
    T->new_left = malloc((size_t)n * sizeof(int32_t));
    T->new_right = malloc((size_t)n * sizeof(int32_t));
    T->touched_l = malloc((size_t)n * sizeof(int32_t));
    T->touched_r = malloc((size_t)n * sizeof(int32_t));
    if (!T->d_left || !T->d_right || !T->new_left || !T->new_right || !T->touched_l ||
        !T->touched_r) {
        PyErr_NoMemory();
        return -1;
    }
    memset(T->new_left, 0xff, (size_t)n * sizeof(int32_t));
    memset(T->new_right, 0xff, (size_t)n * sizeof(int32_t));
    return 0;
}

/* Add c to the new pair (a, b) whose index is cached in *slot (created on first use: a pair
 * with z did not exist before this merge, so there is nothing to find). */
static inline int add_new(Trainer *T, int32_t *slot, int32_t a, int32_t b, int64_t c, int32_t w)
{
    int32_t i = *slot;
    if (i < 0 && (i = *slot = pair_new(T, a, b)) < 0)
        return -1;
    return pair_add(T, i, c, w);
}

/* Replace (a, b) by z in word w, left to right, non-overlapping, recording the neighbour pairs'
 * changes in the scratch arrays. */
static int merge_word(Trainer *T, int32_t w, int32_t a, int32_t b, int32_t z)
{
    int32_t *t = T->toks + w + W_HEAD;
    int32_t n = T->toks[w], i = 0, j = 0;
    int64_t c = word_count(T->toks + w);
    PROF_COUNT(0, 1);
    PROF_COUNT(1, n);
    while (i < n) {
        if (i + 1 < n && t[i] == a && t[i + 1] == b) {
            if (j > 0) {   /* x = t[j - 1], possibly a z written by this very scan */
                int32_t x = t[j - 1];
                if (x == z) {   /* (z, a) was added by the previous merge in this word */
                    T->pairs[T->new_right[a]].count -= c;
                } else {
                    if (!T->d_left[x])
                        T->touched_l[T->ntl++] = x;
                    T->d_left[x] -= c;
                }
                if (add_new(T, &T->new_left[x], x, z, c, w) < 0)
                    return -1;
            }
            if (i + 2 < n) {   /* y is an old token, never z */
                int32_t y = t[i + 2];
                if (!T->d_right[y])
                    T->touched_r[T->ntr++] = y;
                T->d_right[y] -= c;
                if (add_new(T, &T->new_right[y], z, y, c, w) < 0)
                    return -1;
            }
            t[j++] = z;
            i += 2;
            PROF_COUNT(2, 1);
        } else {
            t[j++] = t[i++];
        }
    }
    T->toks[w] = j;
    return 0;
}

static int apply_merge(Trainer *T, int32_t p)
{
    int32_t a = T->pairs[p].a, b = T->pairs[p].b, z = T->ntok;
    int32_t *words = T->pairs[p].words, n = T->pairs[p].nwords;
    if (add_merged_token(T, a, b) < 0)
        return -1;
    T->pairs[p].words = NULL;   /* never appended to below: (a, b) does not contain z */
    T->pairs[p].nwords = T->pairs[p].cap = 0;
    int r = 0;
    for (int32_t k = 0; k < n && r == 0; k++) {
        if (k + 8 < n)   /* memory-bound: the words are scattered over the arena */
            __builtin_prefetch(T->toks + words[k + 8]);
        r = merge_word(T, words[k], a, b, z);
    }
    free(words);
    for (int32_t k = 0; k < T->ntl; k++) {   /* every such pair was counted: find succeeds */
        int32_t x = T->touched_l[k];
        T->pairs[pair_find(T, x, a)].count += T->d_left[x];
        T->d_left[x] = 0;
    }
    for (int32_t k = 0; k < T->ntr; k++) {
        int32_t y = T->touched_r[k];
        T->pairs[pair_find(T, b, y)].count += T->d_right[y];
        T->d_right[y] = 0;
    }
    T->ntl = T->ntr = 0;
    T->pairs[p].count = 0;
    for (int32_t k = 0; k < T->nfresh; k++) {   /* the new pairs are exactly the fresh ones */
        const Pair *q = &T->pairs[T->fresh[k]];
        if (q->b == z)
            T->new_left[q->a] = -1;
        else
            T->new_right[q->b] = -1;
    }
    return r < 0 ? -1 : flush_fresh(T);
}

/* Count every adjacent pair of every word once, then heap all of them. */
static int count_pairs(Trainer *T)
{
    if (resize_slots(T, 1024) < 0)   /* grows as pairs appear; text has few distinct ones */
        return -1;
    int64_t k = 0;
    for (int64_t w = 0; w < T->toks_len; w += W_HEAD + T->toks[w], k++) {
        const int32_t *t = T->toks + w + W_HEAD;
        int64_t c = word_count(T->toks + w);
        for (int32_t i = 0; i + 1 < T->toks[w]; i++)
            if (pair_inc(T, t[i], t[i + 1], c, (int32_t)w) < 0)
                return -1;
        if ((k & 0xffff) == 0 && PyErr_CheckSignals() < 0)
            return -1;
    }
    return flush_fresh(T);
}

static int report(PyObject *progress, int64_t done)
{
    PyObject *r = PyObject_CallFunction(progress, "L", (long long)done);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* The merge loop proper; merged (a, b) ids go to out[0..2n), returns n or -1. */
static int64_t run_merges(Trainer *T, int64_t num_merges, int32_t *out, PyObject *progress,
                          int64_t every)
{
    int64_t done = 0;
    while (done < num_merges) {
        PROF_START(3);
        int32_t p = pop_best(T);
        PROF_END(3);
        if (p < 0)
            break;
        out[2 * done] = T->pairs[p].a;
        out[2 * done + 1] = T->pairs[p].b;
        PROF_START(4);
        int r = apply_merge(T, p);
        PROF_END(4);
#ifdef BPE_PROFILE
        if (done < 1000)
            prof_t[5] += prof_now() - prof_s4;
#endif
        if (r < 0 || PyErr_CheckSignals() < 0)
            return -1;
        done++;
        if (progress != Py_None && done % every == 0 && report(progress, done) < 0)
            return -1;
    }
    if (progress != Py_None && (done == 0 || done % every != 0) && report(progress, done) < 0)
        return -1;
    return done;
}

#endif /* LMFORGE_BPE_TRAINER_H */
