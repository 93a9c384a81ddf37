/* encode_args.h: what the Encoder's methods share to take their arguments and give results -
 * the itemsize check, the OverflowError of an id too big for uint16, packing ids into bytes, the
 * `specials` sequence parsed for the scanner, and the error of a text that could not be encoded.
 * Included once by _bpe_encode.c (static functions; not a separate translation unit). */

static int check_itemsize(int itemsize)
{
    if (itemsize == 2 || itemsize == 4)
        return 0;
    PyErr_Format(PyExc_ValueError, "itemsize must be 2 (uint16) or 4 (uint32), got %d", itemsize);
    return -1;
}

/* OverflowError for an id that itemsize 2 cannot hold; NULL. */
static PyObject *raise_id_too_big(uint32_t id)
{
    return PyErr_Format(PyExc_OverflowError, "token id %u does not fit in uint16; use "
                        "itemsize=4 (uint32) for vocabularies over 65536 tokens", id);
}

static PyObject *pack_to_bytes(uint32_t *ids, size_t n, int itemsize)
{
    uint32_t bad = 0;
    if (pack_ids_to((uint8_t *)ids, ids, n, itemsize, &bad) < 0)
        return raise_id_too_big(bad);
    return PyBytes_FromStringAndSize((const char *)ids, (Py_ssize_t)(n * itemsize));
}

/* `specials`: None or a sequence of (bytes, id) to split on, in the order to try them (longest
 * first). Fills sp (pointers into the bytes, which the caller keeps alive); 0, or -1 + error. */
static int parse_specials(PyObject *specials, Specials *sp, PyObject **keep)
{
    memset(sp, 0, sizeof *sp);
    *keep = NULL;
    if (!specials || specials == Py_None)
        return 0;
    PyObject *seq = PySequence_Tuple(specials);
    if (!seq)
        return -1;
    *keep = seq;
    sp->n = PyTuple_GET_SIZE(seq);
    sp->s = PyMem_Calloc(sp->n + 1, sizeof *sp->s), sp->len = PyMem_Calloc(sp->n + 1, sizeof(size_t));
    sp->id = PyMem_Calloc(sp->n + 1, sizeof(uint32_t));
    if (!sp->s || !sp->len || !sp->id) {
        PyErr_NoMemory();
        return -1;
    }
    sp->one_first = 1;
    for (Py_ssize_t i = 0; i < sp->n; i++) {
        PyObject *it = PyTuple_GET_ITEM(seq, i), *b, *id;
        unsigned long v;
        if (!PyTuple_Check(it) || PyTuple_GET_SIZE(it) != 2 ||
            !PyBytes_Check(b = PyTuple_GET_ITEM(it, 0)) || PyBytes_GET_SIZE(b) == 0 ||
            !PyLong_Check(id = PyTuple_GET_ITEM(it, 1)) ||
            ((v = PyLong_AsUnsignedLong(id)) == (unsigned long)-1 && PyErr_Occurred()) ||
            v > UINT32_MAX) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "specials[%zd] must be a (non-empty bytes, id) pair "
                         "with 0 <= id < 2**32, got %R", i, it);
            return -1;
        }
        sp->s[i] = (const uint8_t *)PyBytes_AS_STRING(b), sp->len[i] = PyBytes_GET_SIZE(b);
        sp->id[i] = (uint32_t)v;
        sp->first[sp->s[i][0]] = 1;
        sp->one_first &= sp->s[i][0] == sp->s[0][0];
    }
    return 0;
}

static void free_specials(Specials *sp, PyObject *keep)
{
    PyMem_Free((void *)sp->s), PyMem_Free(sp->len), PyMem_Free(sp->id);
    Py_XDECREF(keep);
}

/* Raise the error of a text that failed with sc->err (ERR_SURROGATE: what encoding the
 * pre-token holding the lone surrogate, `piece.encode()`, raises). */
static void raise_text_error(Scan *sc, PyObject *text)
{
    if (sc->err == ERR_SURROGATE) {
        Py_ssize_t i = 0, e = 0;
        while ((e = next_end_any(sc->kind, sc->data, i, sc->n)) <= sc->bad)
            i = e;
        sc->piece_start = i, sc->piece_end = e;
    }
    scan_raise(sc, text);
}
