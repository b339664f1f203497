/* Compiled loops for ranking a whole catalogue (learner.kernels wraps them; numpy does the same when they are
 * not built). Each does in one or two passes over the catalogue what numpy does in five or six, with the same
 * floating-point operations in the same order, so the results are the same numbers (tests compare them).
 *
 * Only the buffer protocol is used (no numpy headers): rows are array.array or numpy buffers alike.
 * Built with -ffp-contract=off, so that a * b + c is never fused into one rounding.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Buffers may be unaligned (numpy views into a snapshot's bytes): every element goes through memcpy, which
 * compilers turn into a plain load or store where the machine allows it. */
static inline int32_t get_i32(const char *p, Py_ssize_t i) {
    int32_t x;
    memcpy(&x, p + i * (Py_ssize_t)sizeof x, sizeof x);
    return x;
}
static inline float get_f32(const char *p, Py_ssize_t i) {
    float x;
    memcpy(&x, p + i * (Py_ssize_t)sizeof x, sizeof x);
    return x;
}
static inline double get_f64(const char *p, Py_ssize_t i) {
    double x;
    memcpy(&x, p + i * (Py_ssize_t)sizeof x, sizeof x);
    return x;
}
static inline void set_f64(char *p, Py_ssize_t i, double x) { memcpy(p + i * (Py_ssize_t)sizeof x, &x, sizeof x); }

/* A C-contiguous buffer of native items of type `code` ('i': int32, 'f': float32, 'd': float64). */
static int get_buffer(PyObject *obj, Py_buffer *view, int flags, const char *what, char code) {
    if (PyObject_GetBuffer(obj, view, flags | PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        return -1;
    }
    const char *format = view->format != NULL ? view->format : "B";
    if (format[0] == '@' || format[0] == '=' || (format[0] == '<' && PY_LITTLE_ENDIAN)) format++;
    Py_ssize_t itemsize = code == 'd' ? 8 : 4;
    if (format[0] != code || format[1] != '\0' || view->itemsize != itemsize) {
        PyErr_Format(PyExc_TypeError, "%s: expected a buffer of '%c' items, got '%s'", what, code,
                     view->format != NULL ? view->format : "B");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* cooccurrence_scores(rows, weights, damping, mass, popularity_weight, mass_max, out) -> None
 *
 * rows: a list of (columns int32 buffer, values float32 buffer) pairs; weights: float64, one per row;
 * damping, mass: float64, at least len(out) each; out: a writable float64 buffer of n = len(out).
 * What ItemCooccurrence.score_all computes with numpy:
 *   out = bincount(columns, values * weight) * damping               (row by row, entry by entry)
 *   if popularity_weight and mass_max > 0 and n:
 *       top = max(out); out += mass * (popularity_weight * (top if top > 0 else 1) / mass_max)
 */
static PyObject *cooccurrence_scores(PyObject *self, PyObject *args) {
    PyObject *rows, *weights_obj, *damping_obj, *mass_obj, *out_obj;
    double popularity_weight, mass_max;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!OOOddO", &PyList_Type, &rows, &weights_obj, &damping_obj, &mass_obj,
                          &popularity_weight, &mass_max, &out_obj)) {
        return NULL;
    }
    Py_buffer weights, damping, mass, out;
    if (get_buffer(weights_obj, &weights, PyBUF_SIMPLE, "weights", 'd') < 0) return NULL;
    if (get_buffer(damping_obj, &damping, PyBUF_SIMPLE, "damping", 'd') < 0) goto fail_weights;
    if (get_buffer(mass_obj, &mass, PyBUF_SIMPLE, "mass", 'd') < 0) goto fail_damping;
    if (get_buffer(out_obj, &out, PyBUF_WRITABLE, "out", 'd') < 0) goto fail_mass;

    Py_ssize_t n = out.len / 8, n_rows = PyList_GET_SIZE(rows);
    if (weights.len / 8 != n_rows) {
        PyErr_SetString(PyExc_ValueError, "weights: one per row expected");
        goto fail;
    }
    if (damping.len / 8 < n || mass.len / 8 < n) {
        PyErr_SetString(PyExc_ValueError, "damping and mass must cover every item");
        goto fail;
    }
    char *scores = (char *)out.buf;
    const char *w = (const char *)weights.buf, *damp = (const char *)damping.buf, *m = (const char *)mass.buf;
    Py_ssize_t entries = 0;
    memset(scores, 0, (size_t)n * sizeof(double));
    for (Py_ssize_t r = 0; r < n_rows; r++) {
        PyObject *pair = PyList_GET_ITEM(rows, r);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "rows: (columns, values) pairs expected");
            goto fail;
        }
        Py_buffer cols, vals;
        if (get_buffer(PyTuple_GET_ITEM(pair, 0), &cols, PyBUF_SIMPLE, "columns", 'i') < 0) goto fail;
        if (get_buffer(PyTuple_GET_ITEM(pair, 1), &vals, PyBUF_SIMPLE, "values", 'f') < 0) {
            PyBuffer_Release(&cols);
            goto fail;
        }
        Py_ssize_t len = cols.len / 4;
        const char *c = (const char *)cols.buf, *v = (const char *)vals.buf;
        const double wr = get_f64(w, r);
        entries += len;
        int bad = vals.len / 4 != len;
        for (Py_ssize_t e = 0; !bad && e < len; e++) {
            int32_t col = get_i32(c, e);
            if (col < 0 || col >= n) {
                bad = 1;
                break;
            }
            set_f64(scores, col, get_f64(scores, col) + (double)get_f32(v, e) * wr);
        }
        PyBuffer_Release(&vals);
        PyBuffer_Release(&cols);
        if (bad) {
            PyErr_SetString(PyExc_ValueError, "rows: a column is outside the catalogue, or lengths differ");
            goto fail;
        }
    }
    /* No entry: numpy's path returns zeros without damping them (so a NaN damping stays out). */
    double top = entries ? -INFINITY : 0.0;
    for (Py_ssize_t i = 0; entries && i < n; i++) {
        double s = get_f64(scores, i) * get_f64(damp, i);
        set_f64(scores, i, s);
        if (s > top || isnan(s)) top = isnan(top) ? top : s; /* numpy's max: NaN wins */
    }
    if (popularity_weight != 0.0 && mass_max > 0 && n) {
        double factor = popularity_weight * (top > 0 ? top : 1.0) / mass_max;
        for (Py_ssize_t i = 0; i < n; i++) {
            double prior = get_f64(m, i) * factor;
            set_f64(scores, i, get_f64(scores, i) + prior);
        }
    }
    PyBuffer_Release(&out);
    PyBuffer_Release(&mass);
    PyBuffer_Release(&damping);
    PyBuffer_Release(&weights);
    Py_RETURN_NONE;
