/* Compiled loops for ranking a whole catalogue, for the co-occurrence update and for the quality gate's behaviour
 * rules (learner.kernels wraps them; numpy and Python do the same when they are not built). The ranking loops do in
 * one or two passes over the catalogue what numpy does in five or six; the update (PoolRows) finds entries in one
 * hash table (SlotTable); IdTable keeps a model's ids packed; RateCore, SurgeCore and AnomalyCore are the user-rate, item-surge and anomaly rules on
 * their own tables. Each uses
 * the same floating-point operations in the same order as the code it stands in for, so the results are the same
 * numbers (tests compare them).
 *
 * Only the buffer protocol is used (no numpy headers): rows are array.array or numpy buffers alike.
 * Built with -ffp-contract=off, so that a * b + c is never fused into one rounding.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <datetime.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

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
static inline int64_t get_i64(const char *p, Py_ssize_t i) {
    int64_t x;
    memcpy(&x, p + i * (Py_ssize_t)sizeof x, sizeof x);
    return x;
}

/* a hint to fetch what `address` points to into the cache (a no-op where the compiler has none) */
#if defined(__GNUC__)
#define PREFETCH(address) __builtin_prefetch(address)
#else
#define PREFETCH(address) ((void)0)
#endif

static inline void set_f64(char *p, Py_ssize_t i, double x) { memcpy(p + i * (Py_ssize_t)sizeof x, &x, sizeof x); }
static inline void set_f32(char *p, Py_ssize_t i, float x) { memcpy(p + i * (Py_ssize_t)sizeof x, &x, sizeof x); }
static inline void set_i32(char *p, Py_ssize_t i, int32_t x) { memcpy(p + i * (Py_ssize_t)sizeof x, &x, sizeof x); }

/* A C-contiguous buffer of native items of type `code` ('i': int32, 'f': float32, 'd': float64, 'q': int64, which
 * numpy calls 'l' on 64-bit Linux). */
static int get_buffer(PyObject *obj, Py_buffer *view, int flags, const char *what, char code) {
    if (PyObject_GetBuffer(obj, view, flags | PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        return -1;
    }
    const char *format = view->format != NULL ? view->format : "B";
    if (format[0] == '@' || format[0] == '=' || (format[0] == '<' && PY_LITTLE_ENDIAN)) format++;
    Py_ssize_t itemsize = code == 'd' || code == 'q' ? 8 : 4;
    char found = code == 'q' && format[0] == 'l' ? 'q' : format[0];
    if (found != code || format[1] != '\0' || view->itemsize != itemsize) {
        PyErr_Format(PyExc_TypeError, "%s: expected a buffer of '%c' items, got '%s'", what, code,
                     view->format != NULL ? view->format : "B");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* get_buffer for objs[0..n-1] into views (names[k], codes[k]); those from `writable_from` on writable. 0, or -1 with
 * none held. */
static int get_buffers(PyObject *const *objs, Py_buffer *views, int n, const char *const *names, const char *codes,
                       int writable_from) {
    for (int held = 0; held < n; held++) {
        if (get_buffer(objs[held], &views[held], held >= writable_from ? PyBUF_WRITABLE : PyBUF_SIMPLE, names[held],
                       codes[held]) < 0) {
            while (held-- > 0) PyBuffer_Release(&views[held]);
            return -1;
        }
    }
    return 0;
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

/* Catalogue-long passes, four scores at a time with AVX2 where the processor has it (chosen when the module loads;
 * vector_loops() switches them off, so tests compare both). Each lane does the scalar loop's operations in the same
 * order (a product, then a sum: no fused multiply-add), so both give the same numbers. */
#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define VECTOR_LOOPS 1
#define AVX2 __attribute__((target("avx2")))
#else
#define VECTOR_LOOPS 0
#endif
static int avx2 = 0;    /* the processor has AVX2: read once, when the module loads */
static int vectors = 0; /* use the AVX2 loops: on at load where the processor has AVX2 */

/* A selection's state: a heap of the k best so far and the score a newcomer must beat (-inf until k are in). */
typedef struct {
    entry *heap;
    Py_ssize_t size, k;
    double bar;
} selection;

/* Offer score x of row i (scores are offered in row order, so an equal score at a higher row never displaces). */
static inline void consider(selection *sel, double x, Py_ssize_t i) {
    if (!(x > sel->bar)) return;
    if (sel->size < sel->k) {
        sel->heap[sel->size].score = x;
        sel->heap[sel->size].row = i;
        sift_up(sel->heap, sel->size++);
    } else {
        sel->heap[0].score = x;
        sel->heap[0].row = i;
        sift_down(sel->heap, sel->size, 0);
    }
    if (sel->size == sel->k) sel->bar = sel->heap[0].score;
}

/* Offer scores[from:n], counting those above t and equal to it (t NaN: neither). */
static void select_range(selection *sel, const char *s, Py_ssize_t from, Py_ssize_t n, double t, Py_ssize_t *above,
                         Py_ssize_t *same) {
    for (Py_ssize_t i = from; i < n; i++) {
        double x = get_f64(s, i);
        *above += x > t;
        *same += x == t;
        consider(sel, x, i);
    }
}

/* scores *= damping, element by element; the largest product (NaN if any is NaN; -inf for none). */
static double damp_range(char *s, const char *d, Py_ssize_t from, Py_ssize_t n, double top) {
    for (Py_ssize_t i = from; i < n; i++) {
        double x = get_f64(s, i) * get_f64(d, i);
        set_f64(s, i, x);
        if (x > top || isnan(x)) top = isnan(top) ? top : x; /* numpy's max: NaN wins */
    }
    return top;
}

/* scores += mass * factor, element by element. */
static void prior_range(char *s, const char *m, double factor, Py_ssize_t from, Py_ssize_t n) {
    for (Py_ssize_t i = from; i < n; i++) {
        double prior = get_f64(m, i) * factor;
        set_f64(s, i, get_f64(s, i) + prior);
    }
}

#if VECTOR_LOOPS
AVX2 static void select_avx2(selection *sel, const char *s, Py_ssize_t n, double t, Py_ssize_t *above,
                             Py_ssize_t *same) {
    const __m256d target = _mm256_set1_pd(t);
    __m256i gt = _mm256_setzero_si256(), eq = _mm256_setzero_si256();
    Py_ssize_t i = 0;
    for (; i + 4 <= n; i += 4) {
        __m256d x = _mm256_loadu_pd((const double *)(s + i * 8));
        /* a true comparison is all ones (-1 as an integer): subtracting it counts one */
        gt = _mm256_sub_epi64(gt, _mm256_castpd_si256(_mm256_cmp_pd(x, target, _CMP_GT_OQ)));
        eq = _mm256_sub_epi64(eq, _mm256_castpd_si256(_mm256_cmp_pd(x, target, _CMP_EQ_OQ)));
        if (_mm256_movemask_pd(_mm256_cmp_pd(x, _mm256_set1_pd(sel->bar), _CMP_GT_OQ))) {
            for (Py_ssize_t j = i; j < i + 4; j++) consider(sel, get_f64(s, j), j);
        }
    }
    int64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, gt);
    *above += (Py_ssize_t)(lanes[0] + lanes[1] + lanes[2] + lanes[3]);
    _mm256_storeu_si256((__m256i *)lanes, eq);
    *same += (Py_ssize_t)(lanes[0] + lanes[1] + lanes[2] + lanes[3]);
    select_range(sel, s, i, n, t, above, same);
}

AVX2 static double damp_avx2(char *s, const char *d, Py_ssize_t n) {
    __m256d top = _mm256_set1_pd(-INFINITY), nan = _mm256_setzero_pd();
    Py_ssize_t i = 0;
    for (; i + 4 <= n; i += 4) {
        __m256d x = _mm256_mul_pd(_mm256_loadu_pd((const double *)(s + i * 8)),
                                  _mm256_loadu_pd((const double *)(d + i * 8)));
        _mm256_storeu_pd((double *)(s + i * 8), x);
        nan = _mm256_or_pd(nan, _mm256_cmp_pd(x, x, _CMP_UNORD_Q));
        top = _mm256_max_pd(x, top); /* a NaN x leaves top as it was (maxpd returns its second operand) */
    }
    double lanes[4], best = -INFINITY;
    _mm256_storeu_pd(lanes, top);
    for (int l = 0; l < 4; l++) best = lanes[l] > best ? lanes[l] : best;
    if (_mm256_movemask_pd(nan)) best = NAN;
    return damp_range(s, d, i, n, best);
}

AVX2 static void prior_avx2(char *s, const char *m, double factor, Py_ssize_t n) {
    const __m256d f = _mm256_set1_pd(factor);
    Py_ssize_t i = 0;
    for (; i + 4 <= n; i += 4) {
        __m256d prior = _mm256_mul_pd(_mm256_loadu_pd((const double *)(m + i * 8)), f);
        _mm256_storeu_pd((double *)(s + i * 8), _mm256_add_pd(_mm256_loadu_pd((const double *)(s + i * 8)), prior));
    }
    prior_range(s, m, factor, i, n);
}
#endif

static void select_scores(selection *sel, const char *s, Py_ssize_t n, double t, Py_ssize_t *above, Py_ssize_t *same) {
#if VECTOR_LOOPS
    if (vectors) {
        select_avx2(sel, s, n, t, above, same);
        return;
    }
#endif
    select_range(sel, s, 0, n, t, above, same);
}

static double damp_scores(char *s, const char *d, Py_ssize_t n) {
#if VECTOR_LOOPS
    if (vectors) return damp_avx2(s, d, n);
#endif
    return damp_range(s, d, 0, n, -INFINITY);
}

static void add_prior(char *s, const char *m, double factor, Py_ssize_t n) {
#if VECTOR_LOOPS
    if (vectors) {
        prior_avx2(s, m, factor, n);
        return;
    }
#endif
    prior_range(s, m, factor, 0, n);
}

/* vector_loops(on=None) -> bool: whether the AVX2 loops are used (before the change, when `on` is given); they can
 * only be switched on where the processor has AVX2. */
static PyObject *vector_loops(PyObject *self, PyObject *args) {
    PyObject *on = Py_None;
    (void)self;
    if (!PyArg_ParseTuple(args, "|O", &on)) return NULL;
    PyObject *was = PyBool_FromLong(vectors);
    if (on != Py_None) {
        int want = PyObject_IsTrue(on);
        if (want < 0) {
            Py_DECREF(was);
            return NULL;
        }
        if (want && !avx2) {
            Py_DECREF(was);
            PyErr_SetString(PyExc_ValueError,
                            VECTOR_LOOPS ? "this processor has no AVX2" : "built without the AVX2 loops");
            return NULL;
        }
        vectors = want;
    }
    return was;
}

static int better_first(const void *a, const void *b) {
    const entry *x = (const entry *)a, *y = (const entry *)b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return x->row < y->row ? -1 : (x->row > y->row);
}

static inline uint64_t slot_hash(uint64_t key) { /* MurmurHash3's finaliser: consecutive columns spread apart */
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL;
    key ^= key >> 33;
    key *= 0xc4ceb9fe1a85ec53ULL;
    key ^= key >> 33;
    return key;
}

/* ---- Ranking: each remembered item's strongest entries ------------------------------------------------------------
 *
 * A user is ranked from the rows of the items they remember. A row is read whole when it has at most `cap` entries
 * (or cap is 0); a longer one through its `cap` strongest entries: the largest values, equal values by lower column
 * (a NaN value counts as -inf). The pool keeps every entry (learning and predict_one use them all); the strongest
 * entries of a long row are selected here, as a bytearray of cap int32 columns then cap float32 values, in the order
 * of a heap with the weakest entry first (so that learning sees at once whether a grown entry enters), kept in the
 * caller's dict by row (None: not kept). Learning keeps them up to date (PoolRows.add_pairs, kept_update); the caller
 * forgets them when rows change otherwise. Within a row each column appears once, so the order of its entries
 * changes no sum. */
typedef struct {
    Py_buffer views[4]; /* cols, vals, start, length */
    const char *cols, *vals, *start, *length;
    Py_ssize_t n_entries, n_rows;
} pool_view;

static int pool_open(pool_view *p, PyObject *cols, PyObject *vals, PyObject *start, PyObject *length) {
    PyObject *objs[4] = {cols, vals, start, length};
    static const char *names[] = {"cols", "vals", "start", "length"};
    static const char codes[] = {'i', 'f', 'q', 'q'};
    int held = 0;
    for (; held < 4; held++) {
        if (get_buffer(objs[held], &p->views[held], PyBUF_SIMPLE, names[held], codes[held]) < 0) break;
    }
    if (held < 4) {
        while (held-- > 0) PyBuffer_Release(&p->views[held]);
        return -1;
    }
    p->cols = p->views[0].buf;
    p->vals = p->views[1].buf;
    p->start = p->views[2].buf;
    p->length = p->views[3].buf;
    p->n_entries = p->views[0].len / 4;
    p->n_rows = p->views[2].len / 8;
    if (p->views[1].len / 4 != p->n_entries || p->views[3].len / 8 != p->n_rows) {
        PyErr_SetString(PyExc_ValueError, "cols and vals, or start and length, differ in length");
        for (int b = 0; b < 4; b++) PyBuffer_Release(&p->views[b]);
        return -1;
    }
    return 0;
}

static void pool_close(pool_view *p) {
    for (int b = 0; b < 4; b++) PyBuffer_Release(&p->views[b]);
}

/* One row as ranking reads it: `len` entries at `cols` (int32) and `vals` (float32). */
typedef struct {
    const char *cols, *vals;
    Py_ssize_t len;
} row_part;

static inline double strength(float value) { return isnan(value) ? -INFINITY : (double)value; }

/* Reorder a[0..n) so that a[0..k) are its k best (0 < k <= n; any order within): quickselect, each pivot the median
 * of three. "Better" is a strict total order here (a column appears once in a row), so the partition is plain. */
static void select_best(entry *a, Py_ssize_t n, Py_ssize_t k) {
    Py_ssize_t lo = 0, hi = n - 1;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        entry x = a[lo], y = a[mid], z = a[hi], pivot;
        if (worse(&y, &x)) { entry t = x; x = y; y = t; } /* now x is the better of the first two */
        pivot = worse(&z, &y) ? y : (worse(&z, &x) ? z : x);
        Py_ssize_t i = lo, j = hi;
        while (i <= j) {
            while (worse(&pivot, &a[i])) i++;
            while (worse(&a[j], &pivot)) j--;
            if (i <= j) {
                entry t = a[i];
                a[i++] = a[j];
                a[j--] = t;
            }
        }
        /* a[lo..j] are at least as good as the pivot, a[i..hi] at most, anything between is the pivot itself */
        if (k - 1 <= j) {
            hi = j;
        } else if (k - 1 >= i) {
            lo = i;
        } else {
            return;
        }
    }
}

/* The `cap` strongest of a row's `len` entries (len > cap), as a new bytearray (see above); NULL with an error. */
static PyObject *strongest_entries(const char *cols, const char *vals, Py_ssize_t len, Py_ssize_t cap) {
    entry *all = PyMem_Malloc((size_t)len * sizeof(entry));
    if (all == NULL) return PyErr_NoMemory();
    for (Py_ssize_t e = 0; e < len; e++) {
        all[e].score = strength(get_f32(vals, e));
        all[e].row = get_i32(cols, e);
    }
    select_best(all, len, cap);
    for (Py_ssize_t e = cap / 2; e-- > 0;) sift_down(all, cap, e); /* the weakest first (kept_update) */
    PyObject *part = PyByteArray_FromStringAndSize(NULL, cap * 8);
    if (part != NULL) {
        char *out = PyByteArray_AS_STRING(part);
        for (Py_ssize_t e = 0; e < cap; e++) {
            int32_t col = (int32_t)all[e].row;
            float value = (float)all[e].score; /* exact: a float32 (or -inf) widened, narrowed back */
            memcpy(out + e * 4, &col, 4);
            memcpy(out + cap * 4 + e * 4, &value, 4);
        }
    }
    PyMem_Free(all);
    return part;
}

static inline int kept_fits(PyObject *part, Py_ssize_t cap) {
    return PyByteArray_CheckExact(part) && PyByteArray_GET_SIZE(part) == cap * 8;
}

/* Learning added to the entry at `col` of row `row`, now `value`, and values only grow: the row's kept strongest
 * entries (in `kept`, at `cap`), if any, stay its strongest when the entry takes the weakest one's place if it is
 * now better (or just its new value, if it is kept already). Without a kept part nothing is done. A NaN value (a
 * NaN already in the pool, or an infinity times 0) counts as -inf, less than before: the row's part is dropped.
 * When the part cannot be read (an object not made here, no memory for the key) every part is dropped. Dropping is
 * always right (a part is selected again when read). Never raises. */
static void kept_update(PyObject *kept, Py_ssize_t cap, int64_t row, int64_t length, int32_t col, float value) {
    if (length <= cap) return; /* a row this short is ranked whole: never kept (and rows never shrink) */
    PyObject *key = PyLong_FromLongLong(row);
    PyObject *part = key == NULL ? NULL : PyDict_GetItemWithError(kept, key); /* borrowed */
    int drop_all = part == NULL ? PyErr_Occurred() != NULL : !kept_fits(part, cap);
    int drop_row = part != NULL && !drop_all && isnan(value);
    if (drop_row && PyDict_DelItem(kept, key) < 0) drop_all = 1;
    Py_XDECREF(key);
    if (drop_all) {
        PyErr_Clear();
        PyDict_Clear(kept);
    }
    if (part == NULL || drop_all || drop_row) return;
    char *cols = PyByteArray_AS_STRING(part), *vals = cols + cap * 4;
    entry x = {(double)value, col}, root = {strength(get_f32(vals, 0)), get_i32(cols, 0)};
    /* The part is a heap with the weakest entry first. The entry's value was at most `value` before: if it is worse
     * than the weakest kept now, it was not kept (every kept entry is at least the weakest) and does not enter. */
    if (worse(&x, &root)) return;
    Py_ssize_t at = 0;
    while (at < cap && get_i32(cols, at) != col) at++;
    if (at == cap) at = 0; /* not kept: it takes the weakest one's place */
    /* the entry at `at` grew: move it down past every child now weaker than it */
    for (;;) {
        Py_ssize_t w = at, child = 2 * at + 1;
        entry weakest = x;
        for (Py_ssize_t c = child; c < cap && c <= child + 1; c++) {
            entry e = {strength(get_f32(vals, c)), get_i32(cols, c)};
            if (worse(&e, &weakest)) {
                w = c;
                weakest = e;
            }
        }
        if (w == at) break;
        memcpy(cols + at * 4, cols + w * 4, 4);
        memcpy(vals + at * 4, vals + w * 4, 4);
        at = w;
    }
    memcpy(cols + at * 4, &col, 4);
    memcpy(vals + at * 4, &value, 4);
}

/* The part of pool row `row` that ranking reads (its strongest entries when longer than cap, from `cache` when
 * there, else selected, and stored there unless cache is NULL). `*owned` receives a new reference the caller
 * releases after use (NULL when the part is the pool's own). -1 with an error. */
static int read_row(const pool_view *p, int64_t row, Py_ssize_t cap, PyObject *cache, row_part *out, PyObject **owned) {
    *owned = NULL;
    int64_t from = row >= 0 && row < p->n_rows ? get_i64(p->start, row) : -1;
    int64_t len = from >= 0 ? get_i64(p->length, row) : -1;
    if (from < 0 || len < 0 || len > p->n_entries - from) {
        PyErr_SetString(PyExc_ValueError, "rows: a row outside the pool");
        return -1;
    }
    if (cap <= 0 || len <= cap) {
        out->cols = p->cols + from * 4;
        out->vals = p->vals + from * 4;
        out->len = (Py_ssize_t)len;
        return 0;
    }
    PyObject *key = NULL, *part = NULL;
    if (cache != NULL) {
        key = PyLong_FromLongLong(row);
        if (key == NULL) return -1;
        part = PyDict_GetItemWithError(cache, key); /* borrowed */
        if (part != NULL && !kept_fits(part, cap)) {
            Py_DECREF(key);
            PyErr_SetString(PyExc_ValueError, "cache: a row's entry is not its strongest entries at this cap");
            return -1;
        }
        Py_XINCREF(part);
        if (part == NULL && PyErr_Occurred()) {
            Py_DECREF(key);
            return -1;
        }
    }
    if (part == NULL) {
        part = strongest_entries(p->cols + from * 4, p->vals + from * 4, (Py_ssize_t)len, cap);
        if (part == NULL || (cache != NULL && PyDict_SetItem(cache, key, part) < 0)) {
            Py_XDECREF(key);
            Py_XDECREF(part);
            return -1;
        }
    }
    Py_XDECREF(key);
    out->cols = PyByteArray_AS_STRING(part);
    out->vals = out->cols + cap * 4;
    out->len = cap;
    *owned = part;
    return 0;
}

/* The parts of `n_rows` rows (an int64 buffer), into parts[] and owned[] (each n_rows long); their entries counted
 * into *entries. -1 with an error (every reference taken released). */
static int read_rows(const pool_view *p, const char *rows, Py_ssize_t n_rows, Py_ssize_t cap, PyObject *cache,
                     row_part *parts, PyObject **owned, Py_ssize_t *entries) {
    *entries = 0;
    for (Py_ssize_t r = 0; r < n_rows; r++) {
        if (read_row(p, get_i64(rows, r), cap, cache, &parts[r], &owned[r]) < 0) {
            while (r-- > 0) Py_XDECREF(owned[r]);
            return -1;
        }
        *entries += parts[r].len;
    }
    return 0;
}

static void release_rows(PyObject **owned, Py_ssize_t n_rows) {
    for (Py_ssize_t r = 0; r < n_rows; r++) Py_XDECREF(owned[r]);
}

/* What both ranking kernels do first, on their buffers rows, weights, damping, mass (views[0..3]): check that there
 * is a weight per row and that damping and mass cover the n items, then read the rows into *parts and *owned
 * (each one per row; their entries counted into *entries). -1 with an error, with nothing to release (*parts and
 * *owned NULL); else the caller releases owned's references (release_rows) and frees both. */
static int read_ranked_rows(const pool_view *p, const Py_buffer *views, Py_ssize_t n, Py_ssize_t cap, PyObject *cache,
                            row_part **parts, PyObject ***owned, Py_ssize_t *entries) {
    Py_ssize_t n_rows = views[0].len / 8;
    *parts = NULL;
    *owned = NULL;
    if (views[1].len / 8 != n_rows) {
        PyErr_SetString(PyExc_ValueError, "weights: one per row expected");
        return -1;
    }
    if (views[2].len / 8 < n || views[3].len / 8 < n) {
        PyErr_SetString(PyExc_ValueError, "damping and mass must cover every item");
        return -1;
    }
    row_part *read = PyMem_Malloc((size_t)(n_rows > 0 ? n_rows : 1) * sizeof *read);
    PyObject **refs = PyMem_Malloc((size_t)(n_rows > 0 ? n_rows : 1) * sizeof *refs);
    if (read == NULL || refs == NULL) {
        PyErr_NoMemory();
    } else if (read_rows(p, views[0].buf, n_rows, cap, cache, read, refs, entries) == 0) {
        *parts = read;
        *owned = refs;
        return 0;
    }
    PyMem_Free(read);
    PyMem_Free(refs);
    return -1;
}

static PyObject *cache_arg(PyObject *cache) {
    if (cache == Py_None) return NULL;
    if (!PyDict_Check(cache)) {
        PyErr_SetString(PyExc_TypeError, "cache: a dict or None expected");
        return (PyObject *)-1;
    }
    return cache;
}

/* cooccurrence_scores(cols, vals, start, length, rows, weights, cap, cache, damping, mass, popularity_weight, mass_max,
 *                     out)
 *
 * cols, vals: the pool of learner.sparse_rows.SparseRows (int32, float32), where row r holds length[r] entries from
 * start[r] (int64 each); rows: the rows to sum (int64), each read as above (cap, cache); weights: float64, one per
 * row; damping, mass: float64, at least len(out) each; out: a writable float64 buffer of n = len(out).
 * What ItemCooccurrence.score_all computes with numpy:
 *   out = bincount(columns, values * weight) * damping               (row by row, entry by entry)
 *   if popularity_weight and mass_max > 0 and n:
 *       top = max(out); out += mass * (popularity_weight * (top if top > 0 else 1) / mass_max)
 */
static PyObject *cooccurrence_scores(PyObject *self, PyObject *args) {
    PyObject *pool_objs[4], *objs[5], *cache_obj;
    Py_ssize_t cap;
    double popularity_weight, mass_max;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOOnOOOddO", &pool_objs[0], &pool_objs[1], &pool_objs[2], &pool_objs[3], &objs[0],
                          &objs[1], &cap, &cache_obj, &objs[2], &objs[3], &popularity_weight, &mass_max, &objs[4])) {
        return NULL;
    }
    PyObject *cache = cache_arg(cache_obj);
    if (cache == (PyObject *)-1) return NULL;
    pool_view p;
    if (pool_open(&p, pool_objs[0], pool_objs[1], pool_objs[2], pool_objs[3]) < 0) return NULL;
    static const char *names[] = {"rows", "weights", "damping", "mass", "out"};
    static const char codes[] = {'q', 'd', 'd', 'd', 'd'};
    Py_buffer views[5];
    int held = 0;
    for (; held < 5; held++) {
        if (get_buffer(objs[held], &views[held], held == 4 ? PyBUF_WRITABLE : PyBUF_SIMPLE, names[held], codes[held]) < 0) {
            break;
        }
    }
    if (held < 5) {
        while (held-- > 0) PyBuffer_Release(&views[held]);
        pool_close(&p);
        return NULL;
    }
    const char *w = views[1].buf, *damp = views[2].buf, *m = views[3].buf;
    char *scores = views[4].buf;
    Py_ssize_t n = views[4].len / 8, n_rows = views[0].len / 8;
    PyObject *result = NULL;
    row_part *parts = NULL;
    PyObject **owned = NULL;
    Py_ssize_t entries = 0;
    if (read_ranked_rows(&p, views, n, cap, cache, &parts, &owned, &entries) < 0) goto done;
    memset(scores, 0, (size_t)n * sizeof(double));
    for (Py_ssize_t r = 0; r < n_rows; r++) {
        const double wr = get_f64(w, r);
        const row_part *part = &parts[r];
        for (Py_ssize_t e = 0; e < part->len; e++) {
            int32_t col = get_i32(part->cols, e);
            if (col < 0 || col >= n) {
                PyErr_SetString(PyExc_ValueError, "rows: a column is outside the catalogue");
                goto done;
            }
            set_f64(scores, col, get_f64(scores, col) + (double)get_f32(part->vals, e) * wr);
        }
    }
    /* No entry: numpy's path returns zeros without damping them (so a NaN damping stays out). */
    double top = entries ? damp_scores(scores, damp, n) : 0.0;
    if (popularity_weight != 0.0 && mass_max > 0 && n) {
        add_prior(scores, m, popularity_weight * (top > 0 ? top : 1.0) / mass_max, n);
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    if (owned != NULL) release_rows(owned, n_rows);
    PyMem_Free(parts);
    PyMem_Free(owned);
    for (int b = 0; b < 5; b++) PyBuffer_Release(&views[b]);
    pool_close(&p);
    return result;
}

/* Open-addressing tables of rows for cooccurrence_top (linear probing; capacity a power of two, at least twice the
 * keys): row -> a number (the candidates' positions), or a set (the excluded rows). */
typedef struct {
    int64_t *keys; /* -1: empty */
    int32_t *values;
    uint64_t mask;
} row_table;

static int table_alloc(row_table *t, Py_ssize_t keys) {
    uint64_t capacity = 16;
    while (capacity < 2 * (uint64_t)keys) capacity <<= 1;
    t->mask = capacity - 1;
    t->keys = PyMem_Malloc(capacity * sizeof *t->keys);
    t->values = PyMem_Malloc(capacity * sizeof *t->values);
    if (t->keys == NULL || t->values == NULL) {
        PyMem_Free(t->keys);
        PyMem_Free(t->values);
        t->keys = NULL;
        t->values = NULL;
        PyErr_NoMemory();
        return -1;
    }
    memset(t->keys, 0xff, capacity * sizeof *t->keys);
    return 0;
}

static void table_free(row_table *t) {
    PyMem_Free(t->keys);
    PyMem_Free(t->values);
}

/* The position of `key` (found, or the empty one where it goes). A multiplicative hash: rows are small integers. */
static inline uint64_t table_at(const row_table *t, int64_t key) {
    uint64_t at = ((uint64_t)key * 0x9e3779b97f4a7c15ULL >> 32) & t->mask;
    while (t->keys[at] != key && t->keys[at] != -1) at = (at + 1) & t->mask;
    return at;
}

static inline int table_has(const row_table *t, int64_t key) { return t->keys[table_at(t, key)] == key; }

/* Add `entry` to the heap of the k best (score, row) pairs, if it is among them. */
static inline void offer(entry *heap, Py_ssize_t *size, Py_ssize_t k, entry x) {
    if (*size < k) {
        heap[*size] = x;
        sift_up(heap, (*size)++);
    } else if (k > 0 && worse(&heap[0], &x)) {
        heap[0] = x;
        sift_down(heap, *size, 0);
    }
}

/* cooccurrence_top(cols, vals, start, length, rows, weights, cap, cache, damping, mass, popularity_weight, mass_max,
 *                  n, head, exclude, k) -> list of (row, score), best first, or None
 *
 * The k best rows of what cooccurrence_scores would give over a catalogue of n items (the same arguments, n for
 * len(out)), leaving out the rows in `exclude` (int64), equal scores by lower row: the same rows and scores as
 * learner.ranking.top_rows of those scores, without a pass over the catalogue. Only the candidates (the columns of
 * the rows read) have evidence; every other item scores its popularity prior alone, so the best of them are the
 * first ones of `head`: int64 rows, each once (not checked: ItemCooccurrence.ranking_head's promise), ordered by
 * mass, largest first (any order among equal masses), the rows of the largest masses of all. It is walked until no
 * later row can be among the k best.
 * None (the caller then ranks the whole catalogue) when that is not known by the end of `head`, when a score is NaN
 * or -inf (the whole ranking's rules for them apply), when an excluded row is outside the catalogue, or with a prior
 * and no head. Assumes a finite damping for every item that is not a candidate (so that its evidence is 0, as in
 * the whole ranking).
 */
static PyObject *cooccurrence_top(PyObject *self, PyObject *args) {
    PyObject *pool_objs[4], *objs[6], *cache_obj;
    Py_ssize_t cap, n, k;
    double popularity_weight, mass_max;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOOnOOOddnOOn", &pool_objs[0], &pool_objs[1], &pool_objs[2], &pool_objs[3],
                          &objs[0], &objs[1], &cap, &cache_obj, &objs[2], &objs[3], &popularity_weight, &mass_max, &n,
                          &objs[4], &objs[5], &k)) {
        return NULL;
    }
    if (k < 0 || n < 0) {
        PyErr_SetString(PyExc_ValueError, "k and n must be >= 0");
        return NULL;
    }
    if (k > n) k = n; /* at most every item (and a heap of k entries is allocated) */
    PyObject *cache = cache_arg(cache_obj);
    if (cache == (PyObject *)-1) return NULL;
    pool_view p;
    if (pool_open(&p, pool_objs[0], pool_objs[1], pool_objs[2], pool_objs[3]) < 0) return NULL;
    static const char *names[] = {"rows", "weights", "damping", "mass", "head", "exclude"};
    static const char codes[] = {'q', 'd', 'd', 'd', 'q', 'q'};
    Py_buffer views[6];
    int held = 0;
    for (; held < 6; held++) {
        if (get_buffer(objs[held], &views[held], PyBUF_SIMPLE, names[held], codes[held]) < 0) break;
    }
    if (held < 6) {
        while (held-- > 0) PyBuffer_Release(&views[held]);
        pool_close(&p);
        return NULL;
    }
    const char *w = views[1].buf, *damp = views[2].buf, *m = views[3].buf;
    const char *head = views[4].buf, *excl = views[5].buf;
    Py_ssize_t n_rows = views[0].len / 8, n_head = views[4].len / 8, n_excl = views[5].len / 8;
    PyObject *result = NULL;
    row_part *parts = NULL;
    PyObject **owned = NULL;
    int64_t *order = NULL; /* the candidates, in the order first met */
    double *sums = NULL;   /* each one's evidence */
    char *left_out = NULL; /* each one's exclusion */
    entry *heap = NULL;
    row_table found = {NULL, NULL, 0}, excluded = {NULL, NULL, 0};
    Py_ssize_t entries = 0, n_found = 0, size = 0;
    if (read_ranked_rows(&p, views, n, cap, cache, &parts, &owned, &entries) < 0) goto done;
    heap = PyMem_Malloc((size_t)(k > 0 ? k : 1) * sizeof *heap);
    order = PyMem_Malloc((size_t)(entries > 0 ? entries : 1) * sizeof *order);
    sums = PyMem_Malloc((size_t)(entries > 0 ? entries : 1) * sizeof *sums);
    left_out = PyMem_Calloc((size_t)(entries > 0 ? entries : 1), 1);
    if (heap == NULL || order == NULL || sums == NULL || left_out == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (table_alloc(&found, entries) < 0 || table_alloc(&excluded, n_excl) < 0) goto done;
    /* the evidence: the same sums as the whole ranking's, column by column in the same order */
    for (Py_ssize_t r = 0; r < n_rows; r++) {
        const double wr = get_f64(w, r);
        const row_part *part = &parts[r];
        for (Py_ssize_t e = 0; e < part->len; e++) {
            int32_t col = get_i32(part->cols, e);
            if (col < 0 || col >= n) {
                PyErr_SetString(PyExc_ValueError, "rows: a column is outside the catalogue");
                goto done;
            }
            uint64_t at = table_at(&found, col);
            if (found.keys[at] != col) {
                /* each candidate's damping and mass are read below, from catalogue-long arrays at random: in a
                 * server they are mostly out of the cache, so their fetches start now (cold, in process: 87 -> 73
                 * us a call at 100k items) */
                PREFETCH(damp + (Py_ssize_t)col * 8);
                PREFETCH(m + (Py_ssize_t)col * 8);
                found.keys[at] = col;
                found.values[at] = (int32_t)n_found;
                sums[n_found] = 0.0;
                order[n_found++] = col;
            }
            double *sum = &sums[found.values[at]];
            *sum = *sum + (double)get_f32(part->vals, e) * wr;
        }
    }
    for (Py_ssize_t x = 0; x < n_excl; x++) {
        int64_t row = get_i64(excl, x);
        if (row < 0 || row >= n) goto none; /* top_k's own rules for such a row apply (numpy's indexing) */
        excluded.keys[table_at(&excluded, row)] = row;
        uint64_t at = table_at(&found, row);
        if (found.keys[at] == row) left_out[found.values[at]] = 1;
    }
    /* the largest score before the prior matters only when above 0, which the other items (0) never are */
    double top = -INFINITY;
    for (Py_ssize_t c = 0; c < n_found; c++) {
        double s = sums[c] * get_f64(damp, order[c]);
        if (isnan(s)) goto none;
        sums[c] = s;
        if (s > top) top = s;
    }
    int prior = popularity_weight != 0.0 && mass_max > 0 && n;
    double factor = prior ? popularity_weight * (top > 0 ? top : 1.0) / mass_max : 0.0;
    for (Py_ssize_t c = 0; c < n_found; c++) {
        if (left_out[c]) continue;
        int64_t row = order[c];
        double s = sums[c];
        if (prior) s = s + get_f64(m, row) * factor;
        if (!(s > -INFINITY)) goto none; /* NaN or -inf */
        offer(heap, &size, k, (entry){s, row});
    }
    if (!prior) { /* every other item scores 0: the lowest rows first */
        Py_ssize_t taken = 0;
        for (int64_t row = 0; row < n && taken < k; row++) {
            if (table_has(&found, row) || table_has(&excluded, row)) continue;
            offer(heap, &size, k, (entry){0.0, row});
            taken++;
        }
    } else {
        Py_ssize_t h = 0;
        for (; h < n_head; h++) {
            int64_t row = get_i64(head, h);
            if (row < 0 || row >= n) {
                PyErr_SetString(PyExc_ValueError, "head: a row outside the catalogue");
                goto done;
            }
            double s = 0.0 + get_f64(m, row) * factor;
            if (!(s > -INFINITY)) goto none;
            if (size == k && (k == 0 || s < heap[0].score)) break; /* no later row (nor any outside the head) scores more */
            if (table_has(&found, row) || table_has(&excluded, row)) continue;
            offer(heap, &size, k, (entry){s, row});
        }
        if (h == n_head && n_head < n) goto none; /* the rest of the catalogue may hold a better one */
    }
    qsort(heap, (size_t)size, sizeof(entry), better_first);
    result = PyList_New(size);
    if (result == NULL) goto done;
    for (Py_ssize_t i = 0; i < size; i++) {
        PyObject *pair = Py_BuildValue("(nd)", heap[i].row, heap[i].score);
        if (pair == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, i, pair);
    }
    goto done;
none:
    Py_INCREF(Py_None);
    result = Py_None;
done:
    if (owned != NULL) release_rows(owned, n_rows);
    PyMem_Free(parts);
    PyMem_Free(owned);
    PyMem_Free(order);
    PyMem_Free(sums);
    PyMem_Free(left_out);
    PyMem_Free(heap);
    table_free(&found);
    table_free(&excluded);
    for (int b = 0; b < 6; b++) PyBuffer_Release(&views[b]);
    pool_close(&p);
    return result;
}


