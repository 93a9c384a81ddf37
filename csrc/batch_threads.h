/* batch_threads.h: many texts over many threads, and their ids gathered into one flat array.
 * Included once by _bpe_encode.c (static functions; not a separate translation unit).
 *
 * run_batch: pthreads take texts one at a time (long and short documents balance), each encoding
 * into its own Worker (all sharing one piece cache); text i's ids end up in workers[thr[i]]->out
 * at [off[i], end[i]). Thread 0
 * takes texts from the front and the others from the back, so thread 0's texts are a prefix whose
 * ids lie in order at the start of its buffer: encode_batch_flat's result *is* that buffer, grown,
 * with the other threads' texts copied after it (flat_copy_all, by the same threads). With
 * `pack` = 2 each text's ids are narrowed to uint16 in place as soon as they are encoded, so the
 * buffers hold 2 bytes per id, not 4: half the fresh pages (each a page fault) and no narrowing
 * pass over the whole result. */
#ifndef LMFORGE_BATCH_THREADS_H
#define LMFORGE_BATCH_THREADS_H

/* ------------------------------------------------------------------ packing ids */

/* Pack n ids from src to dst as little-endian uint16/uint32 (itemsize 2/4); dst may overlap src
 * if dst <= src (in place: the writes never overtake the reads). 0, or -1 with *bad = the first
 * id that does not fit. Eight ids at a time, so the compiler turns the narrowing into vector
 * code. */
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

/* ------------------------------------------------------------------ encoding */

#define MAX_BATCH_TEXTS 0xFFFFFFFFu /* texts of one batch: both ends of `claim` fit 32 bits */

typedef struct {
    const Bpe *bpe;
    const Specials *sp;
    Scan *docs;
    Py_ssize_t n, failed; /* failed: lowest index of a text that could not be encoded */
    size_t bytes;         /* of all texts (code points, for a str), to size a shared cache */
    uint64_t claim;       /* texts [claim & 0xFFFFFFFF, claim >> 32) are not taken yet */
    int pack;             /* 2 or 4: each text's ids packed (little-endian uint16 / uint32) at the
                           * front of its buffer once encoded, off/end counting those; 0: not */
    uint32_t too_big;     /* pack 2: an id over 0xFFFF (0: none) */
    size_t *off, *end;
    uint16_t *thr;
    Worker **workers;
} Batch;

typedef struct {
    Batch *b;
    int t;
} BatchArg;

/* The next text for a thread taking from the front (thread 0) or the back; -1 when none is left. */
static Py_ssize_t claim_text(Batch *b, int front)
{
    uint64_t c = __atomic_load_n(&b->claim, __ATOMIC_RELAXED), next;
    do {
        if ((c & 0xFFFFFFFFu) >= c >> 32)
            return -1;
        next = front ? c + 1 : c - (1ull << 32);
    } while (!__atomic_compare_exchange_n(&b->claim, &c, next, 1, __ATOMIC_RELAXED,
                                          __ATOMIC_RELAXED));
    return front ? (Py_ssize_t)(c & 0xFFFFFFFFu) : (Py_ssize_t)(c >> 32) - 1;
}

static void batch_failed(Batch *b, Py_ssize_t i)
{
    Py_ssize_t f = __atomic_load_n(&b->failed, __ATOMIC_RELAXED);
    while (i < f && !__atomic_compare_exchange_n(&b->failed, &f, i, 0, __ATOMIC_RELAXED,
                                                 __ATOMIC_RELAXED))
        ;
    if (b->docs[i].err == ERR_NOMEM) /* give up; a surrogate only fails its own text */
        __atomic_store_n(&b->claim, 0, __ATOMIC_RELAXED);
}

static void *batch_thread(void *varg)
{
    BatchArg *a = varg;
    Batch *b = a->b;
    Worker *w = b->workers[a->t];
    size_t packed = 0, z = (size_t)b->pack; /* ids packed at the front of w->out */
    for (Py_ssize_t i; (i = claim_text(b, a->t == 0)) >= 0;) {
        b->thr[i] = (uint16_t)a->t;
        if (z) /* encode as uint32 just past the packed ids, then pack them down */
            w->out.n = (packed * z + 3) / 4;
        size_t start = w->out.n;
        if (encode_str(b->bpe, w, &b->docs[i], b->sp) < 0)
            batch_failed(b, i);
        if (!z) {
            b->off[i] = start, b->end[i] = w->out.n;
            continue;
        }
        size_t k = w->out.n - start;
        uint32_t bad = 0; /* the writes never overtake the reads: z * packed <= 4 * start */
        if (k && pack_ids_to((uint8_t *)w->out.p + z * packed, w->out.p + start, k, b->pack,
                             &bad) < 0)
            __atomic_store_n(&b->too_big, bad, __ATOMIC_RELAXED);
        b->off[i] = packed, packed += k, b->end[i] = packed;
    }
    return NULL;
}

