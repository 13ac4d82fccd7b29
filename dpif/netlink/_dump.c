/* The hot loops of a 100k-flow dump, in C: `dpctl dump-flows` text, and a snapshot's records.
 *
 * The pure-Python codec (dpif/netlink/flowkey.py, flowtext.py) is the reference and does everything
 * these functions decline: they hold no OVS knowledge of their own.  What a flow's text looks like is
 * decided in Python, once per (mask, key layout), as a plan (flowkey.KeyPlan, compiled by
 * dpif/netlink/dumptext.py); here a plan is only executed: constant text, and key bytes at fixed offsets
 * rendered as a handful of value kinds.  Anything unexpected -- a malformed message, a flow without
 * actions, a key whose layout has no plan, an action list or attribute value not yet memoized -- stops
 * the loop at that message, and Python takes it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "_buf.h"
#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>

#define NLMSG_HDRLEN 16
#define NLMSG_MIN_TYPE 16
#define FLOW_HDRLEN 8 /* genlmsghdr + ovs_header */

/* Value kinds of struct members, as dumptext.KIND_CODES numbers them. */
enum { K_FRAG, K_ETH, K_IN6, K_IPV4, K_DEC, K_HEX };

/* Flow attribute numbers and the stats text tables, from Python (setup()). */
static int a_key, a_mask, a_actions, a_ufid, a_stats, a_used, a_tcp_flags;
static PyObject *tcp_letters; /* tuple of (bit, bytes) in OVS's print order */
static PyObject *frag_names;  /* tuple of bytes */

typedef struct buf Out;

static int out_put(Out *o, const char *s, Py_ssize_t n) { return buf_put(o, s, n); }

static int out_bytes(Out *o, PyObject *b)
{
    return out_put(o, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b));
}

static int out_str(Out *o, PyObject *s)
{
    Py_ssize_t n;
    const char *u = PyUnicode_AsUTF8AndSize(s, &n);
    return u ? out_put(o, u, n) : -1;
}

/* %llu, or C's %#llx (no prefix for zero), without printf's parsing. */
static int out_fmt_u64(Out *o, unsigned long long v, int hex)
{
    char tmp[24];
    char *e = tmp + sizeof tmp, *p = e;
    if (hex) {
        do {
            *--p = "0123456789abcdef"[v & 15];
            v >>= 4;
        } while (v);
        if (p[0] != '0' || p + 1 != e) {
            *--p = 'x';
            *--p = '0';
        }
    } else {
        do {
            *--p = (char)('0' + v % 10);
            v /= 10;
        } while (v);
    }
    return out_put(o, p, e - p);
}

static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* scan(buf, off, seq) -> offset of the first message at or after `off` that is not one of the dump's
 * data messages (type >= NLMSG_MIN_TYPE, sequence `seq`, well-formed length), or len(buf). */
static PyObject *scan(PyObject *Py_UNUSED(self), PyObject *args)
{
    Py_buffer b;
    Py_ssize_t off;
    unsigned long seq;
    if (!PyArg_ParseTuple(args, "y*nk", &b, &off, &seq))
        return NULL;
    const unsigned char *p = b.buf;
    Py_ssize_t end = b.len;
    while (off >= 0 && off + NLMSG_HDRLEN <= end) {
        uint32_t len = get_u32(p + off);
        uint16_t type;
        memcpy(&type, p + off + 4, 2);
        if (len < NLMSG_HDRLEN || len > (uint64_t)(end - off) || type < NLMSG_MIN_TYPE
            || get_u32(p + off + 8) != (uint32_t)seq)
            break;
        off += (len + 3) & ~3u;
    }
    if (off > end)
        off = end;
    PyBuffer_Release(&b);
    return PyLong_FromSsize_t(off);
}

/* The bytes a kind reads whatever the member's size says (more than 16 is refused too). */
static Py_ssize_t min_size(int kind)
{
    switch (kind) {
    case K_ETH:
        return 6;
    case K_IN6:
        return 16;
    case K_IPV4:
        return 4;
    default:
        return 1;
    }
}

