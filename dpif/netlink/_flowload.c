/* dpif.netlink._flowload: add-flows lines -> framed OVS_FLOW_CMD_NEW messages, for the plain common case.
 *
 * The pure-Python parser (dpctl.parse_flow_args) is the reference: every message this emits must be the
 * bytes it gives.  So this reads only the simplest forms it is sure about and stops at the first line that
 * is anything else; the caller hands that line to the Python path and calls again after it.  It knows no
 * OVS attribute by itself: struct attributes come from a table built from flowkey's specs (set_tables),
 * everything else from the Python parser's own memos (attribute text -> bytes), passed in on each call.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "_buf.h"
#include <stdint.h>
#include <string.h>

enum kind { K_ETH, K_IPV4, K_FRAG, K_NUM, K_MEMO };

struct field {
    const char *name; /* "src=" */
    Py_ssize_t namelen;
    int kind, offset, size;
    PyObject *kind_name; /* the value memo's key (flowkey._PARSED_VALUES) */
};

struct sattr {
    const char *prefix; /* "ipv4(" */
    Py_ssize_t plen;
    int type, length, nfields;
    struct field *fields;
};

/* The tables: set once by set_tables() (the strings point into `g_keep`, which holds them alive). */
static struct sattr *g_structs;
static int g_nstructs;
static PyObject *g_keep;
static char g_head[4];
static int g_a_key, g_a_mask, g_a_actions, g_a_ufid;

#define MAX_STRUCT 256

static void free_tables(void)
{
    for (int i = 0; i < g_nstructs; i++)
        PyMem_Free(g_structs[i].fields);
    PyMem_Free(g_structs);
    g_structs = NULL;
    g_nstructs = 0;
    Py_CLEAR(g_keep);
}

static int kind_of(const char *k)
{
    static const char *const num_kinds[] = {"u8u", "u8x", "be16", "be16x", "be32x"};
    if (!strcmp(k, "eth"))
        return K_ETH;
    if (!strcmp(k, "ipv4"))
        return K_IPV4;
    if (!strcmp(k, "frag"))
        return K_FRAG;
    for (size_t i = 0; i < sizeof num_kinds / sizeof num_kinds[0]; i++)
        if (!strcmp(k, num_kinds[i]))
            return K_NUM;
    return K_MEMO;
}

/* set_tables(structs, head, (key, mask, actions, ufid)): structs is a tuple of
 * (prefix, type, length, ((name=, kind, offset, size), ...)). */
static PyObject *set_tables(PyObject *self, PyObject *args)
{
    PyObject *structs, *head;
    int a[4];
    (void)self;
    if (!PyArg_ParseTuple(args, "O!O!(iiii)", &PyTuple_Type, &structs, &PyBytes_Type, &head, &a[0], &a[1],
                          &a[2], &a[3]))
        return NULL;
    if (PyBytes_GET_SIZE(head) != 4) {
        PyErr_SetString(PyExc_ValueError, "the genl header is 4 bytes");
        return NULL;
    }
    free_tables();
    Py_ssize_t n = PyTuple_GET_SIZE(structs);
    g_structs = PyMem_Calloc(n ? n : 1, sizeof *g_structs);
    if (!g_structs)
        return PyErr_NoMemory();
    Py_INCREF(structs);
    g_keep = structs;
    for (Py_ssize_t i = 0; i < n; i++) {
        struct sattr *s = &g_structs[i];
        PyObject *fields;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(structs, i), "s#iiO!", &s->prefix, &s->plen, &s->type, &s->length,
                              &PyTuple_Type, &fields))
            goto fail;
        g_nstructs = (int)i + 1; /* owns s->fields from here, for free_tables */
        if (s->length <= 0 || s->length > MAX_STRUCT) {
            PyErr_SetString(PyExc_ValueError, "struct length out of range");
            goto fail;
        }
        s->nfields = (int)PyTuple_GET_SIZE(fields);
        s->fields = PyMem_Calloc(s->nfields ? s->nfields : 1, sizeof *s->fields);
        if (!s->fields) {
            PyErr_NoMemory();
            goto fail;
        }
        for (int j = 0; j < s->nfields; j++) {
            struct field *f = &s->fields[j];
            const char *kind;
            if (!PyArg_ParseTuple(PyTuple_GET_ITEM(fields, j), "s#Uii", &f->name, &f->namelen, &f->kind_name,
                                  &f->offset, &f->size))
                goto fail;
            if (!(kind = PyUnicode_AsUTF8(f->kind_name)))
                goto fail;
            f->kind = kind_of(kind);
            if (f->offset < 0 || f->size <= 0 || f->size > 16 || f->offset + f->size > s->length
                || (f->kind == K_NUM && f->size > 8) || (f->kind == K_ETH && f->size != 6)
                || (f->kind == K_IPV4 && f->size != 4) || (f->kind == K_FRAG && f->size != 1)) {
                PyErr_SetString(PyExc_ValueError, "bad field layout");
                goto fail;
            }
        }
    }
    memcpy(g_head, PyBytes_AS_STRING(head), 4);
    g_a_key = a[0], g_a_mask = a[1], g_a_actions = a[2], g_a_ufid = a[3];
    Py_RETURN_NONE;
