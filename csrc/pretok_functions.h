/* pretok_functions.h: the module's functions around the pre-tokenizer - init_char_classes (the
 * code point classes from native.py), pretokenize / pretokenize_utf8 (the pieces, for the tests
 * against the `regex` module) and count_pretokens (pretokenize.count_pretokens: counts of pieces).
 * Included once by _bpe_encode.c (static functions; not a separate translation unit). */

static PyObject *init_char_classes(PyObject *mod, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int ok = view.len == N_CODEPOINTS;
    for (Py_ssize_t i = 0; ok && i < view.len; i++)
        ok = ((const uint8_t *)view.buf)[i] <= C_SPACE;
    if (ok) {
        memcpy(char_class, view.buf, N_CODEPOINTS);
        char_class_ready = 1;
        swar_ok = 1; /* the SWAR scan's ASCII letters and digits must be the table's */
        for (int c = 0; c < 0x80; c++) {
            int letter = (c | 0x20) >= 'a' && (c | 0x20) <= 'z', digit = c >= '0' && c <= '9';
            swar_ok &= (char_class[c] == C_LETTER) == letter && (char_class[c] == C_NUMBER) == digit;
        }
        ascii_scan_ok = ascii_scan_check();
    } else {
        PyErr_Format(PyExc_ValueError, "char class table must be 0x110000 bytes with values 0..3 "
                     "(got %zd bytes); use lmforge.tokenizer.native.char_class_table()", view.len);
    }
    PyBuffer_Release(&view);
    return ok ? Py_NewRef(Py_None) : NULL;
}

static PyObject *pretokenize(PyObject *mod, PyObject *text)
{
    Scan sc;
    if (scan_init(&sc, text) < 0)
        return NULL;
    PyObject *list = PyList_New(0);
    for (Py_ssize_t i = 0, e; list && i < sc.n; i = e) {
        e = next_end_any(sc.kind, sc.data, i, sc.n);
        PyObject *piece = PyUnicode_Substring(text, i, e);
        if (!piece || PyList_Append(list, piece) < 0)
            Py_CLEAR(list);
        Py_XDECREF(piece);
    }
    return list;
}

/* The pieces the encoder's scanner (ascii_scan.h / utf8_scan.h) cuts valid UTF-8 into. */
static PyObject *pretokenize_utf8(PyObject *mod, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const uint8_t *d = view.buf;
    size_t n = (size_t)view.len;
    PyObject *list = NULL;
    Py_ssize_t bad = utf8_check(d, n);
    if (bad >= 0) {
        PyErr_Format(PyExc_ValueError, "invalid UTF-8 at byte %zd", bad);
    } else if ((list = PyList_New(0))) {
        PieceIter it;
        piece_iter_init(&it, d, 0, n, d + n);
        for (size_t t; list && it.pos < n; it.pos = t) {
            t = piece_iter_next(&it);
            PyObject *piece = PyBytes_FromStringAndSize((const char *)d + it.pos, t - it.pos);
            if (!piece || PyList_Append(list, piece) < 0)
                Py_CLEAR(list);
            Py_XDECREF(piece);
        }
    }
    PyBuffer_Release(&view);
    return list;
}

static int count_piece(void *vmap, const uint8_t *s, size_t n)
{
    BytesMap *m = vmap;
    uint64_t h = hash_bytes(s, n), c = 0;
    size_t at;
    uint32_t *r = bm_find(m, s, n, h, &at), *v = r ? rec_vals(r) : bm_insert(m, s, n, h, at, 2);
    if (!v)
        return -1;
    if (r)
        memcpy(&c, v, 8);
    c++;
    memcpy(v, &c, 8);
    return 0;
}

/* counts[key] += count for every record of m, in first-seen order. */
static int add_counts(PyObject *counts, BytesMap *m)
{
    for (size_t off = 0; off < m->len; off += rec_words(m->arena[off + 2], 2)) {
        uint32_t *r = m->arena + off;
        uint64_t n;
        memcpy(&n, rec_vals(r), 8);
        PyObject *key = PyBytes_FromStringAndSize((const char *)(r + REC_HEAD), r[2]);
        PyObject *c = PyLong_FromUnsignedLongLong(n), *old = NULL, *sum = NULL;
        if (key && c && ((old = PyDict_GetItemWithError(counts, key)) || !PyErr_Occurred()))
            sum = old ? PyNumber_Add(old, c) : Py_NewRef(c);
        int rc = sum ? PyDict_SetItem(counts, key, sum) : -1;
        Py_XDECREF(key), Py_XDECREF(c), Py_XDECREF(sum);
        if (rc < 0)
            return -1;
    }
    return 0;
}

static PyObject *count_pretokens(PyObject *mod, PyObject *args)
{
    PyObject *text, *counts;
    Scan sc;
    if (!PyArg_ParseTuple(args, "OO!:count_pretokens", &text, &PyDict_Type, &counts) ||
        scan_init(&sc, text) < 0)
        return NULL;
    BytesMap *m = bm_new();
    if (!m)
        return PyErr_NoMemory();
    PyThreadState *ts = sc.n >= NOGIL_MIN_LEN ? PyEval_SaveThread() : NULL;
    int rc = scan(&sc, count_piece, m);
    if (ts)
        PyEval_RestoreThread(ts);
    if (rc < 0 && !sc.err)
        sc.err = ERR_NOMEM;
    if (rc < 0)
        scan_raise(&sc, text);
    else
        rc = add_counts(counts, m);
    free(sc.buf);
    bm_free(m);
    return rc < 0 ? NULL : Py_NewRef(Py_None);
}