static int render_member(Out *o, int kind, const unsigned char *v, Py_ssize_t size)
{
    char tmp[INET6_ADDRSTRLEN];
    switch (kind) {
    case K_FRAG: {
        if (v[0] < PyTuple_GET_SIZE(frag_names))
            return out_bytes(o, PyTuple_GET_ITEM(frag_names, v[0]));
        return out_put(o, "<error>", 7);
    }
    case K_ETH: {
        int n = snprintf(tmp, sizeof tmp, "%02x:%02x:%02x:%02x:%02x:%02x", v[0], v[1], v[2], v[3], v[4],
                         v[5]);
        return out_put(o, tmp, n);
    }
    case K_IN6:
        if (!inet_ntop(AF_INET6, v, tmp, sizeof tmp))
            return 1;
        return out_put(o, tmp, strlen(tmp));
    case K_IPV4:
        for (int i = 0; i < 4; i++)
            if ((i && out_put(o, ".", 1) < 0) || out_fmt_u64(o, v[i], 0) < 0)
                return -1;
        return 0;
    case K_DEC:
    case K_HEX: {
        unsigned long long x = 0;
        for (Py_ssize_t i = 0; i < size; i++)
            x = (x << 8) | v[i];
        return out_fmt_u64(o, x, kind == K_HEX);
    }
    }
    return 1;
}

/* What the previous flow of this call looked up, by content: consecutive flows nearly always share the
 * mask, the actions and most shown values, so those skip building a bytes object and a dict lookup.
 * Pointers are into the caller's buffer and references are borrowed from the plans and memos, which no
 * code changes during the call. */
#define MAX_SLOTS 64
typedef struct {
    const unsigned char *mask;
    Py_ssize_t mlen, klen;
    PyObject *plan;
    const unsigned char *actions;
    Py_ssize_t alen;
    PyObject *atext;
    const unsigned char *val[MAX_SLOTS];
    Py_ssize_t vlen[MAX_SLOTS];
    PyObject *vtext[MAX_SLOTS];
} Prev;

static int same(const unsigned char *a, Py_ssize_t alen, const unsigned char *b, Py_ssize_t blen)
{
    return a && alen == blen && !memcmp(a, b, alen);
}

/* One shown attribute: (prefix, start, end, members, tail, memo).  `members`, a tuple of (text, kind,
 * offset, size), renders a struct attribute; otherwise its text is memo[value bytes].  0 = done, 1 = can't
 * (Python's turn), -1 = error. */
static int render_slot(Out *o, PyObject *slot, const unsigned char *key, Py_ssize_t klen, Prev *prev,
                       Py_ssize_t i)
{
    PyObject *prefix = PyTuple_GET_ITEM(slot, 0);
    Py_ssize_t start = PyLong_AsSsize_t(PyTuple_GET_ITEM(slot, 1));
    Py_ssize_t end = PyLong_AsSsize_t(PyTuple_GET_ITEM(slot, 2));
    PyObject *members = PyTuple_GET_ITEM(slot, 3);
    if (start < 0 || end < start || end > klen)
        return PyErr_Occurred() ? -1 : 1;
    if (out_bytes(o, prefix) < 0)
        return -1;
    if (members != Py_None) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(members); i++) {
            PyObject *m = PyTuple_GET_ITEM(members, i);
            Py_ssize_t moff = PyLong_AsSsize_t(PyTuple_GET_ITEM(m, 2));
            Py_ssize_t msize = PyLong_AsSsize_t(PyTuple_GET_ITEM(m, 3));
            int kind = (int)PyLong_AsLong(PyTuple_GET_ITEM(m, 1));
            if (moff < 0 || msize < min_size(kind) || msize > 16 || start + moff + msize > end)
                return PyErr_Occurred() ? -1 : 1;
            if (out_bytes(o, PyTuple_GET_ITEM(m, 0)) < 0)
                return -1;
            int r = render_member(o, kind, key + start + moff, msize);
            if (r)
                return r;
        }
        return out_bytes(o, PyTuple_GET_ITEM(slot, 4));
    }
    PyObject *memo = PyTuple_GET_ITEM(slot, 5);
    const unsigned char *val = key + start;
    if (i < MAX_SLOTS && same(prev->val[i], prev->vlen[i], val, end - start))
        return out_str(o, prev->vtext[i]);
    PyObject *v = PyBytes_FromStringAndSize((const char *)val, end - start);
    if (!v)
        return -1;
    PyObject *text = PyDict_GetItemWithError(memo, v); /* borrowed */
    Py_DECREF(v);
    if (!text)
        return PyErr_Occurred() ? -1 : 1;
    if (i < MAX_SLOTS) {
        prev->val[i] = val;
        prev->vlen[i] = end - start;
        prev->vtext[i] = text;
    }
    return out_str(o, text);
}

