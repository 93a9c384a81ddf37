/* _bpe_encode: C fast path for GPT-2 pre-tokenization and byte-level BPE encoding.
 *
 * Reference implementations: lmforge/tokenizer/pretokenize.py (GPT2_REGEX) and bpe.py; the tests
 * in tests/tokenizer/test_native_encode.py and test_encode_batch.py prove this module equal to
 * them, to tiktoken (GPT-2) and to HuggingFace tokenizers (an arbitrary trained vocabulary).
 *
 * Design (issue 17; profiles in docs/benchmarks.md):
 * - Everything is encoded from UTF-8 (utf8_scan.h): bytes and mmap'd files in place, ASCII strs
 *   in place (their storage is UTF-8), other strs after one conversion per text into a reused
 *   worker buffer. Special tokens are split off in the same pass (memchr on their first byte),
 *   so a whole chunk of a file is one call with the GIL released.
 * - Pre-tokenizer: a hand-written scanner for the GPT-2 pattern
 *       '(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *   ASCII bytes are classified by the first 128 entries of a 0x110000-byte class table (other /
 *   letter / number / space) that native.py computes with the `regex` module itself, so both
 *   agree on every code point; other characters are decoded and looked up in the same table.
 *   pretok_scan.h keeps the code-unit scanner of strs for pretokenize/count_pretokens.
 * - Cache (encode_worker.h): pieces of 2..8 bytes hit a direct-mapped table keyed by the bytes as
 *   one uint64 (8 MiB per worker); all pieces up to 256 bytes are kept in a BytesMap behind it.
 *   The lookups are memory-latency bound, so pieces are scanned 16 at a time and their cache
 *   slots prefetched before any is looked up (the misses overlap).
 * - BPE (bpe_merge.h): within a pre-token, repeatedly merge the adjacent pair of lowest merge
 *   rank, leftmost first. Pairs live in an open-addressing table of (left, right) -> rank << 32 |
 *   merged id, key and value in one 16-byte slot. Pieces of up to SMALL_PIECE bytes use an array
 *   scan; longer ones a linked list plus a min-heap, O(n log n).
 * - Threads: a Worker (caches + output buffer) belongs to one call at a time (a pool per Encoder,
 *   handed out under the GIL), so no lock is taken while encoding. encode_batch starts pthreads
 *   that take documents from an atomic counter and write ids into their worker's buffer; the
 *   lists are built once at the end (with the cyclic GC paused: ids lists form no cycles).
 * - Ids come out as uint32 in the worker's buffer, packed in place to uint16/uint32 bytes for the
 *   *_to_bytes methods, or turned into lists of preallocated int objects.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { C_OTHER = 0, C_LETTER = 1, C_NUMBER = 2, C_SPACE = 3 };
#define N_CODEPOINTS 0x110000
#define SMALL_PIECE 64           /* longest piece (bytes) encoded with the array scan */
#define CACHE_MAX_PIECE 256      /* longest piece (bytes) kept in the cache */
#define CACHE_MAX_WORDS (1u << 24) /* a cache larger than this (x 4 bytes) is emptied */
#define POOL_SIZE 16             /* workers (caches + buffers) kept per Encoder between calls */
#define MAX_THREADS 64           /* most threads one encode_batch call may use */
#define NOGIL_MIN_LEN 512        /* shorter texts are encoded without releasing the GIL */
#define INLINE static inline __attribute__((always_inline))

static uint8_t char_class[N_CODEPOINTS];
static int char_class_ready = 0;

#include "pretok_scan.h"
#include "bytes_map.h"
#include "bpe_merge.h"
#include "utf8_scan.h"
#include "ascii_scan.h"
#include "encode_worker.h"

/* ------------------------------------------------------------------------- Encoder */

typedef struct {
    PyObject_HEAD
    Bpe bpe;
    PyObject **id_obj; /* int objects for ids < n_id_obj, shared by every returned list */
    size_t n_id_obj;
    Worker *pool[POOL_SIZE];
    int pool_n;
    PyObject *args; /* (vocab, merges), for pickling */
    uint32_t max_id; /* the largest id in vocab */
} EncoderObject;

/* inv[b] as a uint32 id: 1 if found, 0 if absent, -1 on error. */
static int inv_get(PyObject *inv, PyObject *b, uint32_t *id)
{
    PyObject *v = PyDict_GetItemWithError(inv, b);
    if (!v)
        return PyErr_Occurred() ? -1 : 0;
    *id = (uint32_t)PyLong_AsUnsignedLong(v);
    return 1;
}

/* int objects for ids 0..max_id, so that encode() allocates no ints. */
static int make_int_table(EncoderObject *self, size_t max_id)
{
    if (!(self->id_obj = PyMem_Calloc(max_id + 1, sizeof(PyObject *)))) {
        PyErr_NoMemory();
        return -1;
    }
    for (; self->n_id_obj <= max_id; self->n_id_obj++)
        if (!(self->id_obj[self->n_id_obj] = PyLong_FromSize_t(self->n_id_obj)))
            return -1;
    return 0;
}

