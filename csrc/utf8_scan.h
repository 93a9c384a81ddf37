/* utf8_scan.h: the GPT-2 pre-tokenizer over UTF-8 bytes, split on special tokens first.
 * Included once by _bpe_encode.c (static functions; not a separate translation unit).
 *
 * Same alternatives, in the same order, as next_end() in pretok_scan.h (which scans a str's code
 * units; it stays for pretokenize/count_pretokens). Working on UTF-8 lets the encoder take bytes,
 * mmap'd files and ASCII strs without any copy, and hand each pre-token to the BPE as a slice of
 * the input. Input must be valid UTF-8 (utf8_check first): the decoder trusts the lead byte. */
#ifndef LMFORGE_UTF8_SCAN_H
#define LMFORGE_UTF8_SCAN_H

/* Offset of the first byte that makes d[0:n] invalid UTF-8 (as Python's strict decoder: no
 * overlongs, no surrogates, nothing above U+10FFFF), or -1 if it is valid. */
static Py_ssize_t utf8_check(const uint8_t *d, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, d + i, 8);
            if (!(w & 0x8080808080808080ull)) {
                i += 8;
                continue;
            }
        }
        uint8_t c = d[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
                     : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
        if (!len || i + 1 >= n)
            return (Py_ssize_t)i;
        uint8_t c1 = d[i + 1];
        uint8_t lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
        uint8_t hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
        if (c1 < lo || c1 > hi)
            return (Py_ssize_t)i;
        for (size_t k = 2; k < len; k++)
            if (i + k >= n || (d[i + k] & 0xC0) != 0x80)
                return (Py_ssize_t)i;
        i += len;
    }
    return -1;
}

/* Class of the (valid) character at d[i], and its length in *len. */
INLINE int u8_class(const uint8_t *d, size_t i, size_t *len)
{
    uint8_t c = d[i];
    uint32_t cp;
    if (c < 0x80) {
        *len = 1;
        return char_class[c];
    }
    if (c < 0xE0) {
        *len = 2, cp = (uint32_t)(c & 0x1F) << 6 | (d[i + 1] & 0x3F);
    } else if (c < 0xF0) {
        *len = 3, cp = (uint32_t)(c & 0x0F) << 12 | (uint32_t)(d[i + 1] & 0x3F) << 6
                       | (d[i + 2] & 0x3F);
    } else {
        *len = 4, cp = (uint32_t)(c & 0x07) << 18 | (uint32_t)(d[i + 1] & 0x3F) << 12
                       | (uint32_t)(d[i + 2] & 0x3F) << 6 | (d[i + 3] & 0x3F);
    }
    return char_class[cp];
}

/* End of the run of class `cls` starting at i (ASCII bytes take the short path). */
INLINE size_t u8_run_end(const uint8_t *d, size_t i, size_t n, int cls)
{
    size_t len;
    while (i < n) {
        uint8_t c = d[i];
        if (c < 0x80) {
            if (char_class[c] != cls)
                return i;
            i++;
        } else if (u8_class(d, i, &len) == cls) {
            i += len;
        } else {
            return i;
        }
    }
    return i;
}

/* ASCII letters and digits eight bytes at a time (SWAR). Only used when the class table agrees
 * that the ASCII letters are exactly [A-Za-z] and the ASCII numbers [0-9] (swar_ok, checked when
 * the table is set), which is what \p{L} and \p{N} say. */
static int swar_ok = 0;
#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

/* High bit of byte k set iff byte k of w is an ASCII letter (cls C_LETTER) or digit (C_NUMBER).
 * Each byte is reduced to 7 bits first, so the additions never carry into the next byte. */
INLINE uint64_t swar_class(uint64_t w, int cls)
{
    uint64_t y, ge_lo, ge_hi;
    if (cls == C_LETTER) {
        y = (w | 0x2020202020202020ull) & ~HIGHS; /* fold case: A-Z -> a-z */
        ge_lo = y + (0x80 - 'a') * ONES, ge_hi = y + (0x80 - 'z' - 1) * ONES;
    } else {
        y = w & ~HIGHS;
        ge_lo = y + (0x80 - '0') * ONES, ge_hi = y + (0x80 - '9' - 1) * ONES;
    }
    return ge_lo & ~ge_hi & ~w & HIGHS;
}

