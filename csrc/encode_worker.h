/* encode_worker.h: one encoding thread's state (caches, output) and the UTF-8 text -> ids loop.
 * Included once by _bpe_encode.c (static functions; not a separate translation unit).
 *
 * A Worker is used by one thread at a time (the Encoder's pool hands it out under the GIL), so
 * nothing here takes a lock. Two caches of pre-token -> ids, both per worker:
 * - short pieces (2..8 bytes, most English words with their leading space): a direct-mapped
 *   table keyed by the piece's bytes as one little-endian uint64 plus its length; a hit is one
 *   multiply, one 32-byte entry and a fixed 5-id copy; a collision simply replaces the entry;
 * - longer pieces (up to CACHE_MAX_PIECE bytes): the BytesMap (hash, tag, key compare).
 * Output ids go to the worker's growing buffer, reserved once per text segment (one id per byte
 * at most, plus slack for the fixed-size copy), so the inner loop never checks capacity. */
#ifndef LMFORGE_ENCODE_WORKER_H
#define LMFORGE_ENCODE_WORKER_H

#ifndef SHORT_BITS
#define SHORT_BITS 18 /* 262144 entries x 32 bytes = 8 MiB per worker (lazily paged in) */
#endif
#define SHORT_IDS 5
#define OUT_SLACK 8
#define PIPELINE 16 /* pieces whose cache slots are loaded ahead of their lookups */
#define KEEP_BUF_BYTES (64u << 20) /* larger scratch buffers are freed before pooling */

typedef struct {
    uint64_t key;  /* the piece's bytes, little-endian, zero-padded */
    uint32_t meta; /* piece length | id count << 8; 0 = empty */
    uint32_t ids[SHORT_IDS];
} ShortEntry;

typedef struct {
    uint32_t byte_id[256];
    PairMap pairs;
} Bpe;

typedef struct {
    BytesMap *map;
    ShortEntry *shortc;
    IdBuf out;
    uint8_t *buf; /* UTF-8 of a non-ASCII str */
    size_t buf_cap;
} Worker;

static void worker_free(Worker *w)
{
    if (w) {
        bm_free(w->map);
        free(w->shortc), free(w->out.p), free(w->buf);
        free(w);
    }
}

static Worker *worker_new(void)
{
    Worker *w = calloc(1, sizeof *w);
    if (w && (!(w->map = bm_new()) ||
              !(w->shortc = calloc((size_t)1 << SHORT_BITS, sizeof(ShortEntry))))) {
        worker_free(w);
        return NULL;
    }
    return w;
}

/* Ready for the pool: output emptied, oversized scratch released. */
static void worker_trim(Worker *w)
{
    w->out.n = 0;
    if (w->out.cap * sizeof(uint32_t) > KEEP_BUF_BYTES)
        free(w->out.p), w->out.p = NULL, w->out.cap = 0;
    if (w->buf_cap > KEEP_BUF_BYTES)
        free(w->buf), w->buf = NULL, w->buf_cap = 0;
}

static int little_endian(void)
{
    const uint16_t one = 1;
    return *(const uint8_t *)&one;
}

/* A pre-token and its cache key: for 2..8 bytes the bytes as a uint64 (`key`) and the short
 * table index (`h`), for longer ones the BytesMap hash (`h`). */
typedef struct {
    const uint8_t *s;
    size_t n;
    uint64_t key, h;
} Piece;

/* Compute p's key and start loading its cache slot (the lookups are memory-latency bound, so a
 * batch of pieces is prepared first and their cache misses overlap). Bytes up to `limit` may be
 * read. */
INLINE void piece_prepare(const Worker *w, Piece *p, const uint8_t *limit)
{
    size_t n = p->n;
    if (n == 1)
        return;
    if (n <= 8) {
        uint64_t key = 0;
        if (p->s + 8 <= limit && little_endian()) {
            memcpy(&key, p->s, 8);
            key &= ~0ull >> (64 - 8 * n);
        } else {
            memcpy(&key, p->s, n);
        }
        p->key = key, p->h = ((key + n) * 0x9E3779B97F4A7C15ull) >> (64 - SHORT_BITS);
        __builtin_prefetch(&w->shortc[p->h]);
    } else if (n <= CACHE_MAX_PIECE) {
        p->h = hash_bytes(p->s, n);
        __builtin_prefetch(&w->map->slot[p->h & w->map->mask]);
    }
}

/* Second stage for long pieces: the slot is (likely) loaded, start loading its record. */
INLINE void piece_prefetch_record(const Worker *w, const Piece *p)
{
    if (p->n > 8 && p->n <= CACHE_MAX_PIECE) {
        uint64_t x = w->map->slot[p->h & w->map->mask];
        if (x && ((x ^ p->h) >> 32) == 0)
            __builtin_prefetch(w->map->arena + (uint32_t)x - 1);
    }
}

/* Append the ids of prepared piece p to w->out, which has room for p->n + OUT_SLACK ids. 0, or
 * -1 if out of memory. */