/* The k best of n scores above -inf (k <= n), best first (equal scores: lower row first), as a new list of rows;
 * Py_None (a new reference) when fewer than k are. With a target (t not NaN), also how many scores are above t and
 * equal to it, into *greater and *equal (counted over every score, -inf included). NULL with an error. */
static PyObject *select_and_count(const char *s, Py_ssize_t n, Py_ssize_t k, double t, Py_ssize_t *greater,
                                  Py_ssize_t *equal) {
    entry *heap = PyMem_Malloc((size_t)(k > 0 ? k : 1) * sizeof(entry));
    if (heap == NULL) return PyErr_NoMemory();
    /* Until the heap is full a score enters when it is above -inf (-inf and NaN come after every number); then when
     * it is above the heap's weakest (an equal score at a higher row never displaces): one test, x > bar. */
    selection sel = {heap, 0, k, k > 0 ? -INFINITY : INFINITY};
    Py_ssize_t above = 0, same = 0;
    select_scores(&sel, s, n, t, &above, &same); /* t NaN (no target): both stay 0 */
    *greater = above;
    *equal = same;
    Py_ssize_t size = sel.size;
    if (size < k) { /* k is at most n here: some score is -inf or NaN */
        PyMem_Free(heap);
        Py_RETURN_NONE;
    }
    qsort(heap, (size_t)size, sizeof(entry), better_first);
    PyObject *result = PyList_New(size);
    for (Py_ssize_t i = 0; result != NULL && i < size; i++) {
        PyObject *row = PyLong_FromSsize_t(heap[i].row);
        if (row == NULL) Py_CLEAR(result);
        else PyList_SET_ITEM(result, i, row);
    }
    PyMem_Free(heap);
    return result;
}

/* top_rows(scores, k) -> list of rows, best first (equal scores: lower row first), or None
 *
 * scores: a float64 buffer. Only scores above -inf are candidates. None when fewer than k are and some score is
 * -inf or NaN: those come after every number in learner.ranking.top_rows, which the caller then uses.
 */
static PyObject *top_rows(PyObject *self, PyObject *args) {
    PyObject *scores_obj;
    Py_ssize_t k, greater, equal;
    (void)self;
    if (!PyArg_ParseTuple(args, "On", &scores_obj, &k)) return NULL;
    if (k < 0) {
        PyErr_SetString(PyExc_ValueError, "k must be >= 0");
        return NULL;
    }
    Py_buffer view;
    if (get_buffer(scores_obj, &view, PyBUF_SIMPLE, "scores", 'd') < 0) return NULL;
    Py_ssize_t n = view.len / 8;
    PyObject *result = select_and_count(view.buf, n, k < n ? k : n, NAN, &greater, &equal);
    PyBuffer_Release(&view);
    return result;
}

/* top_rows_rank(scores, exclude, k, target, keep) -> (rows or None, greater, equal), or None
 *
 * learner.ranking.top_rows_and_rank in one call: the excluded rows (int64) but `keep` (-1: none) set to -inf in
 * `scores` (a writable float64 buffer), then top_rows(scores, k) of what is left, and, with a target row (-1: none),
 * how many of the masked scores are above scores[target] and equal to it. None (nothing changed: the caller's numpy
 * path) when an excluded row or the target is outside the scores (numpy's indexing rules apply then).
 */
static PyObject *top_rows_rank(PyObject *self, PyObject *args) {
    PyObject *scores_obj, *exclude_obj;
    Py_ssize_t k, target, keep, greater = 0, equal = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOnnn", &scores_obj, &exclude_obj, &k, &target, &keep)) return NULL;
    if (k < 0) {
        PyErr_SetString(PyExc_ValueError, "k must be >= 0");
        return NULL;
    }
    Py_buffer view, ex;
    if (get_buffer(scores_obj, &view, PyBUF_WRITABLE, "scores", 'd') < 0) return NULL;
    if (get_buffer(exclude_obj, &ex, PyBUF_SIMPLE, "exclude", 'q') < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    char *s = view.buf;
    Py_ssize_t n = view.len / 8, n_ex = ex.len / 8;
    PyObject *best = NULL, *result = NULL;
    int inside = target < n && target >= -1;
    for (Py_ssize_t e = 0; inside && e < n_ex; e++) {
        int64_t row = get_i64(ex.buf, e);
        inside = row >= 0 && row < n;
    }
    if (!inside) {
        Py_INCREF(Py_None);
        result = Py_None;
        goto done;
    }
    for (Py_ssize_t e = 0; e < n_ex; e++) {
        int64_t row = get_i64(ex.buf, e);
        if (row != keep) set_f64(s, (Py_ssize_t)row, -INFINITY);
    }
    best = select_and_count(s, n, k < n ? k : n, target >= 0 ? get_f64(s, target) : NAN, &greater, &equal);
    if (best != NULL) result = Py_BuildValue("(Onn)", best, greater, equal);
done:
    Py_XDECREF(best);
    PyBuffer_Release(&ex);
    PyBuffer_Release(&view);
    return result;
}

/* Python's float ** for a base of at least 1 (or NaN): C's pow, and OverflowError where Python raises it (a finite
 * base and exponent, an infinite result). -1 with the error. */
static int py_pow(double base, double exponent, double *out) {
    double r = pow(base, exponent);
    if (isinf(r) && isfinite(base) && isfinite(exponent)) {
        PyErr_SetString(PyExc_OverflowError, "(34, 'Numerical result out of range')");
        return -1;
    }
    *out = r;
    return 0;
}

/* cooccurrence_mass(mass, candidate_damping, row_damping, i, y, alpha, beta)
 *
 * The end of ItemCooccurrence.learn_one for item row i, the same operations in the same order: mass[i] += y, then
 * candidate_damping[i] = max(mass[i], 1) ** -beta and row_damping[i] = max(mass[i], 1) ** -alpha (float64 buffers,
 * each written before the next is computed, as the Python does). */
static PyObject *cooccurrence_mass(PyObject *self, PyObject *args) {
    PyObject *objs[3];
    Py_ssize_t i;
    double y, alpha, beta;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOnddd", &objs[0], &objs[1], &objs[2], &i, &y, &alpha, &beta)) return NULL;
    static const char *names[] = {"mass", "candidate_damping", "row_damping"};
    Py_buffer views[3];
    int held = 0;
    for (; held < 3; held++) {
        if (get_buffer(objs[held], &views[held], PyBUF_WRITABLE, names[held], 'd') < 0) break;
    }
    PyObject *result = NULL;
    if (held == 3) {
        if (i < 0 || i >= views[0].len / 8 || i >= views[1].len / 8 || i >= views[2].len / 8) {
            PyErr_SetString(PyExc_IndexError, "item row outside the arrays");
        } else {
            double mass = get_f64(views[0].buf, i) + y, damped;
            set_f64(views[0].buf, i, mass);
            double base = 1.0 > mass ? 1.0 : mass; /* Python's max(mass, 1.0): a NaN mass stays */
            if (py_pow(base, -beta, &damped) == 0) {
                set_f64(views[1].buf, i, damped);
                if (py_pow(base, -alpha, &damped) == 0) {
                    set_f64(views[2].buf, i, damped);
                    Py_INCREF(Py_None);
                    result = Py_None;
                }
            }
        }
    }
    while (held-- > 0) PyBuffer_Release(&views[held]);
    return result;
}

/* Memory for the arrays of the gate's, the ids' and the co-occurrence slots' tables (LruIndex, IdTable, SlotTable):
 * PyMem's under GROWN_MAPPED bytes, a memory map of its own from it, grown by mremap (no copy: a growth of the ids'
 * ends, 8 bytes an id, copied ~6 MB in one add() at 800,000 ids, 4-7 ms on this VM, once glibc's heap served it, as
 * it does in a process that has freed large blocks). Each is freed by its size. A map needs no GIL; PyMem's does. */
#ifdef __linux__
#define GROWN_MAPPED ((size_t)1 << 20)
#else
#define GROWN_MAPPED SIZE_MAX /* (no mremap: PyMem's always) */
#endif

#define GROWN_ZEROED 1    /* grown_alloc: the memory zeroed */
#define GROWN_POPULATED 2 /* grown_alloc: a map's pages faulted in now, at once (MAP_POPULATE) */

/* `size` bytes (`how`: GROWN_ZEROED, GROWN_POPULATED, both or 0), NULL when there is no memory (no exception set) */
static void *grown_alloc(size_t size, int how) {
    if (size < GROWN_MAPPED) {
        return how & GROWN_ZEROED ? PyMem_Calloc(size ? size : 1, 1) : PyMem_Malloc(size ? size : 1);
    }
#ifdef __linux__
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | (how & GROWN_POPULATED ? MAP_POPULATE : 0);
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, flags, -1, 0); /* zeroed */
    return p == MAP_FAILED ? NULL : p;
#else
    return NULL;
#endif
}

/* memory of grown_alloc(size) given back */
static void grown_free(void *p, size_t size) {
    if (p == NULL) return;
#ifdef __linux__
    if (size >= GROWN_MAPPED) {
        munmap(p, size);
        return;
    }
#endif
    PyMem_Free(p);
}

/* memory of grown_alloc(size) (or NULL, size 0) grown to `grown` > size bytes, its contents kept (the rest not
 * zeroed); NULL when there is no memory (`p` is then unchanged) */
static void *grown_realloc(void *p, size_t size, size_t grown) {
    if (grown < GROWN_MAPPED) return PyMem_Realloc(p, grown);
#ifdef __linux__
    if (size >= GROWN_MAPPED) {
        void *q = mremap(p, size, grown, MREMAP_MAYMOVE);
        return q == MAP_FAILED ? NULL : q;
    }
#endif
    void *q = grown_alloc(grown, 0);
    if (q == NULL) return NULL;
    if (size) memcpy(q, p, size);
    PyMem_Free(p);
    return q;
}

/* ---- SlotTable: (row, column) -> slot, for co-occurrence rows kept in one pool ----------------------------------
 *
 * Where a row's entry for a column sits (its slot: the position in the row), for every entry of the matrix, in one
 * open-addressing table with linear probing over inline 64-bit keys ((row << 32 | column) + 1; 0: empty) and 32-bit
 * slots: a lookup reads one cache line, and an entry costs 12 bytes / load factor, with no Python object (a dict per
 * row costs a hash table and an int object per slot above 256). Entries are never removed: a row's entries only grow.
 *
 * Growing does not stop the world: the doubled table is allocated zeroed and the old one's entries move into it a
 * few at a time, with each later reservation (8 old places per entry reserved), while lookups read the new table and
 * then the old; an entry set or added meanwhile goes to the new table (its old copy is then skipped when its place is
 * reached). Rehashing ~11M entries at once held the GIL ~1.3 s on a slow VM: a stall of the worker's event loop that
 * freshness saw (docs/performance.md).
 *
 * A large table's pages are populated when it is mapped (MAP_POPULATE: the kernel faults them all in at once), not
 * one by one as lookups and insertions reach them: those land anywhere in the table, so the ~100,000 pages of a
 * 400 MB table were faulted in by the next ~10,000 events, each fault a trap into the kernel; in a bench worker
 * (with its other threads) that was ~70% of a core in the kernel for ~3 s, learning 5-10x slower meanwhile, and
 * a freshness probe's event waited ~1 s. Mapped populated, 400 MB take ~150-560 ms at once on this VM: still a
 * stall of the event loop, so the table it doubles into is made ahead, in a thread, with the GIL released
 * (prepare(), asked for once the table is half full: wants_spare), and taken when the table grows.
 */
#define SLOT_EMPTY 0 /* no key: keys are (row << 32 | column) + 1 */
#define SLOT_LIMIT 0x7fffffffLL
#define SLOT_MAX_CAPACITY (1ULL << 40) /* entries: far above any memory, far below a size_t overflow */
#define SLOT_MOVES_PER_ENTRY 8          /* old places moved per entry reserved while growing */

typedef struct {
    PyObject_HEAD
    uint64_t *keys;
    int32_t *slots;
    uint64_t mask; /* capacity - 1; capacity a power of two */
    Py_ssize_t used; /* distinct keys, in either table */
    uint64_t *old_keys; /* while growing: the table before, its places from `moved` on not moved yet */
    int32_t *old_slots;
    uint64_t old_mask;
    uint64_t moved;
    uint64_t *spare_keys; /* the table to grow into, made ahead by prepare() (spare_capacity places), or NULL */
    int32_t *spare_slots;
    uint64_t spare_capacity;
    int preparing; /* a prepare() is making it (with the GIL released) */
} SlotTable;

static inline uint64_t slot_key(uint64_t row, uint64_t col) { return (row << 32 | col) + 1; }

/* the arrays of a table of `capacity` entries given back */
static void slot_free(uint64_t *keys, int32_t *slots, uint64_t capacity) {
    grown_free(keys, capacity * sizeof *keys);
    grown_free(slots, capacity * sizeof *slots);
}

/* Fresh empty arrays of `capacity` (a power of two) entries, set only on success; -1 with MemoryError (nothing
 * allocated, *keys and *slots untouched). */
static int slot_alloc(uint64_t capacity, uint64_t **keys, int32_t **slots) {
    if (capacity > SLOT_MAX_CAPACITY) {
        PyErr_NoMemory();
        return -1;
    }
    uint64_t *new_keys = grown_alloc(capacity * sizeof *new_keys, GROWN_ZEROED | GROWN_POPULATED);
    int32_t *new_slots = new_keys == NULL ? NULL : grown_alloc(capacity * sizeof *new_slots, GROWN_POPULATED);
    if (new_keys == NULL || new_slots == NULL) {
        grown_free(new_keys, capacity * sizeof *new_keys);
        PyErr_NoMemory();
        return -1;
    }
    *keys = new_keys;
    *slots = new_slots;
    return 0;
}

/* The position of `key` in the (new) table, or of the empty place where it would go. */
static inline uint64_t slot_find(const SlotTable *t, uint64_t key) {
    uint64_t at = slot_hash(key) & t->mask;
    while (t->keys[at] != key && t->keys[at] != SLOT_EMPTY) at = (at + 1) & t->mask;
    return at;
}

/* While growing, the old table's slot for `key` if it holds it (moved or not: a moved key is found in the new table
 * first), else -1. */
static inline int64_t slot_old(const SlotTable *t, uint64_t key) {
    if (t->old_keys == NULL) return -1;
    uint64_t at = slot_hash(key) & t->old_mask;
    while (t->old_keys[at] != key && t->old_keys[at] != SLOT_EMPTY) at = (at + 1) & t->old_mask;
    return t->old_keys[at] == key ? t->old_slots[at] : -1;
}

/* The slot of (row, col), or -1 when the row has no entry for that column. */
static inline int32_t slot_get(const SlotTable *t, uint64_t row, uint64_t col) {
    uint64_t key = slot_key(row, col), at = slot_find(t, key);
    return t->keys[at] == SLOT_EMPTY ? (int32_t)slot_old(t, key) : t->slots[at];
}

/* Move the old table's next `places` places (all: UINT64_MAX) into the new one, a key already there kept as it is;
 * the old table freed once every place is moved. */
static void slot_move(SlotTable *t, uint64_t places) {
    if (t->old_keys == NULL) return;
    uint64_t end = t->old_mask + 1, stop = places < end - t->moved ? t->moved + places : end;
    for (uint64_t p = t->moved; p < stop; p++) {
        uint64_t key = t->old_keys[p];
        if (key == SLOT_EMPTY) continue;
        uint64_t at = slot_find(t, key);
        if (t->keys[at] == SLOT_EMPTY) {
            t->keys[at] = key;
            t->slots[at] = t->old_slots[p];
        }
    }
    t->moved = stop;
    if (stop == end) {
        slot_free(t->old_keys, t->old_slots, end);
        t->old_keys = NULL;
        t->old_slots = NULL;
    }
}

/* Room for `extra` more entries within the load limit (7/10) of the new table, growing by doubling (the entries
 * moving over with the reservations after it: slot_move); -1 with MemoryError. */
static int slot_reserve(SlotTable *t, Py_ssize_t extra) {
    if (extra < 0) {
        PyErr_NoMemory();
        return -1;
    }
    slot_move(t, (uint64_t)extra * SLOT_MOVES_PER_ENTRY + 64);
    uint64_t capacity = t->mask + 1, need = (uint64_t)(t->used + extra);
    if (need * 10 <= capacity * 7) return 0;
    if (need > SLOT_MAX_CAPACITY / 2) {
        PyErr_NoMemory();
        return -1;
    }
    while (need * 10 > capacity * 7) capacity *= 2;
    uint64_t *keys;
    int32_t *slots;
    if (t->spare_keys != NULL && t->spare_capacity == capacity) { /* made ahead, its pages resident already */
        keys = t->spare_keys;
        slots = t->spare_slots;
        t->spare_keys = NULL;
        t->spare_slots = NULL;
    } else if (slot_alloc(capacity, &keys, &slots) < 0) {
        return -1;
    }
    if (t->spare_keys != NULL) { /* made for another size (a growth by more than twice) */
        slot_free(t->spare_keys, t->spare_slots, t->spare_capacity);
        t->spare_keys = NULL;
        t->spare_slots = NULL;
    }
    slot_move(t, UINT64_MAX); /* (a growth still under way, if any: rare, as each moves 8 places an entry) */
    t->old_keys = t->keys;
    t->old_slots = t->slots;
    t->old_mask = t->mask;
    t->moved = 0;
    t->keys = keys;
    t->slots = slots;
    t->mask = capacity - 1;
    return 0;
}

/* Set (row, col) -> slot (a new entry, or a new slot for an existing one); the caller reserved room. */
static inline void slot_set(SlotTable *t, uint64_t row, uint64_t col, int32_t slot) {
    uint64_t key = slot_key(row, col);
    uint64_t at = slot_find(t, key);
    if (t->keys[at] == SLOT_EMPTY) {
        if (slot_old(t, key) < 0) t->used++; /* (else a key of the old table, now set here) */
        t->keys[at] = key;
    }
    t->slots[at] = slot;
}

static int slot_check(long long value, const char *what) {
    if (value < 0 || value > SLOT_LIMIT) {
        PyErr_Format(PyExc_ValueError, "%s %lld is outside 0..2**31-1", what, value);
        return -1;
    }
    return 0;
}

static int SlotTable_init(SlotTable *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"capacity", NULL};
    Py_ssize_t wanted = 16;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|n", kwlist, &wanted)) return -1;
    if (self->keys != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a SlotTable is initialised once");
        return -1;
    }
    uint64_t capacity = 16;
    if ((uint64_t)(wanted > 0 ? wanted : 0) > SLOT_MAX_CAPACITY / 2) {
        PyErr_NoMemory();
        return -1;
    }
    while (capacity * 7 < (uint64_t)(wanted > 0 ? wanted : 0) * 10) capacity *= 2;
    if (slot_alloc(capacity, &self->keys, &self->slots) < 0) return -1;
    self->mask = capacity - 1;
    self->used = 0;
    return 0;
}

static void SlotTable_dealloc(SlotTable *self) {
    if (self->keys != NULL) slot_free(self->keys, self->slots, self->mask + 1);
    if (self->old_keys != NULL) slot_free(self->old_keys, self->old_slots, self->old_mask + 1);
    if (self->spare_keys != NULL) slot_free(self->spare_keys, self->spare_slots, self->spare_capacity);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int slot_ready(SlotTable *self) {
    if (self->keys == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "SlotTable.__init__ was not called");
        return -1;
    }
    return 0;
}

static PyObject *SlotTable_get(SlotTable *self, PyObject *args) {
    long long row, col;
    if (!PyArg_ParseTuple(args, "LL", &row, &col) || slot_ready(self) < 0) return NULL;
    if (slot_check(row, "row") < 0 || slot_check(col, "column") < 0) return NULL;
    int32_t slot = slot_get(self, (uint64_t)row, (uint64_t)col);
    if (slot < 0) Py_RETURN_NONE;
    return PyLong_FromLong(slot);
}

static PyObject *SlotTable_set(SlotTable *self, PyObject *args) {
    long long row, col, slot;
    if (!PyArg_ParseTuple(args, "LLL", &row, &col, &slot) || slot_ready(self) < 0) return NULL;
    if (slot_check(row, "row") < 0 || slot_check(col, "column") < 0 || slot_check(slot, "slot") < 0) return NULL;
    if (slot_reserve(self, 1) < 0) return NULL;
    slot_set(self, (uint64_t)row, (uint64_t)col, (int32_t)slot);
    Py_RETURN_NONE;
}

/* fill(rows, cols, slots): set every (rows[e], cols[e]) -> slots[e]; int32 buffers of one length (a loaded
 * snapshot's entries: its CSR columns, each entry's row and position in it). Checked before anything is set. */
static PyObject *SlotTable_fill(SlotTable *self, PyObject *args) {
    PyObject *rows_obj, *cols_obj, *slots_obj;
    if (!PyArg_ParseTuple(args, "OOO", &rows_obj, &cols_obj, &slots_obj) || slot_ready(self) < 0) return NULL;
    Py_buffer rows, cols, slots;
    if (get_buffer(rows_obj, &rows, PyBUF_SIMPLE, "rows", 'i') < 0) return NULL;
    if (get_buffer(cols_obj, &cols, PyBUF_SIMPLE, "cols", 'i') < 0) {
        PyBuffer_Release(&rows);
        return NULL;
    }
    if (get_buffer(slots_obj, &slots, PyBUF_SIMPLE, "slots", 'i') < 0) {
        PyBuffer_Release(&rows);
        PyBuffer_Release(&cols);
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t n = rows.len / 4;
    if (cols.len / 4 != n || slots.len / 4 != n) {
        PyErr_SetString(PyExc_ValueError, "rows, cols and slots must have one item per entry");
        goto done;
    }
    for (Py_ssize_t e = 0; e < n; e++) {
        if (get_i32(rows.buf, e) < 0 || get_i32(cols.buf, e) < 0 || get_i32(slots.buf, e) < 0) {
            PyErr_SetString(PyExc_ValueError, "rows, columns and slots must be >= 0");
            goto done;
        }
    }
    if (slot_reserve(self, n) < 0) goto done;
    for (Py_ssize_t e = 0; e < n; e++) {
        slot_set(self, (uint64_t)get_i32(rows.buf, e), (uint64_t)get_i32(cols.buf, e), get_i32(slots.buf, e));
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    PyBuffer_Release(&rows);
    PyBuffer_Release(&cols);
    PyBuffer_Release(&slots);
    return result;
}

static Py_ssize_t SlotTable_len(SlotTable *self) { return self->used; }

/* Whether the table would do well to have the table it doubles into made ahead: half full or more, none made or
 * being made, no growth under way. */
static int slot_wants_spare(const SlotTable *t) {
    uint64_t capacity = t->mask + 1;
    return t->keys != NULL && t->spare_keys == NULL && !t->preparing && t->old_keys == NULL &&
           capacity * sizeof *t->keys >= GROWN_MAPPED && (uint64_t)t->used * 2 >= capacity;
}

static PyObject *SlotTable_wants_spare(SlotTable *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(slot_wants_spare(self));
}

/* prepare() -> bool: make the table this one doubles into now (its pages populated), with the GIL released, for
 * the growth to take; for a thread of its own while the table is used. False if it was not wanted (wants_spare), or
 * the table grew meanwhile (what was made is given back), or there was no memory for it. */
static PyObject *SlotTable_prepare(SlotTable *self, PyObject *noargs) {
    (void)noargs;
    if (slot_ready(self) < 0) return NULL;
    if (!slot_wants_spare(self)) Py_RETURN_FALSE;
    uint64_t capacity = 2 * (self->mask + 1); /* (both arrays GROWN_MAPPED bytes or more, as wanted: maps) */
    uint64_t *keys = NULL;
    int32_t *slots = NULL;
    self->preparing = 1;
    Py_BEGIN_ALLOW_THREADS
    keys = grown_alloc(capacity * sizeof *keys, GROWN_ZEROED | GROWN_POPULATED);
    slots = keys == NULL ? NULL : grown_alloc(capacity * sizeof *slots, GROWN_POPULATED);
    Py_END_ALLOW_THREADS
    self->preparing = 0;
    if (keys == NULL || slots == NULL || self->spare_keys != NULL || 2 * (self->mask + 1) != capacity) {
        grown_free(keys, capacity * sizeof *keys);
        grown_free(slots, capacity * sizeof *slots);
        Py_RETURN_FALSE;
    }
    self->spare_keys = keys;
    self->spare_slots = slots;
    self->spare_capacity = capacity;
    Py_RETURN_TRUE;
}

static PyObject *SlotTable_nbytes(SlotTable *self, void *closure) {
    (void)closure;
    if (self->keys == NULL) return PyLong_FromLong(0);
    uint64_t places = self->mask + 1 + (self->old_keys != NULL ? self->old_mask + 1 : 0) +
                      (self->spare_keys != NULL ? self->spare_capacity : 0);
    return PyLong_FromUnsignedLongLong(places * (sizeof *self->keys + sizeof *self->slots));
}

static PyMethodDef SlotTable_methods[] = {
    {"get", (PyCFunction)SlotTable_get, METH_VARARGS, "get(row, col): the slot of the row's entry for col, or None"},
    {"set", (PyCFunction)SlotTable_set, METH_VARARGS, "set(row, col, slot): the row's entry for col is at slot"},
    {"fill", (PyCFunction)SlotTable_fill, METH_VARARGS,
     "fill(rows, cols, slots): set every entry of three int32 buffers of one length"},
    {"prepare", (PyCFunction)SlotTable_prepare, METH_NOARGS,
     "prepare() -> bool: make the table this one doubles into now, with the GIL released (see wants_spare)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef SlotTable_getset[] = {
    {"nbytes", (getter)SlotTable_nbytes, NULL, "bytes held by the table's arrays", NULL},
    {"wants_spare", (getter)SlotTable_wants_spare, NULL,
     "half full or more, with no table to double into made ahead yet: prepare() would make it", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods SlotTable_as_sequence = {.sq_length = (lenfunc)SlotTable_len};

static PyTypeObject SlotTableType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "learner._kernels.SlotTable",
    .tp_doc = "(row, column) -> slot of every entry of a sparse matrix whose rows only grow (learner.kernels)",
    .tp_basicsize = sizeof(SlotTable),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)SlotTable_init,
    .tp_dealloc = (destructor)SlotTable_dealloc,
    .tp_methods = SlotTable_methods,
    .tp_getset = SlotTable_getset,
    .tp_as_sequence = &SlotTable_as_sequence,
};

/* ---- PoolRows: the co-occurrence update on rows kept in one pool ---------------------------------------------
 *
 * learner.item_cooccurrence.SparseRows keeps every row's entries in one pool (int32 columns, float32 values); row r
 * holds length[r] entries from start[r], with room for cap[r]. A PoolRows holds the buffers of those numpy arrays
 * (and of the slot table and an optional change log) while it lives: SparseRows makes a new one whenever it
 * replaces an array. state (int64): [pool end, garbage, log length, rows, pool size needed].
 *
 * add_pairs does what SparseRows.add_pairs does in Python, with the same floating-point operations in the same
 * order (so the same model bit for bit), and checks first that every row it may grow fits: it never applies an
 * event in part.
 */
enum { ST_END, ST_GARBAGE, ST_LOG, ST_ROWS, ST_NEED, ST_SIZE };
enum { POOL_OK = 0, POOL_NEEDS_ROOM = 1, POOL_NEEDS_LOG = 2, POOL_OK_MOVED = 3 };
#define POOL_HISTORY_STACK 64

typedef struct {
    PyObject_HEAD
    Py_buffer cols, vals, start, length, cap, state, log;
    int held; /* bit per buffer acquired: released in dealloc */
    PyObject *table;
} PoolRows;

static int PoolRows_init(PoolRows *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"cols", "vals", "start", "length", "cap", "state", "table", "log", NULL};
    PyObject *cols, *vals, *start, *length, *cap, *state, *table, *log;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOOO!O", kwlist, &cols, &vals, &start, &length, &cap, &state,
                                     &SlotTableType, &table, &log)) {
        return -1;
    }
    if (self->held) {
        PyErr_SetString(PyExc_RuntimeError, "a PoolRows is initialised once");
        return -1;
    }
    if (get_buffer(cols, &self->cols, PyBUF_WRITABLE, "cols", 'i') < 0) return -1;
    self->held |= 1;
    if (get_buffer(vals, &self->vals, PyBUF_WRITABLE, "vals", 'f') < 0) return -1;
    self->held |= 2;
    if (get_buffer(start, &self->start, PyBUF_WRITABLE, "start", 'q') < 0) return -1;
    self->held |= 4;
    if (get_buffer(length, &self->length, PyBUF_WRITABLE, "length", 'q') < 0) return -1;
    self->held |= 8;
    if (get_buffer(cap, &self->cap, PyBUF_WRITABLE, "cap", 'q') < 0) return -1;
    self->held |= 16;
    if (get_buffer(state, &self->state, PyBUF_WRITABLE, "state", 'q') < 0) return -1;
    self->held |= 32;
    if (log != Py_None) {
        if (get_buffer(log, &self->log, PyBUF_WRITABLE, "log", 'q') < 0) return -1;
        self->held |= 64;
    }
    if (((SlotTable *)table)->keys == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "SlotTable.__init__ was not called");
        return -1;
    }
    if (self->cols.len / 4 != self->vals.len / 4 || self->state.len / 8 < ST_SIZE ||
        self->length.len != self->start.len || self->cap.len != self->start.len) {
        PyErr_SetString(PyExc_ValueError, "pool arrays of different lengths, or a short state");
        return -1;
    }
    Py_INCREF(table);
    self->table = table;
    return 0;
}

static void PoolRows_dealloc(PoolRows *self) {
    Py_buffer *views[] = {&self->cols, &self->vals, &self->start, &self->length, &self->cap, &self->state, &self->log};
    for (int b = 0; b < 7; b++) {
        if (self->held & (1 << b)) PyBuffer_Release(views[b]);
    }
    Py_XDECREF(self->table);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int pool_ready(PoolRows *self) {
    if (self->table == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "PoolRows.__init__ was not called");
        return -1;
    }
    return 0;
}

/* A row's capacity when it moves to hold `need` entries: room to grow by half again. */
static inline int64_t pool_grown_cap(int64_t need) { return need + need / 2 + 4; }

/* A user's history read newest first: its item rows and weights, on the stack when short. */
typedef struct {
    Py_ssize_t n;
    int64_t *js;
    double *ws;
    int64_t js_stack[POOL_HISTORY_STACK];
    double ws_stack[POOL_HISTORY_STACK];
} History;

static void history_free(History *h) {
    if (h->js != h->js_stack) PyMem_Free(h->js);
    if (h->ws != h->ws_stack) PyMem_Free(h->ws);
}

/* `history` (item row -> weight, oldest first) into h, newest first; 0, or -1 with an exception (nothing left to
 * free). Exact int rows and float or int weights only: converting anything else could run Python code that changes
 * the dict meanwhile. */
static int history_read(History *h, PyObject *history, int64_t n_rows) {
    Py_ssize_t n = PyDict_GET_SIZE(history), pos = 0, t = n;
    h->n = n;
    h->js = h->js_stack;
    h->ws = h->ws_stack;
    if (n > POOL_HISTORY_STACK) {
        h->js = PyMem_Malloc((size_t)n * sizeof *h->js);
        h->ws = PyMem_Malloc((size_t)n * sizeof *h->ws);
        if (h->js == NULL || h->ws == NULL) {
            history_free(h);
            PyErr_NoMemory();
            return -1;
        }
    }
    PyObject *key, *value;
    while (PyDict_Next(history, &pos, &key, &value)) { /* insertion order: oldest first */
        if (!PyLong_CheckExact(key) || !(PyFloat_CheckExact(value) || PyLong_CheckExact(value)) || t == 0) {
            PyErr_SetString(PyExc_TypeError, "history: int item rows to float weights expected");
            break;
        }
        long long j = PyLong_AsLongLong(key);
        double w = PyFloat_AsDouble(value);
        if ((j == -1 || w == -1.0) && PyErr_Occurred()) break;
        if (j < 0 || j >= n_rows) {
            PyErr_SetString(PyExc_ValueError, "history names a row outside the pool");
            break;
        }
        t--;
        h->js[t] = j;
        h->ws[t] = w;
    }
    if (PyErr_Occurred()) {
        history_free(h);
        return -1;
    }
    return 0;
}

/* The history's pairs for item i, in place: newest first, i itself left out, each remembered item's weight times
 * gamma ** its age among the others. Returns how many. */
static Py_ssize_t history_pairs(History *h, int64_t i, double gamma) {
    Py_ssize_t m = 0;
    double base = 1.0;
    for (Py_ssize_t k = 0; k < h->n; k++) {
        if (h->js[k] == i) continue; /* a like after a view of the same item: pair it with the others only */
        h->js[m] = h->js[k];
        h->ws[m] = base * h->ws[k];
        base *= gamma;
        m++;
    }
    return m;
}

/* weighted_rows(history, powers, damping, rows, weights) -> n
 *
 * ItemCooccurrence._weighted_rows: the n remembered items of `history` (a dict of int item rows to float weights,
 * oldest first) newest first into `rows` (int64), and each one's ranking weight w_j * powers[age] * damping[j] into
 * `weights` (float64), the same operations in the same order as the Python. powers, damping: float64 buffers;
 * rows and weights: writable, at least n long. */
static PyObject *weighted_rows(PyObject *self, PyObject *args) {
    PyObject *history, *objs[4];
    (void)self;
    if (!PyArg_ParseTuple(args, "O!OOOO", &PyDict_Type, &history, &objs[0], &objs[1], &objs[2], &objs[3])) return NULL;
    static const char *names[] = {"powers", "damping", "rows", "weights"};
    static const char codes[] = {'d', 'd', 'q', 'd'};
    Py_buffer views[4];
    int held = 0;
    for (; held < 4; held++) {
        if (get_buffer(objs[held], &views[held], held >= 2 ? PyBUF_WRITABLE : PyBUF_SIMPLE, names[held], codes[held]) <
            0) {
            break;
        }
    }
    PyObject *result = NULL;
    History h;
    if (held == 4 && history_read(&h, history, views[1].len / 8) == 0) {
        if (h.n > views[0].len / 8 || h.n > views[2].len / 8 || h.n > views[3].len / 8) {
            PyErr_SetString(PyExc_ValueError, "history longer than its powers, rows or weights");
        } else {
            const char *powers = views[0].buf, *damping = views[1].buf;
            for (Py_ssize_t a = 0; a < h.n; a++) {
                int64_t j = h.js[a];
                memcpy((char *)views[2].buf + a * 8, &j, 8);
                set_f64(views[3].buf, a, h.ws[a] * get_f64(powers, a) * get_f64(damping, (Py_ssize_t)j));
            }
            result = PyLong_FromSsize_t(h.n);
        }
        history_free(&h);
    }
    while (held-- > 0) PyBuffer_Release(&views[held]);
    return result;
}

/* Add `v` at (row, col): in place at the entry's slot, else appended (the row moved to the pool's end with room
 * for `need` entries when it is full; the caller checked there is room). Returns the slot. */