fail:
    free_tables();
    return NULL;
}

/* --- output (struct buf: _buf.h) ------------------------------------------------------------------- */

/* One attribute as wire.attr / flowkey.nla writes it; 1 when too long for its u16 length (Python fails). */
static int put_nla(struct buf *b, int type, const void *data, Py_ssize_t n)
{
    static const char zero[4];
    if (n > 0xFFFF - 4)
        return 1;
    uint16_t hdr[2] = {(uint16_t)(n + 4), (uint16_t)type};
    if (buf_put(b, hdr, 4) < 0 || buf_put(b, data, n) < 0 || buf_put(b, zero, (4 - (n & 3)) & 3) < 0)
        return -1;
    return 0;
}

/* --- value readers (flowkey.Scanner's, for the kinds this reads) ----------------------------------- */

struct text {
    const char *s;
    Py_ssize_t n;
};

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int isdig(char c) { return c >= '0' && c <= '9'; }

/* Scanner.num: [-+]?(0[xX]hex+|0[0-7]*|[1-9][0-9]*), negated and truncated to `bits` (mod 2^64 is exact
 * for any width <= 64). */
static int scan_num(struct text t, Py_ssize_t *pi, int bits, uint64_t *out)
{
    const char *s = t.s;
    Py_ssize_t i = *pi, n = t.n;
    int neg = 0;
    uint64_t v = 0;
    if (i < n && (s[i] == '-' || s[i] == '+'))
        neg = s[i++] == '-';
    if (i + 2 < n && s[i] == '0' && (s[i + 1] == 'x' || s[i + 1] == 'X') && hexval(s[i + 2]) >= 0) {
        for (i += 2; i < n && hexval(s[i]) >= 0; i++)
            v = (v << 4) | (uint64_t)hexval(s[i]);
    } else if (i < n && s[i] == '0') {
        for (i++; i < n && s[i] >= '0' && s[i] <= '7'; i++)
            v = (v << 3) | (uint64_t)(s[i] - '0');
    } else if (i < n && s[i] >= '1' && s[i] <= '9') {
        for (; i < n && isdig(s[i]); i++)
            v = v * 10 + (uint64_t)(s[i] - '0');
    } else {
        return -1;
    }
    if (neg)
        v = (uint64_t)0 - v;
    *out = bits >= 64 ? v : v & (((uint64_t)1 << bits) - 1);
    *pi = i;
    return 0;
}