static int render_stats(Out *o, unsigned long long packets, unsigned long long nbytes, long long used,
                        long long now_ms, unsigned tcp_flags)
{
    char tmp[96];
    if (out_put(o, "packets:", 8) < 0 || out_fmt_u64(o, packets, 0) < 0 || out_put(o, ", bytes:", 8) < 0
        || out_fmt_u64(o, nbytes, 0) < 0 || out_put(o, ", used:", 7) < 0)
        return -1;
    if (used) {
        int n = snprintf(tmp, sizeof tmp, "%.3fs", (double)(now_ms - used) / 1000.0);
        if (out_put(o, tmp, n) < 0)
            return -1;
    } else if (out_put(o, "never", 5) < 0)
        return -1;
    if (tcp_flags) {
        if (out_put(o, ", flags:", 8) < 0)
            return -1;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(tcp_letters); i++) {
            PyObject *e = PyTuple_GET_ITEM(tcp_letters, i);
            if ((tcp_flags & PyLong_AsUnsignedLong(PyTuple_GET_ITEM(e, 0))) && out_bytes(o, PyTuple_GET_ITEM(e, 1)) < 0)
                return -1;
        }
    }
    return 0;
}

static int render_ufid(Out *o, const unsigned char *u, Py_ssize_t n)
{
    unsigned char w16[16] = {0};
    uint32_t w[4];
    char tmp[48];
    memcpy(w16, u, n < 16 ? n : 16);
    memcpy(w, w16, 16);
    int len = snprintf(tmp, sizeof tmp, "ufid:%08x-%04x-%04x-%04x-%04x%08x, ", w[0], w[1] >> 16, w[1] & 0xFFFF,
                       w[2] >> 16, w[2] & 0xFFFF, w[3]);
    return out_put(o, tmp, len);
}

/* A flow message's attributes, pointers into the message. */
typedef struct {
    const unsigned char *key, *mask, *actions, *ufid;
    Py_ssize_t klen, mlen, alen, ulen;
    unsigned long long packets, nbytes, used;
    unsigned tcp_flags;
} FlowMsg;

/* One flow message's payload (after the nlmsghdr) into `f`, as messages.decode_flow_row reads it: 0, or 1
 * when it is malformed (the Python decoder says how). */
static int parse_flow(const unsigned char *p, Py_ssize_t n, FlowMsg *f)
{
    memset(f, 0, sizeof *f);
    if (n < FLOW_HDRLEN)
        return 1;
    Py_ssize_t off = FLOW_HDRLEN;
    while (off < n) {
        uint16_t alen16, type;
        if (n - off < 4)
            return 1;
        memcpy(&alen16, p + off, 2);
        memcpy(&type, p + off + 2, 2);
        type &= 0x3FFF;
        if (alen16 < 4 || alen16 > n - off)
            return 1;
        const unsigned char *v = p + off + 4;
        Py_ssize_t vlen = alen16 - 4;
        off += (alen16 + 3) & ~3;
        if (type == a_key) {
            f->key = v;
            f->klen = vlen;
        } else if (type == a_mask) {
            f->mask = v;
            f->mlen = vlen;
        } else if (type == a_actions) {
            f->actions = v;
            f->alen = vlen;
        } else if (type == a_ufid) {
            f->ufid = v;
            f->ulen = vlen;
        } else if (type == a_stats) {
            if (vlen < 16)
                return 1;
            memcpy(&f->packets, v, 8);
            memcpy(&f->nbytes, v + 8, 8);
        } else if (type == a_used) {
            if (vlen != 8)
                return 1;
            memcpy(&f->used, v, 8);
        } else if (type == a_tcp_flags) {
            if (vlen != 1)
                return 1;
            f->tcp_flags = v[0];
        }
    }
    return 0;
}

