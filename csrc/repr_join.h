/* repr_join(items) -> bytes: ", ".join(map(repr, items)).encode(), for Tokenizer.fingerprint.
 *
 * The fingerprint hashes the repr of the vocabulary's (id, bytes) items and of the merges'
 * (bytes, bytes) pairs: ~100K tuples, 25 ms of Python repr and join for GPT-2 - the largest piece
 * of single-thread CPU left in encode_file, where it takes time from the encoding threads. Here
 * tuples of exact ints and bytes are written directly (~2 ms), byte for byte what CPython's
 * PyBytes_Repr and long repr give; anything else (a str, a bool, a nested tuple, a subclass) uses
 * its own repr, so the result is the same for every input. Holds the GIL (it reads the items).
 */

typedef struct {
    char *p;
    size_t n, cap;
} ReprText;

/* Room for `more` bytes at the end of t; 0 on success. */
static int repr_room(ReprText *t, size_t more)
{
    return reserve((void **)&t->p, &t->cap, t->n + more, 1);
}

static int repr_put(ReprText *t, const char *s, size_t n)
{
    if (repr_room(t, n) < 0)
        return -1;
    memcpy(t->p + t->n, s, n);
    t->n += n;
    return 0;
}

/* CPython's bytes repr: b'...', or b"..." when the bytes hold ' and no "; \\, the quote, \t \n \r
 * escaped; other bytes below space or from 0x7f as \xhh (lower case). */
static int repr_bytes(ReprText *t, const uint8_t *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    if (repr_room(t, 3 + 4 * n) < 0)
        return -1;
    char quote = memchr(s, '\'', n) && !memchr(s, '"', n) ? '"' : '\'';
    char *p = t->p + t->n;
    *p++ = 'b', *p++ = quote;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        if (c == (uint8_t)quote || c == '\\')
            *p++ = '\\', *p++ = (char)c;
        else if (c == '\t')
            *p++ = '\\', *p++ = 't';
        else if (c == '\n')
            *p++ = '\\', *p++ = 'n';
        else if (c == '\r')
            *p++ = '\\', *p++ = 'r';
        else if (c < ' ' || c >= 0x7f)
            *p++ = '\\', *p++ = 'x', *p++ = hex[c >> 4], *p++ = hex[c & 15];
        else
            *p++ = (char)c;
    }
    *p++ = quote;
    t->n = (size_t)(p - t->p);
    return 0;
}

/* repr(o) appended to t (UTF-8); `tuples`: whether a tuple's items are written here too.
 * 0, or -1 (out of memory) or -2 (an object's repr raised: its error is set). */
static int repr_object(ReprText *t, PyObject *o, int tuples)
{
    if (PyBytes_CheckExact(o))
        return repr_bytes(t, (const uint8_t *)PyBytes_AS_STRING(o), (size_t)PyBytes_GET_SIZE(o));
    if (PyLong_CheckExact(o)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (!overflow && !(v == -1 && PyErr_Occurred())) {
            char num[24], *d = num + sizeof num; /* digits written backwards */
            unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
            do
                *--d = (char)('0' + u % 10);
            while (u /= 10);
            if (v < 0)
                *--d = '-';
            return repr_put(t, d, (size_t)(num + sizeof num - d));
        }
        PyErr_Clear(); /* too large for a long long: Python's own repr below */
    }
    if (tuples && PyTuple_CheckExact(o)) {
        Py_ssize_t n = PyTuple_GET_SIZE(o);
        if (repr_put(t, "(", 1) < 0)
            return -1;
        for (Py_ssize_t i = 0; i < n; i++) {
            int rc = i && repr_put(t, ", ", 2) < 0 ? -1 : repr_object(t, PyTuple_GET_ITEM(o, i), 0);
            if (rc < 0)
                return rc;
        }
        return repr_put(t, n == 1 ? ",)" : ")", n == 1 ? 2 : 1);
    }
    PyObject *r = PyObject_Repr(o);
    if (!r)
        return -2;
    Py_ssize_t len;
    const char *s = PyUnicode_AsUTF8AndSize(r, &len);
    int rc = s ? repr_put(t, s, (size_t)len) : -2;
    Py_DECREF(r);
    return rc;
}

static PyObject *repr_join(PyObject *unused, PyObject *items)
{
    PyObject *seq = PySequence_Fast(items, "repr_join() takes a list or a tuple");
    if (!seq)
        return NULL;
    ReprText t = {0};
    int rc = 0;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **its = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n && rc == 0; i++)
        rc = (i && repr_put(&t, ", ", 2) < 0) ? -1 : repr_object(&t, its[i], 1);
    PyObject *res = NULL;
    if (rc == 0)
        res = PyBytes_FromStringAndSize(t.p ? t.p : "", (Py_ssize_t)t.n);
    else if (rc == -1)
        PyErr_NoMemory(); /* -2: the Python error of an object's repr is already set */
    free(t.p);
    Py_DECREF(seq);
    return res;
}