/* Scanner.mac: six groups of 1-2 hex digits (greedy: backtracking can't help, a ':' must follow). */
static int scan_mac(struct text t, Py_ssize_t *pi, unsigned char *out)
{
    Py_ssize_t i = *pi;
    for (int g = 0; g < 6; g++) {
        if (g && (i >= t.n || t.s[i++] != ':'))
            return -1;
        if (i >= t.n || hexval(t.s[i]) < 0)
            return -1;
        int v = hexval(t.s[i++]);
        if (i < t.n && hexval(t.s[i]) >= 0)
            v = v * 16 + hexval(t.s[i++]);
        out[g] = (unsigned char)v;
    }
    *pi = i;
    return 0;
}

/* Scanner.ip4: four groups of 1-3 digits, each <= 255. */
static int scan_ip4(struct text t, Py_ssize_t *pi, unsigned char *out)
{
    Py_ssize_t i = *pi;
    for (int g = 0; g < 4; g++) {
        if (g && (i >= t.n || t.s[i++] != '.'))
            return -1;
        int v = 0, d = 0;
        for (; d < 3 && i < t.n && isdig(t.s[i]); d++)
            v = v * 10 + (t.s[i++] - '0');
        if (!d || v > 255)
            return -1;
        out[g] = (unsigned char)v;
    }
    *pi = i;
    return 0;
}

/* _scan_masked's frag: up to 7 letters, case-insensitively one of FRAG_NAMES. */
static int scan_frag(struct text t, Py_ssize_t *pi, unsigned char *out)
{
    static const char *const names[] = {"no", "first", "later"};
    char word[8];
    Py_ssize_t i = *pi;
    int len = 0;
    while (len < 7 && i < t.n && ((t.s[i] | 0x20) >= 'a' && (t.s[i] | 0x20) <= 'z'))
        word[len++] = (char)(t.s[i++] | 0x20);
    word[len] = 0;
    for (int k = 0; k < 3; k++)
        if (!strcmp(word, names[k])) {
            *out = (unsigned char)k;
            *pi = i;
            return 0;
        }
    return -1;
}

static void put_be(unsigned char *p, int size, uint64_t v)
{
    for (int k = size - 1; k >= 0; k--, v >>= 8)
        p[k] = (unsigned char)v;
}

/* A memo entry (bytes, bytes[, ...]) whose first two items are `size` bytes each, or NULL. */
static PyObject *pair_of(PyObject *hit, Py_ssize_t tuple_len, Py_ssize_t size)
{
    if (!hit || !PyTuple_CheckExact(hit) || PyTuple_GET_SIZE(hit) != tuple_len)
        return NULL;
    PyObject *k = PyTuple_GET_ITEM(hit, 0), *m = PyTuple_GET_ITEM(hit, 1);
    if (!PyBytes_CheckExact(k) || !PyBytes_CheckExact(m))
        return NULL;
    if (size >= 0 && (PyBytes_GET_SIZE(k) != size || PyBytes_GET_SIZE(m) != size))
        return NULL;
    return hit;
}

/* dict[text[i:j]] (borrowed), NULL on a miss; -1 in *err on a Python error. */
static PyObject *memo_get(PyObject *memo, struct text t, Py_ssize_t i, Py_ssize_t j, int *err)
{
    if (!memo || !PyDict_Check(memo))
        return NULL;
    PyObject *key = PyUnicode_FromStringAndSize(t.s + i, j - i);
    if (!key) {
        *err = -1;
        return NULL;
    }
    PyObject *hit = PyDict_GetItemWithError(memo, key);
    Py_DECREF(key);
    if (!hit && PyErr_Occurred())
        *err = -1;
    return hit;
}

/* Hits of one encode() call by text: lines repeat attributes ("in_port(1)") and action lists, and no
 * Python code runs during a call, so a dict's entries (borrowed) stay put until it returns. */
#define CACHE_SLOTS 64

struct cache {
    struct {
        const char *s;
        Py_ssize_t n;
        PyObject *hit;
    } slot[CACHE_SLOTS];
};