/* One flow message (payload after the nlmsghdr) as a line.  0 = written, 1 = Python's turn, -1 = error. */
static int format_one(Out *o, const unsigned char *p, Py_ssize_t n, PyObject *plans, PyObject *actions_memo,
                      int verbose, long long now_ms, Prev *prev)
{
    FlowMsg fm;
    if (parse_flow(p, n, &fm))
        return 1;
    const unsigned char *key = fm.key, *mask = fm.mask, *actions = fm.actions, *ufid = fm.ufid;
    Py_ssize_t klen = fm.klen, mlen = fm.mlen, alen = fm.alen, ulen = fm.ulen;
    unsigned long long packets = fm.packets, nbytes = fm.nbytes;
    long long used = (long long)fm.used;
    unsigned tcp_flags = fm.tcp_flags;
    if (!key || !klen || !actions)
        return 1;

    PyObject *plan; /* borrowed: (checks, slots, suffix) */
    if (prev->plan && klen == prev->klen && (mask ? same(prev->mask, prev->mlen, mask, mlen) : !prev->mask)) {
        plan = prev->plan;
    } else {
        PyObject *mobj = mask ? PyBytes_FromStringAndSize((const char *)mask, mlen) : Py_NewRef(Py_None);
        if (!mobj)
            return -1;
        PyObject *pk = Py_BuildValue("(Nn)", mobj, klen);
        if (!pk)
            return -1;
        plan = PyDict_GetItemWithError(plans, pk);
        Py_DECREF(pk);
        if (!plan)
            return PyErr_Occurred() ? -1 : 1;
        memset(prev, 0, sizeof *prev);
        prev->plan = plan;
        prev->mask = mask;
        prev->mlen = mlen;
        prev->klen = klen;
    }
    PyObject *checks = PyTuple_GET_ITEM(plan, 0);
    const unsigned char *c = (const unsigned char *)PyBytes_AS_STRING(checks);
    for (Py_ssize_t i = 0; i + 8 <= PyBytes_GET_SIZE(checks); i += 8) {
        uint32_t at = get_u32(c + i);
        if (at + 4 > (uint64_t)klen || get_u32(key + at) != get_u32(c + i + 4))
            return 1;
    }

    PyObject *atext;
    if (!alen) {
        atext = NULL;
    } else if (same(prev->actions, prev->alen, actions, alen)) {
        atext = prev->atext;
    } else {
        PyObject *ab = PyBytes_FromStringAndSize((const char *)actions, alen);
        if (!ab)
            return -1;
        atext = PyDict_GetItemWithError(actions_memo, ab); /* borrowed */
        Py_DECREF(ab);
        if (!atext)
            return PyErr_Occurred() ? -1 : 1;
        prev->actions = actions;
        prev->alen = alen;
        prev->atext = atext;
    }

    Py_ssize_t mark = o->len;
    int r = 0;
    if (verbose && ufid && ulen)
        r = render_ufid(o, ufid, ulen);
    PyObject *slots = PyTuple_GET_ITEM(plan, 1);
    for (Py_ssize_t i = 0; !r && i < PyTuple_GET_SIZE(slots); i++)
        r = render_slot(o, PyTuple_GET_ITEM(slots, i), key, klen, prev, i);
    if (!r)
        r = out_bytes(o, PyTuple_GET_ITEM(plan, 2));
    if (!r)
        r = out_put(o, ", ", 2);
    if (!r)
        r = render_stats(o, packets, nbytes, used, now_ms, tcp_flags);
    if (!r && verbose)
        r = out_put(o, ", dp:ovs", 8);
    if (!r)
        r = out_put(o, ", actions:", 10);
    if (!r)
        r = atext ? out_str(o, atext) : out_put(o, "drop", 4);
    if (!r)
        r = out_put(o, "\n", 1);
    if (r)
        o->len = mark; /* nothing of a line Python takes over */
    return r;
}

/* format_flows(run, off, plans, actions_memo, verbose, now_ms) -> (text, off): the lines of the run's
 * flow messages from `off` on, up to the end or the first message Python must take (at the returned
 * offset).  `run` holds only data messages (scan() found them); `actions_memo` maps action bytes to their
 * text (the caller keeps one per port-name setting). */
