/* The gate's per-post fast path, in C (optional: streams/gate/native.py builds it, and the
 * gate decides every post in Python when it is missing or disabled).
 *
 * FastGate.run(messages) goes through a batch of internal records in order. A record
 * it can decide entirely -- a post forwarded in the packed source header, written with
 * the current Post schema in its canonical encoding (what fastavro writes for its
 * values: the bytes copied into its outputs are those), no longer than max_post_bytes,
 * whose ids and country pass a conservative check, of a user of the partition it
 * arrived on (Java's murmur2), that is the next expected offset of its partition, and
 * that is published or blocked (not retracted) -- it decides here: the same reads and
 * writes, in the same order, with the same bytes and the same handling of a failed
 * write as Processor._post_as_bytes. Anything else (objections, replays, other schema
 * versions, garbage, retractions, gaps) goes, before any side effect, to the Python
 * callback `fallback`, which processes it exactly as without this module.
 *
 * The bytes are untrusted: every length, index and offset taken from them, and every
 * index into the tables given at set-up, is checked where it is used.
 *
 * Nothing here decides policy: the reason of a post is read from a table that
 * streams/gate/native.py fills by calling Policy.reason_of for every combination of the
 * fields the rules read, and whether a user objects is asked of core/consent.py through the
 * callback `objected`. Nothing here logs anything, post text least of all.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

enum { K_NULL, K_BOOL, K_INT, K_LONG, K_FLOAT, K_DOUBLE, K_STRING, K_BYTES, K_ENUM, K_ARRAY, K_UNION };

#define MAX_FIELDS 64
#define MAX_SPANS 16
#define MAX_REASONS 16
#define MAX_BUCKETS 32
#define COUNTRIES 676 /* two letters A-Z */
#define ID_MAX_BYTES 1000

typedef struct {
    int kind;
    long long arg;       /* ENUM: symbol count; UNION: index of the null branch */
    int inner;           /* ARRAY, UNION: kind of the items / of the other branch */
    long long inner_arg; /* its symbol count when an enum */
} FieldSpec;

typedef struct {
    PyObject_HEAD
    /* the Post schema */
    PyObject *post_prefix; /* bytes: single-object header of the current Post schema */
    FieldSpec fields[MAX_FIELDS];
    int nfields;
    int f_post, f_user, f_platform, f_visibility, f_country, f_adult;
    long long n_platforms, n_visibilities;
    PyObject *platform_symbols; /* tuple of str */
    PyObject *platform_values;  /* tuple of bytes: the ledger's value for each */
    /* the rules, as a table: reason index by (platform, visibility, adult, country,
     * objected); 255 where the reason is not in it */
    PyObject *reasons;
    int eligible;
    int nreasons;
    /* outputs */
    PyObject *t_prefix, *t_middle; /* TrainingRecord: header; policy_version encoded */
    int t_spans[MAX_SPANS][2];
    int t_nspans;
    PyObject *d_prefix, *d_tail; /* Decision: header; replay_id (null) encoded */
    int d_spans[MAX_SPANS][2];
    int d_nspans;
    PyObject *d_published; /* tuple by reason: outcome, reason, policy_version encoded */
    PyObject *d_blocked;
    PyObject *training_topic, *decisions_topic, *ledger_topic;
    /* the worker's state (dicts it mutates, never replaces) and callbacks */
    PyObject *consent_dbs, *ledger_dbs; /* partition -> RocksDB partition */
    PyObject *held;                     /* the ledger's removals not yet written */
    PyObject *expected;                 /* partition -> next expected offset */
    PyObject *repositioning;            /* partitions being repositioned */
    PyObject *produce;                  /* confluent_kafka Producer.produce */
    PyObject *produce_when_room;        /* (topic, key, value, partition, headers) */
    PyObject *objected;                 /* consent.stored_objects(stored, platform) */
    PyObject *fallback;                 /* (message) -> None: the Python path */
    PyObject *failed;        /* (message, exception): a failure before any output record */
    PyObject *output_failed; /* (message, exception): after the first; does not return */
    long partitions;         /* of the internal topic: a user's is murmur2 modulo this */
    Py_ssize_t max_post_bytes; /* a longer post goes to the Python path (the DLQ) */
    double bounds[MAX_BUCKETS];
    int nbounds;
    long long fixed_now; /* decided_at for every post when >= 0 (tests); else the clock */
    int ready;           /* initialised */
} FastGate;

static PyObject *s_partition, *s_offset, *s_value, *s_headers, *s_timestamp, *s_get, *s_put;
static const char SOURCE_HEADER[] = "enforcer.source";

/* -- Avro primitives ------------------------------------------------------------- */

/* A zigzag varint in its one canonical form, as fastavro and Java write it: of an int
 * (`bits` 32: at most 5 bytes, 32 bits) or of a long (64: 10 bytes, 64 bits), with no
 * byte more than its value needs (a last byte of 0 is one more). -1 for anything else,
 * valid or not: the Python path decides (it refuses what is invalid, and decodes and
 * encodes anew what is valid but not canonical), so that only canonical bytes are ever
 * copied into an output. */