static PyObject *cached_get(struct cache *c, PyObject *memo, struct text t, Py_ssize_t i, Py_ssize_t j, int *err)
{
    uint32_t h = 2166136261u;
    for (Py_ssize_t k = i; k < j; k++)
        h = (h ^ (unsigned char)t.s[k]) * 16777619u;
    h = (h ^ (h >> 16)) % CACHE_SLOTS;
    if (c->slot[h].s && c->slot[h].n == j - i && !memcmp(c->slot[h].s, t.s + i, j - i))
        return c->slot[h].hit;
    PyObject *hit = memo_get(memo, t, i, j, err);
    if (hit) {
        c->slot[h].s = t.s + i;
        c->slot[h].n = j - i;
        c->slot[h].hit = hit;
    }
    return hit;
}

/* An address and its optional "/mask" (absent: exact, all ones), read by `scan` (scan_mac, scan_ip4). */
static int scan_address(struct text t, Py_ssize_t *pi, int (*scan)(struct text, Py_ssize_t *, unsigned char *),
                        size_t n, unsigned char *k, unsigned char *m)
{
    if (scan(t, pi, k) < 0)
        return -1;
    if (*pi < t.n && t.s[*pi] == '/') {
        ++*pi;
        return scan(t, pi, m);
    }
    memset(m, 0xff, n);
    return 0;
}

/* Results of the scanners below: OK, BAIL (not this path's: the caller hands the line to Python), ERR. */
enum { OK = 0, BAIL = 1, ERR = -1 };

/* _scan_value for one field at *pi: the kinds read here directly, the others from the value memo. */
static int scan_value(struct text t, Py_ssize_t *pi, const struct field *f, PyObject *values,
                      unsigned char *key, unsigned char *mask)
{
    unsigned char *k = key + f->offset, *m = mask + f->offset;
    Py_ssize_t i = *pi;
    uint64_t v;
    switch (f->kind) {
    case K_ETH:
        if (scan_address(t, &i, scan_mac, 6, k, m) < 0)
            return BAIL;
        break;
    case K_IPV4:
        if (scan_address(t, &i, scan_ip4, 4, k, m) < 0)
            return BAIL;
        break;
    case K_FRAG:
        if (scan_frag(t, &i, k) < 0)
            return BAIL;
        *m = 0xff;
        break;
    case K_NUM:
        if (scan_num(t, &i, 8 * f->size, &v) < 0)
            return BAIL;
        put_be(k, f->size, v);
        v = ~(uint64_t)0;
        if (i < t.n && t.s[i] == '/') {
            i++;
            if (scan_num(t, &i, 8 * f->size, &v) < 0)
                return BAIL;
        }
        put_be(m, f->size, v);
        break;
    default: {
        /* the memo is keyed by the text up to the next ',' or ')' */
        const char *comma = memchr(t.s + i, ',', t.n - i), *paren = memchr(t.s + i, ')', t.n - i);
        const char *end = comma && (!paren || comma < paren) ? comma : paren;
        int err = 0;
        if (!end)
            return BAIL;
        PyObject *inner = values && PyDict_Check(values) ? PyDict_GetItemWithError(values, f->kind_name) : NULL;
        if (!inner && PyErr_Occurred())
            return ERR;
        PyObject *hit = pair_of(memo_get(inner, t, i, end - t.s, &err), 2, f->size);
        if (err)
            return ERR;
        if (!hit)
            return BAIL;
        memcpy(k, PyBytes_AS_STRING(PyTuple_GET_ITEM(hit, 0)), f->size);
        memcpy(m, PyBytes_AS_STRING(PyTuple_GET_ITEM(hit, 1)), f->size);
        i = end - t.s;
    }
    }
    *pi = i;
    return OK;
}

