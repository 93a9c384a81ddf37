/* _bpe_train.c -- the byte-level BPE merge loop in C (module lmforge.tokenizer._bpe_train).
 *
 * Input: the pre-token table (distinct pre-tokens as UTF-8 bytes with their counts) and the
 * initial vocabulary; output: the merges, as (left id, right id) pairs in creation order. The
 * readable Python reference lives in lmforge/tokenizer/train.py; tests prove both agree.
 *
 * Key idea (Sennrich et al., 2016; the incremental form HuggingFace tokenizers also uses):
 * never recount. Each distinct pair (a, b) keeps its weighted count and the list of words that
 * contain it; a max-heap ordered by (count, bytes(a), bytes(b)) yields the best pair. Merging
 * (a, b) -> z rewrites only the words on that pair's list, and for each occurrence
 * "x a b y" -> "x z y" it subtracts (x, a) and (b, y) and adds (x, z) and (z, y).
 *
 * Two facts keep this simple and exact:
 * 1. A merge only ever *creates* pairs that contain the new token z. Every older pair's count can
 *    only fall, so the heap is lazy: a popped entry whose count is stale is pushed back with the
 *    current count, and the first entry popped with an up-to-date count is the true maximum.
 *    New pairs are pushed once, after the merge, with their final count.
 * 2. Word lists never hold duplicates: a word is appended to a pair's list only while that word
 *    is being scanned, and only if it is not already the last entry. Words that have lost the
 *    pair since (stale entries) are just scanned and left unchanged.
 *
 * Worked example: words {"aaa": 1}, merge (a, a) -> z. The scan meets "a a" at 0 (no x; y = a:
 * -(a,a) +(z,a)), writes z, then copies the last a: "aaa" -> [z, a], left to right and
 * non-overlapping; pair counts become {(z,a): 1}.
 *
 * Memory: 4 bytes per byte of distinct pre-token; per distinct pair 32 bytes, 16-32 in the hash
 * table, 16 in the heap, and 4 bytes per word on its list.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int32_t a, b;      /* token ids */
    int64_t count;     /* sum over words of count[w] * occurrences */
    int32_t *words;    /* words that contain (or once contained) the pair; no duplicates */
    int32_t nwords, cap;
} Pair;

typedef struct { int64_t count; int32_t pair; } Entry;   /* heap entry, count may be stale */
typedef struct { uint32_t tag; int32_t pair; } Slot;     /* hash slot, pair == -1 when empty */

typedef struct {
    int32_t *toks;     /* all words' token ids, word w at toks[start[w] .. start[w] + len[w]) */
    int64_t *start, *wcount;
    int32_t *len;
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
} Trainer;

