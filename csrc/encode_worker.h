/* encode_worker.h: one encoding thread's state (caches, output) and the UTF-8 text -> ids loop.
 * Included once by _bpe_encode.c (static functions; not a separate translation unit).
 *
 * A Worker is used by one thread at a time (the Encoder's pool hands it out under the GIL), so
 * nothing here takes a lock. Three caches of pre-token -> ids, all per worker:
 * - short pieces (2..8 bytes, most English words with their leading space): a direct-mapped
 *   table keyed by the piece's bytes as one little-endian uint64 plus its length; a hit is one
 *   multiply, one 32-byte entry and a fixed 5-id copy;
 * - medium pieces (9..16 bytes): the same with the first and the last 8 bytes as the key
 *   (overlapping loads cover every byte) and 64-byte entries of up to 11 ids;
 * - longer pieces (up to CACHE_MAX_PIECE bytes): the BytesMap (hash, tag, key compare).
 * The direct-mapped tables are caches, not stores: a collision replaces the entry and a piece
 * that comes back after losing its slot (or whose ids do not fit an entry) is BPE-encoded again,
 * which for 16 bytes or fewer costs less than keeping every piece in a map.
 * Output ids go to the worker's growing buffer, reserved once per text segment (one id per byte
 * at most, plus slack for the fixed-size copies), so the inner loop never checks capacity. */
#ifndef LMFORGE_ENCODE_WORKER_H
#define LMFORGE_ENCODE_WORKER_H

/* The short and medium caches start small (a short text pays for little memory) and grow 4x,
 * keeping their entries, each time as many pieces were added as they have entries, up to: */
#ifndef SHORT_BITS
#define SHORT_BITS 18 /* 262144 entries x 32 bytes = 8 MiB per worker */
#endif
#define SHORT_BITS_MIN 12
#define SHORT_IDS 5
#ifndef MID_BITS
#define MID_BITS 17 /* 131072 entries x 64 bytes = 8 MiB per worker */
#endif
#define MID_BITS_MIN 11
#define MID_IDS 11
#ifndef WAYS
#define WAYS 2 /* entries per set of the short and medium caches */
#endif
#define OUT_SLACK 16 /* >= MID_IDS: a hit copies a whole entry's ids */
#define PIPELINE 32 /* pieces whose cache slots are loaded ahead of their lookups */
#define KEEP_BUF_BYTES (64u << 20) /* larger scratch buffers are freed before pooling */

typedef struct {
    uint64_t key;  /* the piece's bytes, little-endian, zero-padded */
    uint32_t meta; /* piece length | id count << 8; 0 = empty */
    uint32_t ids[SHORT_IDS];
} ShortEntry;

typedef struct {
    uint64_t k0, k1; /* the piece's first and last 8 bytes */
    uint32_t meta;   /* piece length | id count << 8; 0 = empty */
    uint32_t ids[MID_IDS];
} MidEntry;


#define SPILLED 0x80000000u /* meta flag: the ids are in Worker.spill at offset ids[0] */

typedef struct {
    BytesMap *map;
    ShortEntry *shortc;
    MidEntry *midc;
    int short_bits, mid_bits;    /* the tables have 2**bits entries */
    size_t short_added, mid_added; /* pieces added since the table last grew */
    IdBuf spill; /* ids of cached pieces that have more than an entry holds */
    IdBuf out;
    uint8_t *buf; /* UTF-8 of a non-ASCII str */
    size_t buf_cap;
} Worker;

static void worker_free(Worker *w)
{
    if (w) {
        bm_free(w->map);
        free(w->shortc), free(w->midc), free(w->spill.p), free(w->out.p), free(w->buf);
        free(w);
    }
}

/* A zeroed table of 2**bits entries of `size` bytes (zeroed by writing: see zalloc_written). */
static void *table_new(int bits, size_t size)
{
    return zalloc_written(size << bits);
}

static Worker *worker_new(void)
{
    Worker *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->short_bits = SHORT_BITS < SHORT_BITS_MIN ? SHORT_BITS : SHORT_BITS_MIN;
    w->mid_bits = MID_BITS < MID_BITS_MIN ? MID_BITS : MID_BITS_MIN;
    if (!(w->map = bm_new()) || !(w->shortc = table_new(w->short_bits, sizeof(ShortEntry))) ||
        !(w->midc = table_new(w->mid_bits, sizeof(MidEntry)))) {
        worker_free(w);
        return NULL;
    }
    return w;
}

