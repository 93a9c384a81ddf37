/* piece_cache.h: the pre-token -> ids cache for short (2..8 bytes) and medium (9..16 bytes)
 * pieces, private to one thread or shared by the threads of one batch.
 * Included once by _bpe_encode.c (static functions; not a separate translation unit).
 *
 * - short pieces (most English words with their leading space): a 2-way set-associative table
 *   keyed by the piece's bytes as one little-endian uint64 plus its length; a hit is one
 *   multiply, one 32-byte entry and a fixed 5-id copy;
 * - medium pieces: the same with the first and the last 8 bytes as the key (overlapping loads
 *   cover every byte) and 64-byte entries of up to 11 ids.
 * The tables are caches, not stores: a collision replaces an entry and a piece that comes back
 * after losing its slot is BPE-encoded again, which for 16 bytes or fewer costs less than keeping
 * every piece in a map. Ids that do not fit an entry go to a spill buffer.
 *
 * Private (the default): one thread at a time; the tables start small and grow 4x with the text;
 * a hit moves its entry up a way. Shared (`shared` set, for the threads of one encode_batch call,
 * which would otherwise each BPE-encode the pieces they first meet, ~25% more BPE calls for two
 * threads): the owner sizes the tables and the spill buffer for the batch before the threads
 * start; then nothing grows, moves or is reordered (spilled ids are appended with an atomic add),
 * and writers and readers follow a per-entry sequence lock on the meta
 * word: a writer claims an entry by a compare-and-swap to BUSY (a length no piece has; if it
 * loses, the piece simply is not cached), writes the key and ids, and publishes the new meta
 * with its version advanced; a reader copies the key and ids, then re-reads the meta and takes
 * the hit only if it is unchanged, else BPE-encodes the piece itself. */
#ifndef LMFORGE_PIECE_CACHE_H
#define LMFORGE_PIECE_CACHE_H

/* The tables start small (a short text pays for little memory) and grow 4x, keeping their
 * entries, each time as many pieces were added as they have entries, up to: */
#ifndef SHORT_BITS
#define SHORT_BITS 18 /* 262144 entries x 32 bytes = 8 MiB */
#endif
#define SHORT_BITS_MIN 12
#define SHORT_IDS 5
#ifndef MID_BITS
#define MID_BITS 17 /* 131072 entries x 64 bytes = 8 MiB */
#endif
#define MID_BITS_MIN 11
#define MID_IDS 11
#ifndef WAYS
#define WAYS 2 /* entries per set */
#endif
#define OUT_SLACK 16 /* >= MID_IDS: a hit copies a whole entry's ids */
/* A shared batch pre-sizes its tables to about one entry per this many bytes of text: */
#define SHORT_BYTES_PER_ENTRY 200
#define MID_BYTES_PER_ENTRY 250
#define SPILL_BYTES_PER_ID 16 /* and room for one spilled id per this many bytes */

/* An entry's meta word: 0 = empty, else the piece's length, its id count, a version advanced by
 * every write (so a reader sees any write that overlapped its copy) and two flags. */
#define META_LEN(m) ((m) & 0xFFu)
#define META_COUNT(m) (((m) >> 8) & 0xFFu) /* ids <= bytes <= 16 */
#define META_VERSION 0x1FFF0000u
#define META_VERSION_ONE 0x10000u
#define META_REF 0x20000000u     /* shared mode: hit since it was written or last spared */
#define META_BUSY 0x40000000u    /* being written (length 0: matches no piece) */
#define META_SPILLED 0x80000000u /* the ids are in PieceCache.spill at offset ids[0] */

typedef struct {
    uint64_t key;  /* the piece's bytes, little-endian, zero-padded */
    uint32_t meta;
    uint32_t ids[SHORT_IDS];
} ShortEntry;

typedef struct {
    uint64_t k0, k1; /* the piece's first and last 8 bytes */
    uint32_t meta;
    uint32_t ids[MID_IDS];
} MidEntry;

typedef struct {
    ShortEntry *shortc;
    MidEntry *midc;
    int short_bits, mid_bits;      /* the tables have 2**bits entries */
    size_t short_added, mid_added; /* pieces added since the table last grew (private mode) */
    IdBuf spill; /* ids of cached pieces that have more than an entry holds */
    int shared;  /* used by several threads at once: see the top of this file */
} PieceCache;

/* A zeroed table of 2**bits entries of `size` bytes (zeroed by writing: see zalloc_written). */
static void *table_new(int bits, size_t size)
{
    return zalloc_written(size << bits);
}

static void cache_free(PieceCache *c)
{
    free(c->shortc), free(c->midc), free(c->spill.p);
    memset(c, 0, sizeof *c);
}

/* Empty tables of the smallest size; 0, or -1 if out of memory. */
static int cache_init(PieceCache *c)
{
    memset(c, 0, sizeof *c);
    c->short_bits = SHORT_BITS < SHORT_BITS_MIN ? SHORT_BITS : SHORT_BITS_MIN;
    c->mid_bits = MID_BITS < MID_BITS_MIN ? MID_BITS : MID_BITS_MIN;
    if (!(c->shortc = table_new(c->short_bits, sizeof(ShortEntry))) ||
        !(c->midc = table_new(c->mid_bits, sizeof(MidEntry)))) {
        cache_free(c);
        return -1;
    }
    return 0;
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
    return short_index(x->key, META_LEN(x->meta), bits);
}