static inline int read_varint(const unsigned char *d, Py_ssize_t *pos, Py_ssize_t end,
                              int bits, int64_t *out) {
    const int max = bits == 32 ? 5 : 10;
    uint64_t v = 0;
    Py_ssize_t p = *pos;
    for (int i = 0; i < max; i++) {
        if (p >= end) return -1;
        unsigned char b = d[p++];
        if (!(b & 0x80)) {
            if (i > 0 && b == 0) return -1;                  /* longer than needed */
            if (i == max - 1 && (b >> (bits - 7 * i))) return -1; /* beyond `bits` */
            v |= (uint64_t)b << (7 * i);
            *pos = p;
            *out = (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
            return 0;
        }
        v |= (uint64_t)(b & 0x7F) << (7 * i);
    }
    return -1; /* longer than `max` bytes */
}

static inline int read_int(const unsigned char *d, Py_ssize_t *pos, Py_ssize_t end,
                           int64_t *out) {
    return read_varint(d, pos, end, 32, out);
}

static inline int read_long(const unsigned char *d, Py_ssize_t *pos, Py_ssize_t end,
                            int64_t *out) {
    return read_varint(d, pos, end, 64, out);
}

static inline Py_ssize_t put_long(unsigned char *o, int64_t n) {
    uint64_t z = ((uint64_t)n << 1) ^ (uint64_t)(n >> 63);
    Py_ssize_t k = 0;
    while (z > 0x7F) {
        o[k++] = (unsigned char)((z & 0x7F) | 0x80);
        z >>= 7;
    }
    o[k++] = (unsigned char)z;
    return k;
}

/* Strict UTF-8, as Python's decoder: no overlong forms, surrogates or code points
 * beyond U+10FFFF. */
static int utf8_valid(const unsigned char *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
    while (i < n) {
        if (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (!(w & 0x8080808080808080ULL)) {
                i += 8;
                continue;
            }
        }
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
        } else if (c < 0xC2) {
            return 0;
        } else if (c < 0xE0) {
            if (i + 1 >= n || (s[i + 1] & 0xC0) != 0x80) return 0;
            i += 2;
        } else if (c < 0xF0) {
            if (i + 2 >= n) return 0;
            unsigned char c1 = s[i + 1], c2 = s[i + 2];
            if ((c1 & 0xC0) != 0x80 || (c2 & 0xC0) != 0x80) return 0;
            if (c == 0xE0 && c1 < 0xA0) return 0;
            if (c == 0xED && c1 >= 0xA0) return 0;
            i += 3;
        } else if (c < 0xF5) {
            if (i + 3 >= n) return 0;
            unsigned char c1 = s[i + 1], c2 = s[i + 2], c3 = s[i + 3];
            if ((c1 & 0xC0) != 0x80 || (c2 & 0xC0) != 0x80 || (c3 & 0xC0) != 0x80) return 0;
            if (c == 0xF0 && c1 < 0x90) return 0;
            if (c == 0xF4 && c1 >= 0x90) return 0;
            i += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

/* A float's or double's bits are a NaN: fastavro may not write back the bits it read
 * (a float's payload goes through a double), so the Python path encodes it anew. */
static inline int is_nan(const unsigned char *p, int size) {
    if (size == 4) {
        uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                     (uint32_t)p[3] << 24;
        return (u & 0x7F800000u) == 0x7F800000u && (u & 0x007FFFFFu);
    }
    uint64_t u = 0;
    for (int i = 7; i >= 0; i--) u = (u << 8) | p[i];
    return (u & 0x7FF0000000000000ull) == 0x7FF0000000000000ull && (u & 0x000FFFFFFFFFFFFFull);
}

/* One value of a (non-union, non-array) kind, in its canonical encoding; for strings
 * its content's span, for booleans, ints, longs and enums its value. Java reads an int
 * for the lengths of strings and bytes and for enum and union indexes. */
static int scan_simple(const unsigned char *d, Py_ssize_t *pos, Py_ssize_t end, int kind,
                       long long arg, Py_ssize_t *start, Py_ssize_t *len, int64_t *value) {
    int64_t n;
    switch (kind) {
    case K_NULL:
        return 0;
    case K_BOOL:
        if (*pos >= end || d[*pos] > 1) return -1;
        *value = d[(*pos)++];
        return 0;
    case K_INT:
        return read_int(d, pos, end, value);
    case K_LONG:
        return read_long(d, pos, end, value);
    case K_FLOAT:
    case K_DOUBLE: {
        int size = kind == K_FLOAT ? 4 : 8;
        if (end - *pos < size || is_nan(d + *pos, size)) return -1;
        *pos += size;
        return 0;
    }
    case K_STRING:
    case K_BYTES:
        if (read_int(d, pos, end, &n) < 0 || n < 0 || n > end - *pos) return -1;
        if (kind == K_STRING && !utf8_valid(d + *pos, (Py_ssize_t)n)) return -1;
        *start = *pos;
        *len = (Py_ssize_t)n;
        *pos += (Py_ssize_t)n;
        return 0;
    case K_ENUM:
        if (read_int(d, pos, end, &n) < 0 || n < 0 || n >= arg) return -1;
        *value = n;
        return 0;
    }
    return -1;
}

/* One field. An array only in its canonical form: one block of a positive count (a
 * long), then a count of 0; or only the 0. */
static int scan_field(const FieldSpec *f, const unsigned char *d, Py_ssize_t *pos,
                      Py_ssize_t end, Py_ssize_t *start, Py_ssize_t *len, int64_t *value) {
    int64_t n;
    if (f->kind == K_UNION) {
        if (read_int(d, pos, end, &n) < 0) return -1;
        if (n == f->arg) return 0; /* null */
        if (n != 1 - f->arg) return -1;
        return scan_simple(d, pos, end, f->inner, f->inner_arg, start, len, value);
    }
    if (f->kind == K_ARRAY) {
        int64_t count;
        Py_ssize_t s, l;
        int64_t v;
        if (read_long(d, pos, end, &count) < 0) return -1;
        if (count == 0) return 0;
        /* negative: a block with its size (not canonical); beyond the end: every item
         * takes a byte at least (arrays of nulls are refused at set-up) */
        if (count < 0 || count > end - *pos) return -1;
        for (int64_t i = 0; i < count; i++)
            if (scan_simple(d, pos, end, f->inner, f->inner_arg, &s, &l, &v) < 0) return -1;
        if (read_long(d, pos, end, &count) < 0 || count != 0) return -1; /* one block */
        return 0;
    }
    return scan_simple(d, pos, end, f->kind, f->arg, start, len, value);
}

/* An id the Python check certainly accepts: at most ID_MAX_BYTES, and its first byte
 * printable ASCII (so that str.strip() leaves something). Anything else is left to it. */
static inline int id_ok(const unsigned char *s, Py_ssize_t n) {
    return n > 0 && n <= ID_MAX_BYTES && s[0] > 0x20 && s[0] < 0x7F;
}

/* -- construction ------------------------------------------------------------------ */

/* A sequence of 1 to `max` items (a new reference, its length in *n), or NULL with
 * ValueError naming `what`. */
static PyObject *bounded_sequence(PyObject *obj, Py_ssize_t max, const char *what,
                                  Py_ssize_t *n) {
    PyObject *seq = PySequence_Fast(obj, what);
    if (!seq) return NULL;
    *n = PySequence_Fast_GET_SIZE(seq);
    if (*n < 1 || *n > max) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "unsupported number of %s", what);
        return NULL;
    }
    return seq;
}

static int parse_spans(PyObject *spans, int out[MAX_SPANS][2], int *count, int nfields) {
    Py_ssize_t n;
    PyObject *seq = bounded_sequence(spans, MAX_SPANS, "spans", &n);
    if (!seq) return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        int a, b;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "ii", &a, &b)) {
            Py_DECREF(seq);
            return -1;
        }
        if (a < 0 || b <= a || b > nfields) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "span out of range");
            return -1;
        }
        out[i][0] = a;
        out[i][1] = b;
    }
    *count = (int)n;
    Py_DECREF(seq);
    return 0;
}

