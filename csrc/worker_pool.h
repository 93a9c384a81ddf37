/* worker_pool.h: an Encoder's pool of Workers (cache + buffers, reused across calls) and the
 * piece cache shared by every call while share_cache is on.
 * Included once by _bpe_encode.c, after the EncoderObject struct; every function here runs
 * with the GIL held, which is what serializes the pool. */
#ifndef LMFORGE_WORKER_POOL_H
#define LMFORGE_WORKER_POOL_H

/* Workers from the pool (new ones when it is empty), using the shared piece cache while
 * share_cache is on; -1 + MemoryError if out of memory. With the GIL. */
static int take_workers(EncoderObject *self, Worker **ws, int n)
{
    for (int i = 0; i < n; i++) {
        if (!(ws[i] = self->pool_n ? self->pool[--self->pool_n] : worker_new())) {
            while (i--)
                worker_free(ws[i]);
            PyErr_NoMemory();
            return -1;
        }
        ws[i]->cache = self->sharer ? &self->sharer->own : &ws[i]->own;
    }
    self->busy += n;
    return 0;
}

static void pool_put(EncoderObject *self, Worker *w)
{
    worker_trim(w);
    if (self->pool_n < POOL_SIZE)
        self->pool[self->pool_n++] = w;
    else
        worker_free(w);
}

static void end_sharing(EncoderObject *self)
{
    Worker *w = self->sharer;
    self->sharer = NULL, self->unsharing = 0;
    cache_unshare(&w->own);
    pool_put(self, w);
}

static void give_workers(EncoderObject *self, Worker **ws, int n)
{
    for (int i = 0; i < n; i++) {
        ws[i]->cache = &ws[i]->own;
        pool_put(self, ws[i]);
    }
    if ((self->busy -= n) == 0 && self->unsharing)
        end_sharing(self);
}

/* share_cache(nbytes): from now on every call (from any thread) uses one piece cache, sized for
 * about nbytes of text, so threads encoding parts of one corpus do not each BPE-encode the
 * pieces they first meet; the matching unshare_cache() ends it (once the calls in flight are
 * done). Calls nest: the first one sizes the cache, the last unshare_cache ends it. */
static PyObject *Encoder_share_cache(EncoderObject *self, PyObject *arg)
{
    Py_ssize_t nbytes = PyLong_AsSsize_t(arg);
    if (nbytes < 0)
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_ValueError, "nbytes must be >= 0");
    if (!self->sharer) {
        Worker *w = self->pool_n ? self->pool[--self->pool_n] : worker_new();
        if (!w)
            return PyErr_NoMemory();
        cache_share(&w->own, (size_t)nbytes);
        self->sharer = w;
    }
    self->shares++, self->unsharing = 0;
    Py_RETURN_NONE;
}

static PyObject *Encoder_unshare_cache(EncoderObject *self, PyObject *unused)
{
    if (!self->sharer || --self->shares > 0)
        Py_RETURN_NONE;
    if (self->busy)
        self->unsharing = 1;
    else
        end_sharing(self);
    Py_RETURN_NONE;
}

#endif /* LMFORGE_WORKER_POOL_H */