static PyObject *format_flows(PyObject *Py_UNUSED(self), PyObject *args)
{
    Py_buffer b;
    Py_ssize_t off;
    PyObject *plans, *actions_memo;
    int verbose;
    long long now_ms;
    if (!PyArg_ParseTuple(args, "y*nO!O!pL", &b, &off, &PyDict_Type, &plans, &PyDict_Type, &actions_memo,
                          &verbose, &now_ms))
        return NULL;
    if (!tcp_letters || !frag_names) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_RuntimeError, "_dump.setup() was not called");
        return NULL;
    }
    const unsigned char *p = b.buf;
    Py_ssize_t end = b.len;
    Out o = {0};
    Prev *prev = PyMem_Calloc(1, sizeof(Prev));
    if (!prev) {
        PyBuffer_Release(&b);
        return PyErr_NoMemory();
    }
    int r = 0;
    while (off >= 0 && off + NLMSG_HDRLEN <= end) {
        uint32_t len = get_u32(p + off);
        if (len < NLMSG_HDRLEN || len > (uint64_t)(end - off))
            break;
        r = format_one(&o, p + off + NLMSG_HDRLEN, len - NLMSG_HDRLEN, plans, actions_memo, verbose, now_ms,
                       prev);
        if (r)
            break;
        off += (len + 3) & ~3u;
    }
    PyMem_Free(prev);
    PyBuffer_Release(&b);
    PyObject *res = NULL;
    if (r >= 0) {
        PyObject *text = PyUnicode_DecodeUTF8(o.p ? o.p : "", o.len, "strict");
        if (text)
            res = Py_BuildValue("(Nn)", text, off > end ? end : off);
    }
    PyMem_Free(o.p);
    return res;
}

/* A tuple subclass instance (a NamedTuple: Flow, FlowStats) of n items, the references stolen; NULL if
 * any item is NULL.  No Python __new__ runs: the dump builds one per flow. */
static PyObject *record(PyTypeObject *type, Py_ssize_t n, PyObject **items)
{
    PyObject *t = NULL;
    for (Py_ssize_t i = 0; i < n; i++)
        if (!items[i])
            goto fail;
    t = type->tp_alloc(type, n);
    if (!t)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++)
        PyTuple_SET_ITEM(t, i, items[i]);
    return t;
fail:
    for (Py_ssize_t i = 0; i < n; i++)
        Py_XDECREF(items[i]);
    return NULL;
}

static PyObject *bytes_or_none(const unsigned char *v, Py_ssize_t n)
{
    return v ? PyBytes_FromStringAndSize((const char *)v, n) : Py_NewRef(Py_None);
}

/* One flow message's payload as a Flow, as messages.decode_flow_row reads it; Py_None (a new reference)
 * when Python must take it: malformed, or its actions left out of the dump. */
static PyObject *flow_record(const unsigned char *p, Py_ssize_t n, PyTypeObject *flow_type,
                             PyTypeObject *stats_type, PyObject *no_stats)
{
    FlowMsg m;
    if (parse_flow(p, n, &m) || !m.actions)
        Py_RETURN_NONE;
    PyObject *stats;
    if (m.packets || m.nbytes || m.used || m.tcp_flags) {
        PyObject *s[4] = {PyLong_FromUnsignedLongLong(m.packets), PyLong_FromUnsignedLongLong(m.nbytes),
                          PyLong_FromUnsignedLongLong(m.used), PyLong_FromUnsignedLong(m.tcp_flags)};
        stats = record(stats_type, 4, s);
    } else {
        stats = Py_NewRef(no_stats);
    }
    PyObject *f[5] = {PyBytes_FromStringAndSize(m.key ? (const char *)m.key : "", m.klen),
                      bytes_or_none(m.mask, m.mlen), bytes_or_none(m.actions, m.alen),
                      bytes_or_none(m.ufid, m.ulen), stats};
    return record(flow_type, 5, f);
}

/* flow_records(run, off, Flow, FlowStats, no_stats) -> (flows, off): the run's flow messages from `off` as
 * Flow records, up to the run's end or the first message Python must take (at the returned offset). */
static PyObject *flow_records(PyObject *Py_UNUSED(self), PyObject *args)
{
    Py_buffer b;
    Py_ssize_t off;
    PyTypeObject *flow_type, *stats_type;
    PyObject *no_stats;
    if (!PyArg_ParseTuple(args, "y*nO!O!O", &b, &off, &PyType_Type, &flow_type, &PyType_Type, &stats_type,
                          &no_stats))
        return NULL;
    if (!PyType_IsSubtype(flow_type, &PyTuple_Type) || !PyType_IsSubtype(stats_type, &PyTuple_Type)) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_TypeError, "flow_records: the record types must be tuples");
        return NULL;
    }
    PyObject *flows = PyList_New(0);
    const unsigned char *p = b.buf;
    Py_ssize_t end = b.len;
    while (flows && off >= 0 && off + NLMSG_HDRLEN <= end) {
        uint32_t len = get_u32(p + off);
        if (len < NLMSG_HDRLEN || len > (uint64_t)(end - off))
            break;
        PyObject *f = flow_record(p + off + NLMSG_HDRLEN, len - NLMSG_HDRLEN, flow_type, stats_type,
                                  no_stats);
        if (f == Py_None) {
            Py_DECREF(f);
            break;
        }
        if (!f || PyList_Append(flows, f) < 0) {
            Py_XDECREF(f);
            Py_CLEAR(flows);
            break;
        }
        Py_DECREF(f);
        off += (len + 3) & ~3u;
    }
    PyBuffer_Release(&b);
    return flows ? Py_BuildValue("(Nn)", flows, off > end ? end : off) : NULL;
}