static void FastGate_dealloc(FastGate *self) {
    Py_XDECREF(self->post_prefix);
    Py_XDECREF(self->platform_symbols);
    Py_XDECREF(self->platform_values);
    Py_XDECREF(self->reasons);
    Py_XDECREF(self->t_prefix);
    Py_XDECREF(self->t_middle);
    Py_XDECREF(self->d_prefix);
    Py_XDECREF(self->d_tail);
    Py_XDECREF(self->d_published);
    Py_XDECREF(self->d_blocked);
    Py_XDECREF(self->training_topic);
    Py_XDECREF(self->decisions_topic);
    Py_XDECREF(self->ledger_topic);
    Py_XDECREF(self->consent_dbs);
    Py_XDECREF(self->ledger_dbs);
    Py_XDECREF(self->held);
    Py_XDECREF(self->expected);
    Py_XDECREF(self->repositioning);
    Py_XDECREF(self->produce);
    Py_XDECREF(self->produce_when_room);
    Py_XDECREF(self->objected);
    Py_XDECREF(self->fallback);
    Py_XDECREF(self->failed);
    Py_XDECREF(self->output_failed);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

#define KEEP(field, obj) (Py_INCREF(obj), self->field = (obj))

/* A field's kind and arguments are ones scan_field handles. */
static int field_ok(const FieldSpec *f) {
    switch (f->kind) {
    case K_ENUM:
        return f->arg >= 1 && f->arg <= INT32_MAX;
    case K_UNION:
    case K_ARRAY:
        if (f->kind == K_UNION && f->arg != 0 && f->arg != 1) return 0;
        if (f->inner <= K_NULL || f->inner > K_ENUM) return 0; /* no nulls, arrays, unions */
        return f->inner != K_ENUM || (f->inner_arg >= 1 && f->inner_arg <= INT32_MAX);
    default:
        return f->kind >= K_NULL && f->kind < K_ENUM;
    }
}

/* FastGate(schema, rules, training, decision, topics, state, callbacks, bounds, limits):
 * see streams/gate/native.py, which is the only caller. Every index it gives is checked. */
static int FastGate_init(FastGate *self, PyObject *args, PyObject *kwds) {
    PyObject *schema, *rules, *training, *decision, *topics, *state, *callbacks, *bounds;
    PyObject *limits;
    if (self->post_prefix) {
        PyErr_SetString(PyExc_TypeError, "FastGate is initialised once");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "OOOOOOOOO", &schema, &rules, &training, &decision, &topics,
                          &state, &callbacks, &bounds, &limits))
        return -1;
    PyObject *prefix, *fields, *picks, *kinds, *symbols, *values;
    if (!PyArg_ParseTuple(schema, "SOOOOO", &prefix, &fields, &picks, &kinds, &symbols,
                          &values))
        return -1;
    Py_ssize_t nf;
    PyObject *fseq = bounded_sequence(fields, MAX_FIELDS - 1, "fields", &nf);
    if (!fseq) return -1;
    for (Py_ssize_t i = 0; i < nf; i++) {
        FieldSpec *f = &self->fields[i];
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fseq, i), "iLiL", &f->kind, &f->arg,
                              &f->inner, &f->inner_arg)) {
            Py_DECREF(fseq);
            return -1;
        }
        if (!field_ok(f)) {
            Py_DECREF(fseq);
            PyErr_SetString(PyExc_ValueError, "unsupported field kind");
            return -1;
        }
    }
    Py_DECREF(fseq);
    self->nfields = (int)nf;
    if (!PyArg_ParseTuple(picks, "iiiiii", &self->f_post, &self->f_user, &self->f_platform,
                          &self->f_visibility, &self->f_country, &self->f_adult))
        return -1;
    int picked[6] = {self->f_post,    self->f_user,       self->f_platform,
                     self->f_visibility, self->f_country, self->f_adult};
    /* The kind of each picked field, from the Post layout (records.POST_LAYOUT), checked
     * again here against the kind this code uses it as: the ids and the country are
     * strings; platform and visibility are enum indexes and the adult flag a boolean,
     * and all three index the rules table. Anything else refuses the set-up (a
     * ValueError: the gate then decides every post in Python). */
    const int role_kind[6] = {K_STRING, K_STRING, K_ENUM, K_ENUM, K_STRING, K_BOOL};
    int given_kind[6];
    if (!PyArg_ParseTuple(kinds, "iiiiii", &given_kind[0], &given_kind[1], &given_kind[2],
                          &given_kind[3], &given_kind[4], &given_kind[5]))
        return -1;
    for (int i = 0; i < 6; i++) {
        if (given_kind[i] < K_NULL || given_kind[i] > K_UNION) {
            PyErr_SetString(PyExc_ValueError, "a picked field's kind is out of range");
            return -1;
        }
        if (given_kind[i] != role_kind[i]) {
            PyErr_SetString(PyExc_ValueError,
                            "a picked field's kind is not the one it is read as");
            return -1;
        }
        if (picked[i] < 0 || picked[i] >= nf) {
            PyErr_SetString(PyExc_ValueError, "field index out of range");
            return -1;
        }
        if (self->fields[picked[i]].kind != given_kind[i]) {
            PyErr_SetString(PyExc_ValueError, "a picked field is not of its kind");
            return -1;
        }
    }
    /* the rules table's size below is computed from these, in a long long */
    if (self->fields[self->f_platform].arg > 0xFFFF ||
        self->fields[self->f_visibility].arg > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "too many platforms or visibilities");
        return -1;
    }
    if (!PyTuple_Check(symbols) || !PyTuple_Check(values) ||
        PyTuple_GET_SIZE(symbols) != self->fields[self->f_platform].arg ||
        PyTuple_GET_SIZE(values) != PyTuple_GET_SIZE(symbols)) {
        PyErr_SetString(PyExc_ValueError, "platform symbols do not match the schema");
        return -1;
    }
    self->n_platforms = self->fields[self->f_platform].arg;
    self->n_visibilities = self->fields[self->f_visibility].arg;
    KEEP(post_prefix, prefix);
    KEEP(platform_symbols, symbols);
    KEEP(platform_values, values);

    PyObject *reasons;
    if (!PyArg_ParseTuple(rules, "Sii", &reasons, &self->eligible, &self->nreasons)) return -1;
    if (PyBytes_GET_SIZE(reasons) !=
            self->n_platforms * self->n_visibilities * 2 * COUNTRIES * 2 ||
        self->nreasons < 1 || self->nreasons > MAX_REASONS || self->eligible < 0 ||
        self->eligible >= self->nreasons) {
        PyErr_SetString(PyExc_ValueError, "the rules table does not match the schema");
        return -1;
    }
    KEEP(reasons, reasons);

    PyObject *t_prefix, *t_spans, *t_middle, *d_prefix, *d_spans, *d_pub, *d_blk, *d_tail;
    if (!PyArg_ParseTuple(training, "SOS", &t_prefix, &t_spans, &t_middle)) return -1;
    if (!PyArg_ParseTuple(decision, "SOOOS", &d_prefix, &d_spans, &d_pub, &d_blk, &d_tail))
        return -1;
    if (parse_spans(t_spans, self->t_spans, &self->t_nspans, self->nfields) < 0) return -1;
    if (parse_spans(d_spans, self->d_spans, &self->d_nspans, self->nfields) < 0) return -1;
    if (!PyTuple_Check(d_pub) || !PyTuple_Check(d_blk) ||
        PyTuple_GET_SIZE(d_pub) != self->nreasons || PyTuple_GET_SIZE(d_blk) != self->nreasons) {
        PyErr_SetString(PyExc_ValueError, "decision encodings do not match the reasons");
        return -1;
    }
    for (int i = 0; i < self->nreasons; i++)
        if (!PyBytes_Check(PyTuple_GET_ITEM(d_pub, i)) ||
            !PyBytes_Check(PyTuple_GET_ITEM(d_blk, i))) {
            PyErr_SetString(PyExc_TypeError, "decision encodings must be bytes");
            return -1;
        }
    KEEP(t_prefix, t_prefix);
    KEEP(t_middle, t_middle);
    KEEP(d_prefix, d_prefix);
    KEEP(d_tail, d_tail);
    KEEP(d_published, d_pub);
    KEEP(d_blocked, d_blk);

    PyObject *tt, *dt, *lt;
    if (!PyArg_ParseTuple(topics, "UUU", &tt, &dt, &lt)) return -1;
    KEEP(training_topic, tt);
    KEEP(decisions_topic, dt);
    KEEP(ledger_topic, lt);

    PyObject *cdbs, *ldbs, *held, *expected, *repos;
    if (!PyArg_ParseTuple(state, "O!O!O!O!O!", &PyDict_Type, &cdbs, &PyDict_Type, &ldbs,
                          &PyDict_Type, &held, &PyDict_Type, &expected, &PyDict_Type, &repos))
        return -1;
    KEEP(consent_dbs, cdbs);
    KEEP(ledger_dbs, ldbs);
    KEEP(held, held);
    KEEP(expected, expected);
    KEEP(repositioning, repos);

    PyObject *produce, *when_room, *objected, *fallback, *failed, *out_failed;
    if (!PyArg_ParseTuple(callbacks, "OOOOOO", &produce, &when_room, &objected, &fallback,
                          &failed, &out_failed))
        return -1;
    KEEP(produce, produce);
    KEEP(produce_when_room, when_room);
    KEEP(objected, objected);
    KEEP(fallback, fallback);
    KEEP(failed, failed);
    KEEP(output_failed, out_failed);

    Py_ssize_t nb;
    PyObject *bseq = bounded_sequence(bounds, MAX_BUCKETS - 1, "latency buckets", &nb);
    if (!bseq) return -1;
    for (Py_ssize_t i = 0; i < nb; i++) {
        self->bounds[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(bseq, i));
        if (PyErr_Occurred()) {
            Py_DECREF(bseq);
            return -1;
        }
    }
    Py_DECREF(bseq);
    self->nbounds = (int)nb;
    if (!PyArg_ParseTuple(limits, "ln", &self->partitions, &self->max_post_bytes)) return -1;
    if (self->partitions < 1 || self->partitions > INT32_MAX || self->max_post_bytes < 0) {
        PyErr_SetString(PyExc_ValueError, "partitions or the post size limit out of range");
        return -1;
    }
    self->fixed_now = -1;
    self->ready = 1;
    return 0;
}

