/* encode_worker.h: one encoding thread's state (cache, output) and the UTF-8 text -> ids loop.
 * Included once by _bpe_encode.c (static functions; not a separate translation unit).
 *
 * A Worker is used by one thread at a time (the Encoder's pool hands it out under the GIL). Its
 * pre-token -> ids cache: pieces of 2..16 bytes in a PieceCache (piece_cache.h) - its own, or
 * during a multi-threaded batch the one the batch's threads share - and longer pieces (up to
 * CACHE_MAX_PIECE bytes) in its own BytesMap (hash, tag, key compare).
 * Output ids go to the worker's growing buffer, reserved once per text segment (one id per byte
 * at most, plus slack for the fixed-size copies), so the inner loop never checks capacity. */
#ifndef LMFORGE_ENCODE_WORKER_H
#define LMFORGE_ENCODE_WORKER_H

#define PIPELINE 32 /* pieces whose cache slots are loaded ahead of their lookups */
#define KEEP_BUF_BYTES (64u << 20) /* larger scratch buffers are freed before pooling */

typedef struct {
    BytesMap *map;
    PieceCache own;
    PieceCache *cache; /* &own, or a batch's shared cache */
    IdBuf out;
    uint8_t *buf; /* UTF-8 of a non-ASCII str */
    size_t buf_cap;
} Worker;

static void worker_free(Worker *w)
{
    if (w) {
        bm_free(w->map);
        cache_free(&w->own);
        free(w->out.p), free(w->buf);
        free(w);
    }
}