/* One field of a snapshot record: `v` itself, or its interned copy from `memo` (shared) while `memo` has
 * fewer than `limit` entries, or once it has it.  A new reference; NULL with an error set. */
static PyObject *interned(PyObject *memo, PyObject *v, Py_ssize_t limit)
{
    if (v == Py_None)
        return Py_NewRef(v);
    PyObject *got = PyDict_Size(memo) < limit ? PyDict_SetDefault(memo, v, v)
                                              : PyDict_GetItemWithError(memo, v);
    if (!got && PyErr_Occurred())
        return NULL;
    return Py_NewRef(got ? got : v);
}

/* stateless(flows, Flow, no_stats, masks, actions, limit) -> (records, used): the flows as a snapshot keeps
 * them (dumptext.stateless is the reference): no stats, masks interned in `masks`, actions in `actions`
 * while it has fewer than `limit`; and each flow's used time. */
static PyObject *stateless(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *flows, *no_stats, *masks, *shared;
    PyTypeObject *flow_type;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "O!O!OO!O!n", &PyList_Type, &flows, &PyType_Type, &flow_type, &no_stats,
                          &PyDict_Type, &masks, &PyDict_Type, &shared, &limit))
        return NULL;
    if (!PyType_IsSubtype(flow_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "stateless: the record type must be a tuple");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(flows);
    PyObject *records = PyList_New(n), *used = PyList_New(n);
    for (Py_ssize_t i = 0; records && used && i < n; i++) {
        PyObject *f = PyList_GET_ITEM(flows, i), *stats;
        if (!PyTuple_Check(f) || PyTuple_GET_SIZE(f) != 5 || !PyTuple_Check(stats = PyTuple_GET_ITEM(f, 4))
            || PyTuple_GET_SIZE(stats) < 3) {
            PyErr_SetString(PyExc_TypeError, "stateless: a flow is a Flow record with its FlowStats");
            Py_CLEAR(records);
            break;
        }
        PyObject *items[5] = {Py_NewRef(PyTuple_GET_ITEM(f, 0)),
                              interned(masks, PyTuple_GET_ITEM(f, 1), PY_SSIZE_T_MAX),
                              interned(shared, PyTuple_GET_ITEM(f, 2), limit),
                              Py_NewRef(PyTuple_GET_ITEM(f, 3)), Py_NewRef(no_stats)};
        PyObject *r = record(flow_type, 5, items);
        if (!r) {
            Py_CLEAR(records);
            break;
        }
        PyList_SET_ITEM(records, i, r);
        PyList_SET_ITEM(used, i, Py_NewRef(PyTuple_GET_ITEM(stats, 2)));
    }
    if (!records || !used) {
        Py_XDECREF(records);
        Py_XDECREF(used);
        return NULL;
    }
    return Py_BuildValue("(NN)", records, used);
}