static inline int64_t pool_add(PoolRows *self, int64_t row, int64_t col, double v, int64_t need) {
    SlotTable *t = (SlotTable *)self->table;
    int64_t *start = self->start.buf, *length = self->length.buf, *cap = self->cap.buf, *state = self->state.buf;
    int32_t *cols = self->cols.buf;
    float *vals = self->vals.buf;
    uint64_t key = slot_key((uint64_t)row, (uint64_t)col);
    uint64_t at = slot_find(t, key);
    if (t->keys[at] != key && t->old_keys != NULL) { /* growing: an entry not moved yet moves now */
        int64_t old = slot_old(t, key);
        if (old >= 0) {
            t->keys[at] = key;
            t->slots[at] = (int32_t)old;
        }
    }
    if (t->keys[at] == key) {
        /* a table not of these rows (SparseRows never makes one): an error, the event perhaps applied in part, rather
         * than a write past the row */
        if (t->slots[at] < 0 || t->slots[at] >= length[row]) return -1;
        float *p = vals + start[row] + t->slots[at];
        *p = (float)((double)*p + v);
        return t->slots[at];
    }
    int64_t k = length[row];
    if (k == cap[row]) {
        int64_t grown = pool_grown_cap(need), end = state[ST_END];
        memcpy(cols + end, cols + start[row], (size_t)k * sizeof *cols);
        memcpy(vals + end, vals + start[row], (size_t)k * sizeof *vals);
        state[ST_GARBAGE] += cap[row];
        start[row] = end;
        cap[row] = grown;
        state[ST_END] = end + grown;
    }
    cols[start[row] + k] = (int32_t)col;
    vals[start[row] + k] = (float)v;
    length[row] = k + 1;
    t->keys[at] = key;
    t->slots[at] = (int32_t)k;
    t->used++;
    return k;
}

/* add_pairs(history, i, y, gamma, forward, backward, kept=None, cap=0) -> status
 *
 * SparseRows.add_pairs: for every remembered item j of `history` (newest first, `i` itself left out, the k-th with
 * pair weight gamma ** k * w_j), C[j, i] += forward * y * pair and C[i, j] += backward * y * pair; each entry
 * touched logged as row << 32 | slot, and each kept part of a touched row (`kept`, a dict as the ranking kernels
 * take it, at `cap`) brought up to date (kept_update). For that the values must only grow: the caller passes
 * `kept` only when y, gamma, forward and backward are all at least 0 (SparseRows.add_pairs); a value turned NaN
 * (one already in the pool, or an infinity times 0) is handled in kept_update. Status: 0 done; 3 done, and a row moved (the caller checks the
 * garbage); 1
 * nothing done, the pool must hold state[4] entries first; 2 nothing done, the log is full.
 */
static PyObject *PoolRows_add_pairs(PoolRows *self, PyObject *args) {
    PyObject *history, *kept_obj = Py_None;
    long long i;
    double y, gamma, forward, backward;
    Py_ssize_t kept_cap = 0;
    if (!PyArg_ParseTuple(args, "O!Ldddd|On", &PyDict_Type, &history, &i, &y, &gamma, &forward, &backward, &kept_obj,
                          &kept_cap) ||
        pool_ready(self) < 0) {
        return NULL;
    }
    PyObject *kept = cache_arg(kept_obj);
    if (kept == (PyObject *)-1) return NULL;
    if (kept != NULL && (kept_cap <= 0 || PyDict_GET_SIZE(kept) == 0)) kept = NULL; /* nothing kept */
    int64_t *start = self->start.buf, *length = self->length.buf, *cap = self->cap.buf, *state = self->state.buf;
    int64_t n_rows = state[ST_ROWS], pool_size = self->cols.len / 4;
    if (n_rows < 0 || n_rows > SLOT_LIMIT || n_rows > self->start.len / 8 || i < 0 || i >= n_rows) {
        PyErr_SetString(PyExc_ValueError, "row outside the pool");
        return NULL;
    }
    History h;
    if (history_read(&h, history, n_rows) < 0) return NULL;
    PyObject *result = NULL;
    Py_ssize_t m = history_pairs(&h, i, gamma);
    const int64_t *js = h.js;
    const double *pairs = h.ws;
    /* Room first: every row that may grow, at its largest growth (each j by one entry, i by m) */
    int64_t room = 0;
    for (Py_ssize_t k = 0; k < m; k++) {
        int64_t j = js[k];
        if (start[j] < 0 || cap[j] < length[j] || start[j] + cap[j] > pool_size) {
            PyErr_SetString(PyExc_ValueError, "a row outside the pool");
            goto done;
        }
        if (length[j] + 1 > cap[j]) room += pool_grown_cap(length[j] + 1);
    }
    if (start[i] < 0 || cap[i] < length[i] || start[i] + cap[i] > pool_size) {
        PyErr_SetString(PyExc_ValueError, "a row outside the pool");
        goto done;
    }
    if (length[i] + m > cap[i]) room += pool_grown_cap(length[i] + m);
    if (state[ST_END] + room > pool_size) {
        state[ST_NEED] = state[ST_END] + room;
        result = PyLong_FromLong(POOL_NEEDS_ROOM);
        goto done;
    }
    int64_t *log = (self->held & 64) ? self->log.buf : NULL;
    if (log != NULL && state[ST_LOG] + 2 * m > self->log.len / 8) {
        result = PyLong_FromLong(POOL_NEEDS_LOG);
        goto done;
    }
    if (slot_reserve((SlotTable *)self->table, 2 * m) < 0) goto done;
    int64_t garbage = state[ST_GARBAGE];
    for (Py_ssize_t k = 0; k < m; k++) {
        int64_t j = js[k];
        double inc = y * pairs[k];
        int64_t k_j = pool_add(self, j, i, forward * inc, length[j] + 1);
        /* row i moves at most once an event: to room for every pair still to come */
        int64_t k_i = k_j < 0 ? -1 : pool_add(self, i, j, backward * inc, length[i] + (m - k));
        if (k_i < 0) {
            if (kept != NULL) PyDict_Clear(kept); /* row j changed without its kept part */
            PyErr_SetString(PyExc_ValueError, "the slot table names a slot past its row: not the table of these rows");
            goto done;
        }
        if (log != NULL) {
            log[state[ST_LOG]++] = (int64_t)((uint64_t)j << 32 | (uint64_t)k_j);
            log[state[ST_LOG]++] = (int64_t)((uint64_t)i << 32 | (uint64_t)k_i);
        }
        if (kept != NULL) {
            const float *vals = self->vals.buf;
            kept_update(kept, kept_cap, j, length[j], (int32_t)i, vals[start[j] + k_j]);
            kept_update(kept, kept_cap, i, length[i], (int32_t)j, vals[start[i] + k_i]);
        }
    }
    result = PyLong_FromLong(state[ST_GARBAGE] != garbage ? POOL_OK_MOVED : POOL_OK);
done:
    history_free(&h);
    return result;
}

/* evidence(history, i, powers, damping) -> float
 *
 * ItemCooccurrence.predict_one's sum: over the remembered items j (newest first, age counted over all of them),
 * w_j * powers[age] * damping[j] * C[j, i] for each j whose row has an entry for i. */
static PyObject *PoolRows_evidence(PoolRows *self, PyObject *args) {
    PyObject *history, *powers_obj, *damping_obj;
    long long i;
    if (!PyArg_ParseTuple(args, "O!LOO", &PyDict_Type, &history, &i, &powers_obj, &damping_obj) ||
        pool_ready(self) < 0) {
        return NULL;
    }
    Py_buffer powers, damping;
    if (get_buffer(powers_obj, &powers, PyBUF_SIMPLE, "powers", 'd') < 0) return NULL;
    if (get_buffer(damping_obj, &damping, PyBUF_SIMPLE, "damping", 'd') < 0) {
        PyBuffer_Release(&powers);
        return NULL;
    }
    const int64_t *start = self->start.buf, *length = self->length.buf;
    int64_t n_rows = ((int64_t *)self->state.buf)[ST_ROWS];
    const float *vals = self->vals.buf;
    SlotTable *t = (SlotTable *)self->table;
    PyObject *result = NULL;
    double evidence = 0.0;
    History h;
    if (i < 0 || i >= n_rows || n_rows > damping.len / 8) {
        PyErr_SetString(PyExc_ValueError, "a row outside the pool or damping");
        goto done;
    }
    if (history_read(&h, history, n_rows) < 0) goto done;
    int bad = h.n > powers.len / 8;
    if (bad) PyErr_SetString(PyExc_ValueError, "history longer than its powers");
    /* Summed newest first, as the Python loop does (the order of a float sum matters). */
    for (Py_ssize_t a = 0; !bad && a < h.n; a++) {
        int64_t j = h.js[a];
        int32_t k = slot_get(t, (uint64_t)j, (uint64_t)i);
        if (k < 0) continue;
        if (k >= length[j]) {
            PyErr_SetString(PyExc_ValueError, "a slot past its row's length");
            bad = 1;
            break;
        }
        evidence += h.ws[a] * get_f64(powers.buf, a) * get_f64(damping.buf, j) * (double)vals[start[j] + k];
    }
    history_free(&h);
    if (!bad) result = PyFloat_FromDouble(evidence);
done:
    PyBuffer_Release(&powers);
    PyBuffer_Release(&damping);
    return result;
}

static PyMethodDef PoolRows_methods[] = {
    {"add_pairs", (PyCFunction)PoolRows_add_pairs, METH_VARARGS,
     "add_pairs(history, i, y, gamma, forward, backward, kept=None, cap=0) -> status (see learner/_kernels.c)"},
    {"evidence", (PyCFunction)PoolRows_evidence, METH_VARARGS,
     "evidence(history, i, powers, damping) -> ItemCooccurrence.predict_one's evidence"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject PoolRowsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "learner._kernels.PoolRows",
    .tp_doc = "The co-occurrence update on a SparseRows pool, holding its arrays' buffers (learner.item_cooccurrence)",
    .tp_basicsize = sizeof(PoolRows),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)PoolRows_init,
    .tp_dealloc = (destructor)PoolRows_dealloc,
    .tp_methods = PoolRows_methods,
};

/* gather_rows(cols, vals, start, length, n, out_cols, out_vals) -> None
 *
 * Rows 0..n-1 of a SparseRows pool (row r: length[r] entries from start[r]) copied one after the other into
 * out_cols and out_vals, which hold exactly their entries: a snapshot's CSR arrays in two copies at memory speed,
 * with no Python object per row. */
static PyObject *gather_rows(PyObject *self, PyObject *args) {
    PyObject *objs[6];
    Py_ssize_t n;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOnOO", &objs[0], &objs[1], &objs[2], &objs[3], &n, &objs[4], &objs[5])) {
        return NULL;
    }
    static const char *const names[] = {"cols", "vals", "start", "length", "out_cols", "out_vals"};
    Py_buffer views[6];
    if (get_buffers(objs, views, 6, names, "ifqqif", 4) < 0) return NULL;
    PyObject *result = NULL;
    Py_ssize_t pool = views[0].len / 4, out = views[4].len / 4, at = 0;
    if (views[1].len / 4 != pool || views[5].len / 4 != out || n < 0 || n > views[2].len / 8 ||
        n > views[3].len / 8) {
        PyErr_SetString(PyExc_ValueError, "gather_rows: arrays of different lengths, or fewer rows than n");
        goto done;
    }
    for (Py_ssize_t r = 0; r < n; r++) {
        int64_t from = get_i64(views[2].buf, r), len = get_i64(views[3].buf, r);
        if (from < 0 || len < 0 || len > pool - from || len > out - at) {
            PyErr_SetString(PyExc_ValueError, "gather_rows: a row outside the pool, or more entries than out holds");
            goto done;
        }
        memcpy((char *)views[4].buf + 4 * at, (const char *)views[0].buf + 4 * from, (size_t)len * 4);
        memcpy((char *)views[5].buf + 4 * at, (const char *)views[1].buf + 4 * from, (size_t)len * 4);
        at += len;
    }
    if (at != out) {
        PyErr_SetString(PyExc_ValueError, "gather_rows: out holds more entries than the rows");
        goto done;
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    for (int b = 0; b < 6; b++) PyBuffer_Release(&views[b]);
    return result;
}

/* join_buffers(parts) -> bytes
 *
 * The bytes of every part (a sequence of objects with C-contiguous buffers), one after the other, copied with the
 * GIL released: a worker joins a whole snapshot in a thread while its event loop learns on (learner.codec's
 * encode_later; bytes.join keeps the GIL for anything but bytes objects). Each part's buffer is held, not copied
 * first, until the copy ends: the parts must be ones nothing changes meanwhile. */
static PyObject *join_buffers(PyObject *self, PyObject *arg) {
    (void)self;
    PyObject *seq = PySequence_Fast(arg, "join_buffers: parts must be a sequence");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), got = 0, total = 0;
    PyObject *result = NULL;
    Py_buffer *views = PyMem_Calloc(n > 0 ? (size_t)n : 1, sizeof(Py_buffer));
    if (views == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; got < n; got++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, got), &views[got], PyBUF_C_CONTIGUOUS) < 0) goto done;
        if (views[got].len > PY_SSIZE_T_MAX - total) {
            got++;
            PyErr_SetString(PyExc_OverflowError, "join_buffers: the parts are too large together");
            goto done;
        }
        total += views[got].len;
    }
    result = PyBytes_FromStringAndSize(NULL, total);
    if (result == NULL) goto done;
    char *out = PyBytes_AS_STRING(result);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t k = 0; k < n; k++) {
        if (views[k].len > 0) memcpy(out, views[k].buf, (size_t)views[k].len);
        out += views[k].len;
    }
    Py_END_ALLOW_THREADS
done:
    for (Py_ssize_t k = 0; k < got; k++) PyBuffer_Release(&views[k]);
    PyMem_Free(views);
    Py_DECREF(seq);
    return result;
}

/* copy_rows(cols, vals, start, rows, length, to, out_cols, out_vals) -> None
 *
 * Rows rows[k] of a SparseRows pool (row r from start[r]), length[k] entries each, copied to out_cols and out_vals
 * from to[k] (out may be the pool itself, past its rows): a pool laid out afresh, or rows moved to its end, at
 * memory speed. Numpy's gather of every entry took ~0.8 s at ~10M entries on a slow VM, a stall of the worker's
 * event loop that freshness saw (docs/performance.md). */
static PyObject *copy_rows(PyObject *self, PyObject *args) {
    PyObject *objs[8];
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOOOO", &objs[0], &objs[1], &objs[2], &objs[3], &objs[4], &objs[5], &objs[6],
                          &objs[7])) {
        return NULL;
    }
    static const char *const names[] = {"cols", "vals", "start", "rows", "length", "to", "out_cols", "out_vals"};
    Py_buffer views[8];
    if (get_buffers(objs, views, 8, names, "ifqqqqif", 6) < 0) return NULL;
    PyObject *result = NULL;
    Py_ssize_t pool = views[0].len / 4, out = views[6].len / 4, n_rows = views[2].len / 8, n = views[3].len / 8;
    if (views[1].len / 4 != pool || views[7].len / 4 != out || views[4].len / 8 != n || views[5].len / 8 != n) {
        PyErr_SetString(PyExc_ValueError, "copy_rows: arrays of different lengths");
        goto done;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        int64_t row = get_i64(views[3].buf, k), len = get_i64(views[4].buf, k), to = get_i64(views[5].buf, k);
        int64_t from = row >= 0 && row < n_rows ? get_i64(views[2].buf, row) : -1;
        if (from < 0 || len < 0 || to < 0 || len > pool - from || len > out - to) {
            PyErr_SetString(PyExc_ValueError, "copy_rows: a row outside the pool, or past the end of out");
            goto done;
        }
        memmove((char *)views[6].buf + 4 * to, (const char *)views[0].buf + 4 * from, (size_t)len * 4);
        memmove((char *)views[7].buf + 4 * to, (const char *)views[1].buf + 4 * from, (size_t)len * 4);
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    for (int b = 0; b < 8; b++) PyBuffer_Release(&views[b]);
    return result;
}

/* ---- hslots: hash slots that double a little at a time (LruIndex, IdTable) -------------------------------------
 *
 * An open-addressing table (linear probing, a power of two of slots) of 4-byte slots. A slot holds a number + 1 (0: an
 * empty slot) in its low bits, as many as the table's mask has (the tables keep every number + 1 below the mask: at
 * most half or 2/3 of the slots are held), and its key's tag in the rest: the bits above the mask's of 32 hash bits
 * the table picks (the IdTable: the hash's low 32 bits, whose bits below the mask are the key's home; the LruIndex:
 * its fingerprint's high 32, the low ones being in its entry), so that a probe compares keys (the table's own
 * business) only when those match (about 1 in 4,096 slots of another key at 2**20 slots). What a slot lacks is its
 * key's home (the hash's low bits): a move or a shift asks the table for its key's home hash (`hslot_hash_fn`: the
 * LruIndex reads it from the entry, the IdTable hashes the id's text again); a move takes the tag from the old slot.
 * 8-byte slots (the number and the hash's low 32 bits, until the fifty-first session) cost 4 MB more a table of
 * 500,000 keys (2**20 slots): 25 MB of the worker's 312 at a million users+items (the gate's four tables and the
 * learner's two; bench.memory). When it would be fuller than its table
 * allows, a zeroed table twice its size takes the new keys and the old one is kept while its entries move over,
 * HSLOT_MOVE slots of it with each key added: a lookup that misses the new slots probes the old ones meanwhile.
 * Rehashing all at once held one add for ~10 ms at 350,000 ids (an IdTable) and one insert for 21-27 ms at 524,288 keys
 * (an LruIndex): the rehash and the new slots' page faults, linear in the keys. Doubling when more than half full
 * (LruIndex) or 2/3 (IdTable), the keys held then take at least half (two thirds) of the old slots' number of adds to
 * need the next doubling, however many are removed meanwhile, so HSLOT_MOVE >= 2 an add finishes the moves first (and
 * any left are finished before a doubling all the same). Old slots change only by a removal (LruIndex), which leaves a
 * tombstone there (its number bits all ones: a probe goes past it, a move skips it), not a shift, which could move a
 * key not moved yet to where the moves have passed. A moved entry stays in the old slots too: the IdTable forgets no
 * key, and the LruIndex matches no old slot that was moved (lru_probe_in). */

typedef uint32_t hslot; /* 0: empty; else (tag & ~mask) | (number + 1), number + 1 < mask; mask itself: a tombstone */

/* The home hash (its bits below a table's mask: the key's first slot) of the key whose number + 1 is `ref` (held),
 * from its table `owner` */
typedef uint32_t (*hslot_hash_fn)(const void *owner, uint32_t ref);

#define HSLOT_MOVE 32 /* old slots moved with each key added while a doubling is under way */

typedef struct {
    hslot *slots;      /* NULL until the first key */
    uint32_t mask;     /* slots - 1 */
    hslot *old;        /* the slots before the last doubling while their entries move; NULL when moved */
    uint32_t old_mask;
    uint64_t moved;    /* old[0 : moved] are in `slots` (or removed) */
} hslots;

/* The slot of a key whose number + 1 is `ref`, in a table of this mask: ref, and the bits of its `tag` (the 32 hash
 * bits its table keeps in slots) above the mask */
static inline hslot hslot_of(uint32_t tag, uint32_t ref, uint32_t mask) { return (tag & ~mask) | ref; }

/* Puts the slot of a key (not in `slots`) in the first empty one from its home (`home`'s bits below the mask) */
static inline void hslots_place(hslot *slots, uint32_t mask, uint32_t home, uint32_t tag, uint32_t ref) {
    uint32_t at = home & mask;
    while (slots[at] != 0) at = (at + 1) & mask;
    slots[at] = hslot_of(tag, ref, mask);
}

/* The slot of `slots` holding `ref` (a number + 1), whose key's hash is `h`, or -1 (an empty slot reached first) */
static int64_t hslots_find(const hslot *slots, uint32_t mask, uint32_t h, uint32_t ref) {
    uint32_t at = h & mask;
    for (uint64_t probes = 0; probes <= (uint64_t)mask; probes++) { /* (an empty slot always comes: bounded anyway) */
        if ((slots[at] & mask) == ref) return at;
        if (slots[at] == 0) return -1;
        at = (at + 1) & mask;
    }
    return -1;
}

/* Moves up to `count` more of the old slots' entries to the slots (all of them with UINT64_MAX); the old slots are
 * freed once all are */
static void hslots_move(hslots *t, uint64_t count, hslot_hash_fn hash_of, const void *owner) {
    uint64_t end = (uint64_t)t->old_mask + 1, at = t->moved;
    uint64_t stop = count >= end - at ? end : at + count;
    for (; at < stop; at++) {
        uint32_t ref = t->old[at] & t->old_mask;
        /* (the old slot's bits above the old mask are its key's tag's; the new mask's are some of them) */
        if (ref != 0 && ref != t->old_mask) hslots_place(t->slots, t->mask, hash_of(owner, ref), t->old[at], ref);
    }
    t->moved = at;
    if (at == end) {
        grown_free(t->old, (size_t)end * sizeof(hslot));
        t->old = NULL;
        t->old_mask = 0;
        t->moved = 0;
    }
}

/* Room for one more key when `held` are held (the slots doubled when more than num/den of them would hold one: the
 * current ones become the old), and the next HSLOT_MOVE old slots moved; -1 with MemoryError (nothing changed) */
static int hslots_reserve(hslots *t, uint64_t held, uint64_t num, uint64_t den, hslot_hash_fn hash_of,
                          const void *owner) {
    uint64_t n = t->slots == NULL ? 0 : (uint64_t)t->mask + 1;
    if ((held + 1) * den > n * num) {
        uint64_t grown = n == 0 ? 16 : n * 2;
        if (grown > (1ULL << 32)) {
            PyErr_NoMemory();
            return -1;
        }
        hslot *slots = grown_alloc((size_t)grown * sizeof *slots, GROWN_ZEROED);
        if (slots == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        if (t->old != NULL) hslots_move(t, UINT64_MAX, hash_of, owner); /* (never, by the arithmetic above) */
        t->old = t->slots;
        t->old_mask = t->mask;
        t->moved = 0;
        t->slots = slots;
        t->mask = (uint32_t)(grown - 1);
    }
    if (t->old != NULL) hslots_move(t, HSLOT_MOVE, hash_of, owner);
    return 0;
}

/* The memory of the slots (and old slots) given back */
static void hslots_free(hslots *t) {
    if (t->slots != NULL) grown_free(t->slots, ((size_t)t->mask + 1) * sizeof(hslot));
    if (t->old != NULL) grown_free(t->old, ((size_t)t->old_mask + 1) * sizeof(hslot));
}

/* The bytes the slots (and old slots) take */
static size_t hslots_nbytes(const hslots *t) {
    size_t bytes = t->slots == NULL ? 0 : ((size_t)t->mask + 1) * sizeof(hslot);
    return t->old == NULL ? bytes : bytes + ((size_t)t->old_mask + 1) * sizeof(hslot);
}

/* `by` (>= 0) subtracted from int32 field `field` of every record of `n` int32 items (records of `ints` fields), none
 * below `floor` (Records.shift_ints) */
static void shift_i32_field(char *whole, Py_ssize_t n, Py_ssize_t ints, Py_ssize_t field, long long by,
                            long long floor_) {
    for (Py_ssize_t at = field; at < n; at += ints) {
        long long value = (long long)get_i32(whole, at) - by;
        set_i32(whole, at, (int32_t)(value > floor_ ? value : floor_));
    }
}

/* ---- LruIndex: the gate's tables' key -> record number, least recently touched first --------------------------
 *
 * learner.gate.records.Records keeps each behaviour rule's records in one array('d') (and their float32 fields in
 * one array('f')); this is its index: str key -> record number, in the order the rules evict (least recently touched
 * first), with the numbers of forgotten records reused (last forgotten, first taken). It does what the OrderedDict
 * it replaces did (get, move_to_end, popping the oldest) in a 12-byte entry a record plus 4 bytes a slot of an
 * open-addressing table (linear probing, at most half full, removals by backward shift), where an OrderedDict entry
 * costs ~80 bytes and holds a str object of ~64 (`python -m bench.memory --records`). A key is known by its
 * fingerprint: str's 64-bit hash of its text (SipHash keyed by the process's secret, kept in the str object once
 * computed), not by its text, so an entry is the same 12 bytes for an id of any length (a 36-character UUID as a
 * 12-character id). Record r's entry is entries[r]: its neighbours in the order (prev LRU_FORGOTTEN: a forgotten
 * record, whose `next` links the forgotten ones) and the fingerprint's low 32 bits (its home: a shift or a move reads
 * the entry for it). A slot holds an entry's number + 1 (0: empty) and the fingerprint's high 32 bits above the slots'
 * mask, so a probe reads an entry only when those bits match. A key is then known by 64 - log2(slots) bits of its
 * fingerprint (44 at 2**20 slots, ~500,000 keys): two keys matching in those would be taken for one another, a
 * chance of ~n**2 * slots / 2**65 that any two of n keys held at once are (~0.7% at 500,000, ~6% at a million: then
 * two users of the million counted as one), where the established-users filter takes 1% of new users for
 * established (learner.gate.behaviour); the fingerprints live only in the process (its hash key), never persisted. 16-byte
 * entries with the whole fingerprint (~3e-8 at a million) cost 4 bytes a record more: 8 MB of the worker's 283 at a
 * million users+items (the gate's four tables; bench.memory). Keys are never read back (pop_first and evict answer
 * record numbers). Keys are str, hashed as text (never by calling Python: a subclass's own __eq__ or __hash__ is
 * not used); numbers are answered as new int objects. The slots are hslots (above): they double a little at a time,
 * a key removed from the new slots shifts the later ones of its run back, and one removed from the old slots (not
 * moved yet) leaves a tombstone. */

#define LRU_FORGOTTEN (-2) /* entry.prev of a forgotten record */

typedef struct {
    int32_t prev, next; /* neighbours in the order (-1: none); prev LRU_FORGOTTEN: forgotten */
    uint32_t lo;        /* the low 32 bits of the key's fingerprint (str's hash of its text): its home */
} lru_entry;

#define LRU_MAX_RECORDS 0x7ffffff0LL /* record numbers are int32 */

typedef struct {
    PyObject_HEAD
    int ready;      /* __init__ was called */
    lru_entry *entries;
    Py_ssize_t n_entries, cap_entries; /* entries in use (held or forgotten), allocated */
    hslots h;          /* entry number + 1 and the fingerprint's high bits by key; no slots until the first key */
    Py_ssize_t size;   /* keys held */
    int32_t first, last, free; /* the order's ends and the last forgotten record (-1: none) */
    int64_t seen_base; /* the ticks its table's `seen` stamps count from (lru_stamp) */
} LruIndex;

#define SEEN_TICKS 256.0      /* a second's ticks in a record's `seen` stamp */
#define SEEN_SPAN (1LL << 30) /* ~48.5 days of ticks: a stamp this far past the base moves it up */

/* The stamp of `now` for a record's `seen` field (int32 field `field` of the table's records of `ints` int32 fields,
 * `whole`, n items): its ticks of 1/256 s, rounded up, from the index's base. When now is a span or more past the
 * base, the base moves up to now and every record's field is shifted down (none below a span before the new base);
 * a now more than a span before the base is stamped a span before it. 0, or -1 with ValueError (now not finite, or
 * beyond +-1e15 s). */
static int lru_stamp(LruIndex *self, char *whole, Py_ssize_t n, Py_ssize_t ints, Py_ssize_t field, double now,
                     int32_t *stamp) {
    if (!(fabs(now) <= 1e15)) {
        PyErr_SetString(PyExc_ValueError, "a gate table's time must be finite (within 1e15 s)");
        return -1;
    }
    int64_t t = (int64_t)ceil(now * SEEN_TICKS) - self->seen_base;
    if (t >= SEEN_SPAN) {
        shift_i32_field(whole, n, ints, field, t, -SEEN_SPAN);
        self->seen_base += t;
        t = 0;
    } else if (t < -SEEN_SPAN) {
        t = -SEEN_SPAN;
    }
    *stamp = (int32_t)t;
    return 0;
}

/* The seconds of stamp `stamp` (its ticks from the base): exact for times within ~3.5e13 s of 1970 (an integer below
 * 2**53 over a power of two), and rounded as Python's int / int rounds beyond */
static inline double lru_seen_seconds(const LruIndex *self, int32_t stamp) {
    return (double)(self->seen_base + stamp) / SEEN_TICKS;
}

static PyTypeObject LruIndexType;

static int lru_ready(LruIndex *self) {
    if (self->ready) return 0;
    PyErr_SetString(PyExc_RuntimeError, "LruIndex.__init__ was not called");
    return -1;
}

/* The fingerprint of `key` if it is a str (1; str's own hash, kept in the object, even for a subclass that has
 * another), 0 if it is not one (such a key is never held), -1 on an error. */
static int lru_hash(PyObject *key, uint64_t *fp) {
    if (!PyUnicode_Check(key)) return 0;
    Py_hash_t hash = PyUnicode_Type.tp_hash(key);
    if (hash == -1 && PyErr_Occurred()) return -1;
    *fp = (uint64_t)hash;
    return 1;
}

/* The slot of `slots` holding the key of fingerprint `fp`, or the empty one where it would go; only slots from
 * `from` on match (the old slots: those not moved yet). A moved entry stays in the old slots too, and may since have
 * been forgotten, its number then maybe taken by another key (in the new slots) whose fingerprint's low 32 bits are
 * the same: the old slot's high bits and that entry's low ones would make a key that is not held (the forgotten one)
 * match. A held key is in the new slots once its old slot is moved, so the moved ones are not matched at all. */
static inline uint32_t lru_probe_in(const LruIndex *self, const hslot *slots, uint32_t mask, uint64_t fp,
                                    uint64_t from) {
    uint32_t lo = (uint32_t)fp, at = lo & mask, tag = (uint32_t)(fp >> 32) & ~mask;
    for (;;) {
        hslot s = slots[at];
        if (s == 0) return at;
        uint32_t ref = s & mask;
        if ((s & ~mask) == tag && ref != mask && at >= from) { /* (mask: a tombstone) */
            const lru_entry *e = &self->entries[ref - 1];
            if (e->lo == lo && e->prev != LRU_FORGOTTEN) return at;
        }
        at = (at + 1) & mask;
    }
}

/* The slot of the (current) slots holding the key of fingerprint `fp`, or the empty one where it would go; the
 * table has slots. */
static inline uint32_t lru_probe(const LruIndex *self, uint64_t fp) {
    return lru_probe_in(self, self->h.slots, self->h.mask, fp, 0);
}

/* The entry number + 1 of the key of fingerprint `fp`, 0 when it is not held; the table has slots */
static inline uint32_t lru_entry_of(const LruIndex *self, uint64_t fp) {
    uint32_t entry = self->h.slots[lru_probe(self, fp)] & self->h.mask;
    if (entry == 0 && self->h.old != NULL) { /* not moved yet, maybe */
        entry = self->h.old[lru_probe_in(self, self->h.old, self->h.old_mask, fp, self->h.moved)] & self->h.old_mask;
    }
    return entry;
}

/* The record number of `key`, -1 when it is not held, -2 on an error. */
static Py_ssize_t lru_find(LruIndex *self, PyObject *key) {
    uint64_t fp;
    int is_text = lru_hash(key, &fp);
    if (is_text <= 0) return is_text < 0 ? -2 : -1;
    if (self->h.slots == NULL) return -1;
    uint32_t entry = lru_entry_of(self, fp);
    return entry == 0 ? -1 : (Py_ssize_t)entry - 1;
}

/* `key`'s record number (for the rule cores): -1 when it is not held, -2 on an error */
static inline Py_ssize_t lru_lookup(PyObject *index, PyObject *key) { return lru_find((LruIndex *)index, key); }

static inline Py_ssize_t lru_size(PyObject *index) { return ((LruIndex *)index)->size; }

static void lru_unlink(LruIndex *self, int32_t r) {
    lru_entry *e = &self->entries[r];
    if (e->prev >= 0) self->entries[e->prev].next = e->next;
    else self->first = e->next;
    if (e->next >= 0) self->entries[e->next].prev = e->prev;
    else self->last = e->prev;
}

static void lru_append(LruIndex *self, int32_t r) {
    lru_entry *e = &self->entries[r];
    e->prev = self->last;
    e->next = -1;
    if (self->last >= 0) self->entries[self->last].next = r;
    else self->first = r;
    self->last = r;
}

/* The home hash of the key whose number + 1 is `ref` (held): its fingerprint's low 32 bits */
static uint32_t lru_slot_hash(const void *self, uint32_t ref) { return ((const LruIndex *)self)->entries[ref - 1].lo; }

/* Room for one more key (the slots doubled when it would make them more than half full); -1 with MemoryError */
static int lru_reserve_slot(LruIndex *self) {
    return hslots_reserve(&self->h, (uint64_t)self->size, 1, 2, lru_slot_hash, self);
}

/* Empties slot `at` and shifts back the later slots of its run that may move (no tombstones). */
static void lru_clear_slot(LruIndex *self, uint32_t at) {
    uint32_t mask = self->h.mask, hole = at, j = at;
    for (;;) {
        j = (j + 1) & mask;
        hslot s = self->h.slots[j];
        if (s == 0) break;
        uint32_t home = lru_slot_hash(self, s & mask) & mask;
        /* s may fill the hole unless its home lies cyclically within (hole, j] */
        int stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
        if (!stays) {
            self->h.slots[hole] = s;
            hole = j;
        }
    }
    self->h.slots[hole] = 0;
}

/* A new record for the key of fingerprint `fp` (not held), last in the order: its number, or -1 with an exception.
 * Takes the last forgotten number, if any, else the next one. */
static Py_ssize_t lru_insert(LruIndex *self, uint64_t fp) {
    if (lru_reserve_slot(self) < 0) return -1;
    int32_t r;
    if (self->free >= 0) {
        r = self->free;
        self->free = self->entries[r].next;
    } else {
        if (self->n_entries >= LRU_MAX_RECORDS) {
            PyErr_SetString(PyExc_OverflowError, "a gate table holds at most 2**31 records");
            return -1;
        }
        if (self->n_entries == self->cap_entries) {
            Py_ssize_t cap = self->cap_entries == 0 ? 16 : self->cap_entries * 2;
            lru_entry *grown =
                grown_realloc(self->entries, (size_t)self->cap_entries * sizeof *grown, (size_t)cap * sizeof *grown);
            if (grown == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            self->entries = grown;
            self->cap_entries = cap;
        }
        r = (int32_t)self->n_entries++;
    }
    uint32_t at = lru_probe(self, fp);
    self->h.slots[at] = hslot_of((uint32_t)(fp >> 32), (uint32_t)r + 1, self->h.mask);
    self->entries[r].lo = (uint32_t)fp;
    lru_append(self, r);
    self->size++;
    return r;
}

/* Forgets record `r` (held): out of the slots and the order, its number to the free list. */
static void lru_forget(LruIndex *self, int32_t r) {
    lru_entry *e = &self->entries[r];
    uint32_t h = e->lo;
    int64_t at = hslots_find(self->h.slots, self->h.mask, h, (uint32_t)r + 1);
    if (at >= 0) {
        lru_clear_slot(self, (uint32_t)at);
    } else if (self->h.old != NULL) { /* not moved yet (no other old slot holds r: r was held since the doubling) */
        at = hslots_find(self->h.old, self->h.old_mask, h, (uint32_t)r + 1);
        if (at >= 0) self->h.old[at] = self->h.old_mask; /* a tombstone */
    }
    lru_unlink(self, r);
    e->prev = LRU_FORGOTTEN;
    e->next = self->free;
    self->free = r;
    self->size--;
}

static int LruIndex_init(LruIndex *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, ":LruIndex", names)) return -1;
    if (self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "an LruIndex is initialised once");
        return -1;
    }
    self->ready = 1;
    self->first = self->last = self->free = -1;
    return 0;
}

