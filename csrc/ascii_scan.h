/* ascii_scan.h: the GPT-2 pre-tokenizer on ASCII text, 64 bytes at a time, as a bit mask of the
 * positions where pieces start. Included once by _bpe_encode.c (after utf8_scan.h, whose scalar
 * u8_next_end it falls back to; static functions, not a separate translation unit).
 *
 * Scanning piece by piece costs a few mispredicted branches per piece (which alternative of the
 * pattern matches, where a run ends). On ASCII the pattern's boundaries are a function of each
 * byte's neighbours, so a whole window can be computed with SSE2 compares and 64-bit mask logic,
 * and pieces are then read off with count-trailing-zeros. With A, D, S, O the letter, digit,
 * whitespace and other bytes, pX = X shifted to the previous byte, nX to the next:
 *   a piece starts where the class changes;
 *   and at the last byte of a whitespace run of 2+ bytes followed by a non-space (\s+(?!\S));
 *   but not at a letter/digit/other byte after ' ' (` ?\p{L}+` etc.: the piece began at the space);
 *   an apostrophe that starts a piece and is followed by s t m d (ll ve re) is a piece of 2 (3)
 *   bytes (the contractions, tried first), fixed up one by one: they are rare.
 * Windows with a non-ASCII byte, and the last bytes of a buffer, use the scalar scanner. The
 * tests compare the result with the `regex` module and tiktoken on random and real text. */
#ifndef LMFORGE_ASCII_SCAN_H
#define LMFORGE_ASCII_SCAN_H

#if defined(__SSE2__)
#include <emmintrin.h>
#define HAVE_ASCII_SCAN 1

/* Set when the class table's ASCII letters, digits and whitespace are the ones below. */
static int ascii_scan_ok = 0;

static int ascii_scan_check(void)
{
    for (int c = 0; c < 0x80; c++) {
        int cls = (c | 0x20) >= 'a' && (c | 0x20) <= 'z' ? C_LETTER
                  : c >= '0' && c <= '9'                  ? C_NUMBER
                  : c == ' ' || (c >= 9 && c <= 13)       ? C_SPACE
                                                          : C_OTHER;
        if (char_class[c] != cls)
            return 0;
    }
    return 1;
}

typedef struct {
    uint64_t a, d, s, sp, ap, na; /* letter, digit, whitespace, ' ', '\'', non-ASCII bytes */
} Masks;

INLINE void classify16(const uint8_t *p, int shift, Masks *m)
{
    __m128i v = _mm_loadu_si128((const __m128i *)p), y = _mm_or_si128(v, _mm_set1_epi8(0x20));
    __m128i a = _mm_and_si128(_mm_cmpgt_epi8(y, _mm_set1_epi8('a' - 1)),
                              _mm_cmplt_epi8(y, _mm_set1_epi8('z' + 1)));
    __m128i d = _mm_and_si128(_mm_cmpgt_epi8(v, _mm_set1_epi8('0' - 1)),
                              _mm_cmplt_epi8(v, _mm_set1_epi8('9' + 1)));
    __m128i sp = _mm_cmpeq_epi8(v, _mm_set1_epi8(' '));
    __m128i s = _mm_or_si128(sp, _mm_and_si128(_mm_cmpgt_epi8(v, _mm_set1_epi8(8)),
                                               _mm_cmplt_epi8(v, _mm_set1_epi8(14))));
    __m128i ap = _mm_cmpeq_epi8(v, _mm_set1_epi8('\''));
    m->a |= (uint64_t)(uint16_t)_mm_movemask_epi8(a) << shift; /* non-ASCII bytes are negative */
    m->d |= (uint64_t)(uint16_t)_mm_movemask_epi8(d) << shift; /* as int8: in no range above */
    m->s |= (uint64_t)(uint16_t)_mm_movemask_epi8(s) << shift;
    m->sp |= (uint64_t)(uint16_t)_mm_movemask_epi8(sp) << shift;
    m->ap |= (uint64_t)(uint16_t)_mm_movemask_epi8(ap) << shift;
    m->na |= (uint64_t)(uint16_t)_mm_movemask_epi8(v) << shift;
}

/* Classes of one ASCII byte as mask bits (for the bytes just before and after a window). */
INLINE void classify1(uint8_t c, uint64_t *a, uint64_t *d, uint64_t *s, uint64_t *sp)
{
    int cls = char_class[c];
    *a = cls == C_LETTER, *d = cls == C_NUMBER, *s = cls == C_SPACE, *sp = c == ' ';
}

/* The piece starts in d[b : b + 64) of the segment [seg0, e): bit k set if a piece starts at
 * b + k; bits at and after e are clear. `cont`: the window continues the previous one (byte b-1
 * is an ASCII byte of the segment, and `force` / `clear` are the starts / non-starts that the
 * previous window's contractions left in this one); otherwise b is a piece start and bit 0 is
 * set. Contractions reaching past this window leave *force and *clear for the next one.
 * Returns 0 (nothing set) if the window needs the scalar scanner: a non-ASCII byte in it or right
 * after it, or fewer than 64 bytes left in the buffer (limit). */
