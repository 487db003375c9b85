/* members.c - member sets with statuses. See members.h. */
#include "members.h"

#include <stdlib.h>
#include <string.h>

#include "alloc.h"

/* ---- views ---- */

static int cmp_bytes(const uint8_t *a, uint32_t alen, const uint8_t *b, uint32_t blen) {
    uint32_t n = alen < blen ? alen : blen;
    if (n) { /* memcmp with a NULL pointer is undefined even for 0 bytes */
        int c = memcmp(a, b, n);
        if (c)
            return c;
    }
    return alen < blen ? -1 : alen > blen ? 1 : 0;
}

int dv_member_cmp(const dv_member *a, const dv_member *b) {
    return cmp_bytes(a->name, a->len, b->name, b->len);
}

bool dv_member_status_valid(dv_member_status st) {
    return (unsigned)st < DV_MEMBER_NSTATUS;
}

static bool member_valid(const dv_member *m) {
    return dv_member_status_valid(m->status) && (m->name || m->len == 0);
}

/* Name, then status: after sorting, the first entry of each run of equal names holds the
 * lowest status, so keeping the first one is order independent. */
static int cmp_name_status(const void *pa, const void *pb) {
    const dv_member *a = pa, *b = pb;
    int c = dv_member_cmp(a, b);
    if (c)
        return c;
    return (unsigned)a->status < (unsigned)b->status   ? -1
           : (unsigned)a->status > (unsigned)b->status ? 1
                                                       : 0;
}

size_t dv_member_normalize(dv_member *v, size_t n) {
    if (n < 2)
        return n;
    qsort(v, n, sizeof(dv_member), cmp_name_status);
    size_t k = 1;
    for (size_t i = 1; i < n; i++) {
        if (dv_member_cmp(&v[k - 1], &v[i]) != 0)
            v[k++] = v[i];
    }
    return k;
}

int dv_member_diff_walk(const dv_member *before, size_t nb, const dv_member *after, size_t na,
                        dv_member_diff_fn fn, void *ud) {
    size_t i = 0, j = 0;
    int rc = DV_OK;
    while (rc == 0 && (i < nb || j < na)) {
        int c = i == nb ? 1 : j == na ? -1 : dv_member_cmp(&before[i], &after[j]);
        if (c < 0) {
            rc = fn(ud, DV_MEMBER_REMOVED, &before[i], NULL);
            i++;
        } else if (c > 0) {
            rc = fn(ud, DV_MEMBER_ADDED, NULL, &after[j]);
            j++;
        } else {
            if (before[i].status != after[j].status)
                rc = fn(ud, DV_MEMBER_CHANGED, &before[i], &after[j]);
            i++;
            j++;
        }
    }
    return rc;
}

/* ---- owning sets ---- */

void dv_members_init(dv_members *s) {
    s->m = NULL;
    s->n = 0;
    s->cap = 0;
}

static void free_names(dv_member *v, size_t n) {
    for (size_t i = 0; i < n; i++)
        dv_free((void *)v[i].name);
}

void dv_members_clear(dv_members *s) {
    free_names(s->m, s->n);
    s->n = 0;
}

void dv_members_free(dv_members *s) {
    dv_members_clear(s);
    dv_free(s->m);
    dv_members_init(s);
}

size_t dv_members_size(const dv_members *s) {
    return s->n;
}

/* Index of name in s, or of the slot where it would be inserted; *found tells which. */
static uint32_t search(const dv_members *s, const uint8_t *name, uint32_t len, bool *found) {
    uint32_t lo = 0, hi = s->n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int c = cmp_bytes(s->m[mid].name, s->m[mid].len, name, len);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
}

static uint8_t *copy_name(const uint8_t *name, uint32_t len) {
    uint8_t *p = dv_alloc(len);
    if (p && len)
        memcpy(p, name, len);
    return p;
}

int dv_members_put(dv_members *s, const uint8_t *name, uint32_t len, dv_member_status st) {
    if (!dv_member_status_valid(st) || (!name && len))
        return DV_EINVAL;
    bool found;
    uint32_t at = search(s, name, len, &found);
    if (found) {
        if (s->m[at].status == st)
            return DV_OK;
        s->m[at].status = st;
        return DV_MEMBER_CHANGED;
    }
    if (s->n >= DV_MEMBERS_MAX)
        return DV_EINVAL;
    /* Grow first: a failed realloc keeps the old block, and spare capacity changes nothing
     * visible, so the set is unchanged whichever allocation fails. */
    if (s->n == s->cap) {
        size_t cap = s->cap ? (size_t)s->cap * 2 : 8;
        if (cap > DV_MEMBERS_MAX)
            cap = DV_MEMBERS_MAX;
        dv_member *m = dv_realloc(s->m, cap * sizeof(dv_member));
        if (!m)
            return DV_ENOMEM;
        s->m = m;
        s->cap = (uint32_t)cap;
    }
    uint8_t *copy = copy_name(name, len);
    if (!copy)
        return DV_ENOMEM;
    memmove(&s->m[at + 1], &s->m[at], (size_t)(s->n - at) * sizeof(dv_member));
    s->m[at] = (dv_member){copy, len, st};
    s->n++;
    return DV_MEMBER_ADDED;
}

bool dv_members_remove(dv_members *s, const uint8_t *name, uint32_t len) {
    if (!name && len)
        return false;
    bool found;
    uint32_t at = search(s, name, len, &found);
    if (!found)
        return false;
    dv_free((void *)s->m[at].name);
    memmove(&s->m[at], &s->m[at + 1], (size_t)(s->n - at - 1) * sizeof(dv_member));
    s->n--;
    return true;
}

