/* _bpe_train.c -- the byte-level BPE trainer in C (module lmforge.tokenizer._bpe_train).
 *
 * Two entry points, one merge loop (bpe_trainer.h):
 * - train_merges: input the pre-token table (distinct pre-tokens as UTF-8 bytes with their
 *   counts) and the initial vocabulary; output the merges, as (left id, right id) pairs in
 *   creation order. The readable Python reference is lmforge/tokenizer/train.py; tests prove
 *   both agree.
 * - train_files: counts the pre-tokens of files itself, in threads without the GIL
 *   (bpe_count.h), and hands the table straight to the merge loop: no Python dict in between.
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

#include "bpe_count.h"
#include "bpe_trainer.h"

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

/* Room for n words of `total` tokens in the arena; 0, or -1 with an exception. */
static int alloc_words(Trainer *T, int64_t n, int64_t total)
{
    int64_t len = n * W_HEAD + total;
    if (len > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "BPE trainer: the distinct pre-tokens take more "
                        "than 2^31 - 1 slots (about 2 G bytes of distinct text)");
        return -1;
    }
    if (!(T->toks = malloc(((size_t)len + 1) * sizeof(int32_t)))) {
        PyErr_NoMemory();
        return -1;
    }
    T->toks_len = len;
    return 0;
}

/* Append a word (its bytes' ids) to the arena at *pos. */
static inline void put_word(Trainer *T, int64_t *pos, const uint8_t *s, int32_t len, int64_t c,
                            const int32_t byte_id[256])
{
    int32_t *r = T->toks + *pos;
    r[0] = len;
    memcpy(r + 1, &c, 8);
    for (int32_t i = 0; i < len; i++)
        r[W_HEAD + i] = byte_id[s[i]];
    *pos += W_HEAD + len;
}

/* Words and their counts into the arena; total pair positions in *positions. */
static int load_words(Trainer *T, PyObject *words, PyObject *counts, const int32_t byte_id[256],
                      int64_t *positions)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(words);
    int64_t total = 0, pos = 0;
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
        total += PyBytes_GET_SIZE(o);
        *positions += PyBytes_GET_SIZE(o) > 1 ? PyBytes_GET_SIZE(o) - 1 : 0;
    }
    if (alloc_words(T, n, total) < 0)
        return -1;
    for (Py_ssize_t w = 0; w < n; w++) {
        PyObject *o = PySequence_Fast_GET_ITEM(counts, w), *b = PySequence_Fast_GET_ITEM(words, w);
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
        put_word(T, &pos, (const uint8_t *)PyBytes_AS_STRING(b), (int32_t)PyBytes_GET_SIZE(b), c,
                 byte_id);
    }
    return 0;
}

/* ---- the Python entry point ---- */

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

/* Words (with len > 1) from the count tables, as token-id arrays; as load_words. */
static int load_words_map(Trainer *T, BytesMap *const *maps, int nmaps,
                          const int32_t byte_id[256], int64_t *positions)
{
    int64_t n = 0, total = 0, pos = 0;
    for (int k = 0; k < nmaps; k++)
        for (size_t off = 0; off < maps[k]->len; off += rec_words(maps[k]->arena[off + 2], 2))
            if (maps[k]->arena[off + 2] > 1)
                n++, total += maps[k]->arena[off + 2];
    if (alloc_words(T, n, total) < 0)
        return -1;
    for (int k = 0; k < nmaps; k++) {
        const BytesMap *m = maps[k];
        for (size_t off = 0; off < m->len; off += rec_words(m->arena[off + 2], 2)) {
            uint32_t *r = m->arena + off, len = r[2];
            uint64_t c;
            if (len < 2)
                continue;
            memcpy(&c, rec_vals(r), 8);
            if (c > INT64_MAX) {
                PyErr_SetString(PyExc_OverflowError, "a pre-token occurs 2^63 times or more");
                return -1;
            }
            put_word(T, &pos, (const uint8_t *)(r + REC_HEAD), (int32_t)len, (int64_t)c,
                     byte_id);
            *positions += len - 1;
        }
    }
    return 0;
}

/* Words are loaded: count the pairs, run the merges, free T; the merges as a list or NULL. */
static PyObject *train_loaded(Trainer *T, int64_t positions,
                              Py_ssize_t num_merges, PyObject *progress, Py_ssize_t every)
{
    int32_t *out = NULL;
    int64_t done = -1;
    if (num_merges > positions)   /* each merge removes at least one position */
        num_merges = (Py_ssize_t)positions;
    out = malloc(((size_t)num_merges + 1) * 2 * sizeof(int32_t));
    if (!out)
        PyErr_NoMemory();
    else if (alloc_scratch(T, (int64_t)T->ntok + num_merges + 1) == 0) {
        PROF_START(2);
        int r = count_pairs(T);
        PROF_END(2);
        if (r == 0)
            done = run_merges(T, num_merges, out, progress, every);
        PROF_REPORT();
    }
    trainer_free(T);
    PyObject *result = done < 0 ? NULL : merges_to_list(out, done);
    free(out);
    return result;
}

