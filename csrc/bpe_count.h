/* bpe_count.h: count the GPT-2 pre-tokens of UTF-8 files with threads (for _bpe_train.c).
 *
 * The trainer only needs {pre-token bytes: count}. Python cuts the files into chunks at safe
 * boundaries (pretokenize.find_chunk_boundaries: no pre-token and no special token straddles a
 * cut); here T threads take chunks from a shared counter, pread each into their own buffer, split
 * it on the special tokens (dropped), pre-tokenize the pieces and count the pre-tokens in their
 * own BytesMaps, one per partition of the key hashes; at the end thread p sums partition p of
 * every worker (in parallel, no locks), and the T summed tables, disjoint, go to the merge loop.
 * Nothing touches a Python object, so the threads run without the GIL; memory is T chunk
 * buffers plus the tables, whatever the file size.
 *
 * The scanner is pretok_scan.h's GPT-2 pattern, read from UTF-8 bytes instead of a str, with
 * strict UTF-8 validation (the same bytes Python's .decode("utf-8") rejects): a chunk with a bad
 * byte is reported, and Python re-reads it to raise InvalidUTF8Error with the exact offset.
 *
 * Character classes (\p{L}, \p{N}, \s, as the `regex` module sees them) are fetched lazily, one
 * 256-code-point page at a time, from a Python callable (native.char_class_page): real text
 * touches a handful of pages, and computing all 0x110000 classes costs more than counting a
 * few MB. A worker that meets an unknown page takes the GIL for the call; a page, once marked
 * ready (release store), is never written again.
 *
 * Worked example: chunk "ab<|endoftext|>a b" with special "<|endoftext|>" -> pieces "ab", "a b"
 * -> pre-tokens "ab", "a", " b" -> counts {ab: 1, a: 1, " b": 1}.
 */
#ifndef LMFORGE_BPE_COUNT_H
#define LMFORGE_BPE_COUNT_H

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#include "bytes_map.h"
#pragma GCC diagnostic pop

enum { CL_OTHER = 0, CL_LETTER = 1, CL_NUMBER = 2, CL_SPACE = 3 }; /* = native.CLASS_* */
#define N_PAGES 0x1100                                              /* 0x110000 / 256 */
#define SCAN_BAD ((size_t)-1)

static uint8_t cls_tab[0x110000];           /* class of each code point whose page is ready */
static atomic_uchar page_ready[N_PAGES];
static pthread_mutex_t page_mu = PTHREAD_MUTEX_INITIALIZER;

typedef struct {
    /* input, read-only while the threads run */
    int *fds;
    const int64_t *chunk; /* chunk k: file chunk[3k], bytes [chunk[3k+1], chunk[3k+2]) */
    int64_t nchunks, max_chunk;
    const uint8_t **sp;   /* special tokens */
    size_t *sp_len;
    int nsp;
    PyObject *page_fn;    /* page -> bytes(256) of classes */
    /* shared state */
    atomic_llong next, bytes_done; /* next chunk to take; bytes counted so far */
    atomic_int stop;      /* set on error or interrupt: workers quit before their next chunk */
    atomic_int finished;  /* workers that have returned */
    atomic_llong bad_chunk; /* smallest chunk index with invalid UTF-8, or nchunks */
    pthread_mutex_t err_mu;
    int err;              /* 0, or CERR_* below */
    PyObject *exc_type, *exc_val, *exc_tb; /* from page_fn */
} CountJob;

enum { CERR_NOMEM = 1, CERR_IO = 2, CERR_PAGE = 3 };

typedef struct {
    CountJob *job;
    BytesMap **part; /* part[p]: this worker's counts of the keys of partition p */
    int nparts;
    uint8_t *buf;
    size_t *nxt; /* next occurrence of each special in the current chunk */
    pthread_t tid;
    int io_errno;
} Worker;

static void job_fail(CountJob *J, int err)
{
    pthread_mutex_lock(&J->err_mu);
    if (!J->err)
        J->err = err;
    pthread_mutex_unlock(&J->err_mu);
    atomic_store(&J->stop, 1);
}