const dv_member *dv_members_find(const dv_members *s, const uint8_t *name, uint32_t len) {
    if (!name && len)
        return NULL;
    bool found;
    uint32_t at = search(s, name, len, &found);
    return found ? &s->m[at] : NULL;
}

int dv_members_foreach(const dv_members *s, dv_member_fn fn, void *ud) {
    for (uint32_t i = 0; i < s->n; i++) {
        int rc = fn(ud, &s->m[i]);
        if (rc)
            return rc;
    }
    return DV_OK;
}

/* Replace s's contents by v[0..n) (normalized), copying every name. s unchanged on failure. */
static int install_copy(dv_members *s, const dv_member *v, size_t n) {
    dv_member *m = NULL;
    if (n) {
        m = dv_alloc(n * sizeof(dv_member));
        if (!m)
            return DV_ENOMEM;
        for (size_t i = 0; i < n; i++) {
            uint8_t *copy = copy_name(v[i].name, v[i].len);
            if (!copy) {
                free_names(m, i);
                dv_free(m);
                return DV_ENOMEM;
            }
            m[i] = (dv_member){copy, v[i].len, v[i].status};
        }
    }
    dv_members_free(s);
    s->m = m;
    s->n = (uint32_t)n;
    s->cap = (uint32_t)n;
    return DV_OK;
}

int dv_members_assign(dv_members *s, const dv_member *cands, size_t n, const dv_member *self) {
    if ((n && !cands) || n > DV_MEMBERS_MAX)
        return DV_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!member_valid(&cands[i]))
            return DV_EINVAL;
    if (self && !member_valid(self))
        return DV_EINVAL;
    size_t total = n + (self ? 1 : 0);
    if (total == 0) {
        dv_members_clear(s);
        return DV_OK;
    }
    dv_member *tmp = dv_alloc(total * sizeof(dv_member));
    if (!tmp)
        return DV_ENOMEM;
    if (n)
        memcpy(tmp, cands, n * sizeof(dv_member));
    if (self)
        tmp[n] = *self;
    size_t k = dv_member_normalize(tmp, total);
    int rc = k > DV_MEMBERS_MAX ? DV_EINVAL : install_copy(s, tmp, k);
    dv_free(tmp);
    return rc;
}

int dv_members_filter(dv_members *dst, const dv_members *src, unsigned mask) {
    if (dst == src)
        return DV_EINVAL;
    size_t k = 0;
    for (uint32_t i = 0; i < src->n; i++)
        if (mask & DV_MEMBER_MASK(src->m[i].status))
            k++;
    if (k == src->n || k == 0)
        return install_copy(dst, src->m, k);
    dv_member *tmp = dv_alloc(k * sizeof(dv_member));
    if (!tmp)
        return DV_ENOMEM;
    k = 0;
    for (uint32_t i = 0; i < src->n; i++)
        if (mask & DV_MEMBER_MASK(src->m[i].status))
            tmp[k++] = src->m[i];
    int rc = install_copy(dst, tmp, k);
    dv_free(tmp);
    return rc;
}

int dv_members_copy(dv_members *dst, const dv_members *src) {
    return dv_members_filter(dst, src, DV_MEMBER_MASK_ALL);
}

/* ---- diff of two sets ---- */

void dv_members_delta_init(dv_members_delta *d) {
    memset(d, 0, sizeof(*d));
}

void dv_members_delta_free(dv_members_delta *d) {
    dv_free(d->added);
    dv_free(d->removed);
    dv_free(d->changed);
    dv_members_delta_init(d);
}

static int count_event(void *ud, dv_member_event ev, const dv_member *before,
                       const dv_member *after) {
    (void)before;
    (void)after;
    size_t *counts = ud;
    counts[ev]++;
    return DV_OK;
}

static int record_event(void *ud, dv_member_event ev, const dv_member *before,
                        const dv_member *after) {
    dv_members_delta *d = ud;
    switch (ev) {
    case DV_MEMBER_ADDED:
        d->added[d->nadded++] = *after;
        break;
    case DV_MEMBER_REMOVED:
        d->removed[d->nremoved++] = *before;
        break;
    case DV_MEMBER_CHANGED:
        d->changed[d->nchanged++] =
            (dv_member_change){after->name, after->len, before->status, after->status};
        break;
    }
    return DV_OK;
}

int dv_members_diff(const dv_members *before, const dv_members *after, dv_members_delta *out) {
    dv_members_delta_free(out);
    size_t counts[4] = {0, 0, 0, 0};
    dv_member_diff_walk(before->m, before->n, after->m, after->n, count_event, counts);
    dv_members_delta d;
    dv_members_delta_init(&d);
    /* zero-sized lists stay NULL */
    if (counts[DV_MEMBER_ADDED] &&
        !(d.added = dv_alloc(counts[DV_MEMBER_ADDED] * sizeof(dv_member))))
        goto oom;
    if (counts[DV_MEMBER_REMOVED] &&
        !(d.removed = dv_alloc(counts[DV_MEMBER_REMOVED] * sizeof(dv_member))))
        goto oom;
    if (counts[DV_MEMBER_CHANGED] &&
        !(d.changed = dv_alloc(counts[DV_MEMBER_CHANGED] * sizeof(dv_member_change))))
        goto oom;
    dv_member_diff_walk(before->m, before->n, after->m, after->n, record_event, &d);
    *out = d;
    return DV_OK;
oom:
    dv_members_delta_free(&d);
    return DV_ENOMEM;
}