static void LruIndex_dealloc(LruIndex *self) {
    grown_free(self->entries, (size_t)self->cap_entries * sizeof *self->entries);
    hslots_free(&self->h);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t LruIndex_len(LruIndex *self) { return self->size; }

static int LruIndex_contains(LruIndex *self, PyObject *key) {
    if (lru_ready(self)) return -1;
    Py_ssize_t r = lru_find(self, key);
    return r == -2 ? -1 : r >= 0;
}

/* The record number of `key`, or -1 with an exception (KeyError when it is not held) */
static Py_ssize_t lru_held(LruIndex *self, PyObject *key) {
    if (lru_ready(self)) return -1;
    Py_ssize_t r = lru_find(self, key);
    if (r == -1) PyErr_SetObject(PyExc_KeyError, key);
    return r < 0 ? -1 : r;
}

static PyObject *LruIndex_subscript(LruIndex *self, PyObject *key) {
    Py_ssize_t r = lru_held(self, key);
    if (r < 0) return NULL;
    return PyLong_FromSsize_t(r);
}

static PyObject *LruIndex_get(LruIndex *self, PyObject *const *args, Py_ssize_t nargs) {
    if (lru_ready(self)) return NULL;
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "get(key, default=None)");
        return NULL;
    }
    Py_ssize_t r = lru_find(self, args[0]);
    if (r == -2) return NULL;
    if (r < 0) return Py_NewRef(nargs == 2 ? args[1] : Py_None);
    return PyLong_FromSsize_t(r);
}

static PyObject *LruIndex_insert(LruIndex *self, PyObject *key) {
    if (lru_ready(self)) return NULL;
    uint64_t fp;
    int is_text = lru_hash(key, &fp);
    if (is_text <= 0) {
        if (is_text == 0) {
            PyErr_Format(PyExc_TypeError, "a gate table's keys are str, not %.100s", Py_TYPE(key)->tp_name);
        }
        return NULL;
    }
    if (self->h.slots != NULL && lru_entry_of(self, fp) != 0) {
        PyErr_SetObject(PyExc_KeyError, key);
        return NULL;
    }
    Py_ssize_t r = lru_insert(self, fp);
    return r < 0 ? NULL : PyLong_FromSsize_t(r);
}

static PyObject *LruIndex_move_to_end(LruIndex *self, PyObject *key) {
    Py_ssize_t r = lru_held(self, key);
    if (r < 0) return NULL;
    if (self->last != (int32_t)r) {
        lru_unlink(self, (int32_t)r);
        lru_append(self, (int32_t)r);
    }
    Py_RETURN_NONE;
}

static PyObject *LruIndex_pop_first(LruIndex *self, PyObject *unused) {
    if (lru_ready(self)) return NULL;
    if (self->first < 0) {
        PyErr_SetString(PyExc_KeyError, "pop_first(): the index is empty");
        return NULL;
    }
    int32_t r = self->first;
    PyObject *number = PyLong_FromLong((long)r);
    if (number != NULL) lru_forget(self, r); /* forgotten only once the answer is made */
    return number;
}

static PyObject *LruIndex_remove(LruIndex *self, PyObject *key) {
    Py_ssize_t r = lru_held(self, key);
    if (r < 0) return NULL;
    lru_forget(self, (int32_t)r);
    Py_RETURN_NONE;
}

/* Records.evict on `data` (the table's array('d') of `width` fields a record, or its array('i') of `width` int32
 * ones, field `seen_at` then a `seen` stamp: lru_stamp): forgets the least recently touched records whose field
 * `seen_at` is before `horizon` (seconds), and any beyond `cap`; returns the first one left (its number, its seen_at
 * in seconds) or (None, -inf). */
static PyObject *LruIndex_evict(LruIndex *self, PyObject *args) {
    PyObject *data;
    Py_ssize_t width, cap, seen_at;
    double horizon;
    if (lru_ready(self) || !PyArg_ParseTuple(args, "Ondnn", &data, &width, &horizon, &cap, &seen_at)) return NULL;
    if (width < 1 || seen_at < 0 || seen_at >= width) {
        PyErr_SetString(PyExc_ValueError, "evict: width >= 1 and 0 <= seen_at < width");
        return NULL;
    }
    Py_buffer view;
    int stamps = get_buffer(data, &view, PyBUF_SIMPLE, "a gate table's data", 'i') == 0;
    if (!stamps) {
        PyErr_Clear();
        if (get_buffer(data, &view, PyBUF_SIMPLE, "a gate table's data (array('d') or array('i'))", 'd') < 0) {
            return NULL;
        }
    }
    Py_ssize_t records = view.len / view.itemsize / width;
    double least = stamps ? horizon * SEEN_TICKS - (double)self->seen_base : horizon; /* (exact: powers of two) */
    PyObject *result = NULL;
    while (self->first >= 0) {
        int32_t r = self->first;
        if (r >= records) {
            PyErr_SetString(PyExc_IndexError, "a record number outside its gate table's data");
            goto done;
        }
        Py_ssize_t at = (Py_ssize_t)r * width + seen_at;
        double kept = stamps ? (double)get_i32(view.buf, at) : get_f64(view.buf, at);
        if (kept >= least && self->size <= cap) {
            double seen = stamps ? lru_seen_seconds(self, get_i32(view.buf, at)) : kept;
            result = Py_BuildValue("(id)", (int)r, seen);
            goto done;
        }
        lru_forget(self, r);
    }
    result = Py_BuildValue("(Od)", Py_None, -INFINITY);
done:
    PyBuffer_Release(&view);
    return result;
}

/* stamp(now, whole, ints, field) -> int: Records.stamp (lru_stamp) */
static PyObject *LruIndex_stamp(LruIndex *self, PyObject *args) {
    PyObject *whole;
    double now;
    Py_ssize_t ints, field;
    if (lru_ready(self) || !PyArg_ParseTuple(args, "dOnn", &now, &whole, &ints, &field)) return NULL;
    if (ints < 1 || field < 0 || field >= ints) {
        PyErr_SetString(PyExc_ValueError, "stamp: 0 <= field < ints");
        return NULL;
    }
    Py_buffer view;
    if (get_buffer(whole, &view, PyBUF_WRITABLE, "a gate table's int32 fields", 'i') < 0) return NULL;
    int32_t stamp;
    int failed = lru_stamp(self, view.buf, view.len / 4, ints, field, now, &stamp);
    PyBuffer_Release(&view);
    return failed ? NULL : PyLong_FromLong((long)stamp);
}

/* order(): the held records' numbers, least recently touched first (a new list) */
static PyObject *LruIndex_order(LruIndex *self, PyObject *unused) {
    if (lru_ready(self)) return NULL;
    PyObject *numbers = PyList_New(self->size);
    if (numbers == NULL) return NULL;
    Py_ssize_t i = 0;
    for (int32_t r = self->first; r >= 0 && i < self->size; r = self->entries[r].next) {
        PyObject *number = PyLong_FromLong((long)r);
        if (number == NULL) {
            Py_DECREF(numbers);
            return NULL;
        }
        PyList_SET_ITEM(numbers, i++, number);
    }
    return numbers;
}

static PyObject *LruIndex_nbytes(LruIndex *self, void *closure) {
    return PyLong_FromSize_t(hslots_nbytes(&self->h) + (size_t)self->cap_entries * sizeof(lru_entry));
}

/* held_slots: the slots that hold a key (the new slots', and the old ones' not moved yet that hold neither a
 * tombstone nor nothing): len(index) unless the slots are wrong (for the tests) */
static PyObject *LruIndex_held_slots(LruIndex *self, void *closure) {
    size_t held = 0;
    if (self->h.slots != NULL) {
        for (uint64_t at = 0; at <= self->h.mask; at++) held += self->h.slots[at] != 0;
    }
    if (self->h.old != NULL) {
        for (uint64_t at = self->h.moved; at <= self->h.old_mask; at++) {
            uint32_t ref = self->h.old[at] & self->h.old_mask;
            held += ref != 0 && ref != self->h.old_mask;
        }
    }
    return PyLong_FromSize_t(held);
}

/* LruIndex.prefetch(events, field, tables) -> int: asks the CPU to fetch, ahead of a chunk's lookups, what they will
 * read: for each of `events` (a list of tuples), whose key is its item `field`, the slot of its key (all of them
 * first), then the entry and the record in each of `tables` ((array, bytes a record) pairs: a Records' arrays) of each
 * key held whose home slot (in the slots, or in the old ones while they move) names it; returns how many keys' entries
 * it fetched. Changes nothing and reads nothing it was not given (a prefetch only hints: a key past its home slot is
 * not fetched ahead). Between two chunks the learner evicts the gate's tables from the caches: its lookups then wait
 * on one miss after another, where these fetches overlap. */
#define PREFETCH_MAX_TABLES 4
static PyObject *LruIndex_prefetch(LruIndex *self, PyObject *args) {
    PyObject *events, *tables;
    Py_ssize_t field;
    if (lru_ready(self) || !PyArg_ParseTuple(args, "O!nO!:prefetch", &PyList_Type, &events, &field, &PyTuple_Type,
                                             &tables)) {
        return NULL;
    }
    Py_ssize_t n_tables = PyTuple_GET_SIZE(tables);
    if (n_tables > PREFETCH_MAX_TABLES) {
        PyErr_SetString(PyExc_ValueError, "prefetch: at most 4 tables");
        return NULL;
    }
    Py_buffer views[PREFETCH_MAX_TABLES];
    Py_ssize_t record_bytes[PREFETCH_MAX_TABLES];
    Py_ssize_t got = 0;
    for (; got < n_tables; got++) {
        PyObject *pair = PyTuple_GET_ITEM(tables, got);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "prefetch: tables are (array, bytes a record) pairs");
            break;
        }
        record_bytes[got] = PyLong_AsSsize_t(PyTuple_GET_ITEM(pair, 1));
        if (record_bytes[got] < 0) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "prefetch: bytes a record >= 0");
            break;
        }
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(pair, 0), &views[got], PyBUF_SIMPLE) < 0) break;
    }
    if (got < n_tables) {
        for (Py_ssize_t t = 0; t < got; t++) PyBuffer_Release(&views[t]);
        return NULL;
    }
    /* read after the buffers were taken (a buffer's export may run Python code, which could change the list and
     * the table); nothing below runs any (str's own hash is C) */
    Py_ssize_t n = PyList_GET_SIZE(events);
    if (self->h.slots == NULL || n == 0) {
        for (Py_ssize_t t = 0; t < n_tables; t++) PyBuffer_Release(&views[t]);
        return PyLong_FromLong(0);
    }
    uint64_t *fps = PyMem_Malloc((size_t)n * (sizeof *fps + 1));
    if (fps == NULL) {
        for (Py_ssize_t t = 0; t < n_tables; t++) PyBuffer_Release(&views[t]);
        return PyErr_NoMemory();
    }
    char *keyed = (char *)(fps + n); /* keyed[i]: events[i] has a str key, its fingerprint fps[i] */
    const hslot *slots = self->h.slots, *old = self->h.old;
    uint32_t mask = self->h.mask, old_mask = self->h.old_mask;
    uint64_t moved = self->h.moved;
    int failed = 0;
    Py_ssize_t fetched = 0;
    for (Py_ssize_t i = 0; i < n; i++) { /* the slots */
        PyObject *event = PyList_GET_ITEM(events, i);
        keyed[i] = 0;
        if (!PyTuple_Check(event) || field < 0 || field >= PyTuple_GET_SIZE(event)) continue;
        uint64_t fp;
        int is_text = lru_hash(PyTuple_GET_ITEM(event, field), &fp);
        if (is_text < 0) {
            failed = 1;
            break;
        }
        if (is_text == 0) continue;
        fps[i] = fp;
        keyed[i] = 1;
        __builtin_prefetch(&slots[(uint32_t)fp & mask]);
        if (old != NULL && ((uint32_t)fp & old_mask) >= moved) __builtin_prefetch(&old[(uint32_t)fp & old_mask]);
    }
    for (Py_ssize_t i = 0; i < n && !failed; i++) { /* the entries and records of the keys found at home */
        if (!keyed[i]) continue;
        uint32_t lo = (uint32_t)fps[i], high = (uint32_t)(fps[i] >> 32);
        hslot s = slots[lo & mask];
        uint32_t ref = s & mask;
        if (ref == 0 || ref == mask || (s & ~mask) != (high & ~mask)) { /* not at home in the slots: the old ones? */
            ref = 0;
            if (old != NULL && (lo & old_mask) >= moved) {
                s = old[lo & old_mask];
                ref = (s & ~old_mask) == (high & ~old_mask) && (s & old_mask) != old_mask ? s & old_mask : 0;
            }
        }
        if (ref == 0 || (Py_ssize_t)ref > self->n_entries) continue;
        Py_ssize_t number = (Py_ssize_t)ref - 1;
        __builtin_prefetch(&self->entries[number]);
        fetched++;
        for (Py_ssize_t t = 0; t < n_tables; t++) {
            if (record_bytes[t] > 0 && number < views[t].len / record_bytes[t]) { /* (no product can overflow) */
                Py_ssize_t at = number * record_bytes[t];
                __builtin_prefetch((const char *)views[t].buf + at);
                __builtin_prefetch((const char *)views[t].buf + at + record_bytes[t] - 1);
            }
        }
    }
    PyMem_Free(fps);
    for (Py_ssize_t t = 0; t < n_tables; t++) PyBuffer_Release(&views[t]);
    if (failed) return NULL;
    return PyLong_FromSsize_t(fetched);
}

static PyMethodDef LruIndex_methods[] = {
    {"get", (PyCFunction)(void (*)(void))LruIndex_get, METH_FASTCALL, "get(key, default=None): the key's record number"},
    {"insert", (PyCFunction)LruIndex_insert, METH_O,
     "insert(key) -> number: a new record for key (a str not held; KeyError if held), last in the order"},
    {"move_to_end", (PyCFunction)LruIndex_move_to_end, METH_O, "move_to_end(key): last in the order (KeyError if not held)"},
    {"remove", (PyCFunction)LruIndex_remove, METH_O,
     "remove(key): forget key's record (KeyError if not held); its number is the next taken"},
    {"pop_first", (PyCFunction)LruIndex_pop_first, METH_NOARGS,
     "pop_first() -> number: forget the least recently touched record"},
    {"order", (PyCFunction)LruIndex_order, METH_NOARGS,
     "order() -> list: the held records' numbers, least recently touched first"},
    {"stamp", (PyCFunction)LruIndex_stamp, METH_VARARGS,
     "stamp(now, whole, ints, field) -> int: now as a record's seen stamp (Records.stamp; the base moved when due)"},
    {"evict", (PyCFunction)LruIndex_evict, METH_VARARGS,
     "evict(data, width, horizon, cap, seen_at) -> (number or None, seen): Records.evict on the table's data"},
    {"prefetch", (PyCFunction)LruIndex_prefetch, METH_VARARGS,
     "prefetch(events, field, tables) -> int: fetch ahead the slots, entries and records the keys events[i][field] "
     "will look up (tables: (array, bytes a record) pairs; the count: keys whose entry it fetched); changes nothing"},
    {NULL, NULL, 0, NULL},
};

static PyObject *LruIndex_seen_base(LruIndex *self, void *closure) { return PyLong_FromLongLong(self->seen_base); }

static PyGetSetDef LruIndex_getset[] = {
    {"nbytes", (getter)LruIndex_nbytes, NULL, "bytes allocated for entries and slots", NULL},
    {"seen_base", (getter)LruIndex_seen_base, NULL, "the ticks (1/256 s) the table's seen stamps count from", NULL},
    {"held_slots", (getter)LruIndex_held_slots, NULL, "slots holding a key: len(index) unless the slots are wrong",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods LruIndex_as_sequence = {
    .sq_length = (lenfunc)LruIndex_len,
    .sq_contains = (objobjproc)LruIndex_contains,
};

static PyMappingMethods LruIndex_as_mapping = {
    .mp_length = (lenfunc)LruIndex_len,
    .mp_subscript = (binaryfunc)LruIndex_subscript,
};

static PyTypeObject LruIndexType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "learner._kernels.LruIndex",
    .tp_doc = "LruIndex(): str key -> record number, least recently touched first (learner.gate.records)",
    .tp_basicsize = sizeof(LruIndex),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)LruIndex_init,
    .tp_dealloc = (destructor)LruIndex_dealloc,
    .tp_as_sequence = &LruIndex_as_sequence,
    .tp_as_mapping = &LruIndex_as_mapping,
    .tp_methods = LruIndex_methods,
    .tp_getset = LruIndex_getset,
};

/* ---- IdTable: the learner's ids, packed (learner.id_index.IdIndex) ---------------------------------------------
 *
 * Ids are numbered 0, 1, 2, ... (a model's rows) in order of first appearance, and never removed. A dict of str -> row
 * and a list of the str objects cost ~105 bytes a 12-character id (the str 64, a dict slot ~31, a list pointer ~9);
 * this keeps each id's text in one arena instead (its code points as its str holds them: 1, 2 or 4 bytes each,
 * `kinds[r]`, an array made only once an id of 2 or 4 is added), where it ends (4 bytes: 4 GiB of text at most), and
 * an open-addressing table of 4-byte slots (the row + 1, 0: empty, and the bits of the id's hash's low 32 above the
 * slots' mask; linear probing, at most 2/3 full): ~12 + 4 + 6..12 bytes (+ 1 with the kinds). A lookup hashes the str (kept in it) and compares text only when those bits match, as a
 * dict does; a move of the slots hashes the id's text again (_Py_HashBytes, as str's hash does: ~90 ns more an add,
 * amortised). Ids are read back as new str objects (`table[r]`, slices, iteration): the model's code reads them for
 * answers and snapshots, not per event. Keys are str, compared as text (a subclass's own __eq__ or __hash__ is never
 * used, so no Python code runs while the table is changed); a str holding lone surrogates is kept as it is, and refused
 * only by json_array(). The slots are hslots (above: they double a little at a time), and the arrays of a MB and more
 * memory maps grown by mremap (grown_alloc): no add() rehashes every id or copies the arrays. */

#define ID_MAX_ROWS 0x7ffffff0LL
#define ID_MAX_TEXT 0xffffffffULL /* bytes of text a table holds at most: its ends are uint32 */

typedef struct {
    PyObject_HEAD
    char *text;                  /* every id's code points, one after another */
    uint32_t *ends;              /* id r's text is text[r ? ends[r - 1] : 0 : ends[r]] (ID_MAX_TEXT at most) */
    uint8_t *kinds;              /* its bytes a code point: 1, 2 or 4; NULL while every id's is 1 (idt_kind) */
    Py_ssize_t n, cap, kinds_cap; /* ids, room for them in ends, and in kinds */
    size_t text_len, text_cap;
    hslots h;                    /* row + 1 and hash by id; no slots until the first id */
} IdTable;

static PyTypeObject IdTableType;

/* `at` rounded up to a multiple of `kind` (1, 2 or 4): where an id of that kind starts after text ending at `at` */
static inline size_t idt_aligned(size_t at, int kind) { return (at + (size_t)kind - 1) & ~((size_t)kind - 1); }

/* id r's bytes a code point */
static inline int idt_kind(const IdTable *self, Py_ssize_t r) { return self->kinds == NULL ? 1 : self->kinds[r]; }

/* where id r's text starts: after the previous id's, aligned to its own kind (so that 2- and 4-byte code points are
 * read where their type's alignment allows) */
static inline int64_t idt_start(const IdTable *self, Py_ssize_t r) {
    return r == 0 ? 0 : (int64_t)idt_aligned((size_t)self->ends[r - 1], idt_kind(self, r));
}

/* `key`'s text, kind and hash: 1 if it is a str, 0 if not (never held), -1 on an error */
static int idt_key(PyObject *key, const void **data, Py_ssize_t *nbytes, int *kind, uint32_t *hash) {
    if (!PyUnicode_Check(key)) return 0;
    if (PyUnicode_READY(key) < 0) return -1;
    Py_hash_t h = PyUnicode_Type.tp_hash(key); /* str's own, kept in the object (even for a subclass) */
    if (h == -1 && PyErr_Occurred()) return -1;
    *hash = (uint32_t)h;
    *kind = PyUnicode_KIND(key);
    *data = PyUnicode_DATA(key);
    *nbytes = PyUnicode_GET_LENGTH(key) * *kind;
    return 1;
}

/* The slot of `slots` holding the id of this text, or the empty one where it would go */
static inline uint32_t idt_probe_in(const IdTable *self, const hslot *slots, uint32_t mask, const void *data,
                                    Py_ssize_t nbytes, int kind, uint32_t hash) {
    uint32_t at = hash & mask, tag = hash & ~mask;
    for (;;) {
        hslot s = slots[at];
        if (s == 0) return at;
        if ((s & ~mask) == tag) {
            Py_ssize_t r = (Py_ssize_t)(s & mask) - 1;
            int64_t start = idt_start(self, r);
            if (idt_kind(self, r) == kind && self->ends[r] - start == nbytes &&
                memcmp(self->text + start, data, (size_t)nbytes) == 0) {
                return at;
            }
        }
        at = (at + 1) & mask;
    }
}

/* The slot of the table's (current) slots holding the id of this text, or the empty one where it would go */
static inline uint32_t idt_probe(const IdTable *self, const void *data, Py_ssize_t nbytes, int kind, uint32_t hash) {
    return idt_probe_in(self, self->h.slots, self->h.mask, data, nbytes, kind, hash);
}

/* The row + 1 of the id of this text, 0 if it is not held; the table has slots */
static inline uint32_t idt_lookup(const IdTable *self, const void *data, Py_ssize_t nbytes, int kind, uint32_t hash) {
    uint32_t row = self->h.slots[idt_probe(self, data, nbytes, kind, hash)] & self->h.mask;
    if (row == 0 && self->h.old != NULL) { /* not moved yet, maybe */
        uint32_t at = idt_probe_in(self, self->h.old, self->h.old_mask, data, nbytes, kind, hash);
        row = self->h.old[at] & self->h.old_mask;
    }
    return row;
}

/* The row of `key`: -1 when it is not held (or not a str), -2 on an error */
static Py_ssize_t idt_find(IdTable *self, PyObject *key) {
    const void *data;
    Py_ssize_t nbytes;
    int kind;
    uint32_t hash;
    int is_text = idt_key(key, &data, &nbytes, &kind, &hash);
    if (is_text <= 0) return is_text < 0 ? -2 : -1;
    if (self->h.slots == NULL) return -1;
    uint32_t row = idt_lookup(self, data, nbytes, kind, hash);
    return row == 0 ? -1 : (Py_ssize_t)row - 1;
}

/* The low 32 bits of the hash of the id whose row + 1 is `ref`: str's hash of its text, computed again */
static uint32_t idt_slot_hash(const void *table, uint32_t ref) {
    const IdTable *self = table;
    Py_ssize_t r = (Py_ssize_t)ref - 1;
    int64_t start = idt_start(self, r);
    return (uint32_t)_Py_HashBytes(self->text + start, (Py_ssize_t)(self->ends[r] - start));
}

/* Room for one more id in the slots (doubled when they would be more than 2/3 full); -1 with MemoryError */
static int idt_reserve_slot(IdTable *self) {
    return hslots_reserve(&self->h, (uint64_t)self->n, 2, 3, idt_slot_hash, self);
}

/* Appends an id (not held) as row n; -1 with an exception (nothing changed then) */
static Py_ssize_t idt_append(IdTable *self, const void *data, Py_ssize_t nbytes, int kind, uint32_t hash) {
    if (self->n >= ID_MAX_ROWS) {
        PyErr_SetString(PyExc_OverflowError, "an id index holds at most 2**31 ids");
        return -1;
    }
    size_t start = idt_aligned(self->text_len, kind); /* as idt_start finds it */
    if (start + (size_t)nbytes > ID_MAX_TEXT) {
        PyErr_SetString(PyExc_OverflowError, "an id index holds at most 4 GiB of id text");
        return -1;
    }
    if (idt_reserve_slot(self) < 0) return -1;
    if (self->n == self->cap) {
        Py_ssize_t cap = self->cap < 16 ? 16 : self->cap + self->cap / 2; /* 1.5x: the last growth wastes less */
        uint32_t *ends = grown_realloc(self->ends, (size_t)self->cap * sizeof *ends, (size_t)cap * sizeof *ends);
        if (ends == NULL) return PyErr_NoMemory(), -1;
        self->ends = ends;
        self->cap = cap;
    }
    if (self->kinds == NULL && kind != 1) { /* the first id of 2 or 4 bytes a code point: every earlier one's is 1 */
        uint8_t *kinds = grown_alloc((size_t)self->cap, 0);
        if (kinds == NULL) return PyErr_NoMemory(), -1;
        memset(kinds, 1, (size_t)self->n);
        self->kinds = kinds;
        self->kinds_cap = self->cap;
    } else if (self->kinds != NULL && self->n == self->kinds_cap) { /* (apart: each array's size follows its own
                                                                      * count, even after a failure) */
        uint8_t *kinds = grown_realloc(self->kinds, (size_t)self->kinds_cap, (size_t)self->cap);
        if (kinds == NULL) return PyErr_NoMemory(), -1;
        self->kinds = kinds;
        self->kinds_cap = self->cap;
    }
    if (self->text == NULL || start + (size_t)nbytes > self->text_cap) { /* (an arena even for "" alone) */
        size_t cap = self->text_cap < 256 ? 256 : self->text_cap + self->text_cap / 2;
        if (cap < start + (size_t)nbytes) cap = start + (size_t)nbytes;
        char *text = grown_realloc(self->text, self->text_cap, cap);
        if (text == NULL) return PyErr_NoMemory(), -1;
        self->text = text;
        self->text_cap = cap;
    }
    uint32_t at = idt_probe(self, data, nbytes, kind, hash);
    Py_ssize_t r = self->n;
    memset(self->text + self->text_len, 0, start - self->text_len); /* the padding: tables compare their text whole */
    memcpy(self->text + start, data, (size_t)nbytes);
    self->text_len = start + (size_t)nbytes;
    self->ends[r] = (uint32_t)self->text_len;
    if (self->kinds != NULL) self->kinds[r] = (uint8_t)kind;
    self->h.slots[at] = hslot_of(hash, (uint32_t)r + 1, self->h.mask);
    self->n = r + 1;
    return r;
}

/* `key`'s row, added if new (*created then 1); -1 with an exception */
static Py_ssize_t idt_add(IdTable *self, PyObject *key, int *created) {
    const void *data;
    Py_ssize_t nbytes;
    int kind;
    uint32_t hash;
    int is_text = idt_key(key, &data, &nbytes, &kind, &hash);
    if (is_text <= 0) {
        if (is_text == 0) PyErr_Format(PyExc_TypeError, "ids are str, not %.100s", Py_TYPE(key)->tp_name);
        return -1;
    }
    *created = 0;
    if (self->h.slots != NULL) {
        uint32_t row = idt_lookup(self, data, nbytes, kind, hash);
        if (row != 0) return (Py_ssize_t)row - 1;
    }
    *created = 1;
    return idt_append(self, data, nbytes, kind, hash);
}

static int idt_extend(IdTable *self, PyObject *ids) {
    PyObject *it = PyObject_GetIter(ids);
    if (it == NULL) return -1;
    PyObject *key;
    int created;
    while ((key = PyIter_Next(it)) != NULL) {
        Py_ssize_t r = idt_add(self, key, &created);
        Py_DECREF(key);
        if (r < 0) {
            Py_DECREF(it);
            return -1;
        }
    }
    Py_DECREF(it);
    return PyErr_Occurred() ? -1 : 0;
}

static int IdTable_init(IdTable *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"ids", NULL};
    PyObject *ids = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O", names, &ids)) return -1;
    if (self->n != 0) {
        PyErr_SetString(PyExc_RuntimeError, "an IdTable is initialised once");
        return -1;
    }
    return ids == NULL ? 0 : idt_extend(self, ids);
}

static void IdTable_dealloc(IdTable *self) {
    grown_free(self->text, self->text_cap);
    grown_free(self->ends, (size_t)self->cap * sizeof *self->ends);
    grown_free(self->kinds, (size_t)self->kinds_cap);
    hslots_free(&self->h);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* a new str of row r (0 <= r < n) */
static PyObject *idt_str(const IdTable *self, Py_ssize_t r) {
    int64_t start = idt_start(self, r);
    int kind = idt_kind(self, r);
    return PyUnicode_FromKindAndData(kind, self->text + start, (Py_ssize_t)(self->ends[r] - start) / kind);
}

static Py_ssize_t IdTable_len(IdTable *self) { return self->n; }

static int IdTable_contains(IdTable *self, PyObject *key) {
    Py_ssize_t r = idt_find(self, key);
    return r == -2 ? -1 : r >= 0;
}

static PyObject *IdTable_item(IdTable *self, Py_ssize_t i) {
    if (i < 0 || i >= self->n) {
        PyErr_SetString(PyExc_IndexError, "id index out of range");
        return NULL;
    }
    return idt_str(self, i);
}

static PyObject *IdTable_subscript(IdTable *self, PyObject *item) {
    if (PyIndex_Check(item)) {
        Py_ssize_t i = PyNumber_AsSsize_t(item, PyExc_IndexError);
        if (i == -1 && PyErr_Occurred()) return NULL;
        if (i < 0) i += self->n;
        return IdTable_item(self, i);
    }
    if (!PySlice_Check(item)) {
        PyErr_Format(PyExc_TypeError, "ids are read by int or slice, not %.100s", Py_TYPE(item)->tp_name);
        return NULL;
    }
    Py_ssize_t start, stop, step;
    if (PySlice_Unpack(item, &start, &stop, &step) < 0) return NULL;
    Py_ssize_t count = PySlice_AdjustIndices(self->n, &start, &stop, step);
    PyObject *list = PyList_New(count);
    if (list == NULL) return NULL;
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *s = idt_str(self, start + k * step); /* within [0, n): no overflow */
        if (s == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, k, s);
    }
    return list;
}

/* Whether two tables of as many ids have the same kinds */
static int idt_same_kinds(const IdTable *a, const IdTable *b) {
    if (a->kinds != NULL && b->kinds != NULL) return memcmp(a->kinds, b->kinds, (size_t)a->n) == 0;
    for (Py_ssize_t r = 0; r < a->n; r++) {
        if (idt_kind(a, r) != idt_kind(b, r)) return 0;
    }
    return 1;
}

/* ids == other: another IdTable, or a list or tuple of str, with the same ids in the same order */
static PyObject *IdTable_richcompare(IdTable *self, PyObject *other, int op) {
    if (op != Py_EQ && op != Py_NE) Py_RETURN_NOTIMPLEMENTED;
    int same;
    if (Py_TYPE(other) == &IdTableType) {
        IdTable *o = (IdTable *)other;
        same = o->n == self->n && o->text_len == self->text_len &&
               (self->n == 0 || (memcmp(o->ends, self->ends, (size_t)self->n * sizeof *self->ends) == 0 &&
                                 idt_same_kinds(o, self) &&
                                 memcmp(o->text, self->text, self->text_len) == 0));
    } else if (PyList_Check(other) || PyTuple_Check(other)) {
        PyObject *fast = PySequence_Fast(other, "");  /* the list or tuple itself */
        if (fast == NULL) return NULL;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
        same = n == self->n;
        for (Py_ssize_t r = 0; same && r < n; r++) {
            PyObject *key = PySequence_Fast_GET_ITEM(fast, r);
            if (!PyUnicode_Check(key)) {
                same = 0;
                break;
            }
            if (PyUnicode_READY(key) < 0) {
                Py_DECREF(fast);
                return NULL;
            }
            int kind = PyUnicode_KIND(key);
            Py_ssize_t nbytes = PyUnicode_GET_LENGTH(key) * kind;
            int64_t start = idt_start(self, r);
            same = idt_kind(self, r) == kind && self->ends[r] - start == nbytes &&
                   memcmp(self->text + start, PyUnicode_DATA(key), (size_t)nbytes) == 0;
        }
        Py_DECREF(fast);
    } else {
        Py_RETURN_NOTIMPLEMENTED;
    }
    return PyBool_FromLong(op == Py_EQ ? same : !same);
}

static PyObject *IdTable_add(IdTable *self, PyObject *key) {
    int created;
    Py_ssize_t r = idt_add(self, key, &created);
    if (r < 0) return NULL;
    return Py_BuildValue("(nO)", r, created ? Py_True : Py_False);
}

static PyObject *IdTable_get(IdTable *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "get(id, default=None)");
        return NULL;
    }
    Py_ssize_t r = idt_find(self, args[0]);
    if (r == -2) return NULL;
    if (r < 0) return Py_NewRef(nargs == 2 ? args[1] : Py_None);
    return PyLong_FromSsize_t(r);
}

/* rows(ids): the rows of the ids that are held, in order; the others left out */
static PyObject *IdTable_rows(IdTable *self, PyObject *ids) {
    PyObject *it = PyObject_GetIter(ids);
    if (it == NULL) return NULL;
    PyObject *rows = PyList_New(0), *key;
    if (rows == NULL) goto fail;
    while ((key = PyIter_Next(it)) != NULL) {
        Py_ssize_t r = idt_find(self, key);
        Py_DECREF(key);
        if (r == -2) goto fail;
        if (r < 0) continue;
        PyObject *row = PyLong_FromSsize_t(r);
        if (row == NULL || PyList_Append(rows, row) < 0) {
            Py_XDECREF(row);
            goto fail;
        }
        Py_DECREF(row);
    }
    if (PyErr_Occurred()) goto fail;
    Py_DECREF(it);
    return rows;
fail:
    Py_DECREF(it);
    Py_XDECREF(rows);
    return NULL;
}

/* index(id): id's row (ValueError if it is not held), as list.index: each id is held once */
static PyObject *IdTable_index(IdTable *self, PyObject *key) {
    Py_ssize_t r = idt_find(self, key);
    if (r == -2) return NULL;
    if (r < 0) {
        PyErr_SetString(PyExc_ValueError, "id is not in the index");
        return NULL;
    }
    return PyLong_FromSsize_t(r);
}

/* count(id): 1 if id is held, else 0 */
static PyObject *IdTable_count(IdTable *self, PyObject *key) {
    Py_ssize_t r = idt_find(self, key);
    return r == -2 ? NULL : PyLong_FromLong(r >= 0);
}

static PyObject *IdTable_extend(IdTable *self, PyObject *ids) {
    if (idt_extend(self, ids) < 0) return NULL;
    Py_RETURN_NONE;
}

/* copy(): a new table of the same ids (its own memory, exactly sized) */
static PyObject *IdTable_copy(IdTable *self, PyObject *unused) {
    IdTable *copy = (IdTable *)IdTableType.tp_alloc(&IdTableType, 0);
    if (copy == NULL) return NULL;
    if (self->n > 0) {
        size_t slots = (size_t)self->h.mask + 1;
        /* (each size recorded as soon as its memory is, so that the copy frees what it holds on a failure) */
        copy->ends = grown_alloc((size_t)self->n * sizeof *copy->ends, 0);
        if (copy->ends != NULL) copy->cap = self->n;
        if (self->kinds != NULL) {
            copy->kinds = grown_alloc((size_t)self->n, 0);
            if (copy->kinds != NULL) copy->kinds_cap = self->n;
        }
        copy->text = grown_alloc(self->text_len, 0);
        if (copy->text != NULL) copy->text_cap = self->text_len;
        copy->h.slots = grown_alloc(slots * sizeof *copy->h.slots, 0);
        if (copy->h.slots != NULL) copy->h.mask = self->h.mask;
        if (copy->ends == NULL || (self->kinds != NULL && copy->kinds == NULL) || copy->text == NULL ||
            copy->h.slots == NULL) {
            Py_DECREF(copy);
            return PyErr_NoMemory();
        }
        memcpy(copy->ends, self->ends, (size_t)self->n * sizeof *copy->ends);
        if (self->kinds != NULL) memcpy(copy->kinds, self->kinds, (size_t)self->n);
        memcpy(copy->text, self->text, self->text_len);
        memcpy(copy->h.slots, self->h.slots, slots * sizeof *copy->h.slots);
        if (self->h.old != NULL) { /* the copy's doubling finished: the entries not moved yet put in its slots */
            for (uint64_t at = self->h.moved; at <= self->h.old_mask; at++) {
                uint32_t ref = self->h.old[at] & self->h.old_mask;
                if (ref != 0) hslots_place(copy->h.slots, self->h.mask, idt_slot_hash(self, ref), self->h.old[at], ref);
            }
        }
        copy->n = self->n;
        copy->text_len = self->text_len;
    }
    return (PyObject *)copy;
}