/* Fill page pg of cls_tab by calling page_fn (taking the GIL). 0, or -1 with J->err set. */
static int fill_page(CountJob *J, uint32_t pg)
{
    int rc = 0;
    pthread_mutex_lock(&page_mu);
    if (!atomic_load_explicit(&page_ready[pg], memory_order_acquire)) {
        PyGILState_STATE g = PyGILState_Ensure();
        PyObject *r = PyObject_CallFunction(J->page_fn, "I", (unsigned)pg);
        if (r && (!PyBytes_Check(r) || PyBytes_GET_SIZE(r) != 256)) {
            PyErr_Format(PyExc_TypeError, "char class page %u must be 256 bytes", (unsigned)pg);
            Py_CLEAR(r);
        }
        if (r) {
            const uint8_t *c = (const uint8_t *)PyBytes_AS_STRING(r);
            for (int i = 0; i < 256; i++)
                cls_tab[pg * 256 + i] = c[i] <= CL_SPACE ? c[i] : CL_OTHER;
            atomic_store_explicit(&page_ready[pg], 1, memory_order_release);
            Py_DECREF(r);
        } else {
            pthread_mutex_lock(&J->err_mu);
            if (!J->exc_type)
                PyErr_Fetch(&J->exc_type, &J->exc_val, &J->exc_tb);
            else
                PyErr_Clear();
            pthread_mutex_unlock(&J->err_mu);
            job_fail(J, CERR_PAGE);
            rc = -1;
        }
        PyGILState_Release(g);
    }
    pthread_mutex_unlock(&page_mu);
    return rc;
}

/* Class of code point cp >= 128 (ASCII reads cls_tab directly: page 0 is filled up front).
 * On a failed page fetch, CL_OTHER; the job is stopped and the result discarded. */
static inline int cp_class(CountJob *J, uint32_t cp)
{
    if (!atomic_load_explicit(&page_ready[cp >> 8], memory_order_acquire) &&
        fill_page(J, cp >> 8) < 0)
        return CL_OTHER;
    return cls_tab[cp];
}

/* Decode the code point at s[i] (i < n): its length in bytes, or 0 if s[i:] does not start with
 * a valid UTF-8 sequence (overlong forms, surrogates, > U+10FFFF and truncation are invalid). */
static inline int u8_decode(const uint8_t *s, size_t i, size_t n, uint32_t *cp)
{
    uint32_t c = s[i], c1, c2, c3;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c < 0xC2 || c > 0xF4 || i + 1 >= n || ((c1 = s[i + 1]) & 0xC0) != 0x80)
        return 0;
    if (c < 0xE0) {
        *cp = (c & 0x1F) << 6 | (c1 & 0x3F);
        return 2;
    }
    if (i + 2 >= n || ((c2 = s[i + 2]) & 0xC0) != 0x80)
        return 0;
    if (c < 0xF0) {
        if ((c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 >= 0xA0))
            return 0;
        *cp = (c & 0x0F) << 12 | (c1 & 0x3F) << 6 | (c2 & 0x3F);
        return 3;
    }
    if (i + 3 >= n || ((c3 = s[i + 3]) & 0xC0) != 0x80 || (c == 0xF0 && c1 < 0x90) ||
        (c == 0xF4 && c1 >= 0x90))
        return 0;
    *cp = (c & 0x07) << 18 | (c1 & 0x3F) << 12 | (c2 & 0x3F) << 6 | (c3 & 0x3F);
    return 4;
}

/* Class and length of the code point at s[i]; length 0 = invalid UTF-8. */
static inline int u8_class(CountJob *J, const uint8_t *s, size_t i, size_t n, int *len)
{
    uint32_t cp;
    if (s[i] < 0x80) {
        *len = 1;
        return cls_tab[s[i]];
    }
    *len = u8_decode(s, i, n, &cp);
    return *len ? cp_class(J, cp) : CL_OTHER;
}