/* _scan_struct from just after "name(": named fields in any order, to the closing ')'. */
static int scan_struct(struct text t, Py_ssize_t *pi, const struct sattr *sa, PyObject *values, struct buf *kb,
                       struct buf *mb)
{
    unsigned char key[MAX_STRUCT], mask[MAX_STRUCT];
    Py_ssize_t i = *pi;
    memset(key, 0, sa->length);
    memset(mask, 0, sa->length);
    for (;;) {
        const char *eq = memchr(t.s + i, '=', t.n - i);
        const struct field *f = NULL;
        if (eq) {
            Py_ssize_t len = eq + 1 - (t.s + i);
            for (int j = 0; j < sa->nfields; j++)
                if (sa->fields[j].namelen == len && !memcmp(sa->fields[j].name, t.s + i, len)) {
                    f = &sa->fields[j];
                    break;
                }
        }
        if (f) {
            i += f->namelen;
            int r = scan_value(t, &i, f, values, key, mask);
            if (r != OK)
                return r;
        }
        char c = i < t.n ? t.s[i] : 0;
        i++;
        if (c == ',' && f)
            continue;
        if (c != ')')
            return BAIL;
        break;
    }
    int r1 = put_nla(kb, sa->type, key, sa->length);
    int r2 = r1 ? r1 : put_nla(mb, sa->type, mask, sa->length);
    if (r2)
        return r2 < 0 ? ERR : BAIL;
    *pi = i;
    return OK;
}

/* flowkey._field_end: just past the ')' closing the first '(' at or after i, or -1. */
static Py_ssize_t field_end(struct text t, Py_ssize_t i)
{
    const char *open = memchr(t.s + i, '(', t.n - i);
    if (!open)
        return -1;
    int depth = 0;
    for (const char *p = open; p < t.s + t.n; p++) {
        depth += *p == '(' ? 1 : *p == ')' ? -1 : 0;
        if (!depth)
            return p + 1 - t.s;
    }
    return -1;
}

/* flowkey.parse_key over t (the key text after any ufid) into kb/mb. */
static int parse_key(struct text t, PyObject *attrs, PyObject *values, struct cache *cache, struct buf *kb,
                     struct buf *mb)
{
    Py_ssize_t i = 0;
    for (;;) {
        while (i < t.n && (t.s[i] == ',' || t.s[i] == ' '))
            i++;
        if (i >= t.n)
            return OK;
        if (t.n - i >= 5 && !memcmp(t.s + i, "ufid:", 5))
            return BAIL;
        const char *open = memchr(t.s + i, '(', t.n - i);
        if (open) {
            Py_ssize_t plen = open + 1 - (t.s + i);
            for (int j = 0; j < g_nstructs; j++) {
                const struct sattr *sa = &g_structs[j];
                if (sa->plen == plen && !memcmp(sa->prefix, t.s + i, plen)) {
                    Py_ssize_t at = i + plen, kl = kb->len, ml = mb->len;
                    int r = scan_struct(t, &at, sa, values, kb, mb);
                    if (r == ERR)
                        return ERR;
                    if (r == OK) {
                        i = at;
                        goto next;
                    }
                    kb->len = kl, mb->len = ml;
                    break; /* e.g. a value kind without a memo hit: the attribute memo may know it */
                }
            }
        }
        {
            Py_ssize_t end = field_end(t, i);
            int err = 0;
            if (end <= 0)
                return BAIL;
            PyObject *hit = pair_of(cached_get(cache, attrs, t, i, end, &err), 3, -1);
            if (err)
                return ERR;
            if (!hit || !PyTuple_CheckExact(PyTuple_GET_ITEM(hit, 2)) || PyTuple_GET_SIZE(PyTuple_GET_ITEM(hit, 2)))
                return BAIL; /* a miss, or an answer that depended on port names */
            PyObject *k = PyTuple_GET_ITEM(hit, 0), *m = PyTuple_GET_ITEM(hit, 1);
            if (buf_put(kb, PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k)) < 0
                || buf_put(mb, PyBytes_AS_STRING(m), PyBytes_GET_SIZE(m)) < 0)
                return ERR;
            i = end;
        }
    next:;
    }
}