/* JSON output of one code point, as orjson writes it (only '"', '\\' and controls escaped); -1 for a surrogate */
static inline int idt_json_char(char *out, size_t *at, uint32_t c) {
    static const char hex[] = "0123456789abcdef";
    char *p = out + *at;
    if (c < 0x80) {
        if (c == '"' || c == '\\') {
            *p++ = '\\';
            *p++ = (char)c;
        } else if (c >= 0x20) {
            *p++ = (char)c;
        } else {
            *p++ = '\\';
            switch (c) {
            case '\b': *p++ = 'b'; break;
            case '\t': *p++ = 't'; break;
            case '\n': *p++ = 'n'; break;
            case '\f': *p++ = 'f'; break;
            case '\r': *p++ = 'r'; break;
            default:
                *p++ = 'u';
                *p++ = '0';
                *p++ = '0';
                *p++ = hex[c >> 4];
                *p++ = hex[c & 15];
            }
        }
    } else if (c < 0x800) {
        *p++ = (char)(0xc0 | (c >> 6));
        *p++ = (char)(0x80 | (c & 0x3f));
    } else if (c < 0x10000) {
        if (c >= 0xd800 && c <= 0xdfff) return -1;
        *p++ = (char)(0xe0 | (c >> 12));
        *p++ = (char)(0x80 | ((c >> 6) & 0x3f));
        *p++ = (char)(0x80 | (c & 0x3f));
    } else {
        *p++ = (char)(0xf0 | (c >> 18));
        *p++ = (char)(0x80 | ((c >> 12) & 0x3f));
        *p++ = (char)(0x80 | ((c >> 6) & 0x3f));
        *p++ = (char)(0x80 | (c & 0x3f));
    }
    *at = (size_t)(p - out);
    return 0;
}

/* code point k of a text of `kind` bytes a code point */
static inline uint32_t idt_char(const char *text, int kind, Py_ssize_t k) {
    return kind == 1 ? (uint8_t)text[k] : kind == 2 ? ((const uint16_t *)(const void *)text)[k]
                                                    : ((const uint32_t *)(const void *)text)[k];
}

/* the bytes idt_json_char writes for code point c (a surrogate counted as 3: refused when written) */
static inline size_t idt_json_size(uint32_t c) {
    if (c < 0x80) {
        if (c == '"' || c == '\\') return 2;
        if (c >= 0x20) return 1;
        return c == '\b' || c == '\t' || c == '\n' || c == '\f' || c == '\r' ? 2 : 6;
    }
    return c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
}

/* json_array(): the ids as a JSON array (bytes), as orjson.dumps(list(ids)) writes it, without making the str
 * objects (learner.codec embeds it in a snapshot's header); ValueError for an id holding a lone surrogate. Two
 * passes: the exact size, then the bytes written into the result itself. */
static PyObject *IdTable_json_array(IdTable *self, PyObject *unused) {
    size_t size = 2 + (size_t)self->n * 3 - (self->n > 0); /* '[', ']'; per id '"', '"' and a ',' but the last */
    for (Py_ssize_t r = 0; r < self->n; r++) {
        int64_t start = idt_start(self, r);
        int kind = idt_kind(self, r);
        Py_ssize_t chars = (Py_ssize_t)(self->ends[r] - start) / kind;
        const char *text = self->text + start;
        for (Py_ssize_t k = 0; k < chars; k++) size += idt_json_size(idt_char(text, kind, k));
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
    if (result == NULL) return NULL;
    char *out = PyBytes_AS_STRING(result);
    size_t at = 0;
    out[at++] = '[';
    for (Py_ssize_t r = 0; r < self->n; r++) {
        if (r) out[at++] = ',';
        out[at++] = '"';
        int64_t start = idt_start(self, r);
        int kind = idt_kind(self, r);
        Py_ssize_t chars = (Py_ssize_t)(self->ends[r] - start) / kind;
        const char *text = self->text + start;
        for (Py_ssize_t k = 0; k < chars; k++) {
            if (idt_json_char(out, &at, idt_char(text, kind, k)) < 0) {
                Py_DECREF(result);
                PyErr_Format(PyExc_ValueError, "id %zd is not valid UTF-8: surrogates not allowed", r);
                return NULL;
            }
        }
        out[at++] = '"';
    }
    out[at++] = ']';
    if (at != size) { /* (the two passes agree) */
        Py_DECREF(result);
        PyErr_SetString(PyExc_SystemError, "IdTable.json_array: size mismatch");
        return NULL;
    }
    return result;
}

/* ---- packed ids in a snapshot (learner.codec) -------------------------------------------------------------------
 * A table's ids as bytes: each id's kind (n bytes: 1, 2 or 4 bytes a code point), its length in code points (n
 * little-endian uint32), then every id's code points one after the other (little-endian, no padding). A snapshot
 * holds its ids this way instead of as a JSON array, so that loading one makes no str object an id (a million ids:
 * ~170 ms of JSON and ~100 MB of str objects, freed but kept by the heap). The reader refuses what a str could not
 * be, or another str would be: a kind other than 1, 2, 4; a code point beyond U+10FFFF or a surrogate; a kind wider
 * than its code points need (a str is always in its narrowest kind: the table compares kinds); a repeated id; bytes
 * that do not add up. */

#define ID_PREFETCH 16 /* ids ahead whose slot id_table_from_packed fetches */

static int idt_little_endian(void) {
    const uint16_t one = 1;
    return *(const uint8_t *)&one == 1;
}

/* -1 if `text` (`chars` code points of `kind`) is not how a str holds it: a surrogate, beyond U+10FFFF, or a kind
 * wider than needed; else 0 */
static int idt_check_text(const char *text, int kind, Py_ssize_t chars) {
    if (kind == 1) return 0;
    uint32_t widest = 0;
    for (Py_ssize_t k = 0; k < chars; k++) {
        uint32_t c = idt_char(text, kind, k);
        if ((c >= 0xd800 && c <= 0xdfff) || c > 0x10ffff) return -1;
        if (c > widest) widest = c;
    }
    return widest > (kind == 2 ? 0xffu : 0xffffu) ? 0 : -1;
}

/* packed(): the ids as a snapshot holds them (above); ValueError for an id holding a lone surrogate, as
 * json_array() */
static PyObject *IdTable_packed(IdTable *self, PyObject *unused) {
    if (!idt_little_endian()) {
        PyErr_SetString(PyExc_NotImplementedError, "packed ids are written on little-endian hosts only");
        return NULL;
    }
    size_t text = 0;
    for (Py_ssize_t r = 0; r < self->n; r++) text += (size_t)(self->ends[r] - idt_start(self, r));
    size_t n = (size_t)self->n;
    PyObject *result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n * 5 + text));
    if (result == NULL) return NULL;
    char *out = PyBytes_AS_STRING(result);
    if (n && self->kinds != NULL) memcpy(out, self->kinds, n);
    else if (n) memset(out, 1, n);
    char *lengths = out + n, *at = out + n * 5;
    for (Py_ssize_t r = 0; r < self->n; r++) {
        int64_t start = idt_start(self, r);
        int kind = idt_kind(self, r);
        size_t nbytes = (size_t)(self->ends[r] - start);
        uint32_t chars = (uint32_t)(nbytes / (size_t)kind);
        if (kind != 1 && idt_check_text(self->text + start, kind, (Py_ssize_t)chars) < 0) {
            Py_DECREF(result);
            PyErr_Format(PyExc_ValueError, "id %zd is not valid UTF-8: surrogates not allowed", r);
            return NULL;
        }
        memcpy(lengths + 4 * (size_t)r, &chars, 4);
        memcpy(at, self->text + start, nbytes);
        at += nbytes;
    }
    return result;
}

/* id_table_from_packed(data, n) -> IdTable: the table of the `n` ids `data` (a bytes-like object) holds as packed()
 * writes them; ValueError for bytes that are not such ids (above) */
static PyObject *id_table_from_packed(PyObject *module, PyObject *args) {
    Py_buffer view;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "y*n", &view, &n)) return NULL;
    IdTable *table = NULL;
    uint32_t *hashes = NULL;
    const char *why = NULL;
    if (!idt_little_endian()) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_NotImplementedError, "packed ids are read on little-endian hosts only");
        return NULL;
    }
    const char *data = view.buf;
    size_t size = (size_t)view.len;
    if (n < 0 || n > ID_MAX_ROWS || (size_t)n * 5 > size) {
        why = "fewer bytes than its ids' kinds and lengths";
        goto refuse;
    }
    /* the text's size, each id's kind and length checked first: nothing is allocated for what does not add up */
    const uint8_t *kinds = (const uint8_t *)data;
    const char *lengths = data + (size_t)n * 5 - (size_t)n * 4;
    size_t text = 0, laid = 0; /* the text's bytes as packed, and laid out with each id aligned to its kind */
    for (Py_ssize_t r = 0; r < n; r++) {
        int kind = kinds[r];
        uint32_t chars;
        memcpy(&chars, lengths + 4 * (size_t)r, 4);
        if (kind != 1 && kind != 2 && kind != 4) {
            why = "an id's kind is not 1, 2 or 4 bytes a code point";
            goto refuse;
        }
        text += (size_t)chars * (size_t)kind;
        laid = idt_aligned(laid, kind) + (size_t)chars * (size_t)kind;
        if (text > size) {
            why = "its ids' text is longer than its bytes";
            goto refuse;
        }
    }
    if ((size_t)n * 5 + text != size) {
        why = "its bytes are not its ids' kinds, lengths and text";
        goto refuse;
    }
    if (laid > ID_MAX_TEXT) {
        why = "its ids' text is more than an id index holds (4 GiB)";
        goto refuse;
    }
    table = (IdTable *)IdTableType.tp_alloc(&IdTableType, 0);
    if (table == NULL) goto fail;
    if (n > 0) {
        uint64_t slots = 16;
        while ((uint64_t)n * 3 > slots * 2) slots *= 2;
        /* (each size recorded as soon as its memory is, so that the table frees what it holds on a failure) */
        table->ends = grown_alloc((size_t)n * sizeof *table->ends, 0);
        if (table->ends != NULL) table->cap = n;
        int narrow = 1; /* every id 1 byte a code point: no kinds array */
        for (Py_ssize_t r = 0; r < n && narrow; r++) narrow = kinds[r] == 1;
        if (!narrow) {
            table->kinds = grown_alloc((size_t)n, 0);
            if (table->kinds != NULL) table->kinds_cap = n;
        }
        table->text = grown_alloc(laid, 0);
        if (table->text != NULL) table->text_cap = laid;
        table->h.slots = grown_alloc((size_t)slots * sizeof *table->h.slots, GROWN_ZEROED);
        if (table->h.slots != NULL) table->h.mask = (uint32_t)(slots - 1);
        if (table->ends == NULL || (!narrow && table->kinds == NULL) || table->text == NULL ||
            table->h.slots == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        hashes = PyMem_Malloc((size_t)n * sizeof *hashes);
        if (hashes == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        /* the text laid out and checked, each id's hash (str's hash of that text), then the slots filled: apart, so
         * that each slot is fetched a few ids ahead of its use (the slots are most of the time: ~2x faster) */
        const char *from = data + (size_t)n * 5;
        for (Py_ssize_t r = 0; r < n; r++) {
            int kind = kinds[r];
            uint32_t chars;
            memcpy(&chars, lengths + 4 * (size_t)r, 4);
            size_t nbytes = (size_t)chars * (size_t)kind;
            size_t start = idt_aligned(table->text_len, kind);
            memset(table->text + table->text_len, 0, start - table->text_len); /* zeroed padding, as idt_append */
            memcpy(table->text + start, from, nbytes);
            from += nbytes;
            if (idt_check_text(table->text + start, kind, (Py_ssize_t)chars) < 0) { /* (read aligned, laid out) */
                why = "an id is not text as a str holds it (a surrogate, beyond U+10FFFF, or a kind wider than its "
                      "code points need)";
                goto refuse;
            }
            hashes[r] = (uint32_t)_Py_HashBytes(table->text + start, (Py_ssize_t)nbytes);
            if (table->kinds != NULL) table->kinds[r] = (uint8_t)kind;
            table->text_len = start + nbytes;
            table->ends[r] = (uint32_t)table->text_len;
        }
        table->n = n;
        for (Py_ssize_t r = 0; r < n; r++) {
            if (r + ID_PREFETCH < n) __builtin_prefetch(&table->h.slots[hashes[r + ID_PREFETCH] & table->h.mask], 1);
            int64_t start = idt_start(table, r);
            uint32_t at = idt_probe(table, table->text + start, (Py_ssize_t)(table->ends[r] - start),
                                    idt_kind(table, r), hashes[r]);
            if (table->h.slots[at] != 0) {
                why = "an id is repeated";
                goto refuse;
            }
            table->h.slots[at] = hslot_of(hashes[r], (uint32_t)r + 1, table->h.mask);
        }
    }
    PyMem_Free(hashes);
    PyBuffer_Release(&view);
    return (PyObject *)table;
refuse:
    PyErr_Format(PyExc_ValueError, "packed ids: %s", why);
fail:
    PyMem_Free(hashes);
    Py_XDECREF(table);
    PyBuffer_Release(&view);
    return NULL;
}

static PyObject *IdTable_nbytes(IdTable *self, void *closure) {
    size_t slots = hslots_nbytes(&self->h);
    return PyLong_FromSize_t(slots + (size_t)self->cap * sizeof(uint32_t) + (size_t)self->kinds_cap + self->text_cap);
}

static PyObject *IdTable_ids(IdTable *self, void *closure) { return Py_NewRef((PyObject *)self); }

static PyMethodDef IdTable_methods[] = {
    {"add", (PyCFunction)IdTable_add, METH_O, "add(id) -> (row, created): id's row, a new one (the next) if it is new"},
    {"get", (PyCFunction)(void (*)(void))IdTable_get, METH_FASTCALL, "get(id, default=None): id's row"},
    {"rows", (PyCFunction)IdTable_rows, METH_O, "rows(ids) -> list: the rows of the ids held, in order"},
    {"extend", (PyCFunction)IdTable_extend, METH_O, "extend(ids): add each id (in order; those held are skipped)"},
    {"index", (PyCFunction)IdTable_index, METH_O, "index(id) -> row (ValueError if not held): Sequence.index"},
    {"count", (PyCFunction)IdTable_count, METH_O, "count(id) -> 1 or 0: Sequence.count"},
    {"copy", (PyCFunction)IdTable_copy, METH_NOARGS, "copy() -> IdTable: the same ids, in memory of its own"},
    {"packed", (PyCFunction)IdTable_packed, METH_NOARGS,
     "packed() -> bytes: the ids as a snapshot holds them (kinds, lengths, text; id_table_from_packed reads them)"},
    {"json_array", (PyCFunction)IdTable_json_array, METH_NOARGS,
     "json_array() -> bytes: the ids as a JSON array, as orjson writes a list of them"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef IdTable_getset[] = {
    {"nbytes", (getter)IdTable_nbytes, NULL, "bytes allocated for the ids' text, their ends and kinds, and the slots",
     NULL},
    {"ids", (getter)IdTable_ids, NULL, "the table itself: a read-only sequence of the ids (each read as a new str)",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods IdTable_as_sequence = {
    .sq_length = (lenfunc)IdTable_len,
    .sq_item = (ssizeargfunc)IdTable_item,
    .sq_contains = (objobjproc)IdTable_contains,
};

static PyMappingMethods IdTable_as_mapping = {
    .mp_length = (lenfunc)IdTable_len,
    .mp_subscript = (binaryfunc)IdTable_subscript,
};

static PyTypeObject IdTableType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "learner._kernels.IdTable",
    .tp_doc = "IdTable(ids=()): str id <-> row 0, 1, 2, ... in order of first appearance, packed (learner.id_index)",
    .tp_basicsize = sizeof(IdTable),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)IdTable_init,
    .tp_dealloc = (destructor)IdTable_dealloc,
    .tp_as_sequence = &IdTable_as_sequence,
    .tp_as_mapping = &IdTable_as_mapping,
    .tp_hash = PyObject_HashNotImplemented,
    .tp_richcompare = (richcmpfunc)IdTable_richcompare,
    .tp_methods = IdTable_methods,
    .tp_getset = IdTable_getset,
};

/* ---- The quality gate's user-rate rule (learner.gate.behaviour.UserRateRule), compiled -------------------------
 *
 * RateCore does the rule's check and observe for one event with the same floating-point operations, in the same
 * order, as the Python methods, on the same table (learner.gate.records.Records: an LruIndex user -> record
 * number over an array('d') of 1 field a record, an array('f') of its 4 counts and an array('i') of its seen stamp). The Python code stays the
 * reference (and the path where this is not built); tests drive both over the same streams and compare every verdict
 * and every record. */



#define RATE_FIELDS 1 /* float64: the user's clock */
#define RATE_COUNTS 4 /* float32: previous events, current events, previous positives, current positives */
#define RATE_STAMPS 1 /* int32: when last seen (Records.stamp), the record's field RATE_FIELDS + RATE_COUNTS */

/* Python's float floor division (Objects/floatobject.c, _float_div_mod): the same double for every x and y != 0 */
static double py_floordiv(double vx, double wx) {
    double mod = fmod(vx, wx);
    double div = (vx - mod) / wx;
    if (mod) {
        if ((wx < 0) != (mod < 0)) div -= 1.0;
    }
    double floordiv;
    if (div) {
        floordiv = floor(div);
        if (div - floordiv > 0.5) floordiv += 1.0;
    } else {
        floordiv = copysign(0.0, vx / wx);
    }
    return floordiv;
}

/* What both rule cores begin with: the record number of their users table's least recently seen user as last looked
 * at (None: none; see Records.evict) and when it was seen. One pair of getters and setters serves both. */
#define GATE_CORE_HEAD                                                                                                \
    PyObject_HEAD PyObject *oldest;                                                                                   \
    double oldest_seen;

typedef struct {
    GATE_CORE_HEAD
} GateCore;

static PyObject *GateCore_get_oldest(GateCore *self, void *closure) {
    return Py_NewRef(self->oldest != NULL ? self->oldest : Py_None);
}

static int GateCore_set_oldest(GateCore *self, PyObject *value, void *closure) {
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "oldest cannot be deleted");
        return -1;
    }
    Py_XSETREF(self->oldest, Py_NewRef(value));
    return 0;
}

static PyObject *GateCore_get_oldest_seen(GateCore *self, void *closure) { return PyFloat_FromDouble(self->oldest_seen); }

static int GateCore_set_oldest_seen(GateCore *self, PyObject *value, void *closure) {
    double seen = value == NULL ? -1.0 : PyFloat_AsDouble(value);
    if (value == NULL) PyErr_SetString(PyExc_AttributeError, "oldest_seen cannot be deleted");
    if (seen == -1.0 && PyErr_Occurred()) return -1;
    self->oldest_seen = seen;
    return 0;
}

#define GATE_CORE_GETSET                                                                                              \
    {"oldest", (getter)GateCore_get_oldest, (setter)GateCore_set_oldest,                                              \
     "the record number of the users table's least recently seen user when last looked at (None: none)", NULL},      \
        {"oldest_seen", (getter)GateCore_get_oldest_seen, (setter)GateCore_set_oldest_seen, "when that user was seen", \
         NULL},

typedef struct {
    GATE_CORE_HEAD
    PyObject *index;          /* the table's LruIndex: user -> record number, least recently seen first */
    PyObject *data;           /* the table's array('d') */
    PyObject *narrow;         /* the table's array('f'): the counts */
    PyObject *whole;          /* the table's array('i'): the seen stamp */
    PyObject *evict;          /* Records.evict */
    PyObject *positive_types; /* a frozenset of event types */
    PyObject *hold_events;    /* hold_events(count) -> Hold: over max_events */
    PyObject *hold_positives; /* hold_positives(count) -> Hold: over max_positives */
    double window;
    double max_events, max_positives;
    Py_ssize_t max_users;
} RateCore;

static int RateCore_traverse(RateCore *self, visitproc visit, void *arg) {
    Py_VISIT(self->index);
    Py_VISIT(self->data);
    Py_VISIT(self->narrow);
    Py_VISIT(self->whole);
    Py_VISIT(self->evict);
    Py_VISIT(self->positive_types);
    Py_VISIT(self->hold_events);
    Py_VISIT(self->hold_positives);
    Py_VISIT(self->oldest);
    return 0;
}

static int RateCore_clear(RateCore *self) {
    Py_CLEAR(self->index);
    Py_CLEAR(self->data);
    Py_CLEAR(self->narrow);
    Py_CLEAR(self->whole);
    Py_CLEAR(self->evict);
    Py_CLEAR(self->positive_types);
    Py_CLEAR(self->hold_events);
    Py_CLEAR(self->hold_positives);
    Py_CLEAR(self->oldest);
    return 0;
}

static void RateCore_dealloc(RateCore *self) {
    PyObject_GC_UnTrack(self);
    RateCore_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int RateCore_init(RateCore *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"records", "window_seconds", "max_events", "max_positives", "max_users",
                            "positive_types", "hold_events", "hold_positives", NULL};
    PyObject *records, *positive_types, *hold_events, *hold_positives;
    double window, max_events, max_positives;
    Py_ssize_t max_users;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OdddnOOO", names, &records, &window, &max_events, &max_positives,
                                     &max_users, &positive_types, &hold_events, &hold_positives)) {
        return -1;
    }
    if (!(window > 0)) {
        PyErr_SetString(PyExc_ValueError, "RateCore: window_seconds must be positive");
        return -1;
    }
    PyObject *index = PyObject_GetAttrString(records, "index");
    PyObject *data = index == NULL ? NULL : PyObject_GetAttrString(records, "data");
    PyObject *narrow = data == NULL ? NULL : PyObject_GetAttrString(records, "narrow");
    PyObject *whole = narrow == NULL ? NULL : PyObject_GetAttrString(records, "whole");
    PyObject *evict = whole == NULL ? NULL : PyObject_GetAttrString(records, "evict");
    if (index == NULL || data == NULL || narrow == NULL || whole == NULL || evict == NULL ||
        !Py_IS_TYPE(index, &LruIndexType)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "RateCore: records must be a learner.gate.records.Records");
        Py_XDECREF(index);
        Py_XDECREF(data);
        Py_XDECREF(narrow);
        Py_XDECREF(whole);
        Py_XDECREF(evict);
        return -1;
    }
    RateCore_clear(self);
    self->index = index;
    self->data = data;
    self->narrow = narrow;
    self->whole = whole;
    self->evict = evict;
    Py_INCREF(positive_types);
    self->positive_types = positive_types;
    Py_INCREF(hold_events);
    self->hold_events = hold_events;
    Py_INCREF(hold_positives);
    self->hold_positives = hold_positives;
    Py_INCREF(Py_None);
    self->oldest = Py_None;
    self->oldest_seen = -INFINITY;
    self->window = window;
    self->max_events = max_events;
    self->max_positives = max_positives;
    self->max_users = max_users;
    return 0;
}

/* The event's user, item and type, and its ts if `ts` is not NULL (a GateEvent: a tuple of event_id, user_id,
 * item_id, type, ts, ...). */
static int gate_event(PyObject *event, PyObject **user, PyObject **item, PyObject **type, double *ts) {
    if (!PyTuple_Check(event) || PyTuple_GET_SIZE(event) < 5) {
        PyErr_SetString(PyExc_TypeError, "expected a GateEvent");
        return -1;
    }
    *user = PyTuple_GET_ITEM(event, 1);
    *item = PyTuple_GET_ITEM(event, 2);
    *type = PyTuple_GET_ITEM(event, 3);
    if (ts == NULL) return 0;
    *ts = PyFloat_AsDouble(PyTuple_GET_ITEM(event, 4));
    return *ts == -1.0 && PyErr_Occurred() ? -1 : 0;
}

/* A record of a Records table: a writable view of the table's array `fields` (of `code` items: 'd', its `data`, or
 * 'f', its `narrow`), and where record number `r` (of `width` such fields) starts in it (b). The view must be released
 * before anything that may resize the array. */
static int table_fields(PyObject *fields, char code, Py_ssize_t r, Py_ssize_t width, Py_buffer *view, Py_ssize_t *b) {
    if (get_buffer(fields, view, PyBUF_WRITABLE, "a gate rule's table", code) < 0) return -1;
    if (r < 0 || (r + 1) * width > view->len / view->itemsize) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_IndexError, "a record number outside its gate table's data");
        return -1;
    }
    *b = r * width;
    return 0;
}

/* table_fields of a Records table's float64 fields (its `data`) */
static int table_record(PyObject *data, Py_ssize_t r, Py_ssize_t width, Py_buffer *view, Py_ssize_t *b) {
    return table_fields(data, 'd', r, width, view, b);
}

/* The rules' eviction (Records.evict), called only when the table's remembered oldest record may be due: when
 * record `number` (the one just touched) is that record, or it was seen before `horizon`, or the table holds more
 * than `cap` records. Updates the remembered record (*oldest: its number, or None; *oldest_seen) from evict's
 * answer. */
static int evict_if_due(Py_ssize_t number, PyObject *index, PyObject *evict, double horizon, Py_ssize_t cap,
                        int seen_at, PyObject **oldest, double *oldest_seen) {
    int due = 0;
    if (*oldest != Py_None) {
        Py_ssize_t first = PyLong_AsSsize_t(*oldest);
        if (first == -1 && PyErr_Occurred()) return -1;
        due = first == number;
    }
    if (!due) due = !(*oldest_seen >= horizon && lru_size(index) <= cap);
    if (!due) return 0;
    PyObject *found = PyObject_CallFunction(evict, "dni", horizon, cap, seen_at);
    if (found == NULL) return -1;
    double seen;
    if (!PyTuple_Check(found) || PyTuple_GET_SIZE(found) != 2 ||
        ((seen = PyFloat_AsDouble(PyTuple_GET_ITEM(found, 1))) == -1.0 && PyErr_Occurred())) {
        Py_DECREF(found);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "Records.evict must return (number, seen)");
        return -1;
    }
    PyObject *first = PyTuple_GET_ITEM(found, 0);
    Py_INCREF(first);
    Py_SETREF(*oldest, first);
    *oldest_seen = seen;
    Py_DECREF(found);
    return 0;
}

/* Record `r` of an LruIndex last in its order (most recently touched): its move_to_end without a lookup */
static int move_last(PyObject *index, Py_ssize_t r) {
    LruIndex *self = (LruIndex *)index;
    if (r < 0 || r >= self->n_entries || self->entries[r].prev == LRU_FORGOTTEN) {
        PyErr_SetString(PyExc_IndexError, "move_last: not a record held by the index");
        return -1;
    }
    if (self->last != (int32_t)r) {
        lru_unlink(self, (int32_t)r);
        lru_append(self, (int32_t)r);
    }
    return 0;
}

/* Appends `nbytes` bytes to an array (its frombytes), or writes them where its items [at, at + nbytes / itemsize)
 * are (a forgotten record's: within its length); 0, or -1 with an exception. */
static int array_put(PyObject *array, char code, Py_ssize_t at, Py_ssize_t length, const char *bytes, Py_ssize_t nbytes) {
    Py_ssize_t itemsize = code == 'd' ? 8 : 4, items = nbytes / itemsize;
    if (at == length) {
        static PyObject *frombytes = NULL;
        if (frombytes == NULL && (frombytes = PyUnicode_InternFromString("frombytes")) == NULL) return -1;
        PyObject *chunk = PyBytes_FromStringAndSize(bytes, nbytes);
        if (chunk == NULL) return -1;
        PyObject *done = PyObject_CallMethodOneArg(array, frombytes, chunk);
        Py_DECREF(chunk);
        Py_XDECREF(done);
        return done == NULL ? -1 : 0;
    }
    if (at < 0 || at + items > length) {
        PyErr_SetString(PyExc_IndexError, "a record number outside its gate table's data");
        return -1;
    }
    Py_buffer view;
    Py_ssize_t b;
    if (table_fields(array, code, 0, length, &view, &b) < 0) return -1;
    memcpy((char *)view.buf + at * itemsize, bytes, (size_t)nbytes);
    PyBuffer_Release(&view);
    return 0;
}

/* Records.add(key, fields) from a rule core, for a key its index does not hold: the same index and arrays (a key's
 * record number from LruIndex.insert, its `width` float64 fields, then `narrow_width` float32 ones, rounded as
 * array('f') rounds, then `ints` int32 ones (whole numbers within int32: the caller's business), appended or written
 * where a forgotten record was) without its Python. `narrow` (`whole`) is NULL for a table without float32 (int32)
 * fields. The record's number, or -1 with an exception and nothing changed. */
static Py_ssize_t records_add(PyObject *index, PyObject *data, PyObject *narrow, PyObject *whole, PyObject *key,
                              const double *fields, Py_ssize_t width, Py_ssize_t narrow_width, Py_ssize_t ints) {
    char wide[8 * 8], small[8 * 4], numbers[8 * 4];
    if (width > 8 || narrow_width > 8 || ints > 8 || (narrow == NULL) != (narrow_width == 0) ||
        (whole == NULL) != (ints == 0)) {
        PyErr_SetString(PyExc_SystemError, "records_add: at most 8 fields of each width");
        return -1;
    }
    uint64_t fp;
    int is_text = lru_hash(key, &fp);
    if (is_text <= 0) {
        if (is_text == 0) PyErr_Format(PyExc_TypeError, "a gate table's keys are str, not %.100s", Py_TYPE(key)->tp_name);
        return -1;
    }
    LruIndex *lru = (LruIndex *)index;
    if (lru_ready(lru) < 0) return -1;
    Py_ssize_t end = PySequence_Size(data), narrow_end = narrow == NULL ? 0 : PySequence_Size(narrow);
    Py_ssize_t whole_end = whole == NULL ? 0 : PySequence_Size(whole);
    if (end < 0 || narrow_end < 0 || whole_end < 0) return -1;
    Py_ssize_t number = lru_insert(lru, fp);
    if (number < 0) return -1;
    for (Py_ssize_t i = 0; i < width; i++) set_f64(wide, i, fields[i]);
    for (Py_ssize_t i = 0; i < narrow_width; i++) set_f32(small, i, (float)fields[width + i]);
    for (Py_ssize_t i = 0; i < ints; i++) set_i32(numbers, i, (int32_t)fields[width + narrow_width + i]);
    if ((width == 0 || array_put(data, 'd', number * width, end, wide, width * 8) == 0) &&
        (narrow == NULL || array_put(narrow, 'f', number * narrow_width, narrow_end, small, narrow_width * 4) == 0) &&
        (whole == NULL || array_put(whole, 'i', number * ints, whole_end, numbers, ints * 4) == 0)) {
        return number;
    }
    /* as it was: no number without its record, the arrays their lengths (those extended before the failure) */
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    if (PySequence_Size(data) > end) PySequence_DelSlice(data, end, PY_SSIZE_T_MAX);
    PyErr_Clear();
    if (narrow != NULL && PySequence_Size(narrow) > narrow_end) PySequence_DelSlice(narrow, narrow_end, PY_SSIZE_T_MAX);
    PyErr_Clear();
    lru_forget(lru, (int32_t)number);
    PyErr_Restore(type, value, traceback);
    return -1;
}

/* Records.stamp(now): `now` as a seen stamp of the table of `index` (an LruIndex) and `whole` (its array('i') of
 * records of `ints` int32 fields, the stamp field `field`), the base moved if due; 0, or -1 with an exception (taken
 * before a record is changed: a time that cannot be stamped changes nothing) */
static int records_stamp(PyObject *index, PyObject *whole, Py_ssize_t ints, Py_ssize_t field, double now,
                         int32_t *stamp) {
    Py_buffer view;
    if (get_buffer(whole, &view, PyBUF_WRITABLE, "a gate table's int32 fields", 'i') < 0) return -1;
    int failed = lru_stamp((LruIndex *)index, view.buf, view.len / 4, ints, field, now, stamp);
    PyBuffer_Release(&view);
    return failed ? -1 : 0;
}

/* int32 field `field` of record `number` (of `ints` int32 fields a record) of `whole` set to `value`; 0, or -1 */
static int records_set_i32(PyObject *whole, Py_ssize_t number, Py_ssize_t ints, Py_ssize_t field, int32_t value) {
    Py_buffer view;
    Py_ssize_t b;
    if (table_fields(whole, 'i', number, ints, &view, &b) < 0) return -1;
    set_i32(view.buf, b + field, value);
    PyBuffer_Release(&view);
    return 0;
}

static PyObject *call_with_float(PyObject *callable, double x) {
    PyObject *arg = PyFloat_FromDouble(x);
    if (arg == NULL) return NULL;
    PyObject *result = PyObject_CallOneArg(callable, arg);
    Py_DECREF(arg);
    return result;
}

/* The arguments of a rule core's method (METH_FASTCALL | METH_KEYWORDS), given by position or by name: out[i] is the
 * argument named names[i] (NULL when not given). Raises TypeError on a missing required one (the first `required`),
 * an unknown or repeated name, or too many. */
static int gate_arguments(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, const char *const *names,
                          int n, int required, PyObject **out) {
    for (int i = 0; i < n; i++) out[i] = NULL;
    if (nargs > n) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %d arguments", names[n], n);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) out[i] = args[i];
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        int found = -1;
        for (int i = 0; i < n && found < 0; i++) {
            if (PyUnicode_CompareWithASCIIString(name, names[i]) == 0) found = i;
        }
        if (found < 0 || out[found] != NULL) {
            PyErr_Format(PyExc_TypeError, "%s(): unexpected or repeated argument %R", names[n], name);
            return -1;
        }
        out[found] = args[nargs + k];
    }
    for (int i = 0; i < required; i++) {
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing argument '%s'", names[n], names[i]);
            return -1;
        }
    }
    return 0;
}

/* A core made without its __init__ (Type.__new__ alone) holds nothing to work on */
static int initialised(PyObject *table, const char *what) {
    if (table != NULL) return 0;
    PyErr_Format(PyExc_RuntimeError, "%s was not initialised", what);
    return -1;
}

/* UserRateRule.check */
static PyObject *RateCore_check(RateCore *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    static const char *const names[] = {"event", "now", "check"};
    PyObject *given[2];
    if (initialised(self->index, "RateCore") || gate_arguments(args, nargs, kwnames, names, 2, 2, given)) return NULL;
    PyObject *user, *item, *type;
    double ts;
    if (gate_event(given[0], &user, &item, &type, &ts) < 0) return NULL;
    Py_ssize_t number = lru_lookup(self->index, user);
    if (number < 0) {
        if (number == -2) return NULL;
        Py_RETURN_NONE; /* nothing counted, and both limits are at least 1 */
    }
    Py_buffer view;
    Py_ssize_t b;
    if (table_record(self->data, number, RATE_FIELDS, &view, &b) < 0) return NULL;
    double user_clock = get_f64(view.buf, b);
    PyBuffer_Release(&view);
    double clock = ts > user_clock ? ts : user_clock;
    double window = self->window;
    double index = py_floordiv(clock, window), counted = py_floordiv(user_clock, window);
    int current = index == counted;
    if (!current && index != counted + 1) Py_RETURN_NONE; /* both windows are over: nothing counted */
    if (table_fields(self->narrow, 'f', number, RATE_COUNTS, &view, &b) < 0) return NULL;
    const char *n = view.buf;
    double previous_e = current ? get_f32(n, b) : get_f32(n, b + 1);
    double current_e = current ? get_f32(n, b + 1) : 0.0;
    double overlap = 1.0 - (clock - index * window) / window;
    double events = previous_e * overlap + current_e;
    double previous_p = current ? get_f32(n, b + 2) : get_f32(n, b + 3);
    double current_p = current ? get_f32(n, b + 3) : 0.0;
    PyBuffer_Release(&view);
    if (events + 1 > self->max_events) return call_with_float(self->hold_events, events);
    int positive = PySet_Contains(self->positive_types, type);
    if (positive < 0) return NULL;
    if (positive) {
        double positives = previous_p * overlap + current_p;
        if (positives + 1 > self->max_positives) {
            return call_with_float(self->hold_positives, positives);
        }
    }
    Py_RETURN_NONE;
}