/* End of the run of class `cls` starting at j, or SCAN_BAD. */
static inline size_t u8_run_end(CountJob *J, const uint8_t *s, size_t j, size_t n, int cls)
{
    while (j < n) {
        if (s[j] < 0x80) {
            if (cls_tab[s[j]] != cls)
                return j;
            j++;
            continue;
        }
        int len, c = u8_class(J, s, j, n, &len);
        if (!len)
            return SCAN_BAD;
        if (c != cls)
            return j;
        j += (size_t)len;
    }
    return j;
}

/* End of the pre-token starting at i < n (pretok_scan.h's next_end on UTF-8), or SCAN_BAD. */
static inline size_t u8_next_end(CountJob *J, const uint8_t *s, size_t i, size_t n)
{
    if (s[i] == '\'' && i + 1 < n) {
        uint8_t a = s[i + 1], b = i + 2 < n ? s[i + 2] : 0;
        if (a == 's' || a == 'd' || a == 'm' || a == 't')
            return i + 2;
        if ((a == 'l' && b == 'l') || (a == 'v' && b == 'e') || (a == 'r' && b == 'e'))
            return i + 3;
    }
    int len, cls = u8_class(J, s, i, n, &len);
    if (!len)
        return SCAN_BAD;
    size_t p = i + (size_t)len; /* end of the run's first character */
    if (s[i] == ' ' && p < n) {
        int len2, c2 = u8_class(J, s, p, n, &len2);
        if (!len2)
            return SCAN_BAD;
        if (c2 != CL_SPACE)
            cls = c2, p += (size_t)len2;
    }
    if (cls != CL_SPACE)
        return u8_run_end(J, s, p, n, cls);
    size_t last = i, j = p; /* \s+(?!\S): leave the run's last space before a non-space */
    while (j < n) {
        int c = u8_class(J, s, j, n, &len);
        if (!len)
            return SCAN_BAD;
        if (c != CL_SPACE)
            break;
        last = j, j += (size_t)len;
    }
    return (j == n || last == i) ? j : last;
}

/* ---- counting into a BytesMap (keys: pre-token bytes; values: a 64-bit count) ---- */

static inline uint64_t mix64(uint64_t h)
{
    h ^= h >> 31;
    h *= 0xD6E8FEB86659FD93ull;
    return h ^ (h >> 32);
}

static inline uint64_t hash16(uint64_t lo, uint64_t hi, size_t n)
{
    return mix64((lo ^ 0x9E3779B97F4A7C15ull) * 0xBF58476D1CE4E5B9ull ^
                 (hi + n) * 0x94D049BB133111EBull);
}

static inline uint64_t load_le(const uint8_t *s, size_t n) /* n <= 8 bytes, zero-padded */
{
    uint64_t w = 0;
    memcpy(&w, s, n);
    return w;
}

/* The key hash of the count maps: hash16 of the (zero-padded) two words of a key up to 16
 * bytes, else word by word. The words are built from fixed-size, possibly overlapping loads
 * inside s[0:n] (a variable-length memcpy is a libc call, and this runs once per pre-token). */
static inline __attribute__((always_inline)) uint64_t key_hash(const uint8_t *s, size_t n)
{
    uint64_t lo, hi = 0;
    if (n >= 8) {
        if (n > 16) {
            uint64_t h = 0x243F6A8885A308D3ull ^ n;
            for (; n >= 8; s += 8, n -= 8)
                h = mix64((h ^ load_le(s, 8)) * 0x9E3779B97F4A7C15ull);
            return mix64((h ^ load_le(s, n)) * 0xBF58476D1CE4E5B9ull);
        }
        lo = load_le(s, 8);
        if (n > 8) /* bytes s[8:n] are the top n - 8 bytes of the last 8 */
            hi = load_le(s + n - 8, 8) >> (8 * (16 - n));
    } else if (n >= 4) {
        uint64_t a = load_le(s, 4), b = load_le(s + n - 4, 4);
        lo = a | (b >> (8 * (8 - n))) << 32;
    } else {
        lo = s[0] | (uint64_t)s[n >> 1] << 8 * (n >> 1) | (uint64_t)s[n - 1] << 8 * (n - 1);
    }
    return hash16(lo, hi, n);
}