static size_t mid_entry_index(const void *e, int bits)
{
    const MidEntry *x = e;
    return mid_index(x->k0, x->k1, META_LEN(x->meta), bits);
}

/* A table of 2**bits entries of `size` bytes (their meta word at `meta_at`) moved into one of
 * 2**new_bits, hot entries (in the low ways) first; NULL if memory is short (the old one then
 * simply stays). `index`: an entry's index in a table of 2**bits entries. */
static void *grow_table(const void *old, int bits, int new_bits, size_t size, size_t meta_at,
                        size_t (*index)(const void *, int))
{
    char *t = table_new(new_bits, size);
    for (size_t i = 0; t && i < (size_t)1 << bits; i++) {
        const char *e = (const char *)old + i * size;
        uint32_t meta;
        memcpy(&meta, e + meta_at, sizeof meta);
        char *set = t + (index(e, new_bits) & ~(size_t)(WAYS - 1)) * size;
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

/* Grow the tables to 2**short_bits and 2**mid_bits entries (never shrinking them); while no
 * other thread uses them. */
static void cache_grow_to(PieceCache *c, int short_bits, int mid_bits)
{
    if (short_bits > c->short_bits) {
        ShortEntry *t = grow_table(c->shortc, c->short_bits, short_bits, sizeof *t,
                                   offsetof(ShortEntry, meta), short_entry_index);
        if (t)
            free(c->shortc), c->shortc = t, c->short_bits = short_bits, c->short_added = 0;
    }
    if (mid_bits > c->mid_bits) {
        MidEntry *t = grow_table(c->midc, c->mid_bits, mid_bits, sizeof *t,
                                 offsetof(MidEntry, meta), mid_entry_index);
        if (t)
            free(c->midc), c->midc = t, c->mid_bits = mid_bits, c->mid_added = 0;
    }
}

/* Private mode: grow the tables that have taken as many new pieces as they have entries. */
static void cache_maybe_grow(PieceCache *c)
{
    int sb = c->short_bits, mb = c->mid_bits;
    if (c->short_added > (size_t)1 << sb && sb + 2 <= SHORT_BITS)
        sb += 2;
    if (c->mid_added > (size_t)1 << mb && mb + 2 <= MID_BITS)
        mb += 2;
    if (sb != c->short_bits || mb != c->mid_bits)
        cache_grow_to(c, sb, mb);
    c->short_added = sb != c->short_bits ? 0 : c->short_added; /* growth failed: try later */
    c->mid_added = mb != c->mid_bits ? 0 : c->mid_added;
}

/* Forget every cached piece (its spill buffer is full). */
static void cache_clear(PieceCache *c)
{
    memset(c->shortc, 0, ((size_t)1 << c->short_bits) * sizeof(ShortEntry));
    memset(c->midc, 0, ((size_t)1 << c->mid_bits) * sizeof(MidEntry));
    c->spill.n = 0;
}

/* The bits (on the growth steps from `min`, at most `max`) of a table of about bytes / per
 * entries. */
static int presize_bits(size_t bytes, size_t per, int min, int max)
{
    int bits = min;
    while (bits + 2 <= max && ((size_t)1 << bits) < bytes / per)
        bits += 2;
    return bits;
}

/* Make a cache shared for a batch of `bytes` of text: tables as large as a private cache would
 * grow to, and room in the spill buffer (its untouched pages cost nothing). */
static void cache_share(PieceCache *c, size_t bytes)
{
    size_t room = bytes / SPILL_BYTES_PER_ID < CACHE_MAX_WORDS ? bytes / SPILL_BYTES_PER_ID
                                                               : CACHE_MAX_WORDS;
    if (c->spill.n + room > CACHE_MAX_WORDS)
        cache_clear(c);
    cache_grow_to(c, presize_bits(bytes, SHORT_BYTES_PER_ENTRY, c->short_bits, SHORT_BITS),
                  presize_bits(bytes, MID_BYTES_PER_ENTRY, c->mid_bits, MID_BITS));
    reserve((void **)&c->spill.p, &c->spill.cap, c->spill.n + room, sizeof(uint32_t));
    c->shared = 1; /* the spill buffer may have less room if memory is short: not an error */
}

/* Back to private after the batch's threads are done. */
static void cache_unshare(PieceCache *c)
{
    c->shared = 0;
    if (c->spill.n > c->spill.cap) /* appends that did not fit were not kept */
        c->spill.n = c->spill.cap;
}

/* ------------------------------------------------------------------ reading an entry */

/* An entry's meta, for a lookup (acquire: the key and ids read after it are at least as new). */
INLINE uint32_t meta_load(const uint32_t *meta)
{
    return __atomic_load_n(meta, __ATOMIC_ACQUIRE);
}

/* Shared mode, after copying an entry read with meta m: did a write overlap the copy? (The key
 * and ids were read without atomics, as in any sequence lock; they are used only if not.) */
INLINE int meta_changed(const uint32_t *meta, uint32_t m)
{
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return ((__atomic_load_n(meta, __ATOMIC_RELAXED) ^ m) & ~META_REF) != 0; /* a flag: same data */
}

/* Copy an entry's ids (inline, or spilled) to dst; `size`: bytes of its inline ids (all are
 * copied: dst has OUT_SLACK room). Returns the count. */
INLINE size_t copy_entry_ids(const PieceCache *c, uint32_t *dst, uint32_t meta,
                             const uint32_t *ids, size_t size)
{
    size_t k = META_COUNT(meta);
    if (meta & META_SPILLED)
        memcpy(dst, c->spill.p + ids[0], k * sizeof(uint32_t));
    else
        memcpy(dst, ids, size);
    return k;
}

/* ------------------------------------------------------------------ writing an entry */

/* The way a new piece goes to: the first empty one, else the last (the least proven one). In
 * private mode a hit moves an entry up a way, so the last is the least recently hit. A shared
 * cache is not reordered on hits (that would be a write per hit); its hits set META_REF instead
 * (once) and a new piece replaces the first way not hit since it was written; when every way
 * was, all are spared once more (their flags cleared: second chance) and the last is replaced.
 * `meta0`: way 0's meta, entries `size` apart. */
INLINE int free_way(const PieceCache *c, uint32_t *meta0, size_t size)
{
#define WAY_META(way) ((uint32_t *)((char *)meta0 + (way) * size))
    for (int way = 0; way < WAYS - 1; way++)
        if (!__atomic_load_n(WAY_META(way), __ATOMIC_RELAXED))
            return way;
    if (!c->shared)
        return WAYS - 1;
    if (!__atomic_load_n(WAY_META(WAYS - 1), __ATOMIC_RELAXED))
        return WAYS - 1;
    for (int way = 0; way < WAYS; way++)
        if (!(__atomic_load_n(WAY_META(way), __ATOMIC_RELAXED) & META_REF))
            return way;
    for (int way = 0; way < WAYS; way++)
        __atomic_fetch_and(WAY_META(way), ~META_REF, __ATOMIC_RELAXED);
    return WAYS - 1;
#undef WAY_META
}

/* Shared mode, a hit on an entry with meta m: flag it as hit (free_way spares it). */
INLINE void entry_hit(uint32_t *meta, uint32_t m)
{
    if (!(m & META_REF))
        __atomic_fetch_or(meta, META_REF, __ATOMIC_RELAXED);
}

/* Take an entry for writing. Returns its old meta, or META_BUSY if another thread is writing
 * it (shared mode; then leave it alone). */
INLINE uint32_t entry_claim(const PieceCache *c, uint32_t *meta)
{
    uint32_t old = __atomic_load_n(meta, __ATOMIC_RELAXED);
    if (!c->shared)
        return old & ~META_BUSY;
    if ((old & META_BUSY) ||
        !__atomic_compare_exchange_n(meta, &old, META_BUSY | (old & META_VERSION), 0,
                                     __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) /* after its writer */
        return META_BUSY;
    __atomic_thread_fence(__ATOMIC_RELEASE); /* BUSY is visible before any key or id */
    return old;
}

/* Store the k ids of an n-byte piece in a claimed entry (old meta `old`): inline if they fit in
 * `cap`, else in the spill buffer (a shared cache only appends to the room reserved before the
 * batch). Returns the meta to publish once the key is written, 0 if the ids cannot be kept (the
 * shared spill buffer is full: publish `old` back), or -1 if out of memory. */
static int64_t entry_fill(PieceCache *c, uint32_t old, uint32_t *ids, size_t cap,
                          const uint32_t *src, size_t n, size_t k)
{
    uint32_t meta = (uint32_t)(n | k << 8) | ((old + META_VERSION_ONE) & META_VERSION);
    if (k <= cap) {
        memcpy(ids, src, k * sizeof(uint32_t));
        return meta;
    }
    size_t at;
    if (c->shared) {
        at = __atomic_fetch_add(&c->spill.n, k, __ATOMIC_RELAXED);
        if (at + k > c->spill.cap)
            return 0;
    } else {
        if (c->spill.n + k > CACHE_MAX_WORDS)
            cache_clear(c); /* entries only, so the one being filled stays valid */
        if (reserve((void **)&c->spill.p, &c->spill.cap, c->spill.n + k, sizeof(uint32_t)) < 0)
            return -1;
        at = c->spill.n, c->spill.n += k;
    }
    memcpy(c->spill.p + at, src, k * sizeof(uint32_t));
    ids[0] = (uint32_t)at;
    return meta | META_SPILLED;
}

/* Make a filled entry visible (release: after its key and ids). */
INLINE void entry_publish(uint32_t *meta, uint32_t value)
{
    __atomic_store_n(meta, value, __ATOMIC_RELEASE);
}

#endif /* LMFORGE_PIECE_CACHE_H */
