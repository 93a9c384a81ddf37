/* _bpe_encode: C fast path for GPT-2 pre-tokenization and byte-level BPE encoding.
 *
 * Reference implementations: lmforge/tokenizer/pretokenize.py (GPT2_REGEX) and bpe.py; the tests
 * in tests/tokenizer/test_native_encode.py and test_encode_batch.py prove this module equal to
 * them, to tiktoken (GPT-2) and to HuggingFace tokenizers (an arbitrary trained vocabulary).
 *
 * Design (issue 17; profiles in docs/benchmarks.md), one header per part:
 * - utf8_scan.h: everything is encoded from UTF-8 - bytes and mmap'd files in place, ASCII strs
 *   in place (their storage is UTF-8), other strs after one conversion per text into a reused
 *   worker buffer. Special tokens are split off in the same pass (memchr on their first byte),
 *   so a whole chunk of a file is one call with the GIL released. Its scalar scanner follows the
 *   GPT-2 pattern
 *       '(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *   with a 0x110000-byte class table (other / letter / number / space) that native.py computes
 *   with the `regex` module itself, so both agree on every code point.
 * - ascii_scan.h: on ASCII the same boundaries, 64 bytes at a time as a bit mask (SSE2), read
 *   off with count-trailing-zeros; windows with other bytes go to the scalar scanner.
 * - piece_cache.h: the cache of piece -> ids for 2..8 and 9..16-byte pieces (2-way set-associative
 *   tables that grow with the text, 2 MiB pages where the kernel gives them); private to one
 *   thread, or shared by a batch's threads under a per-entry sequence lock, so no piece is
 *   BPE-encoded twice because two threads met it.
 * - encode_worker.h: one thread's encoding loop (and a BytesMap for longer pieces); pieces are cut
 *   32 at a time and their cache slots prefetched before any lookup, so the misses overlap.
 * - bpe_merge.h: BPE within a piece - repeatedly merge the adjacent pair of lowest rank,
 *   leftmost first - over a one-word-per-slot merge table and a dense byte-pair rank table;
 *   an array scan for pieces of up to SMALL_PIECE bytes, a heap beyond.
 * - batch_threads.h: encode_batch's pthreads (texts from an atomic counter, a Worker each, one
 *   shared piece cache), and the flat output (thread 0's buffer, the others' texts copied after).
 * - repr_join.h: the repr behind Tokenizer.fingerprint (the vocabulary's, in ~2 ms, not 25).
 * - encode_args.h: the methods' argument parsing (itemsize, specials) and result packing;
 *   pretok_functions.h: the module functions around the pre-tokenizer (char classes, pieces,
 *   pre-token counts). This file: the Encoder type and its methods.
 * - worker_pool.h: Workers (caches + output buffer) belong to one call at a time (a pool per
 *   Encoder, handed out under the GIL), so no lock is taken while encoding. Ids come out as uint32 in the
 *   worker's buffer, packed to uint16/uint32 bytes for the *_to_bytes and flat methods, or
 *   turned into lists of preallocated int objects (with the cyclic GC paused).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stddef.h>
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
#include "piece_cache.h"
#include "encode_worker.h"
#include "batch_threads.h"

/* ------------------------------------------------------------------------- Encoder */

typedef struct {
    PyObject_HEAD
    Bpe bpe;
    PyObject **id_obj; /* int objects for ids < n_id_obj, shared by every returned list */
    size_t n_id_obj;
    Worker *pool[POOL_SIZE];
    int pool_n;
    int busy;        /* workers out of the pool: calls in flight */
    Worker *sharer;  /* while share_cache is on: the worker whose piece cache every call uses */
    int shares;      /* share_cache calls not yet matched by unshare_cache */
    int unsharing;   /* the last unshare_cache came with calls in flight: the last one ends it */
    PyObject *args; /* (vocab, merges), for pickling */
    uint32_t max_id; /* the largest id in vocab */
} EncoderObject;