/* counts[s[0:n]] += add (key hash h); two 32-bit values hold a 64-bit count. */
static inline int count_add_h(BytesMap *m, const uint8_t *s, size_t n, uint64_t h, uint64_t add)
{
    uint64_t c;
    size_t at;
    uint32_t *v = bm_find(m, s, n, h, &at);
    if (!v) {
        if (!(v = bm_insert(m, s, n, h, at, 2)))
            return -1;
        memset(v, 0, 8);
    } else {
        v = rec_vals(v);
    }
    memcpy(&c, v, 8);
    c += add;
    memcpy(v, &c, 8);
    return 0;
}

static inline int count_add(BytesMap *m, const uint8_t *s, size_t n, uint64_t add)
{
    return count_add_h(m, s, n, key_hash(s, n), add);
}

/* Pre-tokens are counted BATCH at a time: hash them all, prefetch their slots, then their
 * records, then update. A big table misses the cache on both (one random line each), and the
 * prefetches let those misses overlap instead of queueing behind each other. */
#define BATCH 32
typedef struct {
    const uint8_t *s;
    size_t n;
    uint64_t h;
} Piece;

/* Partition of a key: keys are split by hash among the workers' final maps (see run_count). */
static inline int part_of(uint64_t h, int nparts)
{
    return (int)(((h >> 32) * (uint64_t)nparts) >> 32);
}

static int count_batch(BytesMap **part, int nparts, const Piece *b, int nb)
{
    BytesMap *m[BATCH];
    for (int k = 0; k < nb; k++) {
        m[k] = part[part_of(b[k].h, nparts)];
        __builtin_prefetch(&m[k]->slot[b[k].h & m[k]->mask]);
    }
    for (int k = 0; k < nb; k++) {
        uint64_t x = m[k]->slot[b[k].h & m[k]->mask];
        if (x)
            __builtin_prefetch(m[k]->arena + (uint32_t)x - 1);
    }
    for (int k = 0; k < nb; k++)
        if (count_add_h(m[k], b[k].s, b[k].n, b[k].h, 1) < 0)
            return -1;
    return 0;
}

/* Count the pre-tokens of one piece (no specials in it); 1 = invalid UTF-8, -1 = no memory. */
static int count_piece_u8(CountJob *J, Worker *W, const uint8_t *s, size_t n)
{
    Piece b[BATCH];
    int nb = 0;
    for (size_t i = 0, e; i < n; i = e) {
        e = u8_next_end(J, s, i, n);
        if (e == SCAN_BAD)
            return 1;
        b[nb++] = (Piece){s + i, e - i, key_hash(s + i, e - i)};
        if (nb == BATCH) {
            if (count_batch(W->part, W->nparts, b, nb) < 0)
                return -1;
            nb = 0;
        }
    }
    return count_batch(W->part, W->nparts, b, nb);
}

static size_t find_from(const uint8_t *s, size_t n, size_t from, const uint8_t *t, size_t m)
{
    if (from >= n)
        return n;
    const uint8_t *p = memmem(s + from, n - from, t, m);
    return p ? (size_t)(p - s) : n;
}

/* Split a chunk on the special tokens (leftmost match, longest at a position, as
 * pretokenize.special_token_regex) and count the pieces between them. 1 / -1 as above. */
static int count_chunk(Worker *W, const uint8_t *s, size_t n)
{
    CountJob *J = W->job;
    for (int k = 0; k < J->nsp; k++)
        W->nxt[k] = find_from(s, n, 0, J->sp[k], J->sp_len[k]);
    for (size_t pos = 0; pos < n;) {
        size_t at = n, len = 0;
        for (int k = 0; k < J->nsp; k++) {
            if (W->nxt[k] < pos)
                W->nxt[k] = find_from(s, n, pos, J->sp[k], J->sp_len[k]);
            if (W->nxt[k] < at || (W->nxt[k] == at && at < n && J->sp_len[k] > len))
                at = W->nxt[k], len = J->sp_len[k];
        }
        int r = count_piece_u8(J, W, s + pos, at - pos);
        if (r)
            return r;
        pos = at + len;
    }
    return 0;
}