/* bytes -> id (the last id wins if bytes repeat); fills byte_id and the id -> int table. */
static PyObject *invert_vocab(EncoderObject *self, PyObject *vocab)
{
    if (!PyDict_Check(vocab))
        return PyErr_Format(PyExc_TypeError, "vocab must be a dict[int, bytes], not %.100s",
                            Py_TYPE(vocab)->tp_name);
    PyObject *inv = PyDict_New(), *k, *v;
    Py_ssize_t pos = 0;
    unsigned long max_id = 0;
    while (inv && PyDict_Next(vocab, &pos, &k, &v)) {
        unsigned long id = PyLong_Check(k) ? PyLong_AsUnsignedLong(k) : 0;
        if (!PyLong_Check(k) || !PyBytes_Check(v) || (id == (unsigned long)-1 && PyErr_Occurred())
            || id >= DEAD) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "vocab entries must be int id (0 <= id < 2**32 - 1) "
                         "-> bytes; got %R: %R", k, v);
            Py_CLEAR(inv);
        } else if (PyDict_SetItem(inv, v, k) < 0) {
            Py_CLEAR(inv);
        }
        max_id = id > max_id ? id : max_id;
    }
    self->max_id = (uint32_t)max_id;
    for (int b = 0; inv && b < 256; b++) {
        char c = (char)b;
        PyObject *key = PyBytes_FromStringAndSize(&c, 1);
        int r = key ? inv_get(inv, key, &self->bpe.byte_id[b]) : -1;
        Py_XDECREF(key);
        if (r == 0)
            PyErr_Format(PyExc_ValueError, "vocab has no token for the single byte 0x%02x; "
                         "byte-level BPE needs all 256 single-byte tokens", b);
        if (r <= 0)
            Py_CLEAR(inv);
    }
    if (inv && max_id < (1ul << 24) && max_id <= 2 * (size_t)PyDict_GET_SIZE(vocab) + 1024 &&
        make_int_table(self, max_id) < 0)
        Py_CLEAR(inv);
    return inv;
}

/* Insert merge `rank` (a, b) into the pair table; a pair already present keeps its lower rank. */
static int add_merge(EncoderObject *self, PyObject *inv, Py_ssize_t rank, PyObject *item)
{
    PyObject *a, *b;
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 ||
        !PyBytes_Check(a = PyTuple_GET_ITEM(item, 0)) || !PyBytes_Check(b = PyTuple_GET_ITEM(item, 1))) {
        PyErr_Format(PyExc_TypeError, "merges[%zd] must be a (bytes, bytes) tuple, got %R", rank,
                     item);
        return -1;
    }
    PyObject *ab = PyBytes_FromStringAndSize(NULL, PyBytes_GET_SIZE(a) + PyBytes_GET_SIZE(b));
    if (!ab)
        return -1;
    memcpy(PyBytes_AS_STRING(ab), PyBytes_AS_STRING(a), PyBytes_GET_SIZE(a));
    memcpy(PyBytes_AS_STRING(ab) + PyBytes_GET_SIZE(a), PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b));
    uint32_t l = 0, r = 0, m = 0;
    int rm = inv_get(inv, ab, &m), rl = rm > 0 ? inv_get(inv, a, &l) : 0;
    int rr = rl > 0 ? inv_get(inv, b, &r) : 0;
    if (rm == 0)
        PyErr_Format(PyExc_ValueError, "merges[%zd] = %R: the merged token %R is not in vocab",
                     rank, item, ab);
    Py_DECREF(ab);
    if (rm <= 0 || rl < 0 || rr < 0)
        return -1;
    if (rl == 0 || rr == 0) /* a part missing from vocab: this pair can never occur */
        return 0;
    pair_map_add(&self->bpe.pairs, l, r, (uint32_t)rank, m);
    return 0;
}

static int encoder_build(EncoderObject *self, PyObject *vocab, PyObject *merges)
{
    PyObject *inv = invert_vocab(self, vocab);
    if (!inv)
        return -1;
    PyObject *seq = PySequence_Fast(merges, "merges must be a list of (bytes, bytes) tuples");
    int rc = seq ? 0 : -1;
    Py_ssize_t n = seq ? PySequence_Fast_GET_SIZE(seq) : 0;
    if (n >= (Py_ssize_t)DEAD) {
        PyErr_SetString(PyExc_ValueError, "too many merges (at most 2**32 - 2)");
        rc = -1;
    }
    if (!rc && pair_map_init(&self->bpe.pairs, (size_t)n, self->max_id) < 0) {
        PyErr_NoMemory();
        rc = -1;
    }
    for (Py_ssize_t i = 0; !rc && i < n; i++)
        rc = add_merge(self, inv, i, PySequence_Fast_GET_ITEM(seq, i));
    if (!rc && bpe_init_byte_pairs(&self->bpe) < 0) {
        PyErr_NoMemory();
        rc = -1;
    }
    Py_XDECREF(seq);
    Py_DECREF(inv);
    return rc;
}

