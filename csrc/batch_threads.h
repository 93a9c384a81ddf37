/* batch_threads.h: many texts over many threads, and their ids packed into one flat array.
 * Included once by _bpe_encode.c (static functions; not a separate translation unit).
 *
 * run_batch: pthreads take texts from an atomic counter (long and short documents balance), each
 * encoding into its own Worker; text i's ids end up in workers[thr[i]]->out.p[off[i]:end[i]].
 * flat_copy_all: the same number of threads then copy every text's ids, packed to uint16/uint32,
 * to its place in one array (the result's pages are faulted in by several threads too). */
#ifndef LMFORGE_BATCH_THREADS_H
#define LMFORGE_BATCH_THREADS_H

/* Texts are handed out one at a time from a shared counter, so long and short documents balance
 * across threads; text i's ids end up in workers[thr[i]]->out.p[off[i]:end[i]]. */
typedef struct {
    const Bpe *bpe;
    const Specials *sp;
    Scan *docs;
    Py_ssize_t n, next, failed; /* failed: lowest index of a text that could not be encoded */
    size_t *off, *end;
    uint16_t *thr;
    Worker **workers;
} Batch;

typedef struct {
    Batch *b;
    int t;
} BatchArg;

static void *batch_thread(void *varg)
{
    BatchArg *a = varg;
    Batch *b = a->b;
    Worker *w = b->workers[a->t];
    for (;;) {
        Py_ssize_t i = __atomic_fetch_add(&b->next, 1, __ATOMIC_RELAXED);
        if (i >= b->n)
            break;
        b->thr[i] = (uint16_t)a->t, b->off[i] = w->out.n;
        if (encode_str(b->bpe, w, &b->docs[i], b->sp) < 0) {
            Py_ssize_t f = __atomic_load_n(&b->failed, __ATOMIC_RELAXED);
            while (i < f && !__atomic_compare_exchange_n(&b->failed, &f, i, 0, __ATOMIC_RELAXED,
                                                         __ATOMIC_RELAXED))
                ;
            if (b->docs[i].err == ERR_NOMEM) /* give up; a surrogate only fails its own text */
                __atomic_store_n(&b->next, b->n, __ATOMIC_RELAXED);
        }
        b->end[i] = w->out.n;
    }
    return NULL;
}

/* Encode every text with `nthreads` threads (the caller's thread is one of them); call without
 * the GIL. Returns the number of threads actually used (fewer if one could not start). */
static int run_batch(Batch *b, int nthreads)
{
    pthread_t tid[MAX_THREADS];
    BatchArg args[MAX_THREADS];
    int started = 1;
    b->next = 0, b->failed = b->n;
    for (int t = 0; t < nthreads; t++)
        args[t].b = b, args[t].t = t;
    for (int t = 1; t < nthreads; t++, started++)
        if (pthread_create(&tid[t], NULL, batch_thread, &args[t]) != 0)
            break;
    batch_thread(&args[0]);
    for (int t = 1; t < started; t++)
        pthread_join(tid[t], NULL);
    return started;
}

/* ------------------------------------------------------------------ packing ids */

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

#endif /* LMFORGE_BATCH_THREADS_H */