static PyObject *train(PyObject *words, PyObject *counts, PyObject *tokens, Py_ssize_t num_merges,
                       PyObject *progress, Py_ssize_t every)
{
    Trainer T = {0};
    int32_t byte_id[256];
    int64_t positions = 0;
    if (load_tokens(&T, tokens, byte_id) < 0 ||
        load_words(&T, words, counts, byte_id, &positions) < 0) {
        trainer_free(&T);
        return NULL;
    }
    return train_loaded(&T, positions, num_merges, progress, every);
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

/* ---- counting files, then training: train_files ---- */

static int parse_chunks(PyObject *chunks, Py_ssize_t nfiles, int64_t **out, int64_t *max_chunk)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(chunks);
    int64_t *c = malloc(((size_t)n + 1) * 3 * sizeof(int64_t));
    if (!c)
        return PyErr_NoMemory(), -1;
    *out = c, *max_chunk = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        long long f, a, b;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(chunks, k), "LLL", &f, &a, &b))
            return -1;
        if (f < 0 || f >= nfiles || a < 0 || b <= a) {
            PyErr_Format(PyExc_ValueError, "chunks[%zd] = (%lld, %lld, %lld): want (file index, "
                         "start, end) with 0 <= start < end", k, f, a, b);
            return -1;
        }
        c[3 * k] = f, c[3 * k + 1] = a, c[3 * k + 2] = b;
        if (b - a > *max_chunk)
            *max_chunk = b - a;
    }
    return 0;
}

/* The count tables as one {bytes: count}. */
static PyObject *map_to_dict(BytesMap *const *maps, int nmaps)
{
    PyObject *d = PyDict_New();
    for (int k = 0; d && k < nmaps; k++) {
        const BytesMap *m = maps[k];
        for (size_t off = 0; d && off < m->len; off += rec_words(m->arena[off + 2], 2)) {
            uint32_t *r = m->arena + off;
            uint64_t c;
            memcpy(&c, rec_vals(r), 8);
            PyObject *key = PyBytes_FromStringAndSize((const char *)(r + REC_HEAD), r[2]);
            PyObject *v = key ? PyLong_FromUnsignedLongLong(c) : NULL;
            if (!v || PyDict_SetItem(d, key, v) < 0)
                Py_CLEAR(d);
            Py_XDECREF(key);
            Py_XDECREF(v);
        }
    }
    return d;
}