static PyObject *Encoder_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"vocab", "merges", NULL};
    PyObject *vocab, *merges;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:Encoder", kwlist, &vocab, &merges))
        return NULL;
    EncoderObject *self = (EncoderObject *)type->tp_alloc(type, 0);
    if (self && encoder_build(self, vocab, merges) < 0)
        Py_CLEAR(self);
    if (self && !(self->args = PyTuple_Pack(2, vocab, merges)))
        Py_CLEAR(self);
    return (PyObject *)self;
}


static void Encoder_dealloc(EncoderObject *self)
{
    for (size_t i = 0; i < self->n_id_obj; i++)
        Py_XDECREF(self->id_obj[i]);
    PyMem_Free(self->id_obj);
    pair_map_free(&self->bpe.pairs);
    free(self->bpe.byte_pair);
    for (int i = 0; i < self->pool_n; i++)
        worker_free(self->pool[i]);
    Py_XDECREF(self->args);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Pack n ids from src to dst as little-endian uint16/uint32 (itemsize 2/4); dst may be src
 * itself (in place, the writes never overtake the reads). 0, or -1 with *bad = the first id that
 * does not fit. Eight ids at a time, so the compiler turns the narrowing into vector code. */
static int pack_ids_to(uint8_t *dst, const uint32_t *src, size_t n, int itemsize, uint32_t *bad)
{
    size_t i = 0;
    if (little_endian() && itemsize == 4) {
        if (dst != (const uint8_t *)src)
            memmove(dst, src, n * sizeof(uint32_t));
        return 0;
    }
    if (little_endian()) {
        for (; i + 8 <= n; i += 8) {
            uint32_t v[8], hi = 0;
            uint16_t h[8];
            memcpy(v, src + i, sizeof v);
            for (int j = 0; j < 8; j++)
                hi |= v[j], h[j] = (uint16_t)v[j];
            if (hi > 0xFFFF)
                break; /* the loop below finds which */
            memcpy(dst + 2 * i, h, sizeof h);
        }
    }
    for (; i < n; i++) {
        uint32_t id = src[i];
        if (itemsize == 2 && id > 0xFFFF)
            return *bad = id, -1;
        for (int b = 0; b < itemsize; b++)
            dst[i * itemsize + b] = (uint8_t)(id >> (8 * b));
    }
    return 0;
}

static int check_itemsize(int itemsize)
{
    if (itemsize == 2 || itemsize == 4)
        return 0;
    PyErr_Format(PyExc_ValueError, "itemsize must be 2 (uint16) or 4 (uint32), got %d", itemsize);
    return -1;
}

static PyObject *pack_to_bytes(uint32_t *ids, size_t n, int itemsize)
{
    uint32_t bad = 0;
    if (pack_ids_to((uint8_t *)ids, ids, n, itemsize, &bad) < 0)
        return PyErr_Format(PyExc_OverflowError, "token id %u does not fit in uint16; use "
                            "itemsize=4 (uint32) for vocabularies over 65536 tokens", bad);
    return PyBytes_FromStringAndSize((const char *)ids, (Py_ssize_t)(n * itemsize));
}

/* Workers from the pool (new ones when it is empty); NULL + MemoryError if out of memory. */
static int take_workers(EncoderObject *self, Worker **ws, int n)
{
    for (int i = 0; i < n; i++)
        if (!(ws[i] = self->pool_n ? self->pool[--self->pool_n] : worker_new())) {
            while (i--)
                worker_free(ws[i]);
            PyErr_NoMemory();
            return -1;
        }
    return 0;
}

static void give_workers(EncoderObject *self, Worker **ws, int n)
{
    for (int i = 0; i < n; i++) {
        worker_trim(ws[i]);
        if (self->pool_n < POOL_SIZE)
            self->pool[self->pool_n++] = ws[i];
        else
            worker_free(ws[i]);
    }
}

/* `specials`: None or a sequence of (bytes, id) to split on, in the order to try them (longest
 * first). Fills sp (pointers into the bytes, which the caller keeps alive); 0, or -1 + error. */
static int parse_specials(PyObject *specials, Specials *sp, PyObject **keep)
{
    memset(sp, 0, sizeof *sp);
    *keep = NULL;
    if (!specials || specials == Py_None)
        return 0;
    PyObject *seq = PySequence_Tuple(specials);
    if (!seq)
        return -1;
    *keep = seq;
    sp->n = PyTuple_GET_SIZE(seq);
    sp->s = PyMem_Calloc(sp->n + 1, sizeof *sp->s), sp->len = PyMem_Calloc(sp->n + 1, sizeof(size_t));
    sp->id = PyMem_Calloc(sp->n + 1, sizeof(uint32_t));
    if (!sp->s || !sp->len || !sp->id) {
        PyErr_NoMemory();
        return -1;
    }
    sp->one_first = 1;
    for (Py_ssize_t i = 0; i < sp->n; i++) {
        PyObject *it = PyTuple_GET_ITEM(seq, i), *b, *id;
        unsigned long v;
        if (!PyTuple_Check(it) || PyTuple_GET_SIZE(it) != 2 ||
            !PyBytes_Check(b = PyTuple_GET_ITEM(it, 0)) || PyBytes_GET_SIZE(b) == 0 ||
            !PyLong_Check(id = PyTuple_GET_ITEM(it, 1)) ||
            ((v = PyLong_AsUnsignedLong(id)) == (unsigned long)-1 && PyErr_Occurred()) ||
            v > UINT32_MAX) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "specials[%zd] must be a (non-empty bytes, id) pair "
                         "with 0 <= id < 2**32, got %R", i, it);
            return -1;
        }
        sp->s[i] = (const uint8_t *)PyBytes_AS_STRING(b), sp->len[i] = PyBytes_GET_SIZE(b);
        sp->id[i] = (uint32_t)v;
        sp->first[sp->s[i][0]] = 1;
        sp->one_first &= sp->s[i][0] == sp->s[0][0];
    }
    return 0;
}