/* End of the run of ASCII letters or digits (cls) that starts at i, stopping at n; words may be
 * read up to `limit` (the end of the buffer). A run that ends on a non-ASCII byte is finished
 * by the caller (that character may still be in the class). */
INLINE size_t swar_run_end(const uint8_t *d, size_t i, size_t n, const uint8_t *limit, int cls)
{
    while (d + i + 8 <= limit) {
        uint64_t w;
        memcpy(&w, d + i, 8);
        uint64_t stop = ~swar_class(w, cls) & HIGHS;
        if (stop) {
            i += (size_t)__builtin_ctzll(stop) >> 3;
            return i < n ? i : n;
        }
        if ((i += 8) >= n)
            return n;
    }
    while (i < n && d[i] < 0x80 && char_class[d[i]] == cls)
        i++;
    return i;
}

/* End of the pre-token that starts at i (< n): contractions, ` ?` + a letter / number / other
 * run, else a whitespace run that leaves its last char to the next token (\s+(?!\S)). Bytes up to
 * `limit` (>= d + n) may be read. */
INLINE size_t u8_next_end(const uint8_t *d, size_t i, size_t n, const uint8_t *limit)
{
    uint8_t c = d[i];
    if (swar_ok) { /* fast path: ` ?` + an ASCII letter or digit run (most English pre-tokens) */
        size_t s = i + (c == ' ' && i + 1 < n);
        uint8_t c1 = d[s];
        int k = c1 < 0x80 ? char_class[c1] : C_OTHER;
        if (k == C_LETTER || k == C_NUMBER) {
            size_t j = swar_run_end(d, s + 1, n, limit, k);
            return j < n && d[j] >= 0x80 ? u8_run_end(d, j, n, k) : j;
        }
    }
    if (c == '\'' && i + 1 < n) {
        uint8_t a = d[i + 1], b = i + 2 < n ? d[i + 2] : 0;
        if (a == 's' || a == 'd' || a == 'm' || a == 't')
            return i + 2;
        if ((a == 'l' && b == 'l') || (a == 'v' && b == 'e') || (a == 'r' && b == 'e'))
            return i + 3;
    }
    size_t len, s = i;
    int cls = u8_class(d, i, &len);
    if (c == ' ' && i + 1 < n) {
        size_t len2;
        int cls2 = u8_class(d, i + 1, &len2);
        if (cls2 != C_SPACE)
            s = i + 1, cls = cls2, len = len2;
    }
    if (cls != C_SPACE)
        return u8_run_end(d, s + len, n, cls);
    size_t j = i + len, last = i;
    while (j < n && u8_class(d, j, &len) == C_SPACE)
        last = j, j += len;
    return (j == n || last == i) ? j : last;
}

/* Special tokens to split on, longest first (so the longest one matching at a position wins). */
typedef struct {
    Py_ssize_t n;
    const uint8_t **s;
    size_t *len;
    uint32_t *id;
    uint8_t first[256]; /* first[b]: some special starts with byte b */
    int one_first;      /* all specials start with the same byte (memchr finds candidates) */
} Specials;

/* Position of the first special at or after i in d[0:n] (n if none); *k = its index. */
INLINE size_t find_special(const Specials *sp, const uint8_t *d, size_t i, size_t n,
                           Py_ssize_t *k)
{
    if (!sp || !sp->n)
        return n;
    while (i < n) {
        if (sp->one_first) {
            const uint8_t *p = memchr(d + i, sp->s[0][0], n - i);
            if (!p)
                return n;
            i = (size_t)(p - d);
        } else if (!sp->first[d[i]]) {
            i++;
            continue;
        }
        for (Py_ssize_t j = 0; j < sp->n; j++)
            if (sp->len[j] <= n - i && !memcmp(d + i, sp->s[j], sp->len[j]))
                return *k = j, i;
        i++;
    }
    return n;
}

#endif /* LMFORGE_UTF8_SCAN_H */