INLINE int encode_piece(const Bpe *m, Worker *w, const Piece *p)
{
    const uint8_t *s = p->s;
    size_t n = p->n;
    uint32_t *dst = w->out.p + w->out.n;
    if (n == 1) {
        *dst = m->byte_id[*s];
        w->out.n++;
        return 0;
    }
    ShortEntry *e = NULL;
    uint64_t h = p->h;
    if (n <= 8) {
        e = &w->shortc[p->h];
        if (e->key == p->key && (e->meta & 0xFF) == n) {
            memcpy(dst, e->ids, sizeof e->ids);
            w->out.n += e->meta >> 8;
            return 0;
        }
        h = hash_bytes(s, n); /* a miss (or a collision): the BytesMap keeps every piece */
    }
    BytesMap *c = w->map;
    size_t at = 0;
    Py_ssize_t k;
    uint32_t *r = n <= CACHE_MAX_PIECE ? bm_find(c, s, n, h, &at) : NULL;
    if (r) {
        k = r[3];
        memcpy(dst, rec_vals(r), k * sizeof(uint32_t));
    } else {
        if ((k = bpe(&m->pairs, m->byte_id, s, n, dst)) < 0)
            return -1;
        if (n <= CACHE_MAX_PIECE) {
            if (c->len > CACHE_MAX_WORDS) {
                bm_clear(c);
                bm_find(c, s, n, h, &at);
            }
            uint32_t *v = bm_insert(c, s, n, h, at, (uint32_t)k);
            if (!v)
                return -1;
            memcpy(v, dst, k * sizeof(uint32_t));
        }
    }
    w->out.n += k;
    if (e && k <= SHORT_IDS) {
        e->key = p->key, e->meta = (uint32_t)(n | k << 8);
        memcpy(e->ids, dst, k * sizeof(uint32_t));
    }
    return 0;
}

/* Append the ids of valid UTF-8 d[0:n] to w->out: each special of sp (may be NULL) becomes its
 * id, the text between specials is pre-tokenized and BPE-encoded. 0, or -1 if out of memory. */
static int encode_utf8(const Bpe *m, Worker *w, const uint8_t *d, size_t n, const Specials *sp)
{
    const uint8_t *limit = d + n;
    for (size_t i = 0; i < n;) {
        Py_ssize_t k = 0;
        size_t e = find_special(sp, d, i, n, &k);
        if (reserve((void **)&w->out.p, &w->out.cap, w->out.n + (e - i) + 1 + OUT_SLACK,
                    sizeof(uint32_t)) < 0)
            return -1;
        for (size_t j = i; j < e;) {
            Piece q[PIPELINE];
            int k = 0;
            for (size_t t; k < PIPELINE && j < e; k++, j = t) {
                t = u8_next_end(d, j, e);
                q[k].s = d + j, q[k].n = t - j;
                piece_prepare(w, &q[k], limit);
            }
            for (int a = 0; a < k; a++)
                piece_prefetch_record(w, &q[a]);
            for (int a = 0; a < k; a++)
                if (encode_piece(m, w, &q[a]) < 0)
                    return -1;
        }
        if (e == n)
            break;
        w->out.p[w->out.n++] = sp->id[k];
        i = e + sp->len[k];
    }
    return 0;
}

/* encode_utf8 of a str (Scan from scan_init): ASCII data is already UTF-8; other strs are
 * converted into w->buf first. -1 with sc->err set (ERR_NOMEM, or ERR_SURROGATE and sc->bad). */
static int encode_str(const Bpe *m, Worker *w, Scan *sc, const Specials *sp)
{
    if (sc->ascii)
        return encode_utf8(m, w, sc->data, (size_t)sc->n, sp) < 0 ? (sc->err = ERR_NOMEM, -1)
                                                                 : 0;
    size_t need = (size_t)sc->n * (sc->kind == 1 ? 2 : sc->kind == 2 ? 3 : 4) + OUT_SLACK;
    if (need > w->buf_cap) {
        uint8_t *nb = realloc(w->buf, need);
        if (!nb)
            return sc->err = ERR_NOMEM, -1;
        w->buf = nb, w->buf_cap = need;
    }
    Py_ssize_t len;
    switch (sc->kind) {
    case PyUnicode_1BYTE_KIND: len = to_utf8(1, sc->data, 0, sc->n, w->buf); break;
    case PyUnicode_2BYTE_KIND: len = to_utf8(2, sc->data, 0, sc->n, w->buf); break;
    default: len = to_utf8(4, sc->data, 0, sc->n, w->buf);
    }
    if (len < 0)
        return sc->err = ERR_SURROGATE, sc->bad = -1 - len, -1;
    return encode_utf8(m, w, w->buf, (size_t)len, sp) < 0 ? (sc->err = ERR_NOMEM, -1) : 0;
}

/* ------------------------------------------------------------ many texts over many threads */

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

#endif /* LMFORGE_ENCODE_WORKER_H */