static void trainer_free(Trainer *T)
{
    for (int32_t i = 0; i < T->npairs; i++)
        free(T->pairs[i].words);
    free(T->toks); free(T->start); free(T->wcount); free(T->len);
    free(T->tbuf); free(T->toff); free(T->tlen);
    free(T->pairs); free(T->slots); free(T->heap); free(T->fresh);
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

/* Index of pair (a, b), created (count 0, recorded in `fresh`) if absent; -1 on error. */
static int32_t pair_get(Trainer *T, int32_t a, int32_t b)
{
    int32_t i = pair_find(T, a, b);
    if (i >= 0)
        return i;
    if ((uint64_t)T->npairs * 2 >= T->mask && resize_slots(T, 2 * (T->mask + 1)) < 0)
        return -1;
    if (grow32((void **)&T->pairs, &T->pairs_cap, T->npairs + 1, sizeof(Pair)) < 0 ||
        grow32((void **)&T->fresh, &T->fresh_cap, T->nfresh + 1, sizeof(int32_t)) < 0)
        return -1;
    i = T->npairs++;
    T->pairs[i] = (Pair){a, b, 0, NULL, 0, 0};
    T->fresh[T->nfresh++] = i;
    slot_put(T, pair_hash(a, b), i);
    return i;
}

/* Add `c` to the count of (a, b) and note that word w contains it. */
static int pair_inc(Trainer *T, int32_t a, int32_t b, int64_t c, int32_t w)
{
    int32_t i = pair_get(T, a, b);
    if (i < 0)
        return -1;
    Pair *p = &T->pairs[i];
    p->count += c;
    if (p->nwords > 0 && p->words[p->nwords - 1] == w)
        return 0;
    if (grow32((void **)&p->words, &p->cap, p->nwords + 1, sizeof(int32_t)) < 0)
        return -1;
    p->words[p->nwords++] = w;
    return 0;
}

static void pair_dec(Trainer *T, int32_t a, int32_t b, int64_t c)
{
    int32_t i = pair_find(T, a, b);
    if (i >= 0)   /* always true: every pair in a word was counted */
        T->pairs[i].count -= c;
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

/* Replace (a, b) by z in word w, left to right, non-overlapping, updating neighbour pairs. */
static int merge_word(Trainer *T, int32_t w, int32_t a, int32_t b, int32_t z)
{
    int32_t *t = T->toks + T->start[w];
    int32_t n = T->len[w], i = 0, j = 0;
    int64_t c = T->wcount[w];
    while (i < n) {
        if (i + 1 < n && t[i] == a && t[i + 1] == b) {
            if (j > 0) {   /* x = t[j - 1], possibly a z written by this very scan */
                pair_dec(T, t[j - 1], a, c);
                if (pair_inc(T, t[j - 1], z, c, w) < 0)
                    return -1;
            }
            if (i + 2 < n) {
                pair_dec(T, b, t[i + 2], c);
                if (pair_inc(T, z, t[i + 2], c, w) < 0)
                    return -1;
            }
            t[j++] = z;
            i += 2;
        } else {
            t[j++] = t[i++];
        }
    }
    T->len[w] = j;
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
    for (int32_t k = 0; k < n && r == 0; k++)
        r = merge_word(T, words[k], a, b, z);
    free(words);
    T->pairs[p].count = 0;
    return r < 0 ? -1 : flush_fresh(T);
}

/* ---- loading the arguments ---- */

/* Copy token_bytes into T; byte_id[v] = id of the (last) length-1 entry equal to byte v. */
static int load_tokens(Trainer *T, PyObject *seq, int32_t byte_id[256])
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    for (int v = 0; v < 256; v++)
        byte_id[v] = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyBytes_Check(o)) {
            PyErr_Format(PyExc_TypeError, "token_bytes[%zd] must be bytes, not %.100s", i,
                         Py_TYPE(o)->tp_name);
            return -1;
        }
        const uint8_t *s = (const uint8_t *)PyBytes_AS_STRING(o);
        Py_ssize_t len = PyBytes_GET_SIZE(o);
        if (len > INT32_MAX / 4) {
            PyErr_Format(PyExc_ValueError, "token_bytes[%zd] is too long (%zd bytes)", i, len);
            return -1;
        }
        if (len == 1)
            byte_id[s[0]] = (int32_t)i;
        if (add_token(T, s, (int32_t)len) < 0)
            return -1;
    }
    for (int v = 0; v < 256; v++)
        if (byte_id[v] < 0) {
            PyErr_Format(PyExc_ValueError, "token_bytes has no entry for the single byte %d "
                         "(the initial vocabulary must contain all 256 bytes)", v);
            return -1;
        }
    return 0;
}

static int load_counts(Trainer *T, PyObject *counts)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(counts);
    for (Py_ssize_t w = 0; w < n; w++) {
        PyObject *o = PySequence_Fast_GET_ITEM(counts, w);
        if (!PyLong_Check(o)) {
            PyErr_Format(PyExc_TypeError, "counts[%zd] must be an int, not %.100s", w,
                         Py_TYPE(o)->tp_name);
            return -1;
        }
        int overflow;
        long long c = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (c <= 0 || overflow) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "counts[%zd] = %R: counts must be positive "
                             "and below 2^63", w, o);
            return -1;
        }
        T->wcount[w] = c;
    }
    return 0;
}