/* UserRateRule.observe (and observe_held: a held attempt counts the same) */
static PyObject *RateCore_observe(RateCore *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    static const char *const names[] = {"event", "now", "hold", "observe"};
    PyObject *given[3];
    if (initialised(self->index, "RateCore") || gate_arguments(args, nargs, kwnames, names, 3, 2, given)) return NULL;
    PyObject *user, *item, *type;
    double ts;
    if (gate_event(given[0], &user, &item, &type, &ts) < 0) return NULL;
    double now = PyFloat_AsDouble(given[1]);
    if (now == -1.0 && PyErr_Occurred()) return NULL;
    int positive = PySet_Contains(self->positive_types, type);
    if (positive < 0) return NULL;
    int32_t seen;
    if (records_stamp(self->index, self->whole, RATE_STAMPS, 0, now, &seen) < 0) return NULL;
    double window = self->window;
    Py_ssize_t number = lru_lookup(self->index, user);
    if (number == -2) return NULL;
    if (number < 0) { /* a new record, its counts to be counted below */
        const double fields[RATE_FIELDS + RATE_COUNTS + RATE_STAMPS] = {ts, 0.0, 0.0, 0.0, 0.0, 0.0};
        number = records_add(self->index, self->data, self->narrow, self->whole, user, fields, RATE_FIELDS,
                             RATE_COUNTS, RATE_STAMPS);
        if (number < 0) return NULL;
    } else if (move_last(self->index, number) < 0) {
        return NULL;
    }
    /* both arrays' views at once: nothing below calls Python (which could resize them) */
    Py_buffer view, counts;
    Py_ssize_t b, c;
    if (table_record(self->data, number, RATE_FIELDS, &view, &b) < 0) return NULL;
    if (table_fields(self->narrow, 'f', number, RATE_COUNTS, &counts, &c) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    char *d = view.buf, *n = counts.buf; /* (a float32 field is rounded when written, as array('f') does) */
    double user_clock = get_f64(d, b); /* a new record's is ts: the same window, nothing to move */
    double clock = ts > user_clock ? ts : user_clock;
    double window_index = py_floordiv(clock, window), counted = py_floordiv(user_clock, window);
    if (window_index > counted + 1) { /* both windows are over */
        for (int i = 0; i < RATE_COUNTS; i++) set_f32(n, c + i, 0.0f);
    } else if (window_index == counted + 1) { /* the current window becomes the previous one */
        float current_e = get_f32(n, c + 1), current_p = get_f32(n, c + 3);
        set_f32(n, c, current_e);
        set_f32(n, c + 1, 0.0f);
        set_f32(n, c + 2, current_p);
        set_f32(n, c + 3, 0.0f);
    }
    set_f32(n, c + 1, (float)((double)get_f32(n, c + 1) + 1.0));
    if (positive) set_f32(n, c + 3, (float)((double)get_f32(n, c + 3) + 1.0));
    set_f64(d, b, clock);
    PyBuffer_Release(&counts);
    PyBuffer_Release(&view);
    if (records_set_i32(self->whole, number, RATE_STAMPS, 0, seen) < 0) return NULL;
    double horizon = now - 2 * window;
    if (evict_if_due(number, self->index, self->evict, horizon, self->max_users, RATE_FIELDS + RATE_COUNTS,
                     &self->oldest, &self->oldest_seen)) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyGetSetDef RateCore_getset[] = {
    GATE_CORE_GETSET{NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef RateCore_methods[] = {
    {"check", (PyCFunction)(void (*)(void))RateCore_check, METH_FASTCALL | METH_KEYWORDS,
     "check(event, now): UserRateRule.check"},
    {"observe", (PyCFunction)(void (*)(void))RateCore_observe, METH_FASTCALL | METH_KEYWORDS,
     "observe(event, now[, hold]): UserRateRule.observe (a held attempt counts the same)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RateCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "learner._kernels.RateCore",
    .tp_doc = "UserRateRule's check and observe on its Records table (learner.gate.behaviour)",
    .tp_basicsize = sizeof(RateCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)RateCore_init,
    .tp_dealloc = (destructor)RateCore_dealloc,
    .tp_traverse = (traverseproc)RateCore_traverse,
    .tp_clear = (inquiry)RateCore_clear,
    .tp_methods = RateCore_methods,
    .tp_getset = RateCore_getset,
};

/* ---- The quality gate's item-surge rule (learner.gate.behaviour.ItemSurgeRule), compiled -----------------------
 *
 * SurgeCore is the rule's check, observe and observe_held, as RateCore is the user-rate rule's: the same
 * operations in the same order on the rule's two tables (users: 1 float32 field a record and its seen stamp, items:
 * 4 float32 and 3 int32, its clocks from the channels' bases), with the rule's stream-wide counters (and the bases) kept
 * here. The established users (a Bloom filter) stay the Python object's. */

#define SURGE_USER_COUNTS 1 /* float32: events passed (capped at new_user_events, below 2**24: exact) */
#define SURGE_USER_STAMPS 1 /* int32: when last seen (Records.stamp), the record's field SURGE_USER_COUNTS */
#define SURGE_ITEM_COUNTS 4 /* float32: new-user interactions, all interactions, then per channel new-user attempts */
#define SURGE_ITEM_CLOCKS 3 /* int32 from the channels' bases: cool-down end (channel 0), then per channel its clock
                             * when the item's attempts were updated */

typedef struct {
    GATE_CORE_HEAD
    PyObject *users_index, *users_data, *users_narrow, *users_whole, *users_evict;
    PyObject *items_index, *items_data, *items_narrow, *items_whole, *items_pop_oldest;
    PyObject *established, *established_add;
    PyObject *judged_types; /* None: every type */
    PyObject *positive_types;
    PyObject *hold_cooling, *hold_share, *hold_concentration;
    double new_user_events, min_new_positives, min_new_share, min_lift, max_new_concentration, warmup_positives;
    double item_decay, stream_decay, share_rate_floor, user_idle_seconds;
    Py_ssize_t max_items, max_users;
    long long cooldown, span;
    /* the stream's counters (ItemSurgeRule._stream_new_share, _passed, _stream_new, _clocks, _bases) */
    double stream_new_share;
    long long passed;
    double stream_new[2];
    long long clocks[2], bases[2];
} SurgeCore;

#define SURGE_OBJECTS(X)                                                                                             \
    X(users_index) X(users_data) X(users_narrow) X(users_whole) X(users_evict) X(items_index) X(items_data)        \
        X(items_narrow) X(items_whole) X(items_pop_oldest) X(established) X(established_add) X(judged_types)     \
            X(positive_types) X(hold_cooling) X(hold_share) X(hold_concentration) X(oldest)

static int SurgeCore_traverse(SurgeCore *self, visitproc visit, void *arg) {
#define VISIT(field) Py_VISIT(self->field);
    SURGE_OBJECTS(VISIT)
#undef VISIT
    return 0;
}

static int SurgeCore_clear(SurgeCore *self) {
#define CLEAR(field) Py_CLEAR(self->field);
    SURGE_OBJECTS(CLEAR)
#undef CLEAR
    return 0;
}

static void SurgeCore_dealloc(SurgeCore *self) {
    PyObject_GC_UnTrack(self);
    SurgeCore_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A new reference to obj.name (NULL and an exception if it has none) */
static PyObject *attribute(PyObject *obj, const char *name) { return PyObject_GetAttrString(obj, name); }

static int SurgeCore_init(SurgeCore *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"users", "items", "established", "judged_types", "positive_types", "hold_cooling",
                            "hold_share", "hold_concentration", "new_user_events", "min_new_positives",
                            "min_new_share", "min_lift", "max_new_concentration", "warmup_positives", "item_decay",
                            "stream_decay", "share_rate_floor", "user_idle_seconds", "max_items", "max_users",
                            "cooldown", "span", NULL};
    PyObject *users, *items, *established, *judged, *positive, *cooling, *share, *concentration;
    double numbers[10];
    Py_ssize_t max_items, max_users;
    long long cooldown, span;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOOOOddddddddddnnLL", names, &users, &items, &established,
                                     &judged, &positive, &cooling, &share, &concentration, &numbers[0], &numbers[1],
                                     &numbers[2], &numbers[3], &numbers[4], &numbers[5], &numbers[6], &numbers[7],
                                     &numbers[8], &numbers[9], &max_items, &max_users, &cooldown, &span)) {
        return -1;
    }
    if (span < 1 || span > (1LL << 30) || cooldown < 0 || cooldown > (1LL << 30)) {
        PyErr_SetString(PyExc_ValueError, "SurgeCore: 1 <= span <= 2**30 and 0 <= cooldown <= 2**30");
        return -1;
    }
    if ((judged != Py_None && !PyAnySet_Check(judged)) || !PyAnySet_Check(positive)) {
        PyErr_SetString(PyExc_TypeError, "SurgeCore: judged_types (or None) and positive_types must be sets");
        return -1;
    }
    /* from here on a failure leaves the core empty (not initialised: its methods raise), never half made */
    SurgeCore_clear(self);
    /* each in turn, stopping at the first missing one */
    PyObject **fetched[] = {&self->users_index,  &self->users_data,  &self->users_narrow, &self->users_whole,
                            &self->users_evict,  &self->items_index, &self->items_data,   &self->items_narrow,
                            &self->items_whole,  &self->items_pop_oldest, &self->established_add};
    const char *attributes[] = {"index", "data",   "narrow", "whole",      "evict", "index",
                                "data",  "narrow", "whole",  "pop_oldest", "add"};
    for (int i = 0; i < 11; i++) {
        PyObject *owner = i < 5 ? users : i < 10 ? items : established;
        if ((*fetched[i] = attribute(owner, attributes[i])) == NULL) {
            SurgeCore_clear(self);
            return -1;
        }
    }
    if (!Py_IS_TYPE(self->users_index, &LruIndexType) || !Py_IS_TYPE(self->items_index, &LruIndexType)) {
        SurgeCore_clear(self);
        PyErr_SetString(PyExc_TypeError, "SurgeCore: users and items must be learner.gate.records.Records");
        return -1;
    }
    PyObject *objects[] = {established, judged, positive, cooling, share, concentration, Py_None};
    PyObject **fields[] = {&self->established, &self->judged_types, &self->positive_types, &self->hold_cooling,
                           &self->hold_share, &self->hold_concentration, &self->oldest};
    for (int i = 0; i < 7; i++) *fields[i] = Py_NewRef(objects[i]);
    double *settings[] = {&self->new_user_events, &self->min_new_positives, &self->min_new_share, &self->min_lift,
                          &self->max_new_concentration, &self->warmup_positives, &self->item_decay,
                          &self->stream_decay, &self->share_rate_floor, &self->user_idle_seconds};
    for (int i = 0; i < 10; i++) *settings[i] = numbers[i];
    self->max_items = max_items;
    self->max_users = max_users;
    self->cooldown = cooldown;
    self->span = span;
    self->bases[0] = self->bases[1] = 0;
    self->oldest_seen = -INFINITY;
    self->stream_new_share = 1.0; /* of passed interactions; a fresh worker starts with "everyone is new" */
    self->passed = 0;
    self->stream_new[0] = self->stream_new[1] = 0.0;
    self->clocks[0] = self->clocks[1] = 0;
    return 0;
}

/* event.type is judged by the rule (judged_types None: all) */
static int surge_judges(SurgeCore *self, PyObject *type) {
    return self->judged_types == Py_None ? 1 : PySet_Contains(self->judged_types, type);
}

/* ItemSurgeRule._concentration: the item's share of the channel's recent new-user attempts, this one included;
 * NAN when too few */
/* ItemSurgeRule._concentration of the item whose int32 fields start at w + b and float32 ones at n + c */
static double surge_concentration(SurgeCore *self, const char *w, Py_ssize_t b, const char *n, Py_ssize_t c,
                                  int channel) {
    double decay = self->stream_decay;
    double attempts = get_f32(n, c + 2 + channel);
    long long updated = self->bases[channel] + get_i32(w, b + 1 + channel);
    double item_in_stream = attempts * pow(decay, (double)(self->clocks[channel] - updated)) * decay + 1.0;
    if (item_in_stream < self->min_new_positives) return NAN;
    return item_in_stream / (self->stream_new[channel] * decay + 1.0);
}

/* ItemSurgeRule.check */
static PyObject *SurgeCore_check(SurgeCore *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    static const char *const names[] = {"event", "now", "check"};
    PyObject *given[2];
    if (initialised(self->users_index, "SurgeCore") || gate_arguments(args, nargs, kwnames, names, 2, 2, given)) {
        return NULL;
    }
    PyObject *user, *item, *type;
    if (gate_event(given[0], &user, &item, &type, NULL) < 0) return NULL;
    int judged = surge_judges(self, type);
    if (judged <= 0) return judged < 0 ? NULL : Py_NewRef(Py_None);
    Py_ssize_t known = lru_lookup(self->users_index, user);
    Py_buffer view;
    Py_ssize_t b;
    if (known >= 0) {
        if (table_fields(self->users_narrow, 'f', known, SURGE_USER_COUNTS, &view, &b) < 0) return NULL;
        double events = get_f32(view.buf, b);
        PyBuffer_Release(&view);
        if (events >= self->new_user_events) Py_RETURN_NONE; /* an established user */
    } else {
        if (known == -2) return NULL;
        int established = PySequence_Contains(self->established, user);
        if (established != 0) return established < 0 ? NULL : Py_NewRef(Py_None);
    }
    Py_ssize_t number = lru_lookup(self->items_index, item);
    if (number < 0) {
        if (number == -2) return NULL;
        if (self->min_new_positives > 1) Py_RETURN_NONE;
        return PyObject_CallFunction(self->hold_concentration, "di", 1.0, 0);
    }
    if (table_fields(self->items_whole, 'i', number, SURGE_ITEM_CLOCKS, &view, &b) < 0) return NULL;
    Py_buffer counts;
    Py_ssize_t c;
    if (table_fields(self->items_narrow, 'f', number, SURGE_ITEM_COUNTS, &counts, &c) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const char *w = view.buf, *n = counts.buf;
    PyObject *result = NULL;
    long long cooling_until = self->bases[0] + get_i32(w, b);
    if (cooling_until > self->clocks[0]) {
        result = PyObject_CallFunction(self->hold_cooling, "OL", type, cooling_until - self->clocks[0]);
        goto done;
    }
    double decay = self->item_decay;
    double new = get_f32(n, c) * decay + 1.0;
    if (new < self->min_new_positives) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    double share = new / (get_f32(n, c + 1) * decay + 1.0);
    if (share >= self->min_new_share && share - self->stream_new_share >= self->min_lift &&
        (double)self->passed >= self->warmup_positives) {
        result = PyObject_CallFunction(self->hold_share, "ddd", new, share, self->stream_new_share);
        goto done;
    }
    int positive = PySet_Contains(self->positive_types, type);
    if (positive < 0) goto done;
    for (int channel = 0; channel <= positive; channel++) {
        double concentration = surge_concentration(self, w, b, n, c, channel);
        if (!isnan(concentration) && concentration >= self->max_new_concentration) {
            result = PyObject_CallFunction(self->hold_concentration, "di", concentration, channel);
            goto done;
        }
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&counts);
    PyBuffer_Release(&view);
    return result;
}

/* ItemSurgeRule._count: an interaction with `item` (a new user's if is_new) counted in its record and the
 * stream's channels; returns the item's record number, or -1 with an exception */
static Py_ssize_t surge_count(SurgeCore *self, int is_new, PyObject *item, int positive) {
    double decay = self->stream_decay;
    Py_ssize_t number = lru_lookup(self->items_index, item);
    if (number < 0) {
        if (number == -2) return -1;
        /* (no cool-down: its end a span before the base) */
        const double fields[SURGE_ITEM_COUNTS + SURGE_ITEM_CLOCKS] = {
            0.0, 0.0, 0.0, 0.0, (double)-self->span, (double)(self->clocks[0] - self->bases[0]),
            (double)(self->clocks[1] - self->bases[1])};
        number = records_add(self->items_index, self->items_data, self->items_narrow, self->items_whole, item, fields,
                             0, SURGE_ITEM_COUNTS, SURGE_ITEM_CLOCKS);
        if (number < 0) return -1;
        if (lru_size(self->items_index) > self->max_items) {
            /* the oldest: this item's own only with max_items 0 (its record is then free, written and never read) */
            PyObject *popped = PyObject_CallNoArgs(self->items_pop_oldest);
            if (popped == NULL) return -1;
            Py_DECREF(popped);
        }
    } else if (move_last(self->items_index, number) < 0) { /* most recently touched last */
        return -1;
    }
    Py_buffer view;
    Py_ssize_t b;
    if (table_fields(self->items_whole, 'i', number, SURGE_ITEM_CLOCKS, &view, &b) < 0) return -1;
    Py_buffer counts;
    Py_ssize_t c;
    if (table_fields(self->items_narrow, 'f', number, SURGE_ITEM_COUNTS, &counts, &c) < 0) {
        PyBuffer_Release(&view);
        return -1;
    }
    char *w = view.buf, *n = counts.buf; /* (a float32 field is rounded when written, as array('f') does) */
    Py_ssize_t whole = view.len / 4;
    double new = is_new ? 1.0 : 0.0;
    /* channel 0 (every judged interaction), then channel 1 (likes/shares): new-user attempts at c + 2 and c + 3, the
     * channel's clock when they were last updated at b + 1 and b + 2 (from the channel's base, moved up to the clock
     * when it is a span past it: ItemSurgeRule._rebase) */
    long long clock = self->clocks[0] = self->clocks[0] + 1;
    if (clock - self->bases[0] >= self->span) {
        shift_i32_field(w, whole, SURGE_ITEM_CLOCKS, 0, clock - self->bases[0], -self->span);
        shift_i32_field(w, whole, SURGE_ITEM_CLOCKS, 1, clock - self->bases[0], -self->span);
        self->bases[0] = clock;
    }
    self->stream_new[0] = self->stream_new[0] * decay + new;
    long long updated = self->bases[0] + get_i32(w, b + 1);
    set_f32(n, c + 2, (float)(get_f32(n, c + 2) * pow(decay, (double)(clock - updated)) + new));
    set_i32(w, b + 1, (int32_t)(clock - self->bases[0]));
    if (positive) {
        clock = self->clocks[1] = self->clocks[1] + 1;
        if (clock - self->bases[1] >= self->span) {
            shift_i32_field(w, whole, SURGE_ITEM_CLOCKS, 2, clock - self->bases[1], -self->span);
            self->bases[1] = clock;
        }
        self->stream_new[1] = self->stream_new[1] * decay + new;
        updated = self->bases[1] + get_i32(w, b + 2);
        set_f32(n, c + 3, (float)(get_f32(n, c + 3) * pow(decay, (double)(clock - updated)) + new));
        set_i32(w, b + 2, (int32_t)(clock - self->bases[1]));
    }
    double item_decay = self->item_decay;
    set_f32(n, c, (float)(get_f32(n, c) * item_decay + new));
    set_f32(n, c + 1, (float)(get_f32(n, c + 1) * item_decay + 1.0));
    PyBuffer_Release(&counts);
    PyBuffer_Release(&view);
    return number;
}

/* ItemSurgeRule.observe */
static PyObject *SurgeCore_observe(SurgeCore *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    static const char *const names[] = {"event", "now", "observe"};
    PyObject *given[2];
    if (initialised(self->users_index, "SurgeCore") || gate_arguments(args, nargs, kwnames, names, 2, 2, given)) {
        return NULL;
    }
    PyObject *user, *item, *type;
    if (gate_event(given[0], &user, &item, &type, NULL) < 0) return NULL;
    double now = PyFloat_AsDouble(given[1]);
    if (now == -1.0 && PyErr_Occurred()) return NULL;
    int32_t seen;
    if (records_stamp(self->users_index, self->users_whole, SURGE_USER_STAMPS, 0, now, &seen) < 0) return NULL;
    Py_ssize_t row = lru_lookup(self->users_index, user);
    if (row < 0) {
        if (row == -2) return NULL;
        int established = PySequence_Contains(self->established, user);
        if (established < 0) return NULL;
        if (established) {
            PyObject *added = PyObject_CallOneArg(self->established_add, user); /* refresh into the current generation */
            if (added == NULL) return NULL;
            Py_DECREF(added);
        }
        const double fields[SURGE_USER_COUNTS + SURGE_USER_STAMPS] = {established ? self->new_user_events : 0.0, 0.0};
        row = records_add(self->users_index, self->users_data, self->users_narrow, self->users_whole, user, fields, 0,
                          SURGE_USER_COUNTS, SURGE_USER_STAMPS);
        if (row < 0) return NULL;
    } else if (move_last(self->users_index, row) < 0) { /* most recently seen last */
        return NULL;
    }
    /* the user's record is read and written through its number each time: counting the item below calls Python
     * (the items table), so no view of the users' array is held across it */
    Py_buffer view;
    Py_ssize_t b;
    if (table_fields(self->users_narrow, 'f', row, SURGE_USER_COUNTS, &view, &b) < 0) return NULL;
    double events = get_f32(view.buf, b);
    PyBuffer_Release(&view);
    int judged = surge_judges(self, type);
    if (judged < 0) return NULL;
    if (judged) {
        int is_new = events < self->new_user_events;
        int positive = PySet_Contains(self->positive_types, type);
        if (positive < 0 || surge_count(self, is_new, item, positive) < 0) return NULL;
        long long passed = self->passed = self->passed + 1;
        double rate = 1.0 / (double)passed;
        double floor_ = self->share_rate_floor;
        if (floor_ > rate) rate = floor_; /* max(1 / passed, floor): a plain mean until the window fills */
        self->stream_new_share += rate * ((is_new ? 1.0 : 0.0) - self->stream_new_share);
    }
    if (table_fields(self->users_narrow, 'f', row, SURGE_USER_COUNTS, &view, &b) < 0) return NULL;
    int established_now = 0;
    if (get_f32(view.buf, b) < self->new_user_events) {
        set_f32(view.buf, b, (float)(get_f32(view.buf, b) + 1.0));
        established_now = get_f32(view.buf, b) >= self->new_user_events;
    }
    PyBuffer_Release(&view);
    if (records_set_i32(self->users_whole, row, SURGE_USER_STAMPS, 0, seen) < 0) return NULL;
    if (established_now) {
        PyObject *added = PyObject_CallOneArg(self->established_add, user);
        if (added == NULL) return NULL;
        Py_DECREF(added);
    }
    double horizon = now - self->user_idle_seconds;
    if (evict_if_due(row, self->users_index, self->users_evict, horizon, self->max_users, SURGE_USER_COUNTS, &self->oldest,
                     &self->oldest_seen)) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ItemSurgeRule.observe_held: a held new-user interaction counts for its item, and (re)starts its cool-down */
static PyObject *SurgeCore_observe_held(SurgeCore *self, PyObject *const *args, Py_ssize_t nargs,
                                        PyObject *kwnames) {
    static const char *const names[] = {"event", "now", "hold", "observe_held"};
    PyObject *given[3];
    if (initialised(self->users_index, "SurgeCore") || gate_arguments(args, nargs, kwnames, names, 3, 3, given)) {
        return NULL;
    }
    PyObject *user, *item, *type;
    if (gate_event(given[0], &user, &item, &type, NULL) < 0) return NULL;
    int positive = PySet_Contains(self->positive_types, type);
    if (positive < 0) return NULL;
    Py_ssize_t number = surge_count(self, 1, item, positive);
    if (number < 0) return NULL;
    Py_buffer view;
    Py_ssize_t b;
    if (table_fields(self->items_whole, 'i', number, SURGE_ITEM_CLOCKS, &view, &b) < 0) return NULL;
    set_i32(view.buf, b, (int32_t)(self->clocks[0] + self->cooldown - self->bases[0]));
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyObject *SurgeCore_get_stream_new_share(SurgeCore *self, void *closure) {
    return PyFloat_FromDouble(self->stream_new_share);
}

static PyObject *SurgeCore_get_passed(SurgeCore *self, void *closure) { return PyLong_FromLongLong(self->passed); }

static PyObject *SurgeCore_get_clocks(SurgeCore *self, void *closure) {
    return Py_BuildValue("[LL]", self->clocks[0], self->clocks[1]);
}

static PyObject *SurgeCore_get_bases(SurgeCore *self, void *closure) {
    return Py_BuildValue("[LL]", self->bases[0], self->bases[1]);
}

static PyObject *SurgeCore_get_stream_new(SurgeCore *self, void *closure) {
    return Py_BuildValue("[dd]", self->stream_new[0], self->stream_new[1]);
}

static PyGetSetDef SurgeCore_getset[] = {
    GATE_CORE_GETSET
    {"stream_new_share", (getter)SurgeCore_get_stream_new_share, NULL, "ItemSurgeRule._stream_new_share", NULL},
    {"passed", (getter)SurgeCore_get_passed, NULL, "ItemSurgeRule._passed", NULL},
    {"clocks", (getter)SurgeCore_get_clocks, NULL, "ItemSurgeRule._clocks (a copy)", NULL},
    {"bases", (getter)SurgeCore_get_bases, NULL, "ItemSurgeRule._bases (a copy)", NULL},
    {"stream_new", (getter)SurgeCore_get_stream_new, NULL, "ItemSurgeRule._stream_new (a copy)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef SurgeCore_methods[] = {
    {"check", (PyCFunction)(void (*)(void))SurgeCore_check, METH_FASTCALL | METH_KEYWORDS,
     "check(event, now): ItemSurgeRule.check"},
    {"observe", (PyCFunction)(void (*)(void))SurgeCore_observe, METH_FASTCALL | METH_KEYWORDS,
     "observe(event, now): ItemSurgeRule.observe"},
    {"observe_held", (PyCFunction)(void (*)(void))SurgeCore_observe_held, METH_FASTCALL | METH_KEYWORDS,
     "observe_held(event, now, hold): ItemSurgeRule.observe_held"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SurgeCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "learner._kernels.SurgeCore",
    .tp_doc = "ItemSurgeRule's check, observe and observe_held on its Records tables (learner.gate.behaviour)",
    .tp_basicsize = sizeof(SurgeCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)SurgeCore_init,
    .tp_dealloc = (destructor)SurgeCore_dealloc,
    .tp_traverse = (traverseproc)SurgeCore_traverse,
    .tp_clear = (inquiry)SurgeCore_clear,
    .tp_methods = SurgeCore_methods,
    .tp_getset = SurgeCore_getset,
};

/* ---- The quality gate's anomaly rule (learner.gate.behaviour.AnomalousBehaviourRule), compiled ----------------
 *
 * AnomalyCore is the rule's check, observe, observe_held and judge, as RateCore is the user-rate rule's: the event's
 * features from its user's record (6 fields a record, the rule's Records table), their Half-Space Trees score, the
 * hold against the running quantile and the user's next record, with the same floating-point operations in the same
 * order as the Python. The score walks each tree down to a leaf (left when the feature is below the split) and adds
 * the leaf's score sum, computed (as learner.gate.hst_batch.FlatTrees.leaf_scores) when a window of the trees has
 * ended: the same integers, and the same final division, as River's score_one. The quantile stays River's (called).
 * The trees learn here too, every learn_every-th passed event: River draws their splits from the first point (the
 * rule's _learn, called for that one only); from then on the core walks each point down them, adding 1 to each
 * node's l_mass on its path, and at a window's end sets every node's r_mass to its l_mass and l_mass to 0, as River's
 * learn_one does, in arrays of its own (the rule brings River's nodes up to date from them when they are read). */

#define ANOMALY_FIELDS 6 /* a user's record: clock (float64), then decayed count, positive ratio, watch ratio, events
                            (float32, rounded as the table stores them), then when last seen (an int32 stamp) */
#define ANOMALY_WIDE 1   /* of which float64 */
#define ANOMALY_COUNTS 4 /* float32 */
#define ANOMALY_STAMPS 1 /* int32 */
#define ANOMALY_EVENTS 4 /* the events' field: 1.0, the user's first event */
#define ANOMALY_FEATURES 6

typedef struct {
    GATE_CORE_HEAD
    PyObject *index, *data, *narrow, *whole, *evict; /* the users table (Records): user -> record number */
    PyObject *positive_types;                           /* a frozenset of event types */
    PyObject *first_update; /* the rule's stats.Quantile's update: takes the first score (the quantile then answers) */
    PyObject *update, *get; /* its estimator's update and get: the same calls, once the quantile has a score */
    PyObject *learn;      /* learn(features): the rule's _learn */
    PyObject *trees;      /* trees() -> (feature, threshold, leaf scores, max score): the rule's _core_trees */
    PyObject *hold;       /* hold(score, threshold) -> Hold */
    PyObject *memo_event; /* the event the last check scored (NULL: none), and what it found for it */
    double memo_x[ANOMALY_FEATURES], memo_next[ANOMALY_FIELDS], memo_score;
    long long warmup_events, learn_every, window_size, passed, learned;
    long long counter; /* points learned in the current window (River's counter) */
    int scored;        /* the quantile has taken a score */
    double idle_seconds, rate_cap, gap_scale, history_scale, rate_tau, max_score;
    Py_ssize_t max_users;
    int n_trees, height;
    /* the trees, once River has drawn them (NULL before): tree t's inner node i's feature and split at t * inner + i;
     * its node i's masses, and score sum in the current window (only the leaves' are read), at t * size + i */
    int64_t *feature, *l_mass, *r_mass, *leaf_scores;
    double *threshold;
} AnomalyCore;

#define ANOMALY_OBJECTS(X)                                                                                           \
    X(index) X(data) X(narrow) X(whole) X(evict) X(positive_types) X(first_update) X(update) X(get) X(learn)      \
        X(trees) X(hold) X(memo_event) X(oldest)

static int AnomalyCore_traverse(AnomalyCore *self, visitproc visit, void *arg) {
#define VISIT(field) Py_VISIT(self->field);
    ANOMALY_OBJECTS(VISIT)
#undef VISIT
    return 0;
}

static int AnomalyCore_clear(AnomalyCore *self) {
#define CLEAR(field) Py_CLEAR(self->field);
    ANOMALY_OBJECTS(CLEAR)
#undef CLEAR
    return 0;
}

static void anomaly_free_trees(AnomalyCore *self) {
    PyMem_Free(self->feature);
    PyMem_Free(self->l_mass);
    PyMem_Free(self->r_mass);
    PyMem_Free(self->leaf_scores);
    PyMem_Free(self->threshold);
    self->feature = self->l_mass = self->r_mass = self->leaf_scores = NULL;
    self->threshold = NULL;
}

static void AnomalyCore_dealloc(AnomalyCore *self) {
    PyObject_GC_UnTrack(self);
    AnomalyCore_clear(self);
    anomaly_free_trees(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int AnomalyCore_init(AnomalyCore *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"records",     "positive_types", "quantile",      "estimator",     "learn",
                            "trees",       "hold",           "warmup_events", "learn_every",   "window_size",
                            "n_trees",     "height",         "idle_seconds",  "max_users",     "rate_cap",
                            "gap_scale",   "history_scale",  "rate_tau",      NULL};
    PyObject *records, *positive, *quantile, *estimator, *learn, *trees, *hold;
    long long warmup, learn_every, window_size;
    int n_trees, height;
    double idle_seconds, rate_cap, gap_scale, history_scale, rate_tau;
    Py_ssize_t max_users;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOOOLLLiidndddd", names, &records, &positive, &quantile,
                                     &estimator, &learn, &trees, &hold, &warmup, &learn_every, &window_size, &n_trees,
                                     &height, &idle_seconds, &max_users, &rate_cap, &gap_scale, &history_scale,
                                     &rate_tau)) {
        return -1;
    }
    if (!PyAnySet_Check(positive)) {
        PyErr_SetString(PyExc_TypeError, "AnomalyCore: positive_types must be a set");
        return -1;
    }
    if (learn_every < 1 || window_size < 1 || n_trees < 1 || height < 1 || height > 30 || !(rate_cap > 0)) {
        PyErr_SetString(PyExc_ValueError,
                        "AnomalyCore: learn_every, window_size, n_trees must be >= 1, height in 1..30, rate_cap > 0");
        return -1;
    }
    /* from here on a failure leaves the core empty (not initialised: its methods raise), never half made */
    AnomalyCore_clear(self);
    anomaly_free_trees(self);
    PyObject **fetched[] = {&self->index, &self->data, &self->narrow, &self->whole, &self->evict};
    const char *attributes[] = {"index", "data", "narrow", "whole", "evict"};
    for (int i = 0; i < 5; i++) {
        if ((*fetched[i] = attribute(records, attributes[i])) == NULL) {
            AnomalyCore_clear(self);
            return -1;
        }
    }
    if (!Py_IS_TYPE(self->index, &LruIndexType)) {
        AnomalyCore_clear(self);
        PyErr_SetString(PyExc_TypeError, "AnomalyCore: records must be a learner.gate.records.Records");
        return -1;
    }
    if ((self->first_update = attribute(quantile, "update")) == NULL ||
        (self->update = attribute(estimator, "update")) == NULL || (self->get = attribute(estimator, "get")) == NULL) {
        AnomalyCore_clear(self);
        return -1;
    }
    PyObject *objects[] = {positive, learn, trees, hold, Py_None};
    PyObject **fields[] = {&self->positive_types, &self->learn, &self->trees, &self->hold, &self->oldest};
    for (int i = 0; i < 5; i++) *fields[i] = Py_NewRef(objects[i]);
    self->oldest_seen = -INFINITY;
    self->warmup_events = warmup;
    self->learn_every = learn_every;
    self->window_size = window_size;
    self->n_trees = n_trees;
    self->height = height;
    self->idle_seconds = idle_seconds;
    self->max_users = max_users;
    self->rate_cap = rate_cap;
    self->gap_scale = gap_scale;
    self->history_scale = history_scale;
    self->rate_tau = rate_tau;
    self->passed = self->learned = self->counter = 0;
    self->scored = 0;
    return 0;
}

/* math.log1p: libm's, with a zero returned as it is (CPython's _Py_log1p) */
static inline double py_log1p(double x) { return x == 0.0 ? x : log1p(x); }

/* AnomalousBehaviourRule._features: the event's features x and its user's next record, from their record `state`
 * (NULL: a new user); `event` is a tuple of at least 7 fields (anomaly_compute checked) */
static int anomaly_features(AnomalyCore *self, PyObject *event, double now, const double *state, double *x,
                            double *next) {
    PyObject *type = PyTuple_GET_ITEM(event, 3);
    double ts = PyFloat_AsDouble(PyTuple_GET_ITEM(event, 4));
    if (ts == -1.0 && PyErr_Occurred()) return -1;
    int is_positive = PySet_Contains(self->positive_types, type);
    if (is_positive < 0) return -1;
    double positive = is_positive ? 1.0 : 0.0;
    PyObject *watch_seconds = PyTuple_GET_ITEM(event, 5), *duration = PyTuple_GET_ITEM(event, 6);
    int has_watch = 0;
    double watch = 0.0;
    if (watch_seconds != Py_None) {
        int known = PyObject_IsTrue(duration);
        if (known < 0) return -1;
        if (known) {
            if (PyFloat_CheckExact(watch_seconds) && PyFloat_CheckExact(duration)) {
                watch = PyFloat_AS_DOUBLE(watch_seconds) / PyFloat_AS_DOUBLE(duration);
            } else { /* Python's division of whatever numbers they are */
                PyObject *ratio = PyNumber_TrueDivide(watch_seconds, duration);
                if (ratio == NULL) return -1;
                watch = PyFloat_AsDouble(ratio);
                Py_DECREF(ratio);
                if (watch == -1.0 && PyErr_Occurred()) return -1;
            }
            watch = (2.0 < watch ? 2.0 : watch) / 2.0;
            has_watch = 1;
        }
    }
    double clock, decayed, pos_ratio, watch_ratio, n, gap;
    if (state == NULL) {
        clock = ts;
        decayed = 1.0;
        pos_ratio = positive;
        watch_ratio = has_watch ? watch : 0.5;
        n = 1.0;
        gap = 1.0;
    } else {
        clock = state[0];
        decayed = state[1];
        pos_ratio = state[2];
        watch_ratio = state[3];
        n = state[4];
        double elapsed = ts - clock;
        if (0.0 > elapsed) elapsed = 0.0;
        gap = py_log1p(elapsed) * self->gap_scale;
        if (1.0 < gap) gap = 1.0;
        double rate = n < 20 ? 1.0 / (n + 1.0) : 0.05; /* running mean first, then exponential */
        if (ts > clock) clock = ts;
        decayed = decayed * exp(-elapsed / self->rate_tau) + 1.0;
        pos_ratio = pos_ratio + rate * (positive - pos_ratio);
        if (has_watch) watch_ratio = watch_ratio + rate * (watch - watch_ratio);
        n = n + 1.0;
    }
    double recent = decayed / self->rate_cap;
    double history = py_log1p(n) * self->history_scale;
    x[0] = gap;
    x[1] = 1.0 < recent ? 1.0 : recent;
    x[2] = positive;
    x[3] = pos_ratio;
    x[4] = watch_ratio;
    x[5] = 1.0 < history ? 1.0 : history;
    next[0] = clock;
    next[1] = (float)decayed;
    next[2] = (float)pos_ratio;
    next[3] = (float)watch_ratio;
    next[4] = (float)n;
    int32_t stamp = 0; /* now as the table's seen stamp (Records.stamp: its base moved now if due) */
    int failed = records_stamp(self->index, self->whole, ANOMALY_STAMPS, 0, now, &stamp);
    next[ANOMALY_WIDE + ANOMALY_COUNTS] = stamp;
    return failed ? -1 : 0;
}

/* bytes of exactly `size` bytes, copied into a new buffer at *out (the old one freed) */
static int anomaly_copy(PyObject *bytes, Py_ssize_t size, void **out) {
    if (!PyBytes_Check(bytes) || PyBytes_GET_SIZE(bytes) != size) {
        PyErr_SetString(PyExc_ValueError, "AnomalyCore: trees() gave arrays of the wrong size");
        return -1;
    }
    void *copy = PyMem_Malloc(size);
    if (copy == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(copy, PyBytes_AS_STRING(bytes), size);
    PyMem_Free(*out);
    *out = copy;
    return 0;
}

/* The trees' splits, from trees() -> (feature, threshold, max score) once River has drawn them, and their masses
 * (all 0) */
static int anomaly_trees(AnomalyCore *self) {
    PyObject *got = PyObject_CallNoArgs(self->trees);
    if (got == NULL) return -1;
    Py_ssize_t inner = ((Py_ssize_t)1 << self->height) - 1, size = 2 * inner + 1, n = self->n_trees;
    double max_score;
    if (!PyTuple_Check(got) || PyTuple_GET_SIZE(got) != 3 ||
        ((max_score = PyFloat_AsDouble(PyTuple_GET_ITEM(got, 2))) == -1.0 && PyErr_Occurred())) {
        Py_DECREF(got);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "AnomalyCore: trees() must return 3 values");
        return -1;
    }
    int failed = anomaly_copy(PyTuple_GET_ITEM(got, 0), n * inner * 8, (void **)&self->feature) ||
                 anomaly_copy(PyTuple_GET_ITEM(got, 1), n * inner * 8, (void **)&self->threshold);
    Py_DECREF(got);
    if (!failed) {
        for (Py_ssize_t i = 0; i < n * inner; i++) {
            if (self->feature[i] < 0 || self->feature[i] >= ANOMALY_FEATURES) {
                PyErr_SetString(PyExc_ValueError, "AnomalyCore: a split on an unknown feature");
                failed = 1;
                break;
            }
        }
    }
    if (!failed) {
        self->l_mass = PyMem_Calloc(n * size, sizeof(int64_t));
        self->r_mass = PyMem_Calloc(n * size, sizeof(int64_t));
        self->leaf_scores = PyMem_Calloc(n * size, sizeof(int64_t));
        if (self->l_mass == NULL || self->r_mass == NULL || self->leaf_scores == NULL) {
            PyErr_NoMemory();
            failed = 1;
        }
    }
    if (failed) {
        anomaly_free_trees(self);
        return -1;
    }
    self->max_score = max_score;
    return 0;
}

/* Each node's score sum (FlatTrees.leaf_scores) from the reference masses: a walk adds r_mass << depth at each node
 * until, and including, the first whose r_mass is under River's size limit (0.1 × the window); a leaf adds its own.
 * (A walk stopped above a node's parent would have stopped at the parent: a node's mass is at most its parent's.) */
static void anomaly_leaf_scores(AnomalyCore *self) {
    Py_ssize_t size = ((Py_ssize_t)2 << self->height) - 1;
    double limit = 0.1 * (double)self->window_size;
    for (int t = 0; t < self->n_trees; t++) {
        const int64_t *mass = self->r_mass + t * size;
        int64_t *total = self->leaf_scores + t * size;
        total[0] = mass[0];
        for (int depth = 1; depth <= self->height; depth++) {
            for (Py_ssize_t i = ((Py_ssize_t)1 << depth) - 1; i < ((Py_ssize_t)2 << depth) - 1; i++) {
                Py_ssize_t parent = (i - 1) / 2;
                total[i] = total[parent] + ((double)mass[parent] < limit ? 0 : mass[i] << depth);
            }
        }
    }
}

/* x learned into the trees (River's learn_one): 1 added to the l_mass of each node on its path; when the window
 * ends, every node's r_mass becomes its l_mass and l_mass starts again at 0 */
static void anomaly_learn_point(AnomalyCore *self, const double *x) {
    Py_ssize_t inner = ((Py_ssize_t)1 << self->height) - 1, size = 2 * inner + 1, n = self->n_trees;
    for (Py_ssize_t t = 0; t < n; t++) {
        const int64_t *feature = self->feature + t * inner;
        const double *threshold = self->threshold + t * inner;
        int64_t *mass = self->l_mass + t * size;
        Py_ssize_t node = 0;
        for (int depth = 0; depth < self->height; depth++) {
            mass[node] += 1;
            node = 2 * node + 2 - (x[feature[node]] < threshold[node]);
        }
        mass[node] += 1;
    }
    if (++self->counter < self->window_size) return;
    memcpy(self->r_mass, self->l_mass, n * size * sizeof(int64_t));
    memset(self->l_mass, 0, n * size * sizeof(int64_t));
    self->counter = 0;
    anomaly_leaf_scores(self);
}

/* River's score of x (HalfSpaceTrees.score_one), once the trees have learned a window; 0.0 before */
static int anomaly_score(AnomalyCore *self, const double *x, double *score) {
    if (self->learned < self->window_size) {
        *score = 0.0;
        return 0;
    }
    Py_ssize_t inner = ((Py_ssize_t)1 << self->height) - 1, size = 2 * inner + 1;
    int64_t total = 0;
    for (Py_ssize_t t = 0; t < self->n_trees; t++) {
        const int64_t *feature = self->feature + t * inner;
        const double *threshold = self->threshold + t * inner;
        Py_ssize_t node = 0;
        for (int depth = 0; depth < self->height; depth++) {
            node = 2 * node + 2 - (x[feature[node]] < threshold[node]);
        }
        total += self->leaf_scores[t * size + node];
    }
    *score = 1 - (double)total / self->max_score;
    return 0;
}

/* The event's features, score and its user's next record (from their record now); *known: the user has one */
static int anomaly_compute(AnomalyCore *self, PyObject *event, double now, int *known, double *x, double *next,
                           double *score) {
    if (!PyTuple_Check(event) || PyTuple_GET_SIZE(event) < 7) {
        PyErr_SetString(PyExc_TypeError, "expected a GateEvent");
        return -1;
    }
    Py_ssize_t number = lru_lookup(self->index, PyTuple_GET_ITEM(event, 1));
    double state[ANOMALY_FIELDS];
    if (number == -2) return -1;
    if (number >= 0) {
        Py_buffer view;
        Py_ssize_t b;
        if (table_record(self->data, number, ANOMALY_WIDE, &view, &b) < 0) return -1;
        for (int i = 0; i < ANOMALY_WIDE; i++) state[i] = get_f64(view.buf, b + i);
        PyBuffer_Release(&view);
        if (table_fields(self->narrow, 'f', number, ANOMALY_COUNTS, &view, &b) < 0) return -1;
        for (int i = 0; i < ANOMALY_COUNTS; i++) state[ANOMALY_WIDE + i] = get_f32(view.buf, b + i);
        PyBuffer_Release(&view); /* (its stamp: not a feature's) */
    }
    *known = number >= 0;
    if (anomaly_features(self, event, now, number >= 0 ? state : NULL, x, next) < 0) return -1;
    return anomaly_score(self, x, score);
}

/* The check's result for `event` (kept for its observe): computed unless the last check was of this event (a
 * failed computation leaves the last one as it was, as in Python) */
static int anomaly_memo(AnomalyCore *self, PyObject *event, double now) {
    if (self->memo_event == event) return 0;
    double x[ANOMALY_FEATURES], next[ANOMALY_FIELDS], score;
    int known;
    if (anomaly_compute(self, event, now, &known, x, next, &score) < 0) return -1;
    memcpy(self->memo_x, x, sizeof x);
    memcpy(self->memo_next, next, sizeof next);
    self->memo_score = score;
    Py_XSETREF(self->memo_event, Py_NewRef(event));
    return 0;
}

/* Records.put(user, next), then the eviction that may be due (as the rule's _remember) */
static int anomaly_remember(AnomalyCore *self, PyObject *event, const double *next, double now) {
    PyObject *user = PyTuple_GET_ITEM(event, 1);
    Py_ssize_t number = lru_lookup(self->index, user);
    if (number == -2) return -1;
    if (number < 0) {
        number = records_add(self->index, self->data, self->narrow, self->whole, user, next, ANOMALY_WIDE,
                             ANOMALY_COUNTS, ANOMALY_STAMPS);
        if (number < 0) return -1;
    } else {
        Py_buffer view;
        Py_ssize_t b;
        int failed = move_last(self->index, number) || table_record(self->data, number, ANOMALY_WIDE, &view, &b);
        if (failed) return -1;
        for (int i = 0; i < ANOMALY_WIDE; i++) set_f64(view.buf, b + i, next[i]);
        PyBuffer_Release(&view);
        if (table_fields(self->narrow, 'f', number, ANOMALY_COUNTS, &view, &b) < 0) return -1;
        for (int i = 0; i < ANOMALY_COUNTS; i++) set_f32(view.buf, b + i, (float)next[ANOMALY_WIDE + i]);
        PyBuffer_Release(&view);
        if (table_fields(self->whole, 'i', number, ANOMALY_STAMPS, &view, &b) < 0) return -1;
        set_i32(view.buf, b, (int32_t)next[ANOMALY_WIDE + ANOMALY_COUNTS]);
        PyBuffer_Release(&view);
    }
    return evict_if_due(number, self->index, self->evict, now - self->idle_seconds, self->max_users,
                        ANOMALY_WIDE + ANOMALY_COUNTS, &self->oldest, &self->oldest_seen);
}

/* The score into the quantile: the first through the rule's stats.Quantile (which then answers get), the others
 * straight to its estimator (the same update) */
static int anomaly_update(AnomalyCore *self, double score) {
    PyObject *done = call_with_float(self->scored ? self->update : self->first_update, score);
    if (done == NULL) return -1;
    Py_DECREF(done);
    self->scored = 1;
    return 0;
}

/* *hold: the Hold of an event scored `score` above the running quantile, else NULL (the quantile has a score) */
static int anomaly_hold(AnomalyCore *self, double score, PyObject **hold) {
    *hold = NULL;
    PyObject *got = PyObject_CallNoArgs(self->get);
    if (got == NULL) return -1;
    double threshold = got == Py_None ? NAN : PyFloat_AsDouble(got);
    Py_DECREF(got);
    if (threshold == -1.0 && PyErr_Occurred()) return -1;
    if (!(score > threshold)) return 0; /* None (NAN): never */
    *hold = PyObject_CallFunction(self->hold, "dd", score, threshold);
    return *hold == NULL ? -1 : 0;
}

/* A passed event's features learned by the trees if it is the learn_every-th (passed counts it already): the first
 * by the rule's _learn too, from which River draws the trees, whose splits the core then takes */
static int anomaly_learn(AnomalyCore *self, const double *x) {
    if (self->passed % self->learn_every != 0) return 0;
    if (self->l_mass == NULL) {
        PyObject *point = Py_BuildValue("(dddddd)", x[0], x[1], x[2], x[3], x[4], x[5]);
        if (point == NULL) return -1;
        PyObject *done = PyObject_CallOneArg(self->learn, point);
        Py_DECREF(point);
        if (done == NULL) return -1;
        Py_DECREF(done);
        if (anomaly_trees(self) < 0) return -1;
    }
    anomaly_learn_point(self, x);
    self->learned += 1;
    return 0;
}

/* The n arguments (event, now[, hold]) of a method named names[n], all required */
static int anomaly_arguments(AnomalyCore *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                             const char *const *names, int n, PyObject **given, double *now) {
    if (initialised(self->index, "AnomalyCore") || gate_arguments(args, nargs, kwnames, names, n, n, given)) return -1;
    *now = PyFloat_AsDouble(given[1]);
    return *now == -1.0 && PyErr_Occurred() ? -1 : 0;
}

/* AnomalousBehaviourRule.check */
static PyObject *AnomalyCore_check(AnomalyCore *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    static const char *const names[] = {"event", "now", "check"};
    PyObject *given[2];
    double now;
    if (anomaly_arguments(self, args, nargs, kwnames, names, 2, given, &now) || anomaly_memo(self, given[0], now)) {
        return NULL;
    }
    if (self->passed < self->warmup_events || !self->scored || self->memo_next[ANOMALY_EVENTS] == 1.0) Py_RETURN_NONE;
    PyObject *hold;
    if (anomaly_hold(self, self->memo_score, &hold) < 0) return NULL;
    return hold != NULL ? hold : Py_NewRef(Py_None);
}

/* AnomalousBehaviourRule.observe */
static PyObject *AnomalyCore_observe(AnomalyCore *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    static const char *const names[] = {"event", "now", "observe"};
    PyObject *given[2];
    double now;
    if (anomaly_arguments(self, args, nargs, kwnames, names, 2, given, &now) || anomaly_memo(self, given[0], now)) {
        return NULL;
    }
    double x[ANOMALY_FEATURES], next[ANOMALY_FIELDS], score = self->memo_score;
    memcpy(x, self->memo_x, sizeof x);
    memcpy(next, self->memo_next, sizeof next);
    Py_CLEAR(self->memo_event);
    if (anomaly_remember(self, given[0], next, now) < 0) return NULL;
    self->passed += 1;
    if (self->learned >= self->window_size && next[ANOMALY_EVENTS] != 1.0 && anomaly_update(self, score) < 0) {
        return NULL;
    }
    if (anomaly_learn(self, x) < 0) return NULL;
    Py_RETURN_NONE;
}

/* AnomalousBehaviourRule.observe_held */
static PyObject *AnomalyCore_observe_held(AnomalyCore *self, PyObject *const *args, Py_ssize_t nargs,
                                          PyObject *kwnames) {
    static const char *const names[] = {"event", "now", "hold", "observe_held"};
    PyObject *given[3];
    double now;
    if (anomaly_arguments(self, args, nargs, kwnames, names, 3, given, &now) || anomaly_memo(self, given[0], now)) {
        return NULL;
    }
    double next[ANOMALY_FIELDS], score = self->memo_score;
    memcpy(next, self->memo_next, sizeof next);
    Py_CLEAR(self->memo_event);
    if (anomaly_remember(self, given[0], next, now) < 0) return NULL;
    if (self->scored && next[ANOMALY_EVENTS] != 1.0 && anomaly_update(self, score) < 0) return NULL;
    Py_RETURN_NONE;
}

/* AnomalousBehaviourRule.judge: check, then observe or observe_held */
static PyObject *AnomalyCore_judge(AnomalyCore *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    static const char *const names[] = {"event", "now", "judge"};
    PyObject *given[2];
    double now;
    if (anomaly_arguments(self, args, nargs, kwnames, names, 2, given, &now)) return NULL;
    Py_CLEAR(self->memo_event);
    double x[ANOMALY_FEATURES], next[ANOMALY_FIELDS], score;
    int known;
    if (anomaly_compute(self, given[0], now, &known, x, next, &score) < 0) return NULL;
    PyObject *hold = NULL; /* a user's first event is never held */
    if (known && self->scored && self->passed >= self->warmup_events && anomaly_hold(self, score, &hold) < 0) {
        return NULL;
    }
    if (anomaly_remember(self, given[0], next, now) < 0) {
        Py_XDECREF(hold);
        return NULL;
    }
    if (hold != NULL) { /* observe_held */
        if (self->scored && anomaly_update(self, score) < 0) {
            Py_DECREF(hold);
            return NULL;
        }
        return hold;
    }
    self->passed += 1; /* observe */
    if (known && self->learned >= self->window_size && anomaly_update(self, score) < 0) return NULL;
    if (anomaly_learn(self, x) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *AnomalyCore_get_passed(AnomalyCore *self, void *closure) { return PyLong_FromLongLong(self->passed); }

static PyObject *AnomalyCore_get_learned(AnomalyCore *self, void *closure) {
    return PyLong_FromLongLong(self->learned);
}

static PyObject *AnomalyCore_get_scored(AnomalyCore *self, void *closure) { return PyBool_FromLong(self->scored); }

static PyObject *AnomalyCore_get_masses(AnomalyCore *self, void *closure) {
    if (self->l_mass == NULL) Py_RETURN_NONE;
    Py_ssize_t bytes = (Py_ssize_t)self->n_trees * (((Py_ssize_t)2 << self->height) - 1) * (Py_ssize_t)sizeof(int64_t);
    return Py_BuildValue("(Ly#y#)", self->counter, (const char *)self->l_mass, bytes, (const char *)self->r_mass, bytes);
}

static PyObject *AnomalyCore_get_memo(AnomalyCore *self, void *closure) {
    if (self->memo_event == NULL) Py_RETURN_NONE;
    const double *x = self->memo_x, *n = self->memo_next;
    return Py_BuildValue("(O(dddddd)d(dddddd))", self->memo_event, x[0], x[1], x[2], x[3], x[4], x[5],
                         self->memo_score, n[0], n[1], n[2], n[3], n[4], n[5]);
}

static PyGetSetDef AnomalyCore_getset[] = {
    GATE_CORE_GETSET
    {"passed", (getter)AnomalyCore_get_passed, NULL, "AnomalousBehaviourRule.passed", NULL},
    {"learned", (getter)AnomalyCore_get_learned, NULL, "AnomalousBehaviourRule.learned", NULL},
    {"scored", (getter)AnomalyCore_get_scored, NULL, "AnomalousBehaviourRule._scored", NULL},
    {"masses", (getter)AnomalyCore_get_masses, NULL,
     "(counter, l_mass, r_mass) of the trees as the core learns them (int64 bytes, tree t's node i at t * (2^(height "
     "+ 1) - 1) + i, breadth first), or None before River drew them",
     NULL},
    {"memo", (getter)AnomalyCore_get_memo, NULL,
     "AnomalousBehaviourRule._memo: (event, features, score, next record) of the last check not yet observed, or None",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef AnomalyCore_methods[] = {
    {"check", (PyCFunction)(void (*)(void))AnomalyCore_check, METH_FASTCALL | METH_KEYWORDS,
     "check(event, now): AnomalousBehaviourRule.check"},
    {"observe", (PyCFunction)(void (*)(void))AnomalyCore_observe, METH_FASTCALL | METH_KEYWORDS,
     "observe(event, now): AnomalousBehaviourRule.observe"},
    {"observe_held", (PyCFunction)(void (*)(void))AnomalyCore_observe_held, METH_FASTCALL | METH_KEYWORDS,
     "observe_held(event, now, hold): AnomalousBehaviourRule.observe_held"},
    {"judge", (PyCFunction)(void (*)(void))AnomalyCore_judge, METH_FASTCALL | METH_KEYWORDS,
     "judge(event, now): AnomalousBehaviourRule.judge"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject AnomalyCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "learner._kernels.AnomalyCore",
    .tp_doc = "AnomalousBehaviourRule's check, observe, observe_held and judge on its Records table "
              "(learner.gate.behaviour)",
    .tp_basicsize = sizeof(AnomalyCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)AnomalyCore_init,
    .tp_dealloc = (destructor)AnomalyCore_dealloc,
    .tp_traverse = (traverseproc)AnomalyCore_traverse,
    .tp_clear = (inquiry)AnomalyCore_clear,
    .tp_methods = AnomalyCore_methods,
    .tp_getset = AnomalyCore_getset,
};

/* ---- the model guard's state and update (learner/gate/model_guard.py, _GuardCore the same in Python) ---- */

static PyObject *math_fsum; /* math.fsum: the exact sum the recent window's running sum is reset to */

typedef struct {
    PyObject_HEAD
    double *ring; /* the recent window's losses, oldest at `head` */
    Py_ssize_t window, head, count;
    long long reference_window, min_reference, resume_events;
    double loss_cap, degrade_ratio, degrade_margin, resume_ratio;
    double recent_sum, reference;
    long long reference_count, healthy_run, updates, pauses, resumes, onset; /* onset -1: None */
    int paused;
} GuardCore;

static void GuardCore_dealloc(GuardCore *self) {
    PyMem_Free(self->ring);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int GuardCore_init(GuardCore *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"recent_window", "reference_window", "min_reference", "degrade_ratio", "degrade_margin",
                            "resume_ratio", "resume_events", "loss_cap", NULL};
    Py_ssize_t window;
    long long reference_window, min_reference, resume_events;
    double degrade_ratio, degrade_margin, resume_ratio, loss_cap;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nLLdddLd", names, &window, &reference_window, &min_reference,
                                     &degrade_ratio, &degrade_margin, &resume_ratio, &resume_events, &loss_cap)) {
        return -1;
    }
    if (window < 1 || reference_window < 1 || resume_events < 1) {
        PyErr_SetString(PyExc_ValueError, "recent_window, reference_window and resume_events must be >= 1");
        return -1;
    }
    double *ring = PyMem_Calloc((size_t)window, sizeof(double));
    if (ring == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    PyMem_Free(self->ring);
    self->ring = ring;
    self->window = window;
    self->head = self->count = 0;
    self->reference_window = reference_window;
    self->min_reference = min_reference;
    self->resume_events = resume_events;
    self->degrade_ratio = degrade_ratio;
    self->degrade_margin = degrade_margin;
    self->resume_ratio = resume_ratio;
    self->loss_cap = loss_cap;
    self->recent_sum = self->reference = 0.0;
    self->reference_count = self->healthy_run = self->updates = self->pauses = self->resumes = 0;
    self->onset = -1;
    self->paused = 0;
    return 0;
}

static int guard_ready(GuardCore *self) {
    if (self->ring != NULL) return 0;
    PyErr_SetString(PyExc_RuntimeError, "GuardCore was not initialised");
    return -1;
}

/* The recent window's losses, oldest first */
static PyObject *GuardCore_recent_losses(GuardCore *self, PyObject *unused) {
    if (guard_ready(self)) return NULL;
    PyObject *out = PyList_New(self->count);
    for (Py_ssize_t k = 0; out != NULL && k < self->count; k++) {
        PyObject *x = PyFloat_FromDouble(self->ring[(self->head + k) % self->window]);
        if (x == NULL) Py_CLEAR(out);
        else PyList_SET_ITEM(out, k, x);
    }
    return out;
}

static PyObject *GuardCore_clear_recent(GuardCore *self, PyObject *unused) {
    if (guard_ready(self)) return NULL;
    self->head = self->count = 0;
    self->recent_sum = 0.0;
    Py_RETURN_NONE;
}

/* ModelGuard.update: the same steps in the same float operations */
static PyObject *GuardCore_update(GuardCore *self, PyObject *arg) {
    if (guard_ready(self)) return NULL;
    double loss = PyFloat_AsDouble(arg);
    if (loss == -1.0 && PyErr_Occurred()) {
        if (!PyLong_Check(arg) || !PyErr_ExceptionMatches(PyExc_OverflowError)) return NULL;
        PyErr_Clear(); /* an int beyond a double's range: capped (or floored) as Python compares it */
        int negative = PyObject_RichCompareBool(arg, Py_False, Py_LT);
        if (negative < 0) return NULL;
        loss = negative ? -INFINITY : INFINITY;
    }
    if (loss != loss) return PyBool_FromLong(self->paused); /* NaN */
    if (loss < 0.0) loss = 0.0;
    else if (loss > self->loss_cap) loss = self->loss_cap;
    long long updates = ++self->updates;
    Py_ssize_t window = self->window;
    if (self->count == window) {
        double leaving = self->ring[self->head];
        self->head = (self->head + 1) % window;
        self->count--;
        self->recent_sum -= leaving;
        if (!self->paused) {
            long long count = ++self->reference_count;
            double rate = count < self->reference_window ? 1.0 / (double)count : 1.0 / (double)self->reference_window;
            self->reference += rate * (leaving - self->reference);
        }
    }
    self->ring[(self->head + self->count) % window] = loss;
    self->count++;
    self->recent_sum += loss;
    if (updates % window == 0) { /* no rounding drift over a long-lived worker */
        PyObject *losses = GuardCore_recent_losses(self, NULL);
        PyObject *sum = losses == NULL ? NULL : PyObject_CallOneArg(math_fsum, losses);
        Py_XDECREF(losses);
        double exact = sum == NULL ? -1.0 : PyFloat_AsDouble(sum);
        Py_XDECREF(sum);
        if (sum == NULL || (exact == -1.0 && PyErr_Occurred())) return NULL;
        self->recent_sum = exact;
    }
    if (self->reference_count < self->min_reference || self->count < window) return PyBool_FromLong(self->paused);
    double current = self->recent_sum / (double)self->count;
    double reference = self->reference;
    if (!self->paused) {
        if (current > self->degrade_ratio * reference && current - reference > self->degrade_margin) {
            self->paused = 1;
            self->pauses++;
            self->healthy_run = 0;
            self->onset = updates - self->count + 1;
        }
    } else if (current <= self->resume_ratio * reference) {
        self->healthy_run++;
        if (self->healthy_run >= self->resume_events) {
            self->paused = 0;
            self->resumes++;
        }
    } else {
        self->healthy_run = 0;
    }
    return PyBool_FromLong(self->paused);
}

static PyObject *GuardCore_get_paused(GuardCore *self, void *closure) { return PyBool_FromLong(self->paused); }
static int GuardCore_set_paused(GuardCore *self, PyObject *value, void *closure) {
    int truth = value == NULL ? -1 : PyObject_IsTrue(value);
    if (truth < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "paused cannot be deleted");
        return -1;
    }
    self->paused = truth;
    return 0;
}
static PyObject *GuardCore_get_onset(GuardCore *self, void *closure) {
    if (self->onset < 0) Py_RETURN_NONE;
    return PyLong_FromLongLong(self->onset);
}
static PyObject *GuardCore_get_recent_count(GuardCore *self, void *closure) { return PyLong_FromSsize_t(self->count); }

static PyGetSetDef GuardCore_getset[] = {
    {"paused", (getter)GuardCore_get_paused, (setter)GuardCore_set_paused, "learning is paused", NULL},
    {"onset", (getter)GuardCore_get_onset, NULL, "the first update of the window that triggered the latest pause", NULL},
    {"recent_count", (getter)GuardCore_get_recent_count, NULL, "losses in the recent window", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef GuardCore_members[] = {
    {"recent_sum", T_DOUBLE, offsetof(GuardCore, recent_sum), READONLY, "sum of the recent window's losses"},
    {"reference", T_DOUBLE, offsetof(GuardCore, reference), 0, "the reference loss"},
    {"reference_count", T_LONGLONG, offsetof(GuardCore, reference_count), 0, "losses the reference holds"},
    {"healthy_run", T_LONGLONG, offsetof(GuardCore, healthy_run), 0, "consecutive healthy losses while paused"},
    {"updates", T_LONGLONG, offsetof(GuardCore, updates), READONLY, "losses given to update"},
    {"pauses", T_LONGLONG, offsetof(GuardCore, pauses), READONLY, "times learning was paused"},
    {"resumes", T_LONGLONG, offsetof(GuardCore, resumes), READONLY, "times it resumed by itself"},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef GuardCore_methods[] = {
    {"update", (PyCFunction)GuardCore_update, METH_O, "update(loss) -> paused: ModelGuard.update"},
    {"recent_losses", (PyCFunction)GuardCore_recent_losses, METH_NOARGS, "the recent window's losses, oldest first"},
    {"clear_recent", (PyCFunction)GuardCore_clear_recent, METH_NOARGS, "empty the recent window"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject GuardCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "learner._kernels.GuardCore",
    .tp_doc = "ModelGuard's state and update (learner.gate.model_guard)",
    .tp_basicsize = sizeof(GuardCore),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)GuardCore_init,
    .tp_dealloc = (destructor)GuardCore_dealloc,
    .tp_methods = GuardCore_methods,
    .tp_members = GuardCore_members,
    .tp_getset = GuardCore_getset,
};

/* ---- the gate's loops: QualityGate.check_chunk's per-event loop and the worker's views of its events ---- */

/* Attribute names, interned once (PyInit__kernels) */
static PyObject *name_event_id, *name_user_id, *name_item_id, *name_type, *name_ts_seconds, *name_watch_seconds,
    *name_item_duration_seconds, *name_reason;

static PyObject *name_ts, *name_utcoffset;
static PyObject *name_context, *name_rec_id, *name_last_loss, *name_learn, *name_add; /* (learn_events) */
static PyObject *kwnames_ts; /* ("ts",): learn_events' calls of learn(..., ts=...) */
static PyObject *datetime_timestamp; /* datetime.datetime.timestamp (PyInit__kernels) */

/* Days from 0001-01-01 (day 1) to year-month-day, as CPython's datetime counts them (proleptic Gregorian). */
static int64_t ordinal_day(int year, int month, int day) {
    static const int before_month[13] = {0, 0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334};
    int64_t y = year - 1;
    int64_t days = y * 365 + y / 4 - y / 100 + y / 400 + before_month[month] + day;
    if (month > 2 && year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)) days += 1;
    return days;
}

/* datetime.timestamp(dt) of an aware datetime, the same float: its whole microseconds since 1970-01-01 UTC, divided
 * by 10**6 (what CPython computes, exactly, while they fit a double's 53 bits). A naive datetime, an offset that is
 * not a timedelta within a day, or one past 2**53 microseconds (after the year 2255) gets the method itself (of
 * datetime, as for any datetime): its result or its error. About 0.1 us where pydantic's timezone object makes the
 * method cost ~0.8 us. */
static PyObject *aware_timestamp(PyObject *dt) {
    if (!PyDateTime_Check(dt)) {
        PyErr_Format(PyExc_TypeError, "timestamp: a datetime, not %.100s", Py_TYPE(dt)->tp_name);
        return NULL;
    }
    PyObject *tz = PyDateTime_DATE_GET_TZINFO(dt);
    if (tz != Py_None) {
        PyObject *offset = PyObject_CallMethodOneArg(tz, name_utcoffset, dt);
        if (offset == NULL) return NULL;
        if (PyDelta_CheckExact(offset)) {
            int64_t days = PyDateTime_DELTA_GET_DAYS(offset);
            int64_t off_us = (days * 86400 + PyDateTime_DELTA_GET_SECONDS(offset)) * 1000000 +
                             PyDateTime_DELTA_GET_MICROSECONDS(offset);
            Py_DECREF(offset);
            const int64_t day_us = INT64_C(86400000000), limit = INT64_C(1) << 53;
            if (off_us > -day_us && off_us < day_us) {
                int64_t days_since = ordinal_day(PyDateTime_GET_YEAR(dt), PyDateTime_GET_MONTH(dt),
                                                 PyDateTime_GET_DAY(dt)) - 719163; /* 1970-01-01 is day 719163 */
                int64_t us = (days_since * 86400 + PyDateTime_DATE_GET_HOUR(dt) * 3600 +
                              PyDateTime_DATE_GET_MINUTE(dt) * 60 + PyDateTime_DATE_GET_SECOND(dt)) * 1000000 +
                             PyDateTime_DATE_GET_MICROSECOND(dt) - off_us;
                if (us >= -limit && us <= limit) return PyFloat_FromDouble((double)us / 1e6);
            }
        } else {
            Py_DECREF(offset);
        }
    }
    return PyObject_CallOneArg(datetime_timestamp, dt);
}

/* timestamp(dt) -> float: datetime.timestamp(dt), faster for an aware datetime (recstream.events.Event.ts_seconds) */
static PyObject *timestamp(PyObject *module, PyObject *dt) { return aware_timestamp(dt); }

/* An event's attribute for its view: for an event of `event_type` (recstream.events.Event: a pydantic model whose
 * fields are in its __dict__, and whose ts_seconds is ts.timestamp() kept in its __dict__ by its first read) read
 * from its __dict__, without the type's __getattr__ hook or Python's descriptor; ts_seconds computed by
 * aware_timestamp and kept there as Event.ts_seconds keeps it. Anything else (another type, a field not in the
 * dict): getattr. */
static PyObject *view_field(PyObject *event, PyObject *dict, PyObject *name) {
    if (dict != NULL) {
        PyObject *value = PyDict_GetItemWithError(dict, name);
        if (value != NULL) return Py_NewRef(value);
        if (PyErr_Occurred()) return NULL;
        if (name == name_ts_seconds) {
            PyObject *ts = PyDict_GetItemWithError(dict, name_ts);
            if (ts == NULL && PyErr_Occurred()) return NULL;
            if (ts != NULL) {
                Py_INCREF(ts);
                value = aware_timestamp(ts);
                Py_DECREF(ts);
                if (value != NULL && PyDict_SetItem(dict, name_ts_seconds, value) < 0) Py_CLEAR(value);
                return value;
            }
        }
    }
    return PyObject_GetAttr(event, name);
}

/* counts[hold.reason] += 1 (from 0) */
static int count_hold(PyObject *counts, PyObject *hold) {
    PyObject *reason = PyObject_GetAttr(hold, name_reason);
    if (reason == NULL) return -1;
    PyObject *count = PyDict_GetItemWithError(counts, reason);
    PyObject *next = NULL;
    if (count != NULL) {
        PyObject *one = PyLong_FromLong(1);
        next = one == NULL ? NULL : PyNumber_Add(count, one);
        Py_XDECREF(one);
    } else if (!PyErr_Occurred()) {
        next = PyLong_FromLong(1);
    }
    int failed = next == NULL || PyDict_SetItem(counts, reason, next) < 0;
    Py_XDECREF(next);
    Py_DECREF(reason);
    return failed ? -1 : 0;
}

/* The rules a row is checked by: `checks`, or for a row a stateless rule held (early[row] = (position, hold)) the
 * rules before that one (before[position]) and that hold. Returns a new reference to the list, *hold a new reference
 * or NULL. */
static PyObject *rules_for_row(PyObject *checks, PyObject *early, PyObject *before, Py_ssize_t row, PyObject **hold) {
    *hold = NULL;
    if (PyDict_GET_SIZE(early) == 0) return Py_NewRef(checks);
    PyObject *key = PyLong_FromSsize_t(row);
    if (key == NULL) return NULL;
    PyObject *found = PyDict_GetItemWithError(early, key);
    Py_DECREF(key);
    if (found == NULL) return PyErr_Occurred() ? NULL : Py_NewRef(checks);
    if (!PyTuple_Check(found) || PyTuple_GET_SIZE(found) != 2) {
        PyErr_SetString(PyExc_TypeError, "gate_loop: early[row] must be a (position, hold) tuple");
        return NULL;
    }
    Py_INCREF(found); /* (the lookup below may run a key's __eq__) */
    PyObject *rules = PyDict_GetItemWithError(before, PyTuple_GET_ITEM(found, 0));
    if (rules == NULL || !PyList_Check(rules)) {
        if (rules != NULL) PyErr_SetString(PyExc_TypeError, "gate_loop: before[position] must be a list");
        else if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, PyTuple_GET_ITEM(found, 0));
        Py_DECREF(found);
        return NULL;
    }
    PyObject *held = PyTuple_GET_ITEM(found, 1);
    *hold = held == Py_None ? NULL : Py_NewRef(held); /* a hold of None holds nothing, as in _loop */
    Py_DECREF(found);
    return Py_NewRef(rules);
}

/* One event through the rules that keep state: the first of `rules` ((check, on_hold) tuples) that holds it, else
 * `judge` (if not None and no stateless rule held it); an event no rule holds is observed by every one of
 * `observers`. Returns its verdict (a new reference: Py_None or the hold), NULL on error. */
static PyObject *judge_row(PyObject *event, PyObject *now, PyObject *rules, PyObject *hold, PyObject *judge,
                           PyObject *observers) {
    PyObject *stack[3] = {event, now, NULL};
    for (Py_ssize_t j = 0; j < PyList_GET_SIZE(rules); j++) {
        PyObject *pair = PyList_GET_ITEM(rules, j);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "gate_loop: the rules must be (check, on_hold) tuples");
            return NULL;
        }
        Py_INCREF(pair); /* a call below may drop the list's reference */
        PyObject *found = PyObject_Vectorcall(PyTuple_GET_ITEM(pair, 0), stack, 2, NULL);
        if (found == NULL) {
            Py_DECREF(pair);
            return NULL;
        }
        if (found == Py_None) {
            Py_DECREF(found);
            Py_DECREF(pair);
            continue;
        }
        PyObject *on_hold = PyTuple_GET_ITEM(pair, 1);
        if (on_hold != Py_None) {
            stack[2] = found;
            PyObject *done = PyObject_Vectorcall(on_hold, stack, 3, NULL);
            if (done == NULL) {
                Py_DECREF(found);
                Py_DECREF(pair);
                return NULL;
            }
            Py_DECREF(done);
        }
        Py_DECREF(pair);
        return found;
    }
    if (hold != NULL) return Py_NewRef(hold);
    if (judge != Py_None) {
        PyObject *found = PyObject_Vectorcall(judge, stack, 2, NULL);
        if (found == NULL || found != Py_None) return found;
        Py_DECREF(found);
    }
    for (Py_ssize_t j = 0; j < PyList_GET_SIZE(observers); j++) {
        PyObject *observe = Py_NewRef(PyList_GET_ITEM(observers, j));
        PyObject *done = PyObject_Vectorcall(observe, stack, 2, NULL);
        Py_DECREF(observe);
        if (done == NULL) return NULL;
        Py_DECREF(done);
    }
    Py_RETURN_NONE;
}

/* gate_loop(events, now, checks, early, before, judge, observers, counts, verdicts): QualityGate.check_chunk's loop
 * over `events` (learner/gate/gate.py, _Plan), appending each verdict to `verdicts` and counting each hold in
 * `counts` by reason. Raises what a rule raises, with the verdicts of the events before it appended. Takes the plan
 * as _Plan makes it: lists of (check, on_hold) tuples, early[row] a (position, hold) tuple, plain dicts. */
static PyObject *gate_loop(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError,
                        "gate_loop(events, now, checks, early, before, judge, observers, counts, verdicts)");
        return NULL;
    }
    PyObject *events = args[0], *now = args[1], *checks = args[2], *early = args[3], *before = args[4];
    PyObject *judge = args[5], *observers = args[6], *counts = args[7], *verdicts = args[8];
    /* exact dicts: the C calls below would skip a subclass's own __getitem__ and __setitem__ */
    if (!PyList_Check(events) || !PyList_Check(checks) || !PyDict_CheckExact(early) || !PyDict_CheckExact(before) ||
        !PyList_Check(observers) || !PyDict_CheckExact(counts) || !PyList_Check(verdicts)) {
        PyErr_SetString(PyExc_TypeError, "gate_loop: events, checks, observers and verdicts are lists; early, "
                                         "before and counts dicts");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(events); i++) {
        PyObject *event = Py_NewRef(PyList_GET_ITEM(events, i));
        PyObject *hold;
        PyObject *rules = rules_for_row(checks, early, before, i, &hold);
        PyObject *verdict = rules == NULL ? NULL : judge_row(event, now, rules, hold, judge, observers);
        Py_XDECREF(rules);
        Py_XDECREF(hold);
        Py_DECREF(event);
        if (verdict == NULL) return NULL;
        if ((verdict != Py_None && count_hold(counts, verdict) < 0) || PyList_Append(verdicts, verdict) < 0) {
            Py_DECREF(verdict);
            return NULL;
        }
        Py_DECREF(verdict);
    }
    Py_RETURN_NONE;
}

/* gate_views(chunk, known, pending, view_type, event_type) -> (views, judged): the worker's view of each event of
 * `chunk` (a list of recstream.events.Decoded) to judge: view_type(event_id, user_id, item_id, type, ts_seconds,
 * watch_seconds, item_duration_seconds) of its event, or None for an item without an event or one whose event_id is
 * in `known` or `pending`; `judged` the views alone, in order (stream/processor.py, _views). An event of
 * `event_type` (recstream.events.Event) is read from its __dict__ (view_field). */
static PyObject *gate_views(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "gate_views(chunk, known, pending, view_type, event_type)");
        return NULL;
    }
    PyObject *chunk = args[0], *known = args[1], *pending = args[2], *view_type = args[3], *event_type = args[4];
    if (!PyList_Check(chunk) || !PyType_Check(view_type) ||
        !PyType_IsSubtype((PyTypeObject *)view_type, &PyTuple_Type) || !PyType_Check(event_type)) {
        PyErr_SetString(PyExc_TypeError, "gate_views: chunk must be a list, view_type a tuple type, event_type a type");
        return NULL;
    }
    PyObject *const fields[7] = {name_event_id, name_user_id,       name_item_id,
                                 name_type,     name_ts_seconds,    name_watch_seconds,
                                 name_item_duration_seconds};
    /* a copy of the chunk: reading an attribute may run Python code, which could change the list */
    PyObject *items = PySequence_Tuple(chunk);
    if (items == NULL) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    PyObject *views = PyList_New(n);
    PyObject *judged = views == NULL ? NULL : PyList_New(0);
    if (judged == NULL) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) PyList_SET_ITEM(views, i, Py_NewRef(Py_None)); /* no NULL item is ever seen */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *decoded = PyTuple_GET_ITEM(items, i);
        if (!PyTuple_Check(decoded) || PyTuple_GET_SIZE(decoded) < 1) {
            PyErr_SetString(PyExc_TypeError, "gate_views: the chunk's items must be Decoded tuples");
            goto fail;
        }
        PyObject *event = PyTuple_GET_ITEM(decoded, 0);
        if (event == Py_None) continue;
        Py_INCREF(event);
        PyObject *dict = NULL;
        if ((PyObject *)Py_TYPE(event) == event_type) {
            dict = PyObject_GenericGetDict(event, NULL);
            if (dict == NULL) {
                Py_DECREF(event);
                goto fail;
            }
        }
        PyObject *values[7];
        int got = 0, skip = 0;
        for (; got < 7; got++) {
            values[got] = view_field(event, dict, fields[got]);
            if (values[got] == NULL) break;
            if (got == 0) {
                int in = PySequence_Contains(known, values[0]);
                if (in == 0) in = PySequence_Contains(pending, values[0]);
                if (in != 0) {
                    got++;
                    skip = in > 0 ? 1 : -1;
                    break;
                }
            }
        }
        Py_XDECREF(dict);
        Py_DECREF(event);
        PyObject *view = NULL;
        if (got == 7) {
            view = ((PyTypeObject *)view_type)->tp_alloc((PyTypeObject *)view_type, 7);
            if (view != NULL) {
                for (int k = 0; k < 7; k++) PyTuple_SET_ITEM(view, k, values[k]);
                got = 0; /* the view holds them */
            }
        }
        for (int k = 0; k < got; k++) Py_DECREF(values[k]);
        if (skip > 0) continue;
        if (view == NULL) goto fail;
        if (PyList_Append(judged, view) < 0) {
            Py_DECREF(view);
            goto fail;
        }
        PyList_SetItem(views, i, view); /* steals view, drops the None */
    }
    PyObject *both = PyTuple_Pack(2, views, judged);
    Py_DECREF(items);
    Py_DECREF(views);
    Py_DECREF(judged);
    return both;
fail:
    Py_DECREF(items);
    Py_XDECREF(views);
    Py_XDECREF(judged);
    return NULL;
}

/* gate_rows(events, rule, now, a, b) -> [row, ...] | None: the rows of `events` (GateEvent tuples) that a stateless
 * rule of the quality gate holds, by the same comparisons on the same floats as its holds() (learner/gate/):
 *   rule 0, future_timestamp:        ts - now > a
 *   rule 1, too_late:                now - ts > a
 *   rule 2, watch_exceeds_duration:  watch and duration both given, watch > a * duration + b
 *   rule 3, skip_after_full_watch:   type "skip", watch and duration both given, watch >= a * duration
 * None when a field it reads is not a float (or None where that is allowed), or the type not a str: Python then
 * judges the chunk, with Python's own comparisons (an int's, say, which are exact). */
static PyObject *gate_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyList_Check(args[0]) || !PyLong_Check(args[1]) || !PyFloat_Check(args[2]) ||
        !PyFloat_Check(args[3]) || !PyFloat_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError, "gate_rows(events: list, rule: int, now: float, a: float, b: float)");
        return NULL;
    }
    long rule = PyLong_AsLong(args[1]);
    if (rule < 0 || rule > 3) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "gate_rows: rule must be 0, 1, 2 or 3");
        return NULL;
    }
    double now = PyFloat_AS_DOUBLE(args[2]), a = PyFloat_AS_DOUBLE(args[3]), b = PyFloat_AS_DOUBLE(args[4]);
    PyObject *events = args[0], *rows = PyList_New(0);
    if (rows == NULL) return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(events); i++) {
        PyObject *event = PyList_GET_ITEM(events, i);
        if (!PyTuple_Check(event) || PyTuple_GET_SIZE(event) < 7) goto python;
        int held;
        if (rule <= 1) {
            PyObject *ts = PyTuple_GET_ITEM(event, 4);
            if (!PyFloat_CheckExact(ts)) goto python;
            held = rule == 0 ? PyFloat_AS_DOUBLE(ts) - now > a : now - PyFloat_AS_DOUBLE(ts) > a;
        } else {
            PyObject *watch = PyTuple_GET_ITEM(event, 5), *duration = PyTuple_GET_ITEM(event, 6);
            if (rule == 3) {
                PyObject *type = PyTuple_GET_ITEM(event, 3);
                if (!PyUnicode_CheckExact(type)) goto python;
                if (PyUnicode_CompareWithASCIIString(type, "skip") != 0) continue;
            }
            if (watch == Py_None || duration == Py_None) continue;
            if (!PyFloat_CheckExact(watch) || !PyFloat_CheckExact(duration)) goto python;
            double w = PyFloat_AS_DOUBLE(watch), d = PyFloat_AS_DOUBLE(duration);
            held = rule == 2 ? w > a * d + b : w >= a * d;
        }
        if (held) {
            PyObject *row = PyLong_FromSsize_t(i);
            if (row == NULL || PyList_Append(rows, row) < 0) {
                Py_XDECREF(row);
                Py_DECREF(rows);
                return NULL;
            }
            Py_DECREF(row);
        }
    }
    return rows;
