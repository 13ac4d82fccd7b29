/* The growable byte buffer of the C fast paths (_dump.c, _flowload.c): PyMem, doubling. */
#ifndef DPIF_NETLINK_BUF_H
#define DPIF_NETLINK_BUF_H

#include <Python.h>
#include <string.h>

struct buf {
    char *p;
    Py_ssize_t len, cap;
};

/* Room for `more` bytes; -1 with MemoryError set. */
static inline int buf_reserve(struct buf *b, Py_ssize_t more)
{
    if (b->len + more <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more)
        cap *= 2;
    char *p = PyMem_Realloc(b->p, cap);
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline int buf_put(struct buf *b, const void *data, Py_ssize_t n)
{
    if (buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->p + b->len, data, n);
    b->len += n;
    return 0;
}

#endif