static PyObject *train_files(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"paths", "chunks", "special_tokens", "token_bytes", "num_merges",
                             "threads", "char_class_page", "progress", "progress_every",
                             "count_progress", NULL};
    PyObject *paths, *chunks, *specials, *tokens, *page_fn, *progress = Py_None;
    PyObject *count_progress = Py_None, *result = NULL;
    Py_ssize_t num_merges, every = 100;
    int threads;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!O!O!niO|OnO:train_files", kwlist,
                                     &PyList_Type, &paths, &PyList_Type, &chunks, &PyList_Type,
                                     &specials, &PyList_Type, &tokens, &num_merges, &threads,
                                     &page_fn, &progress, &every, &count_progress))
        return NULL;
    int count_only = num_merges == -1;   /* count_pretokens_native: return the counts */
    if (num_merges < -1 || every < 1 || threads < 1 || threads > 1024)
        return PyErr_Format(PyExc_ValueError, "need num_merges >= 0, progress_every >= 1 and "
                            "1 <= threads <= 1024 (got %zd, %zd, %d)", num_merges, every, threads);
    Py_ssize_t nfiles = PyList_GET_SIZE(paths), nsp = PyList_GET_SIZE(specials);
    CountJob J = {0};
    Trainer T = {0};
    BytesMap **maps = calloc((size_t)threads, sizeof(BytesMap *));
    int64_t *chunk = NULL, bad = -1, positions = 0;
    int32_t byte_id[256];
    int *fds = calloc((size_t)nfiles + 1, sizeof(int));
    const uint8_t **sp = calloc((size_t)nsp + 1, sizeof *sp);
    size_t *sp_len = calloc((size_t)nsp + 1, sizeof *sp_len);
    Py_ssize_t nopen = 0;
    if (!fds || !sp || !sp_len || !maps) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t k = 0; k < nsp; k++) {
        PyObject *o = PyList_GET_ITEM(specials, k);
        if (!PyBytes_Check(o) || PyBytes_GET_SIZE(o) == 0) {
            PyErr_Format(PyExc_TypeError, "special_tokens[%zd] must be non-empty bytes", k);
            goto done;
        }
        sp[k] = (const uint8_t *)PyBytes_AS_STRING(o), sp_len[k] = (size_t)PyBytes_GET_SIZE(o);
    }
    if (parse_chunks(chunks, nfiles, &chunk, &J.max_chunk) < 0 ||
        load_tokens(&T, tokens, byte_id) < 0)
        goto done;
    for (; nopen < nfiles; nopen++) {
        PyObject *b = NULL;
        if (!PyUnicode_FSConverter(PyList_GET_ITEM(paths, nopen), &b))
            goto done;
        fds[nopen] = open(PyBytes_AS_STRING(b), O_RDONLY | O_CLOEXEC);
        if (fds[nopen] < 0) {
            PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, PyList_GET_ITEM(paths, nopen));
            Py_DECREF(b);
            goto done;
        }
        Py_DECREF(b);
    }
    J.fds = fds, J.chunk = chunk, J.nchunks = PyList_GET_SIZE(chunks);
    J.sp = sp, J.sp_len = sp_len, J.nsp = (int)nsp, J.page_fn = page_fn;
    pthread_mutex_init(&J.err_mu, NULL);
    int rc;
    Py_BEGIN_ALLOW_THREADS /* fill_page takes page_mu before the GIL: never hold the GIL here */
    rc = fill_page(&J, 0);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        PyErr_Restore(J.exc_type, J.exc_val, J.exc_tb);
        J.exc_type = J.exc_val = J.exc_tb = NULL;
        goto destroy;
    }
    PROF_START(0);
    rc = run_count(&J, threads, count_progress, maps, &bad);
    PROF_END(0);
    if (rc < 0)
        goto destroy;
    if (bad >= 0) {
        result = Py_BuildValue("(OLn)", Py_None, (long long)bad, (Py_ssize_t)0);
        goto destroy;
    }
    Py_ssize_t distinct = 0;
    for (int k = 0; k < threads; k++)
        distinct += (Py_ssize_t)maps[k]->n;
    if (count_only) {
        PyObject *d = map_to_dict(maps, threads);
        result = d ? Py_BuildValue("(Onn)", d, (Py_ssize_t)-1, distinct) : NULL;
        Py_XDECREF(d);
        goto destroy;
    }
    PROF_START(1);
    rc = load_words_map(&T, maps, threads, byte_id, &positions);
    PROF_END(1);
    for (int k = 0; k < threads; k++) { /* the trainer holds the words now */
        bm_free(maps[k]);
        maps[k] = NULL;
    }
    if (rc == 0) {
        PyObject *merges = train_loaded(&T, positions, num_merges, progress, every);
        if (merges) {
            result = Py_BuildValue("(Onn)", merges, (Py_ssize_t)-1, distinct);
            Py_DECREF(merges);
        }
    }
destroy:
    pthread_mutex_destroy(&J.err_mu);
done:
    trainer_free(&T); /* idempotent: train_loaded leaves it freed and zeroed */
    for (int k = 0; maps && k < threads; k++)
        bm_free(maps[k]);
    free(maps);
    for (Py_ssize_t k = 0; k < nopen; k++)
        close(fds[k]);
    free(fds), free(sp), free(sp_len), free(chunk);
    return result;
}

PyDoc_STRVAR(train_files_doc,
"train_files($module, /, paths, chunks, special_tokens, token_bytes, num_merges, threads,\n"
"            char_class_page, progress=None, progress_every=100, count_progress=None)\n--\n\n"
"Count the GPT-2 pre-tokens of files with `threads` threads, then train as train_merges.\n\n"
"chunks: [(file index, start, end), ...] byte ranges of paths, cut at safe boundaries\n"
"(pretokenize.find_chunk_boundaries). special_tokens (bytes) are split on and dropped.\n"
"char_class_page(page) -> 256 bytes: the class codes of code points 256*page ... +255.\n"
"count_progress(bytes_done) is called about every 50 ms while counting.\n"
"Returns (merges, -1, n_distinct), or (None, k, _) when chunk k is not valid UTF-8 (the\n"
"first such chunk). num_merges=-1 only counts: ({pre-token bytes: count}, -1, n_distinct).\n");

static PyMethodDef methods[] = {
    {"train_files", (PyCFunction)(void (*)(void))train_files, METH_VARARGS | METH_KEYWORDS,
     train_files_doc},
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