/* bytes as a JSON string of hex, None as null. */
static int out_hex(Out *o, PyObject *v)
{
    if (v == Py_None)
        return out_put(o, "null", 4);
    if (!PyBytes_Check(v)) {
        PyErr_SetString(PyExc_TypeError, "json_lines: a flow's fields are bytes or None");
        return -1;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(v);
    const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(v);
    if (buf_reserve(o, 2 * n + 2) < 0)
        return -1;
    static char pairs[512]; /* "000102...ff": a byte's two digits in one copy */
    if (!pairs[1])
        for (int i = 0; i < 256; i++) {
            pairs[2 * i] = "0123456789abcdef"[i >> 4];
            pairs[2 * i + 1] = "0123456789abcdef"[i & 15];
        }
    char *d = o->p + o->len;
    *d++ = '"';
    for (Py_ssize_t i = 0; i < n; i++, d += 2)
        memcpy(d, pairs + 2 * b[i], 2);
    *d++ = '"';
    o->len = d - o->p;
    return 0;
}

#define PUT(o, lit) out_put(o, lit, sizeof lit - 1)

/* json_lines(flows, masks) -> bytes: the flows (Flow records: key, mask, actions, ufid first) as the
 * snapshot file's lines, joined by ",\n", each as dumptext.flow_json writes it (the reference): hex, the
 * mask as its number in the dict `masks`. */
static int out_mask(Out *o, PyObject *masks, PyObject *mask)
{
    if (mask == Py_None)
        return out_put(o, "null", 4);
    PyObject *n = PyDict_GetItemWithError(masks, mask);
    if (!n) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_KeyError, "json_lines: a flow's mask is not in the mask table");
        return -1;
    }
    long long v = PyLong_AsLongLong(n);
    if (v < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "json_lines: a mask's number is negative");
        return -1;
    }
    return out_fmt_u64(o, (unsigned long long)v, 0);
}

static PyObject *json_lines(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *arg, *masks;
    if (!PyArg_ParseTuple(args, "OO!", &arg, &PyDict_Type, &masks))
        return NULL;
    PyObject *seq = PySequence_Fast(arg, "json_lines: a sequence of flows");
    if (!seq)
        return NULL;
    Out o = {0};
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int r = 0;
    for (Py_ssize_t i = 0; i < n && r >= 0; i++) {
        PyObject *f = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(f) || PyTuple_GET_SIZE(f) < 4) {
            PyErr_SetString(PyExc_TypeError, "json_lines: a flow is a Flow record");
            r = -1;
            break;
        }
        PyObject *key = PyTuple_GET_ITEM(f, 0);
        if (key == Py_None) {
            PyErr_SetString(PyExc_TypeError, "json_lines: a flow's key is bytes");
            r = -1;
            break;
        }
        if ((i && PUT(&o, ",\n")) || PUT(&o, "{\"actions\": ") || out_hex(&o, PyTuple_GET_ITEM(f, 2))
            || PUT(&o, ", \"key\": ") || out_hex(&o, key) || PUT(&o, ", \"mask\": ")
            || out_mask(&o, masks, PyTuple_GET_ITEM(f, 1)) || PUT(&o, ", \"ufid\": ")
            || out_hex(&o, PyTuple_GET_ITEM(f, 3)) || PUT(&o, "}"))
            r = -1;
    }
    Py_DECREF(seq);
    PyObject *res = r < 0 ? NULL : PyBytes_FromStringAndSize(o.p ? o.p : "", o.len);
    PyMem_Free(o.p);
    return res;
}

/* setup(flow_attrs, tcp_letters, frag_names): the numbers of the flow attributes (key, mask, actions,
 * ufid, stats, used, tcp_flags), the TCP flag letters as ((bit, bytes), ...) in print order, and the
 * frag names (bytes) by value. */
static PyObject *setup(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *letters, *frags;
    if (!PyArg_ParseTuple(args, "(iiiiiii)O!O!", &a_key, &a_mask, &a_actions, &a_ufid, &a_stats, &a_used,
                          &a_tcp_flags, &PyTuple_Type, &letters, &PyTuple_Type, &frags))
        return NULL;
    Py_XSETREF(tcp_letters, Py_NewRef(letters));
    Py_XSETREF(frag_names, Py_NewRef(frags));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"setup", setup, METH_VARARGS, "setup(flow_attrs, tcp_letters, frag_names)"},
    {"scan", scan, METH_VARARGS, "scan(buf, off, seq) -> end of the run of the dump's data messages"},
    {"format_flows", format_flows, METH_VARARGS,
     "format_flows(run, off, plans, actions_memo, verbose, now_ms) -> (text, off)"},
    {"stateless", stateless, METH_VARARGS,
     "stateless(flows, Flow, no_stats, masks, actions, limit) -> (records, used)"},
    {"json_lines", json_lines, METH_VARARGS, "json_lines(flows, masks) -> the snapshot file's lines"},
    {"flow_records", flow_records, METH_VARARGS,
     "flow_records(run, off, Flow, FlowStats, no_stats) -> (flows, off)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef mod = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_dump",
    .m_doc = "dump-flows hot loops (see _dump.c)",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__dump(void) { return PyModule_Create(&mod); }