static void count_chunks(Worker *W)
{
    CountJob *J = W->job;
    while (!atomic_load(&J->stop)) {
        long long k = atomic_fetch_add(&J->next, 1);
        if (k >= J->nchunks)
            break;
        int64_t start = J->chunk[3 * k + 1], len = J->chunk[3 * k + 2] - start, got = 0;
        while (got < len) {
            ssize_t r = pread(J->fds[J->chunk[3 * k]], W->buf + got, (size_t)(len - got),
                              (off_t)(start + got));
            if (r <= 0) {
                W->io_errno = r < 0 ? errno : EIO;
                job_fail(J, CERR_IO);
                return;
            }
            got += r;
        }
        int r = count_chunk(W, W->buf, (size_t)len);
        if (r < 0) {
            job_fail(J, CERR_NOMEM);
            return;
        }
        if (r > 0) { /* keep the first bad chunk; later chunks need not be read */
            long long b = atomic_load(&J->bad_chunk);
            while (k < b && !atomic_compare_exchange_weak(&J->bad_chunk, &b, k))
                ;
            atomic_store(&J->stop, 1);
        }
        atomic_fetch_add(&J->bytes_done, len);
    }
}

static void *count_worker(void *arg)
{
    Worker *W = arg;
    count_chunks(W);
    atomic_fetch_add(&W->job->finished, 1);
    return NULL;
}

/* m0 += m (counts of equal keys add up). */
static int map_absorb(BytesMap *m0, const BytesMap *m)
{
    for (size_t off = 0; off < m->len; off += rec_words(m->arena[off + 2], 2)) {
        const uint32_t *r = m->arena + off;
        uint64_t c;
        memcpy(&c, rec_vals((uint32_t *)r), 8);
        if (count_add(m0, (const uint8_t *)(r + REC_HEAD), r[2], c) < 0)
            return -1;
    }
    return 0;
}