/* -- one post ---------------------------------------------------------------------- */

typedef struct {
    long long counts[2 * MAX_REASONS]; /* decisions: published, then blocked, by reason */
    long long buckets[MAX_BUCKETS + 1];
    double latency_sum;
    long long latency_n;
    long long fast;
    double scale; /* seconds per unit of the records' timestamps */
} Stats;

/* A post's outputs: header, copied spans, then the given bytes. */
static PyObject *splice(PyObject *prefix, const unsigned char *d, const Py_ssize_t *starts,
                        int spans[][2], int nspans, const char *given, Py_ssize_t ngiven) {
    Py_ssize_t size = PyBytes_GET_SIZE(prefix) + ngiven;
    for (int i = 0; i < nspans; i++) size += starts[spans[i][1]] - starts[spans[i][0]];
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (!out) return NULL;
    char *o = PyBytes_AS_STRING(out);
    memcpy(o, PyBytes_AS_STRING(prefix), PyBytes_GET_SIZE(prefix));
    o += PyBytes_GET_SIZE(prefix);
    for (int i = 0; i < nspans; i++) {
        Py_ssize_t a = starts[spans[i][0]], n = starts[spans[i][1]] - a;
        memcpy(o, d + a, n);
        o += n;
    }
    memcpy(o, given, ngiven);
    return out;
}