/* Words as token-id arrays (their bytes' ids); total pair positions in *positions. */
static int load_words(Trainer *T, PyObject *words, const int32_t byte_id[256], int64_t *positions)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(words);
    int64_t total = 0;
    T->start = malloc(((size_t)n + 1) * sizeof(int64_t));
    T->len = malloc(((size_t)n + 1) * sizeof(int32_t));
    T->wcount = malloc(((size_t)n + 1) * sizeof(int64_t));
    if (!T->start || !T->len || !T->wcount) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t w = 0; w < n; w++) {
        PyObject *o = PySequence_Fast_GET_ITEM(words, w);
        if (!PyBytes_Check(o)) {
            PyErr_Format(PyExc_TypeError, "words[%zd] must be bytes, not %.100s", w,
                         Py_TYPE(o)->tp_name);
            return -1;
        }
        if (PyBytes_GET_SIZE(o) > INT32_MAX) {
            PyErr_Format(PyExc_ValueError, "words[%zd] is longer than 2^31 bytes", w);
            return -1;
        }
        T->start[w] = total;
        T->len[w] = (int32_t)PyBytes_GET_SIZE(o);
        total += T->len[w];
        *positions += T->len[w] > 1 ? T->len[w] - 1 : 0;
    }
    T->toks = malloc(((size_t)total + 1) * sizeof(int32_t));
    if (!T->toks) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t w = 0; w < n; w++) {
        const uint8_t *s = (const uint8_t *)PyBytes_AS_STRING(PySequence_Fast_GET_ITEM(words, w));
        int32_t *t = T->toks + T->start[w];
        for (int32_t i = 0; i < T->len[w]; i++)
            t[i] = byte_id[s[i]];
    }
    return 0;
}

/* Count every adjacent pair of every word once, then heap all of them. */
static int count_pairs(Trainer *T, Py_ssize_t nwords)
{
    if (resize_slots(T, 1024) < 0)   /* grows as pairs appear; text has few distinct ones */
        return -1;
    for (Py_ssize_t w = 0; w < nwords; w++) {
        const int32_t *t = T->toks + T->start[w];
        for (int32_t i = 0; i + 1 < T->len[w]; i++)
            if (pair_inc(T, t[i], t[i + 1], T->wcount[w], (int32_t)w) < 0)
                return -1;
        if ((w & 0xffff) == 0 && PyErr_CheckSignals() < 0)
            return -1;
    }
    return flush_fresh(T);
}

/* ---- the Python entry point ---- */

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
        int32_t p = pop_best(T);
        if (p < 0)
            break;
        out[2 * done] = T->pairs[p].a;
        out[2 * done + 1] = T->pairs[p].b;
        if (apply_merge(T, p) < 0 || PyErr_CheckSignals() < 0)
            return -1;
        done++;
        if (progress != Py_None && done % every == 0 && report(progress, done) < 0)
            return -1;
    }
    if (progress != Py_None && (done == 0 || done % every != 0) && report(progress, done) < 0)
        return -1;
    return done;
}

static PyObject *merges_to_list(const int32_t *out, int64_t n)
{
    PyObject *list = PyList_New((Py_ssize_t)n);
    for (int64_t k = 0; list && k < n; k++) {
        PyObject *t = Py_BuildValue("(ii)", out[2 * k], out[2 * k + 1]);
        if (!t) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)k, t);
    }
    return list;
}