/* dpctl.parse_ufid: "ufid:" and an exact 8-4-4-4-12 UUID -> four host-order u32; then skip ", ". */
static int parse_ufid(struct text *t, unsigned char *ufid)
{
    static const int groups[] = {8, 4, 4, 4, 12};
    uint32_t w[4] = {0};
    int nib = 0;
    Py_ssize_t i = 5;
    for (int g = 0; g < 5; g++) {
        if (g && (i >= t->n || t->s[i++] != '-'))
            return BAIL;
        for (int d = 0; d < groups[g]; d++, nib++) {
            int h = i < t->n ? hexval(t->s[i++]) : -1;
            if (h < 0)
                return BAIL;
            w[nib / 8] = (w[nib / 8] << 4) | (uint32_t)h;
        }
    }
    while (i < t->n && (t->s[i] == ',' || t->s[i] == ' '))
        i++;
    memcpy(ufid, w, 16);
    t->s += i, t->n -= i;
    return OK;
}

/* One line: OK (message appended, or a blank line), BAIL or ERR. */
static int encode_line(PyObject *line, PyObject *attrs, PyObject *actions, PyObject *values, struct cache *cache,
                       struct buf *out, struct buf *kb, struct buf *mb, uint16_t family, uint16_t flags, uint32_t seq,
                       int32_t ifindex, Py_ssize_t *msg_len)
{
    *msg_len = 0;
    if (!PyUnicode_CheckExact(line) || !PyUnicode_IS_ASCII(line))
        return BAIL;
    const char *s = (const char *)PyUnicode_DATA(line);
    Py_ssize_t n = PyUnicode_GET_LENGTH(line);
    if (n && s[n - 1] == '\n')
        n--;
    for (Py_ssize_t i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] > 0x7e || s[i] == '#')
            return BAIL; /* comments, tabs and other whitespace that str.strip() would treat as blanks */
    while (n && s[n - 1] == ' ')
        n--;
    while (n && *s == ' ')
        s++, n--;
    if (!n)
        return OK;
    const char *sp = memchr(s, ' ', n);
    Py_ssize_t word = sp ? sp - s : n, w0 = word;
    const char *comma = memchr(s, ',', word);
    if (comma)
        w0 = comma - s;
    if ((w0 == 3 && !memcmp(s, "add", 3)) || (w0 == 6 && (!memcmp(s, "delete", 6) || !memcmp(s, "modify", 6))))
        return BAIL; /* a command word */
    if (!sp)
        return BAIL; /* no actions: "Failed parsing line number N" */
    struct text key = {s, word}, act = {sp + 1, n - word - 1};
    while (act.n && *act.s == ' ')
        act.s++, act.n--;
    unsigned char ufid[16];
    int has_ufid = key.n >= 5 && !memcmp(key.s, "ufid:", 5);
    if (has_ufid && parse_ufid(&key, ufid) != OK)
        return BAIL;
    kb->len = mb->len = 0;
    int r = parse_key(key, attrs, values, cache, kb, mb);
    if (r != OK)
        return r;
    int err = 0;
    PyObject *hit = cached_get(cache + 1, actions, act, 0, act.n, &err);
    if (err)
        return ERR;
    /* an actions memo entry is (bytes, port answers): reuse only those that asked no port name */
    if (!hit || !PyTuple_CheckExact(hit) || PyTuple_GET_SIZE(hit) != 2 || !PyBytes_CheckExact(PyTuple_GET_ITEM(hit, 0))
        || !PyTuple_CheckExact(PyTuple_GET_ITEM(hit, 1)) || PyTuple_GET_SIZE(PyTuple_GET_ITEM(hit, 1)))
        return BAIL;
    PyObject *acts = PyTuple_GET_ITEM(hit, 0);
    Py_ssize_t start = out->len;
    /* nlmsghdr =IHHII (the length is filled in last), genl header, ovs_header */
    uint32_t len_placeholder = 0, seq_pid[2] = {seq, 0};
    uint16_t type_flags[2] = {family, flags};
    if (buf_put(out, &len_placeholder, 4) < 0 || buf_put(out, type_flags, 4) < 0 || buf_put(out, seq_pid, 8) < 0
        || buf_put(out, g_head, 4) < 0 || buf_put(out, &ifindex, 4) < 0)
        return ERR;
    if ((r = put_nla(out, g_a_key, kb->p, kb->len)) != 0
        || (mb->len && (r = put_nla(out, g_a_mask, mb->p, mb->len)) != 0)
        || (r = put_nla(out, g_a_actions, PyBytes_AS_STRING(acts), PyBytes_GET_SIZE(acts))) != 0
        || (has_ufid && (r = put_nla(out, g_a_ufid, ufid, 16)) != 0)) {
        out->len = start;
        return r < 0 ? ERR : BAIL;
    }
    uint32_t len = (uint32_t)(out->len - start);
    memcpy(out->p + start, &len, 4);
    *msg_len = len;
    return OK;
}