static void free_specials(Specials *sp, PyObject *keep)
{
    PyMem_Free((void *)sp->s), PyMem_Free(sp->len), PyMem_Free(sp->id);
    Py_XDECREF(keep);
}

/* Raise the error of a text that failed with sc->err (ERR_SURROGATE: what encoding the
 * pre-token holding the lone surrogate, `piece.encode()`, raises). */
static void raise_text_error(Scan *sc, PyObject *text)
{
    if (sc->err == ERR_SURROGATE) {
        Py_ssize_t i = 0, e = 0;
        while ((e = next_end_any(sc->kind, sc->data, i, sc->n)) <= sc->bad)
            i = e;
        sc->piece_start = i, sc->piece_end = e;
    }
    scan_raise(sc, text);
}

/* Encode texts[0:n] with nthreads threads (GIL released when worth it). On success the ids of
 * text i are ws[thr[i]]->out.p[off[i]:end[i]]; the caller gives the workers back. */
static int encode_texts(EncoderObject *self, PyObject *const *texts, Py_ssize_t n, int nthreads,
                        PyObject *specials, Worker **ws, size_t *off, size_t *end,
                        uint16_t *thr)
{
    Specials sp = {0};
    PyObject *keep;
    Scan *docs = PyMem_Calloc(n + 1, sizeof(Scan));
    int rc = docs ? parse_specials(specials, &sp, &keep) : (PyErr_NoMemory(), -1);
    size_t total = 0;
    for (Py_ssize_t i = 0; !rc && i < n; i++) {
        rc = scan_init(&docs[i], texts[i]);
        total += rc ? 0 : (size_t)docs[i].n;
    }
    if (nthreads > n)
        nthreads = n > 0 ? (int)n : 1;
    if (total < NOGIL_MIN_LEN * (size_t)nthreads)
        nthreads = 1;
    if (!rc && take_workers(self, ws, nthreads) < 0)
        rc = -1, nthreads = 0;
    if (!rc) {
        Batch b = {&self->bpe, sp.n ? &sp : NULL, docs, n, 0, 0, off, end, thr, ws};
        PyThreadState *ts = total >= NOGIL_MIN_LEN ? PyEval_SaveThread() : NULL;
        run_batch(&b, nthreads);
        if (ts)
            PyEval_RestoreThread(ts);
        if (b.failed < n) {
            raise_text_error(&docs[b.failed], texts[b.failed]);
            give_workers(self, ws, nthreads);
            rc = -1;
        }
    }
    if (docs)
        free_specials(&sp, keep);
    PyMem_Free(docs);
    return rc < 0 ? -1 : nthreads;
}

static PyObject *ids_to_list(EncoderObject *self, const uint32_t *ids, size_t n)
{
    PyObject *list = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; list && i < n; i++) {
        uint32_t id = ids[i];
        PyObject *o = id < self->n_id_obj ? Py_NewRef(self->id_obj[id])
                                          : PyLong_FromUnsignedLong(id);
        if (!o)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, (Py_ssize_t)i, o);
    }
    return list;
}

/* encode_batch / encode_batch_to_bytes / encode / encode_to_bytes: one engine. itemsize 0 gives
 * lists of ints, 2 or 4 packed bytes; `single` returns the one result instead of a list. */