#include "encoder_build.h"
#include "worker_pool.h"
#include "repr_join.h"
#include "encode_args.h"

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
    worker_free(self->sharer); /* no call is in flight: each holds a reference */
    Py_XDECREF(self->args);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Encode texts[0:n] with nthreads threads (GIL released when worth it). On success the ids of
 * text i are ws[thr[i]]->out.p[off[i]:end[i]] (uint32; with pack 2 or 4, little-endian uint16 or
 * uint32 items [off[i], end[i]) of the buffer's bytes), texts [0, *head) being thread 0's, in
 * order from the start of its buffer; the caller gives the workers back. An id over 0xFFFF with
 * pack 2 raises OverflowError. */
static int encode_texts(EncoderObject *self, PyObject *const *texts, Py_ssize_t n, int nthreads,
                        PyObject *specials, int pack, Worker **ws, size_t *off, size_t *end,
                        uint16_t *thr, Py_ssize_t *head)
{
    if ((size_t)n > MAX_BATCH_TEXTS)
        return PyErr_Format(PyExc_ValueError, "a batch holds at most %u texts, got %zd",
                            MAX_BATCH_TEXTS, n), -1;
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
        Batch b = {.bpe = &self->bpe, .sp = sp.n ? &sp : NULL, .docs = docs, .n = n, .bytes = total,
                   .pack = pack, .off = off, .end = end, .thr = thr, .workers = ws};
        PyThreadState *ts = total >= NOGIL_MIN_LEN ? PyEval_SaveThread() : NULL;
        run_batch(&b, nthreads);
        if (ts)
            PyEval_RestoreThread(ts);
        *head = (Py_ssize_t)(b.claim & 0xFFFFFFFFu);
        if (b.failed < n)
            raise_text_error(&docs[b.failed], texts[b.failed]);
        else if (b.too_big)
            raise_id_too_big(b.too_big);
        if (b.failed < n || b.too_big) {
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
    Py_ssize_t head;
    int used = off && thr ? encode_texts(self, PySequence_Fast_ITEMS(tup), n, nthreads, specials,
                                         0, ws, off, end, thr, &head)
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
    Py_ssize_t n = PyTuple_GET_SIZE(tup), head = 0;
    size_t *off = PyMem_Calloc(2 * n + 1, sizeof(size_t)), *end = off + n;
    uint16_t *thr = PyMem_Calloc(n + 1, sizeof(uint16_t));
    int used = off && thr ? encode_texts(self, PySequence_Fast_ITEMS(tup), n, nthreads, specials,
                                         itemsize, ws, off, end, thr, &head)
                          : (PyErr_NoMemory(), -1);
    int64_t *dest = NULL;
    if (used > 0 && (offsets = PyByteArray_FromStringAndSize(NULL, (n + 1) * 8))) {
        dest = (int64_t *)PyByteArray_AS_STRING(offsets);
        dest[0] = 0;
        for (Py_ssize_t i = 0; i < n; i++)
            dest[i + 1] = dest[i] + (int64_t)(end[i] - off[i]);
    }
    if (dest) {
        /* The result is thread 0's buffer, which starts with texts [0, head) packed in order;
         * grown (or shrunk) to the whole result, and the other texts copied after them. */
        size_t bytes = (size_t)dest[n] * itemsize;
        uint8_t *buf = realloc(ws[0]->out.p, bytes ? bytes : 1);
        if (buf) {
            ws[0]->out.p = NULL, ws[0]->out.cap = ws[0]->out.n = 0;
            FlatCopy base = {ws, off, end, thr, dest, buf, itemsize, 0, 0};
            int copiers = used; /* pages of the result are faulted in by several threads too */
            size_t rest = (size_t)(dest[n] - dest[head]) * itemsize;
            PyThreadState *ts = rest >= (1 << 20) ? PyEval_SaveThread() : NULL;
            flat_copy_all(&base, head, n, ts ? copiers : 1);
            if (ts)
                PyEval_RestoreThread(ts);
            ids = id_buffer_new(buf, (Py_ssize_t)bytes);
        } else {
            PyErr_NoMemory();
        }
    }
    if (ids)
        res = PyTuple_Pack(2, ids, offsets);
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
    static char *kwlist[] = {"data", "itemsize", "specials", "out", NULL};
    PyObject *specials = NULL, *keep = NULL, *res = NULL, *out = NULL;
    Py_buffer view, dst = {0};
    int itemsize;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*i|OO:encode_utf8_to_bytes", kwlist, &view,
                                     &itemsize, &specials, &out))
        return NULL;
    Specials sp = {0};
    Worker *w = NULL;
    int rc = check_itemsize(itemsize) < 0 || parse_specials(specials, &sp, &keep) < 0 ? -1 : 0;
    if (!rc && out && out != Py_None)
        rc = PyObject_GetBuffer(out, &dst, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS);
    if (!rc)
        rc = take_workers(self, &w, 1);
    if (!rc) {
        const uint8_t *d = view.buf;
        size_t n = (size_t)view.len;
        Py_ssize_t bad = -1;
        uint32_t too_big = 0;
        int fits = 1;
        PyThreadState *ts = n >= NOGIL_MIN_LEN ? PyEval_SaveThread() : NULL;
        if ((bad = utf8_check(d, n)) < 0)
            rc = encode_utf8(&self->bpe, w, d, n, sp.n ? &sp : NULL);
        if (bad < 0 && rc == 0 && dst.buf) { /* straight into the caller's buffer */
            fits = w->out.n * itemsize <= (size_t)dst.len;
            if (fits && pack_ids_to(dst.buf, w->out.p, w->out.n, itemsize, &too_big) < 0)
                rc = -2;
        }
        if (ts)
            PyEval_RestoreThread(ts);
        if (bad >= 0) {
            Py_XDECREF(PyUnicode_DecodeUTF8((const char *)d, (Py_ssize_t)n, "strict"));
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_SystemError, "utf8_check and Python disagree at %zd", bad);
        } else if (rc == -2) {
            raise_id_too_big(too_big);
        } else if (rc < 0) {
            PyErr_NoMemory();
        } else if (!fits) {
            PyErr_Format(PyExc_ValueError, "out holds %zd bytes; the %zu ids need %zu",
                         dst.len, w->out.n, w->out.n * itemsize);
        } else {
            res = dst.buf ? PyLong_FromSize_t(w->out.n)
                          : pack_to_bytes(w->out.p, w->out.n, itemsize);
        }
        give_workers(self, &w, 1);
    }
    if (dst.obj)
        PyBuffer_Release(&dst);
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
     "specials=None) -> tuple[IdBuffer, bytearray]\n\n(ids, offsets): the ids of every text, "
     "packed as uint16/uint32 (itemsize 2/4) one after the other, and len(texts) + 1 int64 "
     "offsets, text i's ids being ids[offsets[i]:offsets[i + 1]] (in items). Encoded as "
     "encode_batch does; thread 0's texts are encoded in place in the result, the others' copied "
     "after them by the same threads." SPECIALS_DOC},
    {"share_cache", (PyCFunction)Encoder_share_cache, METH_O,
     "share_cache(nbytes: int) -> None\n\nFrom now on every call, from any thread, uses one "
     "piece cache sized for about nbytes of text (threads encoding parts of one corpus then do "
     "not each BPE-encode the pieces they first meet); until unshare_cache()."},
    {"unshare_cache", (PyCFunction)Encoder_unshare_cache, METH_NOARGS,
     "unshare_cache() -> None\n\nEnd share_cache (the outermost one, once the calls in flight "
     "have returned)."},
    {"encode_utf8_to_bytes", (PyCFunction)(void (*)(void))Encoder_encode_utf8_to_bytes,
     METH_VARARGS | METH_KEYWORDS,
     "encode_utf8_to_bytes(data: Buffer, itemsize: int, specials=None, out=None) -> bytes | int"
     "\n\nencode_to_bytes(bytes(data).decode('utf-8'), itemsize) without making the str (the GIL "
     "released; UnicodeDecodeError as decode() raises it). With `out` (a writable buffer of at "
     "least len(data) * itemsize bytes: ids <= bytes) the ids are packed into it instead and "
     "their number is returned." SPECIALS_DOC},
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

#include "pretok_functions.h"

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
    {"repr_join", repr_join, METH_O,
     "repr_join(items: list | tuple) -> bytes\n\n', '.join(map(repr, items)).encode(), written "
     "in C for tuples of ints and bytes (Tokenizer.fingerprint's vocabulary and merges)."},
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
    if (PyType_Ready(&EncoderType) < 0 || PyType_Ready(&IdBufferType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m && PyModule_AddObjectRef(m, "Encoder", (PyObject *)&EncoderType) < 0)
        Py_CLEAR(m);
    return m;
}