/* Encode every text with `nthreads` threads (the caller's thread is one of them); call without
 * the GIL. With several threads they all use worker 0's piece cache, shared for the batch (see
 * piece_cache.h) unless it already is (Encoder.share_cache), so a piece first met by one thread
 * is not BPE-encoded again by the others. Returns the number of threads actually used (fewer if
 * one could not start). */
static int run_batch(Batch *b, int nthreads)
{
    pthread_t tid[MAX_THREADS];
    BatchArg args[MAX_THREADS];
    int started = 1;
    PieceCache *c = b->workers[0]->cache;
    int share = nthreads > 1 && !c->shared;
    b->claim = (uint64_t)b->n << 32, b->failed = b->n, b->too_big = 0;
    if (share)
        cache_share(c, b->bytes);
    for (int t = 0; t < nthreads; t++)
        args[t].b = b, args[t].t = t, b->workers[t]->cache = c;
    for (int t = 1; t < nthreads; t++, started++)
        if (pthread_create(&tid[t], NULL, batch_thread, &args[t]) != 0)
            break;
    batch_thread(&args[0]);
    for (int t = 1; t < started; t++)
        pthread_join(tid[t], NULL);
    if (share)
        cache_unshare(c);
    return started;
}

/* ------------------------------------------------------------------ the flat result */

/* A malloc'd block of ids handed to Python as a buffer (numpy.frombuffer keeps it alive); it is
 * freed with the object. Made only from C: encode_batch_flat's ids. */
typedef struct {
    PyObject_HEAD
    void *p;
    Py_ssize_t len;
} IdBufferObject;

static int IdBuffer_getbuffer(IdBufferObject *self, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, (PyObject *)self, self->p, self->len, 0, flags);
}

static void IdBuffer_dealloc(IdBufferObject *self)
{
    free(self->p);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyBufferProcs IdBuffer_as_buffer = {(getbufferproc)IdBuffer_getbuffer, NULL};

static PyTypeObject IdBufferType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "lmforge.tokenizer._bpe_encode.IdBuffer",
    .tp_basicsize = sizeof(IdBufferObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Packed token ids (a writable buffer) owned by C: encode_batch_flat's result.",
    .tp_dealloc = (destructor)IdBuffer_dealloc,
    .tp_as_buffer = &IdBuffer_as_buffer,
};

/* An IdBuffer owning p (len bytes, from malloc), or NULL (p freed) with MemoryError. */
static PyObject *id_buffer_new(void *p, Py_ssize_t len)
{
    IdBufferObject *o = PyObject_New(IdBufferObject, &IdBufferType);
    if (!o) {
        free(p);
        return NULL;
    }
    o->p = p, o->len = len;
    return (PyObject *)o;
}

/* One thread's share of the flat result: texts [a, b) copied from the workers' buffers, where
 * they are already packed (itemsize bytes per id), to out + dest[i] * itemsize. */
typedef struct {
    Worker **ws;
    const size_t *off, *end;
    const uint16_t *thr;
    const int64_t *dest;
    uint8_t *out;
    int itemsize;
    Py_ssize_t a, b;
} FlatCopy;

static void *flat_copy(void *arg)
{
    FlatCopy *c = arg;
    for (Py_ssize_t i = c->a; i < c->b; i++)
        if (c->end[i] > c->off[i])
            memcpy(c->out + (size_t)c->dest[i] * c->itemsize,
                   (const uint8_t *)c->ws[c->thr[i]]->out.p + c->off[i] * c->itemsize,
                   (c->end[i] - c->off[i]) * c->itemsize);
    return NULL;
}

/* Copy texts [from, n) into place on nthreads threads (call without the GIL), each thread taking
 * a run of texts with about the same number of ids (it also takes the page faults of its part of
 * the result). */
static void flat_copy_all(const FlatCopy *base, Py_ssize_t from, Py_ssize_t n, int nthreads)
{
    FlatCopy job[MAX_THREADS];
    pthread_t tid[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    int64_t first = base->dest[from], total = base->dest[n] - first;
    Py_ssize_t a = from;
    for (int t = 0; t < nthreads; t++) {
        Py_ssize_t b = a;
        int64_t goal = first + total / nthreads * (t + 1);
        while (b < n && (t == nthreads - 1 || base->dest[b] < goal))
            b++;
        job[t] = *base, job[t].a = a, job[t].b = b;
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
}

#endif /* LMFORGE_BATCH_THREADS_H */