static PyObject *encode_common(EncoderObject *self, PyObject *texts, int nthreads, int itemsize,
                               PyObject *specials, int single)
{
    Worker *ws[MAX_THREADS];
    if (nthreads < 1 || nthreads > MAX_THREADS)
        return PyErr_Format(PyExc_ValueError, "num_threads must be in 1..%d, got %d",
                            MAX_THREADS, nthreads);
    PyObject *tup = single ? PyTuple_Pack(1, texts) : PySequence_Tuple(texts); /* holds the strs */
    if (!tup)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(tup);
    size_t *off = PyMem_Calloc(2 * n + 1, sizeof(size_t)), *end = off + n;
    uint16_t *thr = PyMem_Calloc(n + 1, sizeof(uint16_t));
    PyObject *res = NULL;
    int used = off && thr ? encode_texts(self, PySequence_Fast_ITEMS(tup), n, nthreads, specials,
                                         ws, off, end, thr)
                          : (PyErr_NoMemory(), -1);
    int ok = used > 0 && (single || (res = PyList_New(n)));
    /* Many new lists would trigger the cyclic GC over and over, each pass walking every id
     * list built so far (quadratic-ish; 15% of a 40 MB batch): none of them can form a cycle. */
    int gc_was_on = itemsize == 0 && n > 1 ? PyGC_Disable() : 0;
    for (Py_ssize_t i = 0; ok && i < n; i++) {
        Worker *w = ws[thr[i]];
        PyObject *x = itemsize ? pack_to_bytes(w->out.p + off[i], end[i] - off[i], itemsize)
                               : ids_to_list(self, w->out.p + off[i], end[i] - off[i]);
        if (!x) {
            Py_CLEAR(res);
            ok = 0;
        } else if (single)
            res = x;
        else
            PyList_SET_ITEM(res, i, x);
    }
    if (gc_was_on)
        PyGC_Enable();
    if (used > 0)
        give_workers(self, ws, used);
    PyMem_Free(off), PyMem_Free(thr);
    Py_DECREF(tup);
    return res;
}

static PyObject *Encoder_encode(EncoderObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"text", "specials", NULL};
    PyObject *text, *specials = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O:encode", kwlist, &text, &specials))
        return NULL;
    return encode_common(self, text, 1, 0, specials, 1);
}

static PyObject *Encoder_encode_to_bytes(EncoderObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"text", "itemsize", "specials", NULL};
    PyObject *text, *specials = NULL;
    int itemsize;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oi|O:encode_to_bytes", kwlist, &text, &itemsize,
                                     &specials) || check_itemsize(itemsize) < 0)
        return NULL;
    return encode_common(self, text, 1, itemsize, specials, 1);
}

static PyObject *Encoder_encode_batch(EncoderObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"texts", "num_threads", "specials", NULL};
    PyObject *texts, *specials = NULL;
    int nthreads = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|iO:encode_batch", kwlist, &texts, &nthreads,
                                     &specials))
        return NULL;
    return encode_common(self, texts, nthreads, 0, specials, 0);
}

static PyObject *Encoder_encode_batch_to_bytes(EncoderObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"texts", "itemsize", "num_threads", "specials", NULL};
    PyObject *texts, *specials = NULL;
    int itemsize, nthreads = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oi|iO:encode_batch_to_bytes", kwlist, &texts,
                                     &itemsize, &nthreads, &specials) ||
        check_itemsize(itemsize) < 0)
        return NULL;
    return encode_common(self, texts, nthreads, itemsize, specials, 0);
}

/* ------------------------------------------------------ flat output: one array, offsets */

/* One thread's share of the flat result: texts [a, b) copied from the workers' buffers to
 * out + dest[i] * itemsize (uint16 or uint32, little-endian). */
typedef struct {
    Worker **ws;
    const size_t *off, *end;
    const uint16_t *thr;
    const int64_t *dest;
    uint8_t *out;
    int itemsize;
    Py_ssize_t a, b;
    uint32_t bad; /* an id over 0xFFFF for itemsize 2 (0: none) */
} FlatCopy;

static void *flat_copy(void *arg)
{
    FlatCopy *c = arg;
    for (Py_ssize_t i = c->a; i < c->b; i++)
        if (pack_ids_to(c->out + (size_t)c->dest[i] * c->itemsize,
                        c->ws[c->thr[i]]->out.p + c->off[i], c->end[i] - c->off[i], c->itemsize,
                        &c->bad) < 0)
            break;
    return NULL;
}

/* Copy every text's ids into `out` on nthreads threads (call without the GIL), each thread
 * taking a run of texts with about the same number of ids. 0, or the first too-large id. */