/* produce(topic, value, key[, partition]); a full queue waits for room in Python. */
static int produce(FastGate *self, PyObject *topic, PyObject *value, PyObject *key,
                   PyObject *partition) {
    PyObject *args[4] = {topic, value, key, partition};
    PyObject *r = PyObject_Vectorcall(self->produce, args, partition ? 4 : 3, NULL);
    if (r) {
        Py_DECREF(r);
        return 0;
    }
    if (!PyErr_ExceptionMatches(PyExc_BufferError)) return -1;
    PyErr_Clear();
    PyObject *wargs[5] = {topic, key, value, partition ? partition : Py_None, Py_None};
    r = PyObject_Vectorcall(self->produce_when_room, wargs, 5, NULL);
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

/* A ledger key: the user's length (2 bytes, big-endian), the user, the post id
 * (ledger.entry_key). */
static PyObject *ledger_key(const char *user, Py_ssize_t ulen, const char *post,
                            Py_ssize_t plen) {
    PyObject *key = PyBytes_FromStringAndSize(NULL, 2 + ulen + plen);
    if (!key) return NULL;
    unsigned char *k = (unsigned char *)PyBytes_AS_STRING(key);
    k[0] = (unsigned char)(ulen >> 8);
    k[1] = (unsigned char)ulen;
    memcpy(k + 2, user, ulen);
    memcpy(k + 2 + ulen, post, plen);
    return key;
}

static inline int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Java's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), as core/records.py uses it
 * through aiokafka: the partition of a user is (murmur2(user_id) & 0x7fffffff) modulo
 * the partition count. */
static uint32_t murmur2(const unsigned char *data, Py_ssize_t length) {
    const uint32_t m = 0x5bd1e995u;
    uint32_t h = 0x9747b28cu ^ (uint32_t)length;
    Py_ssize_t length4 = length / 4;
    for (Py_ssize_t i = 0; i < length4; i++) {
        const unsigned char *q = data + 4 * i;
        uint32_t k = (uint32_t)q[0] | (uint32_t)q[1] << 8 | (uint32_t)q[2] << 16 |
                     (uint32_t)q[3] << 24;
        k *= m;
        k ^= k >> 24;
        k *= m;
        h *= m;
        h ^= k;
    }
    const unsigned char *tail = data + 4 * length4;
    switch (length % 4) {
    case 3:
        h ^= (uint32_t)tail[2] << 16;
        /* fall through */
    case 2:
        h ^= (uint32_t)tail[1] << 8;
        /* fall through */
    case 1:
        h ^= tail[0];
        h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return h;
}

/* Where writing a post's outputs failed: nothing of it was produced yet (the ledger
 * write, or encoding), or after its first output record. */
enum { EMITTED = 0, FAILED_BEFORE = -1, FAILED_AFTER = -2 };

/* The outputs of a post already decided (the point of no return: its offset is
 * processed whatever happens here), in the order of Processor._post_as_bytes: its
 * records encoded; a published post added to the ledger (RocksDB, then its changelog
 * record), so that it is always retractable; then its TrainingRecord; then its
 * Decision. EMITTED, or FAILED_BEFORE / FAILED_AFTER with an exception set. */
static int emit(FastGate *self, const unsigned char *d, const Py_ssize_t *starts,
                PyObject *post_key, PyObject *user, int published, int reason,
                PyObject *partition, PyObject *ledger_db, const unsigned char *topic,
                Py_ssize_t topic_len, uint32_t src_partition, int64_t src_offset,
                int64_t now, int platform) {
    PyObject *training = NULL, *decision = NULL, *choices;
    char *given;
    Py_ssize_t n;
    int rc = FAILED_BEFORE;
    /* Decision: outcome, reason and policy_version; decided_at; source_topic,
     * source_partition, source_offset; replay_id */
    choices = published ? self->d_published : self->d_blocked;
    if (reason < 0 || reason >= PyTuple_GET_SIZE(choices)) {
        PyErr_SetString(PyExc_IndexError, "reason out of range");
        return FAILED_BEFORE;
    }
    PyObject *middle = PyTuple_GET_ITEM(choices, reason);
    Py_ssize_t nm = PyBytes_GET_SIZE(middle), nt = PyBytes_GET_SIZE(self->d_tail);
    given = PyMem_Malloc(nm + topic_len + nt + 40); /* four varints of 10 bytes at most */
    if (!given) {
        PyErr_NoMemory();
        return FAILED_BEFORE;
    }
    n = 0;
    memcpy(given, PyBytes_AS_STRING(middle), nm);
    n += nm;
    n += put_long((unsigned char *)given + n, now);
    n += put_long((unsigned char *)given + n, topic_len);
    memcpy(given + n, topic, topic_len);
    n += topic_len;
    n += put_long((unsigned char *)given + n, src_partition);
    n += put_long((unsigned char *)given + n, src_offset);
    memcpy(given + n, PyBytes_AS_STRING(self->d_tail), nt);
    n += nt;
    decision = splice(self->d_prefix, d, starts, self->d_spans, self->d_nspans, given, n);
    PyMem_Free(given);
    if (!decision) return FAILED_BEFORE;
    if (published) {
        /* TrainingRecord: policy_version; decided_at */
        nm = PyBytes_GET_SIZE(self->t_middle);
        given = PyMem_Malloc(nm + 10);
        if (!given) {
            PyErr_NoMemory();
            goto done;
        }
        memcpy(given, PyBytes_AS_STRING(self->t_middle), nm);
        n = nm + put_long((unsigned char *)given + nm, now);
        training = splice(self->t_prefix, d, starts, self->t_spans, self->t_nspans, given, n);
        PyMem_Free(given);
        if (!training) goto done;

        /* the ledger: the post is live (a held removal of it is dropped) */
        if (platform < 0 || platform >= PyTuple_GET_SIZE(self->platform_values)) {
            PyErr_SetString(PyExc_IndexError, "platform out of range");
            goto done;
        }
        PyObject *key = ledger_key(PyBytes_AS_STRING(user), PyBytes_GET_SIZE(user),
                                   PyBytes_AS_STRING(post_key), PyBytes_GET_SIZE(post_key));
        if (!key) goto done;
        if (PyDict_GET_SIZE(self->held)) {
            PyObject *pk = PyTuple_Pack(2, partition, key);
            if (!pk || (PyDict_DelItem(self->held, pk) < 0 &&
                        !PyErr_ExceptionMatches(PyExc_KeyError))) {
                Py_XDECREF(pk);
                Py_DECREF(key);
                goto done;
            }
            PyErr_Clear();
            Py_DECREF(pk);
        }
        PyObject *platform_value = PyTuple_GET_ITEM(self->platform_values, platform);
        PyObject *r = PyObject_CallMethodObjArgs(ledger_db, s_put, key, platform_value, NULL);
        if (!r) {
            Py_DECREF(key);
            goto done;
        }
        Py_DECREF(r);
        int failed = produce(self, self->ledger_topic, platform_value, key, partition);
        Py_DECREF(key);
        if (failed) goto done;
    }
    /* from here on, a failure is after the ledger write or an output record */
    rc = FAILED_AFTER;
    if (training && produce(self, self->training_topic, training, post_key, NULL) < 0) goto done;
    if (produce(self, self->decisions_topic, decision, post_key, NULL) < 0) goto done;
    rc = EMITTED;
done:
    Py_XDECREF(training);
    Py_XDECREF(decision);
    return rc;
}

/* Call a failure callback (message, the exception set); -1 if it failed. */
static int report_failure(PyObject *callback, PyObject *message) {
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    if (tb) PyException_SetTraceback(exc, tb);
    PyObject *r = PyObject_CallFunctionObjArgs(callback, message, exc ? exc : Py_None, NULL);
    Py_XDECREF(type);
    Py_XDECREF(exc);
    Py_XDECREF(tb);
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

/* A post of the current schema in its canonical encoding, scanned: where each field
 * starts (starts[nfields] is the end), the span of each string's content, the value of
 * each boolean, int, long and enum. -1 for anything else (another schema, invalid or
 * non-canonical bytes, trailing bytes). */
static int scan_post(FastGate *self, const unsigned char *d, Py_ssize_t end, Py_ssize_t *starts,
                     Py_ssize_t *sstart, Py_ssize_t *slen, int64_t *ivalue) {
    Py_ssize_t plen = PyBytes_GET_SIZE(self->post_prefix);
    if (end < plen || memcmp(d, PyBytes_AS_STRING(self->post_prefix), plen) != 0) return -1;
    Py_ssize_t pos = plen;
    for (int i = 0; i < self->nfields; i++) {
        starts[i] = pos;
        sstart[i] = slen[i] = 0;
        ivalue[i] = 0;
        if (scan_field(&self->fields[i], d, &pos, end, &sstart[i], &slen[i], &ivalue[i]) < 0)
            return -1;
    }
    starts[self->nfields] = pos;
    return pos == end ? 0 : -1;
}

/* 1: decided here (written, or handed to the failure callback); 0: not for the fast
 * path, or an error before any side effect (nothing done: the Python path takes it and
 * meets the error again); -2: the failure callback itself failed (exception set). */
static int decide(FastGate *self, PyObject *message, Stats *stats) {
    int result = 0;
    PyObject *partition = NULL, *offset_obj = NULL, *value = NULL, *headers = NULL;
    PyObject *post_key = NULL, *user = NULL, *stored = NULL, *ledger_live = NULL;
    PyObject *consent_db = NULL, *ledger_db = NULL;
    if (PyDict_GET_SIZE(self->repositioning)) return 0;
    headers = PyObject_GetAttr(message, s_headers);
    if (!headers) goto error;
    /* the packed source header, last */
    PyObject *last;
    if (PyList_Check(headers) && PyList_GET_SIZE(headers))
        last = PyList_GET_ITEM(headers, PyList_GET_SIZE(headers) - 1);
    else if (PyTuple_Check(headers) && PyTuple_GET_SIZE(headers))
        last = PyTuple_GET_ITEM(headers, PyTuple_GET_SIZE(headers) - 1);
    else
        goto done;
    if (!PyTuple_Check(last) || PyTuple_GET_SIZE(last) != 2) goto done;
    PyObject *hname = PyTuple_GET_ITEM(last, 0), *hvalue = PyTuple_GET_ITEM(last, 1);
    if (!PyUnicode_Check(hname) || !PyBytes_Check(hvalue) ||
        PyUnicode_CompareWithASCIIString(hname, SOURCE_HEADER) != 0)
        goto done;
    const unsigned char *h = (const unsigned char *)PyBytes_AS_STRING(hvalue);
    Py_ssize_t hlen = PyBytes_GET_SIZE(hvalue);
    if (hlen < 16 || h[0] != 'p' || h[1] > 1) goto done;
    uint32_t src_partition = ((uint32_t)h[2] << 24) | ((uint32_t)h[3] << 16) |
                             ((uint32_t)h[4] << 8) | h[5];
    uint64_t uoff = 0;
    for (int i = 6; i < 14; i++) uoff = (uoff << 8) | h[i];
    int64_t src_offset = (int64_t)uoff;
    Py_ssize_t topic_len = ((Py_ssize_t)h[14] << 8) | h[15];
    if (hlen < 16 + topic_len || (!h[1] && hlen != 16 + topic_len)) goto done;
    if (src_partition > INT32_MAX || !utf8_valid(h + 16, topic_len)) goto done;

    /* the post, of the current schema, scanned */
    value = PyObject_GetAttr(message, s_value);
    if (!value) goto error;
    if (!PyBytes_Check(value)) goto done;
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(value);
    Py_ssize_t end = PyBytes_GET_SIZE(value);
    if (end > self->max_post_bytes) goto done; /* too large to republish: the DLQ */
    Py_ssize_t starts[MAX_FIELDS + 1], sstart[MAX_FIELDS], slen[MAX_FIELDS];
    int64_t ivalue[MAX_FIELDS];
    if (scan_post(self, d, end, starts, sstart, slen, ivalue) < 0) goto done;
    const unsigned char *country = d + sstart[self->f_country];
    const unsigned char *user_id = d + sstart[self->f_user];
    if (!id_ok(d + sstart[self->f_post], slen[self->f_post]) ||
        !id_ok(user_id, slen[self->f_user]) || slen[self->f_country] != 2 ||
        country[0] < 'A' || country[0] > 'Z' || country[1] < 'A' || country[1] > 'Z')
        goto done;
    /* the values the rules table is indexed by, checked again */
    int64_t platform = ivalue[self->f_platform], visibility = ivalue[self->f_visibility];
    int64_t adult = ivalue[self->f_adult];
    if (platform < 0 || platform >= self->n_platforms || visibility < 0 ||
        visibility >= self->n_visibilities || adult < 0 || adult > 1)
        goto done;

    /* a user of the partition it arrived on, the next expected record there */
    partition = PyObject_GetAttr(message, s_partition);
    if (!partition) goto error;
    long partition_n = PyLong_AsLong(partition);
    if (partition_n == -1 && PyErr_Occurred()) goto error;
    uint32_t home = (murmur2(user_id, slen[self->f_user]) & 0x7FFFFFFFu) %
                    (uint32_t)self->partitions;
    if ((long)home != partition_n) goto done; /* its user's state is elsewhere: the DLQ */
    offset_obj = PyObject_GetAttr(message, s_offset);
    if (!offset_obj) goto error;
    PyObject *expected = PyDict_GetItemWithError(self->expected, partition);
    if (!expected) {
        if (PyErr_Occurred()) goto error;
        goto done;
    }
    if (PyObject_RichCompareBool(expected, offset_obj, Py_EQ) != 1) {
        if (PyErr_Occurred()) goto error;
        goto done;
    }
    consent_db = PyDict_GetItemWithError(self->consent_dbs, partition);
    ledger_db = consent_db ? PyDict_GetItemWithError(self->ledger_dbs, partition) : NULL;
    if (!ledger_db) {
        consent_db = NULL;
        if (PyErr_Occurred()) goto error;
        goto done; /* not open here: the Python path does not decide it either */
    }
    Py_INCREF(consent_db); /* held while in use, whatever happens to the dicts */
    Py_INCREF(ledger_db);

    /* consent and the rules */
    user = PyBytes_FromStringAndSize((const char *)user_id, slen[self->f_user]);
    if (!user) goto error;
    stored = PyObject_CallMethodOneArg(consent_db, s_get, user);
    if (!stored) goto error;
    int objected = 0;
    if (stored != Py_None) {
        PyObject *r = PyObject_CallFunctionObjArgs(
            self->objected, stored, PyTuple_GET_ITEM(self->platform_symbols, platform), NULL);
        if (!r) goto error;
        objected = PyObject_IsTrue(r);
        Py_DECREF(r);
        if (objected < 0) goto error;
    }
    if (objected > 1) goto done;
    long long index =
        (((platform * self->n_visibilities + visibility) * 2 + adult) * COUNTRIES +
         (country[0] - 'A') * 26 + (country[1] - 'A')) * 2 + objected;
    if (index < 0 || index >= PyBytes_GET_SIZE(self->reasons)) goto done;
    int reason = ((const unsigned char *)PyBytes_AS_STRING(self->reasons))[index];
    if (reason >= self->nreasons) goto done;
    int published = reason == self->eligible;
    post_key = PyBytes_FromStringAndSize((const char *)d + sstart[self->f_post],
                                         slen[self->f_post]);
    if (!post_key) goto error;
    if (!published) {
        /* an ineligible post that is live is retracted: by the Python path */
        PyObject *key = ledger_key(PyBytes_AS_STRING(user), PyBytes_GET_SIZE(user),
                                   PyBytes_AS_STRING(post_key), PyBytes_GET_SIZE(post_key));
        if (!key) goto error;
        int held = 0;
        if (PyDict_GET_SIZE(self->held)) {
            PyObject *pk = PyTuple_Pack(2, partition, key);
            if (!pk) {
                Py_DECREF(key);
                goto error;
            }
            held = PyDict_Contains(self->held, pk);
            Py_DECREF(pk);
            if (held < 0) {
                Py_DECREF(key);
                goto error;
            }
        }
        if (!held) {
            ledger_live = PyObject_CallMethodOneArg(ledger_db, s_get, key);
            Py_DECREF(key);
            if (!ledger_live) goto error;
            if (ledger_live != Py_None) goto done;
        } else {
            Py_DECREF(key);
        }
    }

    /* decided: the offset is processed from here on, whatever happens */
    long long next = PyLong_AsLongLong(offset_obj);
    if (next == -1 && PyErr_Occurred()) goto error;
    if (next < 0 || next == LLONG_MAX) goto done;
    PyObject *next_obj = PyLong_FromLongLong(next + 1);
    if (!next_obj) goto error;
    int set = PyDict_SetItem(self->expected, partition, next_obj);
    Py_DECREF(next_obj);
    if (set < 0) goto error;
    int64_t now = self->fixed_now >= 0 ? self->fixed_now : now_ms();
    int emitted = emit(self, d, starts, post_key, user, published, reason, partition,
                       ledger_db, h + 16, topic_len, src_partition, src_offset, now,
                       (int)platform);
    if (emitted == FAILED_BEFORE) { /* nothing published: to the DLQ */
        result = report_failure(self->failed, message) < 0 ? -2 : 1;
        goto cleanup;
    }
    /* after the ledger write: output_failed stops the worker (it returns in tests only,
     * and then the post counts as decided, as in Python) */
    if (emitted == FAILED_AFTER && report_failure(self->output_failed, message) < 0) {
        result = -2;
        goto cleanup;
    }
    stats->counts[(published ? 0 : self->nreasons) + reason]++;
    PyObject *ts = PyObject_GetAttr(message, s_timestamp);
    if (ts && ts != Py_None && PyObject_IsTrue(ts) == 1) {
        double sent = PyFloat_AsDouble(ts);
        if (!(sent == -1.0 && PyErr_Occurred())) {
            double seconds = (double)now / 1000.0 - sent * stats->scale;
            if (!(seconds > 0.0)) seconds = 0.0; /* max(0.0, seconds), NaN included */
            int bucket = 0; /* bisect_left */
            while (bucket < self->nbounds && self->bounds[bucket] < seconds) bucket++;
            stats->buckets[bucket]++;
            stats->latency_sum += seconds;
            stats->latency_n++;
        }
    }
    Py_XDECREF(ts);
    PyErr_Clear();
    stats->fast++;
    result = 1;
    goto cleanup;
error:
    PyErr_Clear(); /* the Python path meets it again and handles it */
done:
    result = 0;
cleanup:
    Py_XDECREF(headers);
    Py_XDECREF(value);
    Py_XDECREF(partition);
    Py_XDECREF(offset_obj);
    Py_XDECREF(post_key);
    Py_XDECREF(user);
    Py_XDECREF(stored);
    Py_XDECREF(ledger_live);
    Py_XDECREF(consent_db);
    Py_XDECREF(ledger_db);
    return result;
}

/* run(messages, scale) -> (fast, decisions, buckets, latency_sum, latency_n) */
static PyObject *FastGate_run(FastGate *self, PyObject *args) {
    PyObject *messages;
    Stats stats;
    memset(&stats, 0, sizeof stats);
    if (!PyArg_ParseTuple(args, "Od", &messages, &stats.scale)) return NULL;
    if (!self->ready) {
        PyErr_SetString(PyExc_TypeError, "FastGate is not initialised");
        return NULL;
    }
    PyObject *it = PyObject_GetIter(messages);
    if (!it) return NULL;
    PyObject *message;
    while ((message = PyIter_Next(it))) {
        int rc = decide(self, message, &stats);
        if (rc == 0) {
            PyObject *r = PyObject_CallOneArg(self->fallback, message);
            if (!r) rc = -2;
            Py_XDECREF(r);
        }
        Py_DECREF(message);
        if (rc == -2) {
            Py_DECREF(it);
            return NULL;
        }
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) return NULL;
    PyObject *decisions = PyTuple_New(2 * self->nreasons);
    PyObject *buckets = PyTuple_New(self->nbounds + 1);
    if (!decisions || !buckets) goto fail;
    for (int i = 0; i < 2 * self->nreasons; i++) {
        PyObject *n = PyLong_FromLongLong(stats.counts[i]);
        if (!n) goto fail;
        PyTuple_SET_ITEM(decisions, i, n);
    }
    for (int i = 0; i <= self->nbounds; i++) {
        PyObject *n = PyLong_FromLongLong(stats.buckets[i]);
        if (!n) goto fail;
        PyTuple_SET_ITEM(buckets, i, n);
    }
    return Py_BuildValue("LNNdL", stats.fast, decisions, buckets, stats.latency_sum,
                         stats.latency_n);
fail:
    Py_XDECREF(decisions);
    Py_XDECREF(buckets);
    return NULL;
}

/* scan(value) -> the starts of its fields and its end, or None (for tests) */
static PyObject *FastGate_scan(FastGate *self, PyObject *value) {
    if (!self->ready || !PyBytes_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "an initialised FastGate and bytes expected");
        return NULL;
    }
    Py_ssize_t starts[MAX_FIELDS + 1], sstart[MAX_FIELDS], slen[MAX_FIELDS];
    int64_t ivalue[MAX_FIELDS];
    if (scan_post(self, (const unsigned char *)PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value),
                  starts, sstart, slen, ivalue) < 0)
        Py_RETURN_NONE;
    PyObject *out = PyTuple_New(self->nfields + 1);
    if (!out) return NULL;
    for (int i = 0; i <= self->nfields; i++) {
        PyObject *n = PyLong_FromSsize_t(starts[i]);
        if (!n) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, i, n);
    }
    return out;
}