fail:
    PyBuffer_Release(&out);
fail_mass:
    PyBuffer_Release(&mass);
fail_damping:
    PyBuffer_Release(&damping);
fail_weights:
    PyBuffer_Release(&weights);
    return NULL;
}

/* A min-heap of (score, row) on "worse": lower score, or the same score and a higher row. */
typedef struct {
    double score;
    Py_ssize_t row;
} entry;

static inline int worse(const entry *a, const entry *b) {
    return a->score < b->score || (a->score == b->score && a->row > b->row);
}

static void sift_down(entry *heap, Py_ssize_t size, Py_ssize_t i) {
    for (;;) {
        Py_ssize_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < size && worse(&heap[l], &heap[w])) w = l;
        if (r < size && worse(&heap[r], &heap[w])) w = r;
        if (w == i) return;
        entry t = heap[i];
        heap[i] = heap[w];
        heap[w] = t;
        i = w;
    }
}

static void sift_up(entry *heap, Py_ssize_t i) {
    while (i > 0) {
        Py_ssize_t p = (i - 1) / 2;
        if (!worse(&heap[i], &heap[p])) return;
        entry t = heap[i];
        heap[i] = heap[p];
        heap[p] = t;
        i = p;
    }
}

static int better_first(const void *a, const void *b) {
    const entry *x = (const entry *)a, *y = (const entry *)b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return x->row < y->row ? -1 : (x->row > y->row);
}

/* top_rows(scores, k) -> list of rows, best first (equal scores: lower row first), or None
 *
 * scores: a float64 buffer. Only scores above -inf are candidates. None when fewer than k are and some score is
 * -inf or NaN: those come after every number in learner.ranking.top_rows, which the caller then uses.
 */
static PyObject *top_rows(PyObject *self, PyObject *args) {
    PyObject *scores_obj;
    Py_ssize_t k;
    (void)self;
    if (!PyArg_ParseTuple(args, "On", &scores_obj, &k)) return NULL;
    if (k < 0) {
        PyErr_SetString(PyExc_ValueError, "k must be >= 0");
        return NULL;
    }
    Py_buffer view;
    if (get_buffer(scores_obj, &view, PyBUF_SIMPLE, "scores", 'd') < 0) return NULL;
    const char *s = (const char *)view.buf;
    Py_ssize_t n = view.len / 8;
    if (k > n) k = n;
    entry *heap = PyMem_Malloc((size_t)(k > 0 ? k : 1) * sizeof(entry));
    if (heap == NULL) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    Py_ssize_t size = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        double x = get_f64(s, i);
        if (!(x > -INFINITY)) continue; /* -inf or NaN: after every number */
        if (size < k) {
            heap[size].score = x;
            heap[size].row = i;
            sift_up(heap, size++);
        } else if (k > 0 && x > heap[0].score) { /* an equal score at a higher row never displaces */
            heap[0].score = x;
            heap[0].row = i;
            sift_down(heap, size, 0);
        }
    }
    PyBuffer_Release(&view);
    if (size < k) { /* k is at most n here: some score is -inf or NaN */
        PyMem_Free(heap);
        Py_RETURN_NONE;
    }
    qsort(heap, (size_t)size, sizeof(entry), better_first);
    PyObject *result = PyList_New(size);
    if (result == NULL) {
        PyMem_Free(heap);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < size; i++) {
        PyObject *row = PyLong_FromSsize_t(heap[i].row);
        if (row == NULL) {
            Py_DECREF(result);
            PyMem_Free(heap);
            return NULL;
        }
        PyList_SET_ITEM(result, i, row);
    }
    PyMem_Free(heap);
    return result;
}

static PyMethodDef methods[] = {
    {"cooccurrence_scores", cooccurrence_scores, METH_VARARGS,
     "cooccurrence_scores(rows, weights, damping, mass, popularity_weight, mass_max, out): "
     "ItemCooccurrence.score_all into out"},
    {"top_rows", top_rows, METH_VARARGS,
     "top_rows(scores, k): rows of the k best scores above -inf, best first, or None (see learner.kernels)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", "Compiled ranking loops (learner.kernels).",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