static uint32_t flat_copy_all(FlatCopy *base, Py_ssize_t n, int nthreads)
{
    FlatCopy job[MAX_THREADS];
    pthread_t tid[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    int64_t total = base->dest[n];
    Py_ssize_t a = 0;
    for (int t = 0; t < nthreads; t++) {
        Py_ssize_t b = a;
        int64_t goal = total / nthreads * (t + 1);
        while (b < n && (t == nthreads - 1 || base->dest[b] < goal))
            b++;
        job[t] = *base, job[t].a = a, job[t].b = b, job[t].bad = 0;
        a = b;
    }
    for (int t = 1; t < nthreads; t++)
        started[t] = pthread_create(&tid[t], NULL, flat_copy, &job[t]) == 0;
    flat_copy(&job[0]);
    for (int t = 1; t < nthreads; t++) {
        if (started[t])
            pthread_join(tid[t], NULL);
        else
            flat_copy(&job[t]);
    }
    for (int t = 0; t < nthreads; t++)
        if (job[t].bad)
            return job[t].bad;
    return 0;
}

static PyObject *Encoder_encode_batch_flat(EncoderObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"texts", "itemsize", "num_threads", "specials", NULL};
    PyObject *texts, *specials = NULL, *ids = NULL, *offsets = NULL, *res = NULL;
    int itemsize, nthreads = 1;
    Worker *ws[MAX_THREADS];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oi|iO:encode_batch_flat", kwlist, &texts,
                                     &itemsize, &nthreads, &specials) ||
        check_itemsize(itemsize) < 0)
        return NULL;
    if (nthreads < 1 || nthreads > MAX_THREADS)
        return PyErr_Format(PyExc_ValueError, "num_threads must be in 1..%d, got %d",
                            MAX_THREADS, nthreads);
    PyObject *tup = PySequence_Tuple(texts); /* holds the strs */
    if (!tup)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(tup);
    size_t *off = PyMem_Calloc(2 * n + 1, sizeof(size_t)), *end = off + n;
    uint16_t *thr = PyMem_Calloc(n + 1, sizeof(uint16_t));
    int used = off && thr ? encode_texts(self, PySequence_Fast_ITEMS(tup), n, nthreads, specials,
                                         ws, off, end, thr)
                          : (PyErr_NoMemory(), -1);
    if (used > 0 && (offsets = PyByteArray_FromStringAndSize(NULL, (n + 1) * 8))) {
        int64_t *dest = (int64_t *)PyByteArray_AS_STRING(offsets);
        dest[0] = 0;
        for (Py_ssize_t i = 0; i < n; i++)
            dest[i + 1] = dest[i] + (int64_t)(end[i] - off[i]);
        ids = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)dest[n] * itemsize);
    }
    if (ids) {
        FlatCopy base = {ws, off, end, thr, (const int64_t *)PyByteArray_AS_STRING(offsets),
                         (uint8_t *)PyByteArray_AS_STRING(ids), itemsize, 0, 0, 0};
        int copiers = used; /* pages of the result are faulted in by several threads too */
        PyThreadState *ts = PyByteArray_GET_SIZE(ids) >= (1 << 20) ? PyEval_SaveThread() : NULL;
        uint32_t bad = flat_copy_all(&base, n, ts ? copiers : 1);
        if (ts)
            PyEval_RestoreThread(ts);
        if (bad)
            PyErr_Format(PyExc_OverflowError, "token id %u does not fit in uint16; use "
                         "itemsize=4 (uint32) for vocabularies over 65536 tokens", bad);
        else
            res = PyTuple_Pack(2, ids, offsets);
    }
    Py_XDECREF(ids), Py_XDECREF(offsets);
    if (used > 0)
        give_workers(self, ws, used);
    PyMem_Free(off), PyMem_Free(thr);
    Py_DECREF(tup);
    return res;
}

/* UTF-8 bytes (any buffer: bytes, a memoryview of an mmap'd file) -> packed ids, GIL released,
 * no str made. Invalid UTF-8 raises the UnicodeDecodeError that bytes.decode() would. */
static PyObject *Encoder_encode_utf8_to_bytes(EncoderObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"data", "itemsize", "specials", NULL};
    PyObject *specials = NULL, *keep = NULL, *res = NULL;
    Py_buffer view;
    int itemsize;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*i|O:encode_utf8_to_bytes", kwlist, &view,
                                     &itemsize, &specials))
        return NULL;
    Specials sp = {0};
    Worker *w = NULL;
    int rc = check_itemsize(itemsize) < 0 || parse_specials(specials, &sp, &keep) < 0 ? -1 : 0;
    if (!rc)
        rc = take_workers(self, &w, 1);
    if (!rc) {
        const uint8_t *d = view.buf;
        size_t n = (size_t)view.len;
        Py_ssize_t bad = -1;
        PyThreadState *ts = n >= NOGIL_MIN_LEN ? PyEval_SaveThread() : NULL;
        if ((bad = utf8_check(d, n)) < 0)
            rc = encode_utf8(&self->bpe, w, d, n, sp.n ? &sp : NULL);
        if (ts)
            PyEval_RestoreThread(ts);
        if (bad >= 0) {
            Py_XDECREF(PyUnicode_DecodeUTF8((const char *)d, (Py_ssize_t)n, "strict"));
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_SystemError, "utf8_check and Python disagree at %zd", bad);
        } else if (rc < 0) {
            PyErr_NoMemory();
        } else {
            res = pack_to_bytes(w->out.p, w->out.n, itemsize);
        }
        give_workers(self, &w, 1);
    }
    free_specials(&sp, keep);
    PyBuffer_Release(&view);
    return res;
}

static PyObject *Encoder_reduce(EncoderObject *self, PyObject *unused)
{
    return Py_BuildValue("(OO)", Py_TYPE(self), self->args);
}

#define SPECIALS_DOC "\n\n`specials`: None, or (bytes, id) pairs, longest first: each occurrence in " \
    "the text becomes that id and the text between them is encoded separately."