INLINE size_t short_index(uint64_t key, size_t n, int bits)
{
    return (size_t)(((key + n) * 0x9E3779B97F4A7C15ull) >> (64 - bits));
}

INLINE size_t mid_index(uint64_t k0, uint64_t k1, size_t n, int bits)
{
    uint64_t x = (k0 * 0x9E3779B97F4A7C15ull) ^ (k1 + n);
    return (size_t)((x * 0xBF58476D1CE4E5B9ull) >> (64 - bits));
}

static size_t short_entry_index(const void *e, int bits)
{
    const ShortEntry *x = e;
    return short_index(x->key, x->meta & 0xFF, bits);
}

static size_t mid_entry_index(const void *e, int bits)
{
    const MidEntry *x = e;
    return mid_index(x->k0, x->k1, x->meta & 0xFF, bits);
}

/* A cache of 2**bits entries of `size` bytes (their meta word at `meta_at`, 0 = empty) grown 4x
 * with its entries, hot ones (in the low ways) first; NULL if memory is short (the old one then
 * simply stays). `index`: an entry's index in a table of 2**bits entries. */
static void *grow_table(const void *old, int bits, size_t size, size_t meta_at,
                        size_t (*index)(const void *, int))
{
    char *t = table_new(bits + 2, size);
    for (size_t i = 0; t && i < (size_t)1 << bits; i++) {
        const char *e = (const char *)old + i * size;
        uint32_t meta;
        memcpy(&meta, e + meta_at, sizeof meta);
        char *set = t + (index(e, bits + 2) & ~(size_t)(WAYS - 1)) * size;
        for (int way = 0; meta && way < WAYS; way++) {
            memcpy(&meta, set + way * size + meta_at, sizeof meta);
            if (!meta) {
                memcpy(set + way * size, e, size);
                break;
            }
        }
    }
    return t;
}