INLINE int ascii_window(const uint8_t *d, size_t b, size_t e, const uint8_t *limit, int cont,
                        uint64_t force, uint64_t clear, uint64_t *starts, uint64_t *next_force,
                        uint64_t *next_clear)
{
    if (d + b + 64 > limit)
        return 0;
    Masks m = {0};
    classify16(d + b, 0, &m), classify16(d + b + 16, 16, &m);
    classify16(d + b + 32, 32, &m), classify16(d + b + 48, 48, &m);
    uint64_t end = e - b < 64 ? ~0ull << (e - b) : 0; /* bytes past the segment */
    int has_next = b + 64 < e;
    if ((m.na & ~end) || (has_next && d[b + 64] >= 0x80))
        return 0;
    m.a &= ~end, m.d &= ~end, m.s &= ~end, m.sp &= ~end, m.ap &= ~end;
    uint64_t o = ~(m.a | m.d | m.s) & ~end;
    uint64_t pa = 0, pd = 0, ps = 0, psp = 0, na = 0, nd = 0, ns = 0, nsp = 0;
    if (cont)
        classify1(d[b - 1], &pa, &pd, &ps, &psp);
    if (has_next)
        classify1(d[b + 64], &na, &nd, &ns, &nsp);
    uint64_t po = cont && !(pa | pd | ps);
    uint64_t prev_a = m.a << 1 | pa, prev_d = m.d << 1 | pd, prev_s = m.s << 1 | ps;
    uint64_t prev_o = o << 1 | po, prev_sp = m.sp << 1 | psp;
    uint64_t next_nonspace = (~m.s & ~end) >> 1 | (uint64_t)(has_next && !ns) << 63;
    uint64_t st = (m.a ^ prev_a) | (m.d ^ prev_d) | (m.s ^ prev_s) | (o ^ prev_o);
    st |= m.s & prev_s & next_nonspace;  /* \s+(?!\S): the run's last byte starts a piece */
    st &= ~(prev_sp & (m.a | m.d | o)); /* ` ?X+`: the piece began at the space */
    st = cont ? (st | force) & ~clear : st | 1;
    *next_force = *next_clear = 0;
    for (uint64_t cand = m.ap & st & ~end; cand; cand &= cand - 1) {
        size_t k = (size_t)__builtin_ctzll(cand), p = b + k, len = 0;
        uint8_t c1 = p + 1 < e ? d[p + 1] : 0, c2 = p + 2 < e ? d[p + 2] : 0;
        if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd')
            len = 2;
        else if ((c1 == 'l' && c2 == 'l') || (c1 == 'v' && c2 == 'e') || (c1 == 'r' && c2 == 'e'))
            len = 3;
        if (!len)
            continue;
        if (k + 1 < 64) /* the letter after the apostrophe is inside the contraction */
            st &= ~(1ull << (k + 1));
        else
            *next_clear |= 1ull << (k + 1 - 64);
        if (k + len < 64) /* and whatever follows it starts a new piece */
            st |= 1ull << (k + len);
        else
            *next_force |= 1ull << (k + len - 64);
    }
    *starts = st & ~end;
    return 1;
}

#else
#define HAVE_ASCII_SCAN 0
static int ascii_scan_ok = 0;
static int ascii_scan_check(void) { return 0; }
#endif

/* Pieces of one segment d[pos:e), one at a time: ascii_window's masks where they apply, the
 * scalar u8_next_end elsewhere. */
typedef struct {
    const uint8_t *d, *limit;
    size_t e, pos; /* segment end; start of the next piece */
    size_t base;   /* window start (bits of `starts` are relative to it) */
    uint64_t starts;         /* piece starts in the window after pos */
    uint64_t force, clear;   /* fixups for the window at base + 64 */
    size_t scalar_until;     /* scan with u8_next_end while pos < this */
    int in_window;           /* base/starts describe a window containing pos */
} PieceIter;

INLINE void piece_iter_init(PieceIter *it, const uint8_t *d, size_t pos, size_t e,
                            const uint8_t *limit)
{
    it->d = d, it->limit = limit, it->e = e, it->pos = pos;
    it->base = pos, it->starts = it->force = it->clear = 0;
    it->scalar_until = HAVE_ASCII_SCAN && ascii_scan_ok ? 0 : SIZE_MAX;
    it->in_window = 0;
}

/* The end of the piece that starts at it->pos (< e); the caller then sets pos to it. */
INLINE size_t piece_iter_next(PieceIter *it)
{
#if HAVE_ASCII_SCAN
    for (;;) {
        if (it->pos < it->scalar_until) {
            size_t t = u8_next_end(it->d, it->pos, it->e, it->limit);
            if (t >= it->scalar_until)
                it->in_window = 0;
            return t;
        }
        if (it->starts) {
            size_t t = it->base + (size_t)__builtin_ctzll(it->starts);
            it->starts &= it->starts - 1;
            return t;
        }
        size_t b = it->in_window ? it->base + 64 : it->pos;
        if (b >= it->e)
            return it->e;
        uint64_t st, force, clear;
        if (!ascii_window(it->d, b, it->e, it->limit, it->in_window, it->force, it->clear, &st,
                          &force, &clear)) {
            it->scalar_until = b + 64; /* the scalar scanner takes over from pos */
            continue;
        }
        if (!it->in_window)
            st &= ~1ull; /* bit 0 is pos itself */
        it->base = b, it->starts = st, it->force = force, it->clear = clear;
        it->in_window = 1;
    }
#else
    return u8_next_end(it->d, it->pos, it->e, it->limit);
#endif
}

#endif /* LMFORGE_ASCII_SCAN_H */