static PyMethodDef Encoder_methods[] = {
    {"__reduce__", (PyCFunction)Encoder_reduce, METH_NOARGS,
     "Pickle support: rebuilt from (vocab, merges), e.g. in worker processes."},
    {"encode", (PyCFunction)(void (*)(void))Encoder_encode, METH_VARARGS | METH_KEYWORDS,
     "encode(text: str, specials=None) -> list[int]\n\nPre-tokenize with the GPT-2 pattern and "
     "BPE-encode each pre-token." SPECIALS_DOC},
    {"encode_to_bytes", (PyCFunction)(void (*)(void))Encoder_encode_to_bytes,
     METH_VARARGS | METH_KEYWORDS,
     "encode_to_bytes(text: str, itemsize: int, specials=None) -> bytes\n\nThe ids of "
     "encode(text) packed little-endian as uint16 (itemsize 2; OverflowError if an id > 65535) "
     "or uint32 (4)." SPECIALS_DOC},
    {"encode_batch", (PyCFunction)(void (*)(void))Encoder_encode_batch,
     METH_VARARGS | METH_KEYWORDS,
     "encode_batch(texts: Sequence[str], num_threads: int = 1, specials=None) -> list[list[int]]"
     "\n\n[encode(t) for t in texts] on num_threads threads, the GIL released throughout."
     SPECIALS_DOC},
    {"encode_batch_to_bytes", (PyCFunction)(void (*)(void))Encoder_encode_batch_to_bytes,
     METH_VARARGS | METH_KEYWORDS,
     "encode_batch_to_bytes(texts: Sequence[str], itemsize: int, num_threads: int = 1, "
     "specials=None) -> list[bytes]\n\n[encode_to_bytes(t, itemsize) for t in texts], the GIL "
     "released once for the batch." SPECIALS_DOC},
    {"encode_batch_flat", (PyCFunction)(void (*)(void))Encoder_encode_batch_flat,
     METH_VARARGS | METH_KEYWORDS,
     "encode_batch_flat(texts: Sequence[str], itemsize: int, num_threads: int = 1, "
     "specials=None) -> tuple[bytearray, bytearray]\n\n(ids, offsets): the ids of every text, "
     "packed as uint16/uint32 (itemsize 2/4) one after the other, and len(texts) + 1 int64 "
     "offsets, text i's ids being ids[offsets[i]:offsets[i + 1]] (in items). Encoded as "
     "encode_batch does, then copied into the result by the same threads." SPECIALS_DOC},
    {"encode_utf8_to_bytes", (PyCFunction)(void (*)(void))Encoder_encode_utf8_to_bytes,
     METH_VARARGS | METH_KEYWORDS,
     "encode_utf8_to_bytes(data: Buffer, itemsize: int, specials=None) -> bytes\n\n"
     "encode_to_bytes(bytes(data).decode('utf-8'), itemsize) without making the str (the GIL "
     "released; UnicodeDecodeError as decode() raises it)." SPECIALS_DOC},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "lmforge.tokenizer._bpe_encode.Encoder",
    .tp_basicsize = sizeof(EncoderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Encoder(vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]])\n\n"
              "Byte-level BPE: merge the lowest-rank adjacent pair, leftmost first. Thread-safe; "
              "releases the GIL while encoding long texts.",
    .tp_new = Encoder_new,
    .tp_dealloc = (destructor)Encoder_dealloc,
    .tp_methods = Encoder_methods,
};

/* ----------------------------------------------------------------- module functions */

static PyObject *init_char_classes(PyObject *mod, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int ok = view.len == N_CODEPOINTS;
    for (Py_ssize_t i = 0; ok && i < view.len; i++)
        ok = ((const uint8_t *)view.buf)[i] <= C_SPACE;
    if (ok) {
        memcpy(char_class, view.buf, N_CODEPOINTS);
        char_class_ready = 1;
        swar_ok = 1; /* the SWAR scan's ASCII letters and digits must be the table's */
        for (int c = 0; c < 0x80; c++) {
            int letter = (c | 0x20) >= 'a' && (c | 0x20) <= 'z', digit = c >= '0' && c <= '9';
            swar_ok &= (char_class[c] == C_LETTER) == letter && (char_class[c] == C_NUMBER) == digit;
        }
        ascii_scan_ok = ascii_scan_check();
    } else {
        PyErr_Format(PyExc_ValueError, "char class table must be 0x110000 bytes with values 0..3 "
                     "(got %zd bytes); use lmforge.tokenizer.native.char_class_table()", view.len);
    }
    PyBuffer_Release(&view);
    return ok ? Py_NewRef(Py_None) : NULL;
}

static PyObject *pretokenize(PyObject *mod, PyObject *text)
{
    Scan sc;
    if (scan_init(&sc, text) < 0)
        return NULL;
    PyObject *list = PyList_New(0);
    for (Py_ssize_t i = 0, e; list && i < sc.n; i = e) {
        e = next_end_any(sc.kind, sc.data, i, sc.n);
        PyObject *piece = PyUnicode_Substring(text, i, e);
        if (!piece || PyList_Append(list, piece) < 0)
            Py_CLEAR(list);
        Py_XDECREF(piece);
    }
    return list;
}