/* Grow the caches that have taken as many new pieces as they have entries. */
static void maybe_grow_caches(Worker *w)
{
    if (w->short_added > (size_t)1 << w->short_bits && w->short_bits + 2 <= SHORT_BITS) {
        ShortEntry *t = grow_table(w->shortc, w->short_bits, sizeof *t,
                                   offsetof(ShortEntry, meta), short_entry_index);
        w->short_added = 0;
        if (t)
            free(w->shortc), w->shortc = t, w->short_bits += 2;
    }
    if (w->mid_added > (size_t)1 << w->mid_bits && w->mid_bits + 2 <= MID_BITS) {
        MidEntry *t = grow_table(w->midc, w->mid_bits, sizeof *t, offsetof(MidEntry, meta),
                                 mid_entry_index);
        w->mid_added = 0;
        if (t)
            free(w->midc), w->midc = t, w->mid_bits += 2;
    }
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
INLINE void piece_prepare(const Worker *w, Piece *p, const uint8_t *limit)
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
        p->key = key, p->h = short_index(key, n, w->short_bits);
        __builtin_prefetch(&w->shortc[p->h & ~(size_t)(WAYS - 1)]);
    } else if (n <= 16) {
        memcpy(&p->key, p->s, 8), memcpy(&p->key2, p->s + n - 8, 8);
        p->h = mid_index(p->key, p->key2, n, w->mid_bits);
        __builtin_prefetch(&w->midc[p->h & ~(size_t)(WAYS - 1)]);
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

/* Append a cache entry's ids (inline, or spilled) at dst; `size`: bytes of its inline ids. */
INLINE void copy_entry_ids(Worker *w, uint32_t *dst, uint32_t meta, const uint32_t *ids,
                           size_t size)
{
    size_t k = (meta >> 8) & 0xFFFF;
    if (meta & SPILLED)
        memcpy(dst, w->spill.p + ids[0], k * sizeof(uint32_t));
    else
        memcpy(dst, ids, size);
    w->out.n += k;
}

/* The way a new piece goes to: the first empty one, else the last (new pieces replace the
 * least proven one; a hit moves an entry up a way). `meta0`: way 0's meta, entries `size` apart. */
INLINE int free_way(const uint32_t *meta0, size_t size)
{
    for (int way = 0; way < WAYS - 1; way++)
        if (!*(const uint32_t *)((const char *)meta0 + way * size))
            return way;
    return WAYS - 1;
}

/* Forget every cached piece (the spill buffer is full). */
static void worker_clear_caches(Worker *w)
{
    memset(w->shortc, 0, ((size_t)1 << w->short_bits) * sizeof(ShortEntry));
    memset(w->midc, 0, ((size_t)1 << w->mid_bits) * sizeof(MidEntry));
    w->spill.n = 0;
}

/* Store the k ids of an n-byte piece in a cache entry: inline if they fit in `cap`, else in the
 * spill buffer. The caller sets the entry's key afterwards. 0, or -1 if out of memory. */
static int fill_entry(Worker *w, uint32_t *meta, uint32_t *ids, size_t cap, const uint32_t *src,
                      size_t n, size_t k)
{
    *meta = (uint32_t)(n | k << 8);
    if (k <= cap) {
        memcpy(ids, src, k * sizeof(uint32_t));
        return 0;
    }
    if (w->spill.n + k > CACHE_MAX_WORDS) {
        worker_clear_caches(w); /* entries only, so the one being filled stays valid */
        *meta = (uint32_t)(n | k << 8);
    }
    if (reserve((void **)&w->spill.p, &w->spill.cap, w->spill.n + k, sizeof(uint32_t)) < 0)
        return -1;
    memcpy(w->spill.p + w->spill.n, src, k * sizeof(uint32_t));
    ids[0] = (uint32_t)w->spill.n, *meta |= SPILLED;
    w->spill.n += k;
    return 0;
}

/* Append the ids of prepared piece p to w->out, which has room for p->n + OUT_SLACK ids. 0, or
 * -1 if out of memory. */
INLINE int encode_piece(const Bpe *m, Worker *w, const Piece *p)
{
    const uint8_t *s = p->s;
    size_t n = p->n;
    uint32_t *dst = w->out.p + w->out.n;
    Py_ssize_t k;
    if (n <= 8) {
        ShortEntry *e = &w->shortc[p->h & ~(size_t)(WAYS - 1)]; /* a set of WAYS entries */
        for (int way = 0; way < WAYS; way++)
            if (e[way].key == p->key && (e[way].meta & 0xFF) == n) {
                copy_entry_ids(w, dst, e[way].meta, e[way].ids, sizeof e->ids);
                if (way) { /* move up one way: pieces that keep coming back stay near way 0 */
                    ShortEntry t = e[way - 1];
                    e[way - 1] = e[way], e[way] = t;
                }
                return 0;
            }
        if ((k = bpe(m, s, n, dst)) < 0)
            return -1;
        ShortEntry *v = e + free_way(&e[0].meta, sizeof *e);
        if (fill_entry(w, &v->meta, v->ids, SHORT_IDS, dst, n, k) < 0)
            return -1;
        v->key = p->key, w->short_added++;
    } else if (n <= 16) {
        MidEntry *e = &w->midc[p->h & ~(size_t)(WAYS - 1)];
        for (int way = 0; way < WAYS; way++)
            if (e[way].k0 == p->key && e[way].k1 == p->key2 && (e[way].meta & 0xFF) == n) {
                copy_entry_ids(w, dst, e[way].meta, e[way].ids, sizeof e->ids);
                if (way) {
                    MidEntry t = e[way - 1];
                    e[way - 1] = e[way], e[way] = t;
                }
                return 0;
            }
        if ((k = bpe(m, s, n, dst)) < 0)
            return -1;
        MidEntry *v = e + free_way(&e[0].meta, sizeof *e);
        if (fill_entry(w, &v->meta, v->ids, MID_IDS, dst, n, k) < 0)
            return -1;
        v->k0 = p->key, v->k1 = p->key2, w->mid_added++;
    } else if ((k = encode_long_piece(m, w, p, dst)) < 0) {
        return -1;
    }
    w->out.n += k;
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
        while (it.pos < e) {
            Piece q[PIPELINE];
            int k = 0;
            for (size_t t; k < PIPELINE && it.pos < e; k++, it.pos = t) {
                t = piece_iter_next(&it);
                q[k].s = d + it.pos, q[k].n = t - it.pos;
                piece_prepare(w, &q[k], limit);
            }
            for (int a = 0; a < k; a++)
                piece_prefetch_record(w, &q[a]);
            for (int a = 0; a < k; a++)
                if (encode_piece(m, w, &q[a]) < 0)
                    return -1;
            maybe_grow_caches(w); /* between batches: a batch's pieces index the old tables */
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