static Worker *worker_new(void)
{
    Worker *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->cache = &w->own;
    if (!(w->map = bm_new()) || cache_init(&w->own) < 0) {
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

/* A pre-token and its cache key: for 2..8 bytes the bytes as a uint64 (`key`), for 9..16 the
 * first and last 8 bytes (`key`, `key2`), with the table index in `h`; for longer ones the
 * BytesMap hash (`h`). */
typedef struct {
    const uint8_t *s;
    size_t n;
    uint64_t key, key2, h;
} Piece;

/* Compute p's key and start loading its cache slot (the lookups are memory-latency bound, so a
 * batch of pieces is prepared first and their cache misses overlap). Bytes up to `limit` may be
 * read. */
INLINE void piece_prepare(const Worker *w, const PieceCache *c, Piece *p, const uint8_t *limit)
{
    size_t n = p->n;
    if (n <= 8) { /* single bytes too: one well-predicted branch instead of a three-way one */
        uint64_t key = 0;
        if (p->s + 8 <= limit && little_endian()) {
            memcpy(&key, p->s, 8);
            key &= ~0ull >> (64 - 8 * n);
        } else {
            memcpy(&key, p->s, n);
        }
        p->key = key, p->h = short_index(key, n, c->short_bits);
        __builtin_prefetch(&c->shortc[p->h & ~(size_t)(WAYS - 1)]);
    } else if (n <= 16) {
        memcpy(&p->key, p->s, 8), memcpy(&p->key2, p->s + n - 8, 8);
        p->h = mid_index(p->key, p->key2, n, c->mid_bits);
        __builtin_prefetch(&c->midc[p->h & ~(size_t)(WAYS - 1)]);
    } else if (n <= CACHE_MAX_PIECE) {
        p->h = hash_bytes(p->s, n);
        __builtin_prefetch(&w->map->slot[p->h & w->map->mask]);
    }
}

/* Second stage for long pieces: the slot is (likely) loaded, start loading its record. */
INLINE void piece_prefetch_record(const Worker *w, const Piece *p)
{
    if (p->n > 16 && p->n <= CACHE_MAX_PIECE) {
        uint64_t x = w->map->slot[p->h & w->map->mask];
        if (x && ((x ^ p->h) >> 32) == 0)
            __builtin_prefetch(w->map->arena + (uint32_t)x - 1);
    }
}

/* The ids of a piece longer than 16 bytes, from the BytesMap or BPE (then kept there). */
static Py_ssize_t encode_long_piece(const Bpe *m, Worker *w, const Piece *p, uint32_t *dst)
{
    const uint8_t *s = p->s;
    size_t n = p->n, at = 0;
    BytesMap *c = w->map;
    Py_ssize_t k;
    uint32_t *r = n <= CACHE_MAX_PIECE ? bm_find(c, s, n, p->h, &at) : NULL;
    if (r) {
        k = r[3];
        memcpy(dst, rec_vals(r), k * sizeof(uint32_t));
        return k;
    }
    if ((k = bpe(m, s, n, dst)) < 0 || n > CACHE_MAX_PIECE)
        return k;
    if (c->len > CACHE_MAX_WORDS) {
        bm_clear(c);
        bm_find(c, s, n, p->h, &at);
    }
    uint32_t *v = bm_insert(c, s, n, p->h, at, (uint32_t)k);
    if (!v)
        return -1;
    memcpy(v, dst, k * sizeof(uint32_t));
    return k;
}

/* The ids of a 2..16-byte piece from a set of WAYS cache entries (`set`, entries `size` bytes
 * apart), or BPE (then cached) into dst. Both entry types are laid out alike: `nkeys` uint64
 * key words (the piece's bytes: p->key, and p->key2 for medium pieces), the meta word, then
 * `cap` inline ids; `added` counts new entries for growth (private mode). One routine for both,
 * inlined with constant sizes, so each compiles as if written for its own type. */
INLINE Py_ssize_t encode_cached_piece(const Bpe *m, PieceCache *c, char *set, size_t size,
                                      int nkeys, size_t cap, size_t *added, const Piece *p,
                                      uint32_t *dst)
{
#define META_OF(e) ((uint32_t *)((e) + 8 * nkeys))
#define IDS_OF(e) ((uint32_t *)((e) + 8 * nkeys + 4))
#define KEY_OF(e, i) ((uint64_t *)(e) + (i))
    size_t n = p->n;
    const uint64_t key[2] = {p->key, nkeys > 1 ? p->key2 : 0};
    for (int way = 0; way < WAYS; way++) {
        char *e = set + way * size;
        uint32_t meta = meta_load(META_OF(e));
        int same = META_LEN(meta) == n;
        for (int i = 0; i < nkeys; i++)
            same = same && __atomic_load_n(KEY_OF(e, i), __ATOMIC_RELAXED) == key[i];
        if (!same)
            continue;
        size_t k = copy_entry_ids(c, dst, meta, IDS_OF(e), cap * sizeof(uint32_t));
        if (c->shared) {
            if (meta_changed(META_OF(e), meta))
                break; /* rewritten while copied */
            entry_hit(META_OF(e), meta);
        } else if (way) { /* move up one way: pieces that keep coming back stay near way 0 */
            char t[sizeof(MidEntry)];
            memcpy(t, e - size, size), memcpy(e - size, e, size), memcpy(e, t, size);
        }
        return (Py_ssize_t)k;
    }
    Py_ssize_t k = bpe(m, p->s, n, dst);
    if (k < 0)
        return k;
    char *v = set + free_way(c, META_OF(set), size) * size;
    uint32_t old = entry_claim(c, META_OF(v));
    if (old == META_BUSY)
        return k;
    int64_t meta = entry_fill(c, old, IDS_OF(v), cap, dst, n, (size_t)k);
    if (meta < 0)
        return -1;
    for (int i = 0; meta && i < nkeys; i++)
        __atomic_store_n(KEY_OF(v, i), key[i], __ATOMIC_RELAXED);
    entry_publish(META_OF(v), meta ? (uint32_t)meta : old);
    if (!c->shared) /* a shared cache does not grow: no count (nor a racy write) */
        (*added)++;
    return k;
#undef META_OF
#undef IDS_OF
#undef KEY_OF
}

/* The entry layouts encode_cached_piece relies on. */
_Static_assert(offsetof(ShortEntry, meta) == 8 && offsetof(ShortEntry, ids) == 12, "layout");
_Static_assert(offsetof(MidEntry, k1) == 8 && offsetof(MidEntry, meta) == 16 &&
                   offsetof(MidEntry, ids) == 20, "layout");

/* Append the ids of prepared piece p to w->out, which has room for p->n + OUT_SLACK ids. 0, or
 * -1 if out of memory. */
INLINE int encode_piece(const Bpe *m, Worker *w, PieceCache *c, const Piece *p)
{
    uint32_t *dst = w->out.p + w->out.n;
    Py_ssize_t k =
        p->n <= 8 ? encode_cached_piece(m, c, (char *)&c->shortc[p->h & ~(size_t)(WAYS - 1)],
                                        sizeof(ShortEntry), 1, SHORT_IDS, &c->short_added, p, dst)
        : p->n <= 16 ? encode_cached_piece(m, c, (char *)&c->midc[p->h & ~(size_t)(WAYS - 1)],
                                           sizeof(MidEntry), 2, MID_IDS, &c->mid_added, p, dst)
                     : encode_long_piece(m, w, p, dst);
    if (k < 0)
        return -1;
    w->out.n += (size_t)k;
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
        PieceIter it;
        piece_iter_init(&it, d, i, e, limit);
        PieceCache *c = w->cache;
        while (it.pos < e) {
            Piece q[PIPELINE];
            int k = 0;
            for (size_t t; k < PIPELINE && it.pos < e; k++, it.pos = t) {
                t = piece_iter_next(&it);
                q[k].s = d + it.pos, q[k].n = t - it.pos;
                piece_prepare(w, c, &q[k], limit);
            }
            for (int a = 0; a < k; a++)
                piece_prefetch_record(w, &q[a]);
            for (int a = 0; a < k; a++)
                if (encode_piece(m, w, c, &q[a]) < 0)
                    return -1;
            if (!c->shared) /* between batches: a batch's pieces index the old tables */
                cache_maybe_grow(c);
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

#endif /* LMFORGE_ENCODE_WORKER_H */