/* The pieces the encoder's scanner (ascii_scan.h / utf8_scan.h) cuts valid UTF-8 into. */
static PyObject *pretokenize_utf8(PyObject *mod, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const uint8_t *d = view.buf;
    size_t n = (size_t)view.len;
    PyObject *list = NULL;
    Py_ssize_t bad = utf8_check(d, n);
    if (bad >= 0) {
        PyErr_Format(PyExc_ValueError, "invalid UTF-8 at byte %zd", bad);
    } else if ((list = PyList_New(0))) {
        PieceIter it;
        piece_iter_init(&it, d, 0, n, d + n);
        for (size_t t; list && it.pos < n; it.pos = t) {
            t = piece_iter_next(&it);
            PyObject *piece = PyBytes_FromStringAndSize((const char *)d + it.pos, t - it.pos);
            if (!piece || PyList_Append(list, piece) < 0)
                Py_CLEAR(list);
            Py_XDECREF(piece);
        }
    }
    PyBuffer_Release(&view);
    return list;
}

static int count_piece(void *vmap, const uint8_t *s, size_t n)
{
    BytesMap *m = vmap;
    uint64_t h = hash_bytes(s, n), c = 0;
    size_t at;
    uint32_t *r = bm_find(m, s, n, h, &at), *v = r ? rec_vals(r) : bm_insert(m, s, n, h, at, 2);
    if (!v)
        return -1;
    if (r)
        memcpy(&c, v, 8);
    c++;
    memcpy(v, &c, 8);
    return 0;
}

/* counts[key] += count for every record of m, in first-seen order. */
static int add_counts(PyObject *counts, BytesMap *m)
{
    for (size_t off = 0; off < m->len; off += rec_words(m->arena[off + 2], 2)) {
        uint32_t *r = m->arena + off;
        uint64_t n;
        memcpy(&n, rec_vals(r), 8);
        PyObject *key = PyBytes_FromStringAndSize((const char *)(r + REC_HEAD), r[2]);
        PyObject *c = PyLong_FromUnsignedLongLong(n), *old = NULL, *sum = NULL;
        if (key && c && ((old = PyDict_GetItemWithError(counts, key)) || !PyErr_Occurred()))
            sum = old ? PyNumber_Add(old, c) : Py_NewRef(c);
        int rc = sum ? PyDict_SetItem(counts, key, sum) : -1;
        Py_XDECREF(key), Py_XDECREF(c), Py_XDECREF(sum);
        if (rc < 0)
            return -1;
    }
    return 0;
}

static PyObject *count_pretokens(PyObject *mod, PyObject *args)
{
    PyObject *text, *counts;
    Scan sc;
    if (!PyArg_ParseTuple(args, "OO!:count_pretokens", &text, &PyDict_Type, &counts) ||
        scan_init(&sc, text) < 0)
        return NULL;
    BytesMap *m = bm_new();
    if (!m)
        return PyErr_NoMemory();
    PyThreadState *ts = sc.n >= NOGIL_MIN_LEN ? PyEval_SaveThread() : NULL;
    int rc = scan(&sc, count_piece, m);
    if (ts)
        PyEval_RestoreThread(ts);
    if (rc < 0 && !sc.err)
        sc.err = ERR_NOMEM;
    if (rc < 0)
        scan_raise(&sc, text);
    else
        rc = add_counts(counts, m);
    free(sc.buf);
    bm_free(m);
    return rc < 0 ? NULL : Py_NewRef(Py_None);
}

static PyMethodDef module_methods[] = {
    {"init_char_classes", init_char_classes, METH_O,
     "init_char_classes(table: bytes) -> None\n\nSet the code point classes (0x110000 bytes: "
     "0 other, 1 letter, 2 number, 3 whitespace) used by the pre-tokenizer."},
    {"pretokenize", pretokenize, METH_O,
     "pretokenize(text: str) -> list[str]\n\nSame as GPT2_REGEX.findall(text)."},
    {"pretokenize_utf8", pretokenize_utf8, METH_O,
     "pretokenize_utf8(data: Buffer) -> list[bytes]\n\n[p.encode() for p in "
     "GPT2_REGEX.findall(bytes(data).decode())], cut by the encoder's own scanner (the one "
     "encode_utf8_to_bytes and encode_batch use); ValueError on invalid UTF-8."},
    {"count_pretokens", count_pretokens, METH_VARARGS,
     "count_pretokens(text: str, counts: dict) -> None\n\nFor every pre-token p of text: "
     "counts[p.encode()] = counts.get(p.encode(), 0) + 1."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_bpe_encode",
    "C fast path: GPT-2 pre-tokenizer and byte-level BPE encoder (see csrc/_bpe_encode.c).", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__bpe_encode(void)
{
    if (PyType_Ready(&EncoderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m && PyModule_AddObjectRef(m, "Encoder", (PyObject *)&EncoderType) < 0)
        Py_CLEAR(m);
    return m;
}