static int report_count(PyObject *progress, long long done)
{
    PyObject *r = PyObject_CallFunction(progress, "L", done);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* Absorb partition p of every worker into worker p's (one thread per partition: no locks). */
typedef struct {
    Worker *W;
    int nthreads, p, ok;
    pthread_t tid;
} Absorb;

static void *absorb_partition(void *arg)
{
    Absorb *A = arg;
    BytesMap **dst = &A->W[A->p].part[A->p];
    for (int t = 0; t < A->nthreads && A->ok; t++) {
        if (t == A->p)
            continue;
        A->ok = map_absorb(*dst, A->W[t].part[A->p]) == 0;
        bm_free(A->W[t].part[A->p]); /* peak: the tables, never a second copy of them */
        A->W[t].part[A->p] = NULL;
    }
    return NULL;
}

/* The workers' tables summed, partition p by thread p; 0, or -1 out of memory. */
static int absorb_all(Worker *W, int nthreads)
{
    Absorb *A = calloc((size_t)nthreads, sizeof *A);
    int ok = A != NULL, started = 0;
    if (!ok)
        return -1;
    for (int p = 0; p < nthreads; p++)
        A[p] = (Absorb){W, nthreads, p, 1, 0};
    for (; started < nthreads - 1; started++) /* the last partition runs in this thread */
        if (pthread_create(&A[started].tid, NULL, absorb_partition, &A[started]))
            break;
    for (int p = started; p < nthreads; p++) /* and any that could not get a thread */
        absorb_partition(&A[p]);
    for (int p = 0; p < started; p++)
        pthread_join(A[p].tid, NULL);
    for (int p = 0; p < nthreads; p++)
        ok &= A[p].ok;
    free(A);
    return ok ? 0 : -1;
}

/* Run J with `nthreads` workers (GIL released; this thread polls for signals and reports the
 * bytes done to count_progress every 50 ms). Each worker counts key k into its table for
 * partition part_of(hash(k)); at the end thread p sums partition p over all workers. On
 * success out[0..nthreads) are the summed tables (disjoint keys; the caller frees them) and
 * *bad the first chunk with invalid UTF-8 (or -1). -1 with an exception set on error. */
static int run_count(CountJob *J, int nthreads, PyObject *count_progress, BytesMap **out,
                     int64_t *bad)
{
    Worker *W = calloc((size_t)nthreads, sizeof *W);
    int started = 0, rc = -1;
    if (!W)
        return PyErr_NoMemory(), -1;
    for (int t = 0; t < nthreads; t++) {
        W[t].job = J;
        W[t].nparts = nthreads;
        W[t].part = calloc((size_t)nthreads, sizeof(BytesMap *));
        W[t].buf = malloc((size_t)J->max_chunk + 1);
        W[t].nxt = malloc(((size_t)J->nsp + 1) * sizeof(size_t));
        if (!W[t].part || !W[t].buf || !W[t].nxt) {
            PyErr_NoMemory();
            goto done;
        }
        for (int p = 0; p < nthreads; p++)
            if (!(W[t].part[p] = bm_new())) {
                PyErr_NoMemory();
                goto done;
            }
    }
    atomic_store(&J->bad_chunk, J->nchunks);
    Py_BEGIN_ALLOW_THREADS
    for (; started < nthreads; started++)
        if (pthread_create(&W[started].tid, NULL, count_worker, &W[started]))
            break;
    Py_END_ALLOW_THREADS
    if (!started)
        atomic_store(&J->stop, 1); /* nothing runs: fall through to the error below */
    int failed = 0;
    while (atomic_load(&J->finished) < started) {
        Py_BEGIN_ALLOW_THREADS
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
        Py_END_ALLOW_THREADS
        if (!failed && (PyErr_CheckSignals() < 0 ||
                        (count_progress != Py_None &&
                         report_count(count_progress, atomic_load(&J->bytes_done)) < 0))) {
            failed = 1;
            atomic_store(&J->stop, 1);
        }
    }
    Py_BEGIN_ALLOW_THREADS /* workers may still want the GIL for a class page */
    for (int t = 0; t < started; t++)
        pthread_join(W[t].tid, NULL);
    Py_END_ALLOW_THREADS
    if (failed)
        goto done;
    if (!started) {
        PyErr_SetString(PyExc_OSError, "BPE trainer: could not start a counting thread");
        goto done;
    }
    if (J->err == CERR_NOMEM) {
        PyErr_NoMemory();
        goto done;
    }
    if (J->err == CERR_PAGE) {
        PyErr_Restore(J->exc_type, J->exc_val, J->exc_tb);
        J->exc_type = J->exc_val = J->exc_tb = NULL;
        goto done;
    }
    if (J->err == CERR_IO) {
        for (int t = 0; t < started; t++)
            if (W[t].io_errno)
                errno = W[t].io_errno;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    if (count_progress != Py_None && report_count(count_progress, atomic_load(&J->bytes_done)) < 0)
        goto done;
    *bad = atomic_load(&J->bad_chunk) < J->nchunks ? atomic_load(&J->bad_chunk) : -1;
    int merged;
#ifdef BPE_PROFILE
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
#endif
    Py_BEGIN_ALLOW_THREADS
    merged = *bad >= 0 || absorb_all(W, nthreads) == 0;
    Py_END_ALLOW_THREADS
#ifdef BPE_PROFILE
    clock_gettime(CLOCK_MONOTONIC, &t1);
    fprintf(stderr, "absorb %.3f s\n", (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec));
#endif
    if (!merged) {
        PyErr_NoMemory();
        goto done;
    }
    for (int p = 0; p < nthreads; p++) {
        out[p] = W[p].part[p];
        W[p].part[p] = NULL;
    }
    rc = 0;
done:
    for (int t = 0; t < nthreads; t++) {
        for (int p = 0; W[t].part && p < nthreads; p++)
            bm_free(W[t].part[p]);
        free(W[t].part);
        free(W[t].buf);
        free(W[t].nxt);
    }
    free(W);
    Py_CLEAR(J->exc_type);
    Py_CLEAR(J->exc_val);
    Py_CLEAR(J->exc_tb);
    return rc;
}

#endif /* LMFORGE_BPE_COUNT_H */
