/* pretok_scan.h: the GPT-2 pre-tokenizer as a hand-written scanner over a str's code units.
 * Included once by _bpe_encode.c (static functions; not a separate translation unit). */
#ifndef LMFORGE_PRETOK_SCAN_H
#define LMFORGE_PRETOK_SCAN_H

/* ---------------------------------------------------------------- scanner (GPT-2 pattern) */

INLINE Py_UCS4 rd(int k, const void *d, Py_ssize_t i)
{
    return k == 1 ? ((const Py_UCS1 *)d)[i] : k == 2 ? ((const Py_UCS2 *)d)[i]
                                                     : ((const Py_UCS4 *)d)[i];
}

INLINE Py_ssize_t run_end(int k, const void *d, Py_ssize_t i, Py_ssize_t n, int cls)
{
    while (i < n && char_class[rd(k, d, i)] == cls)
        i++;
    return i;
}

/* End of the pre-token that starts at i (< n): the alternatives of the pattern, in order. */
INLINE Py_ssize_t next_end(int k, const void *d, Py_ssize_t i, Py_ssize_t n)
{
    Py_UCS4 c = rd(k, d, i);
    if (c == '\'' && i + 1 < n) {
        Py_UCS4 a = rd(k, d, i + 1), b = i + 2 < n ? rd(k, d, i + 2) : 0;
        if (a == 's' || a == 'd' || a == 'm' || a == 't')
            return i + 2;
        if ((a == 'l' && b == 'l') || (a == 'v' && b == 'e') || (a == 'r' && b == 'e'))
            return i + 3;
    }
    int cls = char_class[c];
    Py_ssize_t s = i; /* last char already known to be in the run */
    if (c == ' ' && i + 1 < n && char_class[rd(k, d, i + 1)] != C_SPACE) {
        s = i + 1;
        cls = char_class[rd(k, d, s)];
    }
    if (cls != C_SPACE)
        return run_end(k, d, s + 1, n, cls);
    Py_ssize_t j = run_end(k, d, i + 1, n, C_SPACE);
    return (j == n || j - 1 == i) ? j : j - 1; /* \s+(?!\S) leaves the space before a non-space */
}

/* UTF-8 of d[s:e] into out (room for 4 bytes per char). Returns the length, or -1 - (index of
 * the first lone surrogate). */
INLINE Py_ssize_t to_utf8(int k, const void *d, Py_ssize_t s, Py_ssize_t e, uint8_t *out)
{
    uint8_t *o = out;
    for (Py_ssize_t i = s; i < e; i++) {
        Py_UCS4 c = rd(k, d, i);
        if (c < 0x80) {
            *o++ = (uint8_t)c;
        } else if (c < 0x800) {
            *o++ = (uint8_t)(0xC0 | (c >> 6));
            *o++ = (uint8_t)(0x80 | (c & 0x3F));
        } else if (c < 0x10000) {
            if (k > 1 && c >= 0xD800 && c <= 0xDFFF)
                return -1 - i;
            *o++ = (uint8_t)(0xE0 | (c >> 12));
            *o++ = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
            *o++ = (uint8_t)(0x80 | (c & 0x3F));
        } else {
            *o++ = (uint8_t)(0xF0 | (c >> 18));
            *o++ = (uint8_t)(0x80 | ((c >> 12) & 0x3F));
            *o++ = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
            *o++ = (uint8_t)(0x80 | (c & 0x3F));
        }
    }
    return o - out;
}

enum { ERR_NOMEM = 1, ERR_SURROGATE = 2 }; /* Scan.err; 0 = no error */

/* One scan over a str, handing each pre-token's UTF-8 bytes to `fn`. Touches no Python object
 * besides the (immutable) str data, so it runs with the GIL released. */