python:
    Py_DECREF(rows);
    Py_RETURN_NONE;
}

/* Whether s[0:n] is one JSON object standing alone, by its brackets: after JSON whitespace, a '{' whose match (outside
 * strings, a backslash in a string escaping the byte after it) is the last byte before JSON whitespace. Valid JSON
 * text is bracketed this way, so in a JSON array of such values joined by commas each element is one value, as it
 * is alone: the array is valid JSON exactly when each value is. What else it holds (invalid JSON within, brackets
 * of the other kind crossed) is left to the parser, which then refuses the array. */
static int json_object_alone(const char *text, Py_ssize_t n) {
    const unsigned char *s = (const unsigned char *)text;
    Py_ssize_t i = 0, j = n;
    while (i < j && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
    while (j > i && (s[j - 1] == ' ' || s[j - 1] == '\t' || s[j - 1] == '\n' || s[j - 1] == '\r')) j--;
    if (j - i < 2 || s[i] != '{' || s[j - 1] != '}') return 0;
    Py_ssize_t depth = 0;
    for (Py_ssize_t k = i; k < j; k++) {
        unsigned char c = s[k];
        if (c == '"') {
            const unsigned char *end = memchr(s + k + 1, '"', (size_t)(j - k - 1));
            if (end == NULL) return 0; /* the string does not end within the value */
            if (memchr(s + k + 1, '\\', (size_t)(end - s - k - 1)) == NULL) {
                k = end - s; /* (the usual string: no escape in it) */
                continue;
            }
            for (k++; k < j && s[k] != '"'; k++) /* (one that does not end takes the last '}': depth stays > 0) */
                if (s[k] == '\\') k++;
        } else if ((c | 0x20) == '{') { /* '{' or '[' */
            depth++;
        } else if ((c | 0x20) == '}') { /* '}' or ']' */
            if (--depth <= 0 && k != j - 1) return 0; /* closed before its end, or more closed than opened */
        }
    }
    return depth == 0;
}

/* json_objects(values) -> bytes | None: the JSON array of `values` (bytes), "[v0,v1,...]", when each is one JSON
 * object standing alone (json_object_alone); None when one is not (a list, a value cut short, not bytes). */
static PyObject *json_objects(PyObject *module, PyObject *values) {
    if (!PyList_Check(values)) {
        PyErr_SetString(PyExc_TypeError, "json_objects(values: list)");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(values), total = count ? count + 1 : 2;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *value = PyList_GET_ITEM(values, i);
        if (!PyBytes_CheckExact(value) || !json_object_alone(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value)))
            Py_RETURN_NONE;
        total += PyBytes_GET_SIZE(value);
    }
    PyObject *joined = PyBytes_FromStringAndSize(NULL, total);
    if (joined == NULL) return NULL;
    char *out = PyBytes_AS_STRING(joined);
    *out++ = '[';
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *value = PyList_GET_ITEM(values, i);
        if (i) *out++ = ',';
        memcpy(out, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
        out += PyBytes_GET_SIZE(value);
    }
    *out = ']';
    return joined;
}