static PyMethodDef FastGate_methods[] = {
    {"scan", (PyCFunction)FastGate_scan, METH_O,
     "scan(value) -> where each field of a canonical current Post starts, and its end; "
     "None for anything else (for tests)."},
    {"run", (PyCFunction)FastGate_run, METH_VARARGS,
     "run(messages, scale) -> (fast, decisions, buckets, latency_sum, latency_n): decide a "
     "batch in order; records not for the fast path go to the fallback callback."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef FastGate_members[] = {
    {"fixed_now", T_LONGLONG, offsetof(FastGate, fixed_now), 0,
     "decided_at (epoch ms) of every post when >= 0, for tests; -1: the clock"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject FastGateType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "streams.gate._native.FastGate",
    .tp_basicsize = sizeof(FastGate),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The gate's per-post fast path (see streams/gate/native.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)FastGate_init,
    .tp_dealloc = (destructor)FastGate_dealloc,
    .tp_methods = FastGate_methods,
    .tp_members = FastGate_members,
};

static PyObject *py_utf8_valid(PyObject *mod, PyObject *arg) {
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "bytes expected");
        return NULL;
    }
    return PyBool_FromLong(
        utf8_valid((const unsigned char *)PyBytes_AS_STRING(arg), PyBytes_GET_SIZE(arg)));
}

static PyMethodDef module_methods[] = {
    {"utf8_valid", py_utf8_valid, METH_O, "True when the bytes are strict UTF-8 (for tests)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "streams.gate._native", "The gate's per-post fast path.", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__native(void) {
#define INTERN(var, text) if (!(var = PyUnicode_InternFromString(text))) return NULL
    INTERN(s_partition, "partition");
    INTERN(s_offset, "offset");
    INTERN(s_value, "value");
    INTERN(s_headers, "headers");
    INTERN(s_timestamp, "timestamp");
    INTERN(s_get, "get");
    INTERN(s_put, "put");
    if (PyType_Ready(&FastGateType) < 0) return NULL;
    PyObject *m = PyModule_Create(&native_module);
    if (!m) return NULL;
    Py_INCREF(&FastGateType);
    if (PyModule_AddObject(m, "FastGate", (PyObject *)&FastGateType) < 0) {
        Py_DECREF(&FastGateType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