/* encode(lines, start, attrs, actions, values, family, flags, ifindex, seq, max_count, max_bytes)
 *   -> (stop, data, count, last_offset, full)
 * Encodes lines[start:] until one it can't do (lines[stop], for the Python path), max_count messages, or
 * one that would take data past max_bytes (full=True: stop is where to resume).  Messages get seq, seq+1...
 */
static PyObject *encode(PyObject *self, PyObject *args)
{
    PyObject *lines, *attrs, *actions, *values;
    Py_ssize_t start, max_count, max_bytes;
    int family, flags, ifindex;
    unsigned int seq;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!nOOOiiiInn", &PyList_Type, &lines, &start, &attrs, &actions, &values, &family,
                          &flags, &ifindex, &seq, &max_count, &max_bytes))
        return NULL;
    if (!g_structs) {
        PyErr_SetString(PyExc_RuntimeError, "set_tables() first");
        return NULL;
    }
    struct buf out = {0}, kb = {0}, mb = {0};
    struct cache *cache = PyMem_Calloc(2, sizeof *cache); /* attributes, action lists */
    if (!cache)
        return PyErr_NoMemory();
    Py_ssize_t i = start < 0 ? 0 : start, count = 0, last = -1;
    int full = 0;
    PyObject *result = NULL;
    for (; i < PyList_GET_SIZE(lines); i++) {
        Py_ssize_t before = out.len, msg_len;
        if (count >= max_count) {
            full = 1;
            break;
        }
        PyObject *line = PyList_GET_ITEM(lines, i);
        Py_INCREF(line);
        int r = encode_line(line, attrs, actions, values, cache, &out, &kb, &mb, (uint16_t)family, (uint16_t)flags,
                            (uint32_t)(seq + (unsigned int)count), (int32_t)ifindex, &msg_len);
        Py_DECREF(line);
        if (r == ERR)
            goto done;
        if (r == BAIL)
            break;
        if (!msg_len)
            continue; /* a blank line */
        if (out.len > max_bytes) {
            out.len = before;
            full = 1;
            break;
        }
        last = before;
        count++;
    }
    result = Py_BuildValue("(ny#nnO)", i, out.p ? out.p : "", out.len, count, last, full ? Py_True : Py_False);
done:
    PyMem_Free(cache);
    PyMem_Free(out.p);
    PyMem_Free(kb.p);
    PyMem_Free(mb.p);
    return result;
}

static PyMethodDef methods[] = {
    {"set_tables", set_tables, METH_VARARGS, "Install the struct attribute table and the message layout."},
    {"encode", encode, METH_VARARGS, "Encode add-flows lines into framed OVS_FLOW_CMD_NEW messages."},
    {NULL, NULL, 0, NULL},
};

static void free_module(void *m)
{
    (void)m;
    free_tables();
}

static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_flowload", NULL, -1, methods, NULL, NULL, NULL,
                                 free_module};

PyMODINIT_FUNC PyInit__flowload(void) { return PyModule_Create(&mod); }