/* learn_events(chunk, verdicts, start, known, event_ids, seen, lags, learn, positive_types, challengers, hit_every,
 *              sample_every, positives, guard_update, learner, clock, event_type, recommended)
 *     -> (stop, positives, learned, pause_at, error)
 *
 * EventProcessor._handle_events' loop over the events it learns plainly (stream/processor.py), from chunk[start]:
 * for each event that passed the gate (its verdict None), is no duplicate (its id in neither `known` nor
 * `event_ids`) and is an `event_type` (recstream.events.Event: read from its __dict__, as gate_views reads it), it
 * does what that loop does: now = clock(); a positive (its type in `positive_types`) counted; learn(user, item,
 * type, watch_seconds, item_duration_seconds, ts=ts_seconds), and each of `challengers` (learners) learns it too;
 * its id added to `event_ids`, its item to seen[user] (a defaultdict(set)); recommended(type) for an event whose
 * context names a str rec_id; now - ts appended to `lags`; learner.last_loss, when not None, given to
 * `guard_update` (None: no guard).
 *
 * It stops at the first event that is not for it, or a positive at which a hit sample is due (its count, plus one,
 * a multiple of `hit_every`, or of `sample_every` when that is not 0): `stop` is that event's index (the caller
 * handles it: nothing of it was done here), len(chunk) once every event is learned. When the guard says to pause
 * (guard_update returned true), it stops after that event, `pause_at` its `now` (else None). `positives` is the
 * count after the events done, `learned` how many were learned. An exception raised by a call is not raised but
 * returned as `error`, `stop` the event it was raised at (its positive counted, as the loop counts it before
 * learning): the caller raises it once it has taken the counts. */
static PyObject *learn_events(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 18) {
        PyErr_SetString(PyExc_TypeError,
                        "learn_events(chunk, verdicts, start, known, event_ids, seen, lags, learn, positive_types, "
                        "challengers, hit_every, sample_every, positives, guard_update, learner, clock, event_type, "
                        "recommended)");
        return NULL;
    }
    PyObject *chunk = args[0], *verdicts = args[1], *known = args[3], *event_ids = args[4], *seen = args[5];
    PyObject *lags = args[6], *learn = args[7], *positive_types = args[8], *challengers = args[9];
    PyObject *guard_update = args[13], *learner = args[14], *clock = args[15], *event_type = args[16];
    PyObject *recommended = args[17];
    Py_ssize_t start = PyLong_AsSsize_t(args[2]);
    long long hit_every = PyLong_AsLongLong(args[10]), sample_every = PyLong_AsLongLong(args[11]);
    long long positives = PyLong_AsLongLong(args[12]);
    if (PyErr_Occurred()) return NULL;
    /* exact types (a subclass's own methods would be skipped by the C calls below), but for seen: a defaultdict */
    if (!PyList_CheckExact(chunk) || !PyList_CheckExact(verdicts) || !PyAnySet_CheckExact(known) ||
        !PySet_CheckExact(event_ids) || !PyDict_Check(seen) || !PyList_CheckExact(lags) ||
        !PyTuple_Check(challengers) || !PyType_Check(event_type)) {
        PyErr_SetString(PyExc_TypeError, "learn_events: chunk, verdicts and lags must be lists, known and event_ids "
                                         "sets, seen a dict, challengers a tuple, event_type a type");
        return NULL;
    }
    if (PyList_GET_SIZE(verdicts) != PyList_GET_SIZE(chunk)) {
        PyErr_SetString(PyExc_ValueError, "learn_events: a verdict for each event of the chunk");
        return NULL;
    }
    if (hit_every <= 0 || sample_every < 0 || start < 0) {
        PyErr_SetString(PyExc_ValueError, "learn_events: hit_every > 0, sample_every >= 0, start >= 0");
        return NULL;
    }
    Py_ssize_t i = start, learned = 0;
    PyObject *pause_at = NULL, *error = NULL, *kwnames = kwnames_ts;
    for (; i < PyList_GET_SIZE(chunk) && i < PyList_GET_SIZE(verdicts); i++) {
        if (PyList_GET_ITEM(verdicts, i) != Py_None) break;
        PyObject *decoded = PyList_GET_ITEM(chunk, i);
        if (!PyTuple_Check(decoded) || PyTuple_GET_SIZE(decoded) < 1) break;
        PyObject *event = PyTuple_GET_ITEM(decoded, 0);
        if ((PyObject *)Py_TYPE(event) != event_type) break; /* (None among them: not an event) */
        Py_INCREF(event);
        PyObject *dict = PyObject_GenericGetDict(event, NULL);
        if (dict == NULL) { /* (none for an Event): the caller's loop takes it */
            PyErr_Clear();
            Py_DECREF(event);
            break;
        }
        PyObject *f[8] = {NULL}; /* event_id, user, item, type, watch, duration, ts, context */
        PyObject *now = NULL;
        int stop = 0, failed = 0;
        {
            /* the fields first (a missing one: the caller's loop reads it, and raises as it would) */
            PyObject *const names[6] = {name_event_id, name_user_id, name_item_id, name_type, name_watch_seconds,
                                        name_item_duration_seconds};
            for (int k = 0; k < 6 && !stop; k++) {
                PyObject *value = PyDict_GetItemWithError(dict, names[k]);
                if (value == NULL) {
                    failed = PyErr_Occurred() != NULL;
                    stop = 1;
                } else {
                    f[k] = Py_NewRef(value);
                }
            }
            PyObject *context = stop ? NULL : PyDict_GetItemWithError(dict, name_context);
            if (!stop && context == NULL) {
                failed = PyErr_Occurred() != NULL;
                stop = 1;
            } else if (!stop) {
                f[7] = Py_NewRef(context);
                if (!PyDict_CheckExact(context)) stop = 1;
            }
        }
        if (!failed && !stop) {
            int in = PySet_Contains(known, f[0]);
            if (in == 0) in = PySet_Contains(event_ids, f[0]);
            if (in < 0) failed = 1;
            else if (in > 0) stop = 1;
        }
        int positive = 0;
        if (!failed && !stop) {
            positive = PySequence_Contains(positive_types, f[3]);
            if (positive < 0) failed = 1;
            else if (positive && ((positives + 1) % hit_every == 0 || (sample_every && (positives + 1) % sample_every == 0)))
                stop = 1; /* a hit sample is due: the caller's loop takes this one */
        }
        if (stop && !failed) {
            for (int k = 0; k < 8; k++) Py_XDECREF(f[k]);
            Py_XDECREF(dict);
            Py_DECREF(event);
            break;
        }
        if (!failed) {
            now = PyObject_CallNoArgs(clock);
            failed = now == NULL;
        }
        if (!failed) {
            f[6] = view_field(event, dict, name_ts_seconds);
            failed = f[6] == NULL;
        }
        if (!failed) {
            if (positive) positives++;
            PyObject *call[6] = {f[1], f[2], f[3], f[4], f[5], f[6]};
            PyObject *done = PyObject_Vectorcall(learn, call, 5, kwnames);
            failed = done == NULL;
            Py_XDECREF(done);
        }
        /* the champion learned it: recorded now, so that a challenger failing below does not have the record's retry
           teach the champion the event again */
        if (!failed) failed = PySet_Add(event_ids, f[0]) < 0;
        if (!failed) {
            PyObject *items = PyObject_GetItem(seen, f[1]); /* a defaultdict makes the user's set */
            if (items == NULL) {
                failed = 1;
            } else {
                if (PySet_CheckExact(items)) {
                    failed = PySet_Add(items, f[2]) < 0;
                } else {
                    PyObject *done = PyObject_CallMethodOneArg(items, name_add, f[2]);
                    failed = done == NULL;
                    Py_XDECREF(done);
                }
                Py_DECREF(items);
            }
        }
        if (!failed) learned++;
        for (Py_ssize_t c = 0; !failed && c < PyTuple_GET_SIZE(challengers); c++) {
            PyObject *method[7] = {PyTuple_GET_ITEM(challengers, c), f[1], f[2], f[3], f[4], f[5], f[6]};
            PyObject *done = PyObject_VectorcallMethod(name_learn, method, 6, kwnames);
            failed = done == NULL;
            Py_XDECREF(done);
        }
        if (!failed && PyDict_GET_SIZE(f[7]) > 0) {
            PyObject *rec = PyDict_GetItemWithError(f[7], name_rec_id);
            if (rec == NULL) {
                failed = PyErr_Occurred() != NULL;
            } else if (PyUnicode_Check(rec)) {
                PyObject *done = PyObject_CallOneArg(recommended, f[3]);
                failed = done == NULL;
                Py_XDECREF(done);
            }
        }
        if (!failed) {
            PyObject *lag = PyNumber_Subtract(now, f[6]);
            failed = lag == NULL || PyList_Append(lags, lag) < 0;
            Py_XDECREF(lag);
        }
        int pause = 0;
        if (!failed) {
            PyObject *loss = PyObject_GetAttr(learner, name_last_loss);
            if (loss == NULL) {
                failed = 1;
            } else {
                if (loss != Py_None && guard_update != Py_None) {
                    PyObject *paused = PyObject_CallOneArg(guard_update, loss);
                    pause = paused == NULL ? -1 : PyObject_IsTrue(paused);
                    Py_XDECREF(paused);
                    failed = pause < 0;
                }
                Py_DECREF(loss);
            }
        }
        if (!failed && pause > 0) pause_at = Py_NewRef(now);
        for (int k = 0; k < 8; k++) Py_XDECREF(f[k]);
        Py_XDECREF(now);
        Py_XDECREF(dict);
        Py_DECREF(event);
        if (failed) {
            PyObject *type, *value, *traceback;
            PyErr_Fetch(&type, &value, &traceback);
            if (type == NULL) { /* (every step that fails sets one) */
                PyErr_SetString(PyExc_SystemError, "learn_events: a step failed without an exception");
                PyErr_Fetch(&type, &value, &traceback);
            }
            PyErr_NormalizeException(&type, &value, &traceback);
            if (value != NULL && traceback != NULL) PyException_SetTraceback(value, traceback);
            Py_XDECREF(type);
            Py_XDECREF(traceback);
            error = value != NULL ? value : Py_NewRef(PyExc_SystemError); /* (raised as the class: never None) */
            break;
        }
        if (pause_at != NULL) {
            i++;
            break;
        }
    }
    PyObject *result = Py_BuildValue("nLnOO", i, positives, learned, pause_at == NULL ? Py_None : pause_at,
                                     error == NULL ? Py_None : error);
    Py_XDECREF(pause_at);
    Py_XDECREF(error);
    return result;
}

/* write_histories(rows, users, items, weights, window) -> None
 *
 * UserHistories._write: for each user u of users (int64), rows[u] (a dict: item row -> weight, oldest first) written
 * to row u of items (int32) and weights (float64), C-contiguous (users, window) arrays: its keys and values in the
 * dict's order, the rest of the row -1 and 0. The same values numpy's fromiter over the dicts gives, without a Python
 * step per remembered item: 5.3% of the worker's samples on the grown bench model went there. Everything is checked
 * before anything is written (a user outside the arrays or the list, a row that is not a dict or holds more than
 * window entries, a key that is not an int within int32, a weight that is not a float or an int): then nothing is. */
static int history_entry(PyObject *key, PyObject *value, int32_t *row, double *weight) {
    if (!PyLong_Check(key) || !(PyFloat_Check(value) || PyLong_Check(value))) {
        PyErr_SetString(PyExc_TypeError, "write_histories: a history's keys are int item rows, its values float");
        return -1;
    }
    long long j = PyLong_AsLongLong(key);
    if (j == -1 && PyErr_Occurred()) return -1;
    if (j < INT32_MIN || j > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "write_histories: an item row past int32");
        return -1;
    }
    double w = PyFloat_AsDouble(value);
    if (w == -1.0 && PyErr_Occurred()) return -1;
    *row = (int32_t)j;
    *weight = w;
    return 0;
}

static PyObject *write_histories(PyObject *self, PyObject *args) {
    PyObject *rows, *objs[3];
    Py_ssize_t window;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!OOOn", &PyList_Type, &rows, &objs[0], &objs[1], &objs[2], &window)) return NULL;
    static const char *const names[] = {"users", "items", "weights"};
    Py_buffer views[3];
    if (get_buffers(objs, views, 3, names, "qid", 1) < 0) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = views[0].len / 8, cells = views[1].len / 4;
    if (window <= 0 || cells % window != 0 || views[2].len / 8 != cells) {
        PyErr_SetString(PyExc_ValueError, "write_histories: items and weights are not (users, window) alike");
        goto done;
    }
    Py_ssize_t n_rows = cells / window;
    for (int pass = 0; pass < 2; pass++) { /* 0: check everything; 1: write */
        for (Py_ssize_t k = 0; k < n; k++) {
            int64_t u = get_i64(views[0].buf, k);
            if (pass == 0 && (u < 0 || u >= n_rows || u >= PyList_GET_SIZE(rows))) {
                PyErr_SetString(PyExc_IndexError, "write_histories: a user outside the arrays or the rows");
                goto done;
            }
            PyObject *history = PyList_GET_ITEM(rows, u);
            if (pass == 0 && (!PyDict_Check(history) || PyDict_GET_SIZE(history) > window)) {
                PyErr_SetString(PyExc_ValueError, "write_histories: a user's row is not a dict of at most window items");
                goto done;
            }
            int32_t *items = (int32_t *)views[1].buf + u * window;
            double *weights = (double *)views[2].buf + u * window;
            int32_t j;
            double w;
            Py_ssize_t at = 0, slot = 0;
            PyObject *key, *value;
            while (PyDict_Next(history, &at, &key, &value)) {
                if (history_entry(key, value, &j, &w) < 0) goto done; /* (pass 1: checked in pass 0) */
                if (pass == 1) {
                    items[slot] = j;
                    weights[slot] = w;
                }
                slot++;
            }
            if (pass == 1) {
                for (; slot < window; slot++) {
                    items[slot] = -1;
                    weights[slot] = 0.0;
                }
            }
        }
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    for (int b = 0; b < 3; b++) PyBuffer_Release(&views[b]);
    return result;
}

/* shift_ints(whole, ints, field, by, floor): Records.shift_ints for one field: `by` subtracted from int32 field
 * `field` of every record of `whole` (an array('i') of records of `ints` fields), none below `floor` */
static PyObject *shift_ints(PyObject *module, PyObject *args) {
    PyObject *whole;
    Py_ssize_t ints, field;
    long long by, floor_;
    if (!PyArg_ParseTuple(args, "OnnLL", &whole, &ints, &field, &by, &floor_)) return NULL;
    if (ints < 1 || field < 0 || field >= ints || by < 0 || floor_ < INT32_MIN || floor_ > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "shift_ints: 0 <= field < ints, by >= 0 and floor within int32");
        return NULL;
    }
    Py_buffer view;
    if (get_buffer(whole, &view, PyBUF_WRITABLE, "a gate table's int32 fields", 'i') < 0) return NULL;
    shift_i32_field(view.buf, view.len / 4, ints, field, by, floor_);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"cooccurrence_scores", cooccurrence_scores, METH_VARARGS,
     "cooccurrence_scores(cols, vals, start, length, rows, weights, cap, cache, damping, mass, popularity_weight, "
     "mass_max, out): ItemCooccurrence.score_all into out"},
    {"cooccurrence_top", cooccurrence_top, METH_VARARGS,
     "cooccurrence_top(cols, vals, start, length, rows, weights, cap, cache, damping, mass, popularity_weight, "
     "mass_max, n, head, exclude, k): the k best (row, score) of those scores without their exclude, or None"},
    {"gather_rows", gather_rows, METH_VARARGS,
     "gather_rows(cols, vals, start, length, n, out_cols, out_vals): rows 0..n-1 of a pool, one after the other"},
    {"write_histories", write_histories, METH_VARARGS,
     "write_histories(rows, users, items, weights, window): UserHistories._write (see _kernels.c)"},
    {"join_buffers", join_buffers, METH_O,
     "join_buffers(parts) -> bytes: the parts' buffers one after the other, copied with the GIL released"},
    {"copy_rows", copy_rows, METH_VARARGS,
     "copy_rows(cols, vals, start, rows, length, to, out_cols, out_vals): rows of a pool copied to out (see _kernels.c)"},
    {"top_rows", top_rows, METH_VARARGS,
     "top_rows(scores, k): rows of the k best scores above -inf, best first, or None (see learner.kernels)"},
    {"weighted_rows", weighted_rows, METH_VARARGS,
     "weighted_rows(history, powers, damping, rows, weights) -> n: a user's rows and ranking weights (see _kernels.c)"},
    {"cooccurrence_mass", cooccurrence_mass, METH_VARARGS,
     "cooccurrence_mass(mass, candidate_damping, row_damping, i, y, alpha, beta): learn_one's mass and damping"},
    {"vector_loops", vector_loops, METH_VARARGS,
     "vector_loops(on=None) -> bool: whether the catalogue passes run four scores at a time (AVX2), before any change"},
    {"shift_ints", shift_ints, METH_VARARGS,
     "shift_ints(whole, ints, field, by, floor): Records.shift_ints for one field (learner/gate/records.py)"},
    {"gate_loop", (PyCFunction)(void (*)(void))gate_loop, METH_FASTCALL,
     "gate_loop(events, now, checks, early, before, judge, observers, counts, verdicts): QualityGate.check_chunk's "
     "loop (learner/gate/gate.py)"},
    {"id_table_from_packed", id_table_from_packed, METH_VARARGS,
     "id_table_from_packed(data, n) -> IdTable: the n ids of IdTable.packed()'s bytes (ValueError if they are not)"},
    {"timestamp", timestamp, METH_O, "timestamp(dt) -> float: datetime.timestamp(dt), the same float, faster when dt is aware"},
    {"learn_events", (PyCFunction)(void (*)(void))learn_events, METH_FASTCALL,
     "learn_events(chunk, verdicts, start, known, event_ids, seen, lags, learn, positive_types, challengers, hit_every, "
     "sample_every, positives, guard_update, learner, clock, event_type, recommended) -> (stop, positives, learned, "
     "pause_at, error): the worker's loop over the events it learns plainly (stream/processor.py)"},
    {"json_objects", (PyCFunction)json_objects, METH_O,
     "json_objects(values) -> bytes | None: the JSON array of values (bytes) when each is one JSON object standing "
     "alone, by its brackets; None otherwise (recstream.events.parse_one_event_messages)"},
    {"gate_rows", (PyCFunction)(void (*)(void))gate_rows, METH_FASTCALL,
     "gate_rows(events, rule, now, a, b) -> [row, ...] | None: the rows a stateless rule of the quality gate holds "
     "(0 future_timestamp, 1 too_late, 2 watch_exceeds_duration, 3 skip_after_full_watch; learner/gate/)"},
    {"gate_views", (PyCFunction)(void (*)(void))gate_views, METH_FASTCALL,
     "gate_views(chunk, known, pending, view_type, event_type) -> (views, judged): the worker's views of a chunk's events to "
     "judge (stream/processor.py)"},
    {"top_rows_rank", top_rows_rank, METH_VARARGS,
     "top_rows_rank(scores, exclude, k, target, keep): top_rows after masking, and the target's counts (see learner/_kernels.c)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", "Compiled ranking loops (learner.kernels).",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernels(void) {
    if (PyType_Ready(&SlotTableType) < 0 || PyType_Ready(&PoolRowsType) < 0 || PyType_Ready(&LruIndexType) < 0 || PyType_Ready(&IdTableType) < 0 ||
        PyType_Ready(&RateCoreType) < 0 ||
        PyType_Ready(&SurgeCoreType) < 0 || PyType_Ready(&AnomalyCoreType) < 0 || PyType_Ready(&GuardCoreType) < 0) {
        return NULL;
    }
    if (!(name_event_id = PyUnicode_InternFromString("event_id")) ||
        !(name_user_id = PyUnicode_InternFromString("user_id")) ||
        !(name_item_id = PyUnicode_InternFromString("item_id")) || !(name_type = PyUnicode_InternFromString("type")) ||
        !(name_ts_seconds = PyUnicode_InternFromString("ts_seconds")) ||
        !(name_watch_seconds = PyUnicode_InternFromString("watch_seconds")) ||
        !(name_item_duration_seconds = PyUnicode_InternFromString("item_duration_seconds")) ||
        !(name_reason = PyUnicode_InternFromString("reason")) || !(name_ts = PyUnicode_InternFromString("ts")) ||
        !(name_utcoffset = PyUnicode_InternFromString("utcoffset")) ||
        !(name_context = PyUnicode_InternFromString("context")) ||
        !(name_rec_id = PyUnicode_InternFromString("rec_id")) ||
        !(name_last_loss = PyUnicode_InternFromString("last_loss")) ||
        !(name_learn = PyUnicode_InternFromString("learn")) || !(name_add = PyUnicode_InternFromString("add")) ||
        !(kwnames_ts = PyTuple_Pack(1, name_ts))) {
        return NULL;
    }
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL) return NULL;
    datetime_timestamp = PyObject_GetAttrString((PyObject *)PyDateTimeAPI->DateTimeType, "timestamp");
    if (datetime_timestamp == NULL) return NULL;
    PyObject *math = PyImport_ImportModule("math");
    math_fsum = math == NULL ? NULL : PyObject_GetAttrString(math, "fsum");
    Py_XDECREF(math);
    if (math_fsum == NULL) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
#if VECTOR_LOOPS
    __builtin_cpu_init();
    avx2 = vectors = __builtin_cpu_supports("avx2") != 0;
#endif
    Py_INCREF(&SlotTableType);
    if (PyModule_AddObject(m, "SlotTable", (PyObject *)&SlotTableType) < 0) {
        Py_DECREF(&SlotTableType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&PoolRowsType);
    if (PyModule_AddObject(m, "PoolRows", (PyObject *)&PoolRowsType) < 0) {
        Py_DECREF(&PoolRowsType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&LruIndexType);
    if (PyModule_AddObject(m, "LruIndex", (PyObject *)&LruIndexType) < 0) {
        Py_DECREF(&LruIndexType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&IdTableType);
    if (PyModule_AddObject(m, "IdTable", (PyObject *)&IdTableType) < 0) {
        Py_DECREF(&IdTableType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&RateCoreType);
    if (PyModule_AddObject(m, "RateCore", (PyObject *)&RateCoreType) < 0) {
        Py_DECREF(&RateCoreType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&SurgeCoreType);
    if (PyModule_AddObject(m, "SurgeCore", (PyObject *)&SurgeCoreType) < 0) {
        Py_DECREF(&SurgeCoreType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&AnomalyCoreType);
    if (PyModule_AddObject(m, "AnomalyCore", (PyObject *)&AnomalyCoreType) < 0) {
        Py_DECREF(&AnomalyCoreType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&GuardCoreType);
    if (PyModule_AddObject(m, "GuardCore", (PyObject *)&GuardCoreType) < 0) {
        Py_DECREF(&GuardCoreType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
