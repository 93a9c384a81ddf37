/* encoder_build.h: an Encoder's tables from Python's vocab dict and merges list, with the errors
 * a user can act on (which byte has no token, which merge makes a token not in vocab).
 * Included once by _bpe_encode.c, after the EncoderObject struct. */
#ifndef LMFORGE_ENCODER_BUILD_H
#define LMFORGE_ENCODER_BUILD_H

/* inv[b] as a uint32 id: 1 if found, 0 if absent, -1 on error. */
static int inv_get(PyObject *inv, PyObject *b, uint32_t *id)
{
    PyObject *v = PyDict_GetItemWithError(inv, b);
    if (!v)
        return PyErr_Occurred() ? -1 : 0;
    *id = (uint32_t)PyLong_AsUnsignedLong(v);
    return 1;
}

/* int objects for ids 0..max_id, so that encode() allocates no ints. */
static int make_int_table(EncoderObject *self, size_t max_id)
{
    if (!(self->id_obj = PyMem_Calloc(max_id + 1, sizeof(PyObject *)))) {
        PyErr_NoMemory();
        return -1;
    }
    for (; self->n_id_obj <= max_id; self->n_id_obj++)
        if (!(self->id_obj[self->n_id_obj] = PyLong_FromSize_t(self->n_id_obj)))
            return -1;
    return 0;
}

/* bytes -> id (the last id wins if bytes repeat); fills byte_id and the id -> int table. */
static PyObject *invert_vocab(EncoderObject *self, PyObject *vocab)
{
    if (!PyDict_Check(vocab))
        return PyErr_Format(PyExc_TypeError, "vocab must be a dict[int, bytes], not %.100s",
                            Py_TYPE(vocab)->tp_name);
    PyObject *inv = PyDict_New(), *k, *v;
    Py_ssize_t pos = 0;
    unsigned long max_id = 0;
    while (inv && PyDict_Next(vocab, &pos, &k, &v)) {
        unsigned long id = PyLong_Check(k) ? PyLong_AsUnsignedLong(k) : 0;
        if (!PyLong_Check(k) || !PyBytes_Check(v) || (id == (unsigned long)-1 && PyErr_Occurred())
            || id >= DEAD) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "vocab entries must be int id (0 <= id < 2**32 - 1) "
                         "-> bytes; got %R: %R", k, v);
            Py_CLEAR(inv);
        } else if (PyDict_SetItem(inv, v, k) < 0) {
            Py_CLEAR(inv);
        }
        max_id = id > max_id ? id : max_id;
    }
    self->max_id = (uint32_t)max_id;
    for (int b = 0; inv && b < 256; b++) {
        char c = (char)b;
        PyObject *key = PyBytes_FromStringAndSize(&c, 1);
        int r = key ? inv_get(inv, key, &self->bpe.byte_id[b]) : -1;
        Py_XDECREF(key);
        if (r == 0)
            PyErr_Format(PyExc_ValueError, "vocab has no token for the single byte 0x%02x; "
                         "byte-level BPE needs all 256 single-byte tokens", b);
        if (r <= 0)
            Py_CLEAR(inv);
    }
    if (inv && max_id < (1ul << 24) && max_id <= 2 * (size_t)PyDict_GET_SIZE(vocab) + 1024 &&
        make_int_table(self, max_id) < 0)
        Py_CLEAR(inv);
    return inv;
}

/* Insert merge `rank` (a, b) into the pair table; a pair already present keeps its lower rank. */
static int add_merge(EncoderObject *self, PyObject *inv, Py_ssize_t rank, PyObject *item)
{
    PyObject *a, *b;
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 ||
        !PyBytes_Check(a = PyTuple_GET_ITEM(item, 0)) || !PyBytes_Check(b = PyTuple_GET_ITEM(item, 1))) {
        PyErr_Format(PyExc_TypeError, "merges[%zd] must be a (bytes, bytes) tuple, got %R", rank,
                     item);
        return -1;
    }
    PyObject *ab = PyBytes_FromStringAndSize(NULL, PyBytes_GET_SIZE(a) + PyBytes_GET_SIZE(b));
    if (!ab)
        return -1;
    memcpy(PyBytes_AS_STRING(ab), PyBytes_AS_STRING(a), PyBytes_GET_SIZE(a));
    memcpy(PyBytes_AS_STRING(ab) + PyBytes_GET_SIZE(a), PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b));
    uint32_t l = 0, r = 0, m = 0;
    int rm = inv_get(inv, ab, &m), rl = rm > 0 ? inv_get(inv, a, &l) : 0;
    int rr = rl > 0 ? inv_get(inv, b, &r) : 0;
    if (rm == 0)
        PyErr_Format(PyExc_ValueError, "merges[%zd] = %R: the merged token %R is not in vocab",
                     rank, item, ab);
    Py_DECREF(ab);
    if (rm <= 0 || rl < 0 || rr < 0)
        return -1;
    if (rl == 0 || rr == 0) /* a part missing from vocab: this pair can never occur */
        return 0;
    pair_map_add(&self->bpe.pairs, l, r, (uint32_t)rank, m);
    return 0;
}

static int encoder_build(EncoderObject *self, PyObject *vocab, PyObject *merges)
{
    PyObject *inv = invert_vocab(self, vocab);
    if (!inv)
        return -1;
    PyObject *seq = PySequence_Fast(merges, "merges must be a list of (bytes, bytes) tuples");
    int rc = seq ? 0 : -1;
    Py_ssize_t n = seq ? PySequence_Fast_GET_SIZE(seq) : 0;
    if (n >= (Py_ssize_t)DEAD) {
        PyErr_SetString(PyExc_ValueError, "too many merges (at most 2**32 - 2)");
        rc = -1;
    }
    if (!rc && pair_map_init(&self->bpe.pairs, (size_t)n, self->max_id) < 0) {
        PyErr_NoMemory();
        rc = -1;
    }
    for (Py_ssize_t i = 0; !rc && i < n; i++)
        rc = add_merge(self, inv, i, PySequence_Fast_GET_ITEM(seq, i));
    if (!rc && bpe_init_byte_pairs(&self->bpe) < 0) {
        PyErr_NoMemory();
        rc = -1;
    }
    Py_XDECREF(seq);
    Py_DECREF(inv);
    return rc;
}

#endif /* LMFORGE_ENCODER_BUILD_H */