static PyObject *train(PyObject *words, PyObject *counts, PyObject *tokens, Py_ssize_t num_merges,
                       PyObject *progress, Py_ssize_t every)
{
    Trainer T = {0};
    int32_t byte_id[256], *out = NULL;
    int64_t positions = 0, done = -1;
    Py_ssize_t nwords = PySequence_Fast_GET_SIZE(words);
    if (load_tokens(&T, tokens, byte_id) < 0 || load_words(&T, words, byte_id, &positions) < 0 ||
        load_counts(&T, counts) < 0)
        goto done;
    if (num_merges > positions)   /* each merge removes at least one position */
        num_merges = (Py_ssize_t)positions;
    out = malloc(((size_t)num_merges + 1) * 2 * sizeof(int32_t));
    if (!out) {
        PyErr_NoMemory();
        goto done;
    }
    if (count_pairs(&T, nwords) == 0)
        done = run_merges(&T, num_merges, out, progress, every);
done:
    trainer_free(&T);
    PyObject *result = done < 0 ? NULL : merges_to_list(out, done);
    free(out);
    return result;
}

static PyObject *train_merges(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"words", "counts", "token_bytes", "num_merges", "progress",
                             "progress_every", NULL};
    PyObject *words, *counts, *tokens, *progress = Py_None, *result = NULL;
    Py_ssize_t num_merges, every = 100;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOn|On:train_merges", kwlist, &words,
                                     &counts, &tokens, &num_merges, &progress, &every))
        return NULL;
    if (num_merges < 0 || every < 1)
        return PyErr_Format(PyExc_ValueError, num_merges < 0 ?
                            "num_merges must be >= 0, got %zd" : "progress_every must be >= 1, "
                            "got %zd", num_merges < 0 ? num_merges : every);
    if (progress != Py_None && !PyCallable_Check(progress))
        return PyErr_Format(PyExc_TypeError, "progress must be callable or None, not %.100s",
                            Py_TYPE(progress)->tp_name);
    words = PySequence_Fast(words, "words must be a list of bytes");
    counts = words ? PySequence_Fast(counts, "counts must be a list of int") : NULL;
    tokens = counts ? PySequence_Fast(tokens, "token_bytes must be a list of bytes") : NULL;
    if (tokens && PySequence_Fast_GET_SIZE(words) != PySequence_Fast_GET_SIZE(counts))
        PyErr_Format(PyExc_ValueError, "words and counts differ in length (%zd != %zd)",
                     PySequence_Fast_GET_SIZE(words), PySequence_Fast_GET_SIZE(counts));
    else if (tokens && PySequence_Fast_GET_SIZE(words) > INT32_MAX)
        PyErr_SetString(PyExc_ValueError, "more than 2^31 - 1 distinct words");
    else if (tokens)
        result = train(words, counts, tokens, num_merges, progress, every);
    Py_XDECREF(words);
    Py_XDECREF(counts);
    Py_XDECREF(tokens);
    return result;
}

PyDoc_STRVAR(train_merges_doc,
"train_merges($module, /, words, counts, token_bytes, num_merges, progress=None,\n"
"             progress_every=100)\n--\n\n"
"Learn up to num_merges byte-level BPE merges; return them as [(left_id, right_id), ...].\n\n"
"words[i] (bytes) is a distinct pre-token occurring counts[i] (> 0) times. token_bytes is the\n"
"initial vocabulary by id; it must contain every single byte (the last length-1 entry for a\n"
"byte is that byte's id). Merge k creates id len(token_bytes) + k. Each step merges the pair\n"
"with the highest count, ties going to the greatest (bytes(left), bytes(right)), then to\n"
"the smallest (left, right); it stops early when no pair is left. progress(n_done) is called\n"
"every progress_every merges and once at the end (unless n_done was just reported).\n\n"
"    >>> train_merges([b'aaa'], [1], [bytes([i]) for i in range(256)], 5)\n"
"    [(97, 97), (256, 97)]\n");

static PyMethodDef methods[] = {
    {"train_merges", (PyCFunction)(void (*)(void))train_merges, METH_VARARGS | METH_KEYWORDS,
     train_merges_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_bpe_train",
    "Byte-level BPE merge loop in C (see csrc/_bpe_train.c for the design note).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__bpe_train(void)
{
    return PyModule_Create(&module);
}