typedef int (*PieceFn)(void *ctx, const uint8_t *s, size_t n);
typedef struct {
    int kind, ascii;
    const void *data;
    Py_ssize_t n;
    uint8_t *buf;
    size_t buf_cap;
    int err;
    Py_ssize_t piece_start, piece_end, bad; /* where a lone surrogate was found */
} Scan;

INLINE int scan_kind(int k, Scan *sc, PieceFn fn, void *ctx)
{
    const void *d = sc->data;
    for (Py_ssize_t i = 0, e; i < sc->n; i = e) {
        e = next_end(k, d, i, sc->n);
        if (sc->ascii) {
            if (fn(ctx, (const uint8_t *)d + i, (size_t)(e - i)) < 0)
                return -1;
            continue;
        }
        if ((size_t)(e - i) * 4 > sc->buf_cap) {
            size_t cap = (size_t)(e - i) * 8;
            uint8_t *nb = realloc(sc->buf, cap);
            if (!nb)
                return sc->err = ERR_NOMEM, -1;
            sc->buf = nb, sc->buf_cap = cap;
        }
        Py_ssize_t len = to_utf8(k, d, i, e, sc->buf);
        if (len < 0) {
            sc->err = ERR_SURROGATE, sc->piece_start = i, sc->piece_end = e, sc->bad = -1 - len;
            return -1;
        }
        if (fn(ctx, sc->buf, (size_t)len) < 0)
            return -1;
    }
    return 0;
}

static int scan(Scan *sc, PieceFn fn, void *ctx)
{
    switch (sc->kind) {
    case PyUnicode_1BYTE_KIND: return scan_kind(1, sc, fn, ctx);
    case PyUnicode_2BYTE_KIND: return scan_kind(2, sc, fn, ctx);
    default: return scan_kind(4, sc, fn, ctx);
    }
}

static Py_ssize_t next_end_any(int kind, const void *d, Py_ssize_t i, Py_ssize_t n)
{
    switch (kind) {
    case PyUnicode_1BYTE_KIND: return next_end(1, d, i, n);
    case PyUnicode_2BYTE_KIND: return next_end(2, d, i, n);
    default: return next_end(4, d, i, n);
    }
}

static int scan_init(Scan *sc, PyObject *text)
{
    if (!char_class_ready) {
        PyErr_SetString(PyExc_RuntimeError,
                        "_bpe_encode is not initialised: call init_char_classes(table) first "
                        "(lmforge.tokenizer.native.encode_module() does it)");
        return -1;
    }
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "text must be str, not %.100s", Py_TYPE(text)->tp_name);
        return -1;
    }
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(text) < 0)
        return -1;
#endif
    memset(sc, 0, sizeof *sc);
    sc->kind = PyUnicode_KIND(text), sc->data = PyUnicode_DATA(text);
    sc->n = PyUnicode_GET_LENGTH(text), sc->ascii = PyUnicode_IS_ASCII(text);
    return 0;
}

/* Raise the error a scan stopped with; a lone surrogate raises what piece.encode() would. */
static void scan_raise(Scan *sc, PyObject *text)
{
    if (sc->err == ERR_NOMEM) {
        PyErr_NoMemory();
        return;
    }
    PyObject *piece = PyUnicode_Substring(text, sc->piece_start, sc->piece_end);
    if (!piece)
        return;
    Py_ssize_t s = sc->bad - sc->piece_start, e = s + 1, n = sc->piece_end - sc->piece_start;
    while (e < n && Py_UNICODE_IS_SURROGATE(PyUnicode_READ_CHAR(piece, e)))
        e++;
    PyObject *exc = PyObject_CallFunction(PyExc_UnicodeEncodeError, "sOnns", "utf-8", piece, s,
                                          e, "surrogates not allowed");
    Py_DECREF(piece);
    if (exc) {
        PyErr_SetObject(PyExc_UnicodeEncodeError, exc);
        Py_DECREF(exc);
    }
}


#endif /* LMFORGE_PRETOK_SCAN_H */
