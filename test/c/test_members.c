/* test_members.c - member sets with statuses (members.h).
 *
 * Every operation is checked against a brute-force model (an unsorted array of names with a
 * linear search), after every mutation the set must be strictly sorted by name and unique,
 * diffs are compared entry by entry with a quadratic model, and a failing allocator checks
 * that every call that runs out of memory leaves its set exactly as it was and leaks nothing.
 * Names come from a tiny alphabet with 0x00 and 0xff and lengths 0..4, so that equal names,
 * proper prefixes and bytes above 0x7f are all common. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "members.h"
#include "test_support.h"

/* counting, failing allocator and generator: test_support.h */

TestSuite(members, .init = install, .fini = uninstall);

/* ---- helpers ---- */

#define MAXNAME 8

/* A name with its own storage (model entries and candidate lists point into these). */
typedef struct {
    uint8_t b[MAXNAME];
    uint32_t len;
    dv_member_status st;
} name_t;

static const uint8_t ALPHABET[] = {0x00, 'a', 'b', 0xff};

static void rnd_name(name_t *n) {
    n->len = (uint32_t)rnd_below(5);
    for (uint32_t i = 0; i < n->len; i++)
        n->b[i] = ALPHABET[rnd_below(sizeof(ALPHABET))];
    n->st = (dv_member_status)rnd_below(DV_MEMBER_NSTATUS);
}

static dv_member view(const name_t *n) {
    return (dv_member){n->len ? n->b : NULL, n->len, n->st};
}

/* Reference order, written independently of members.c: lexicographic, unsigned bytes, a
 * proper prefix first. */
static int ref_cmp(const uint8_t *a, uint32_t alen, const uint8_t *b, uint32_t blen) {
    for (uint32_t i = 0; i < alen && i < blen; i++)
        if (a[i] != b[i])
            return a[i] < b[i] ? -1 : 1;
    return alen == blen ? 0 : alen < blen ? -1 : 1;
}

static bool same_name(const uint8_t *a, uint32_t alen, const uint8_t *b, uint32_t blen) {
    return ref_cmp(a, alen, b, blen) == 0;
}

/* Invariants of a dv_members set. Returns NULL when they hold, else a description. */
static const char *set_error(const dv_members *s) {
    if (s->n > s->cap)
        return "n > cap";
    if (s->n && !s->m)
        return "members without storage";
    for (uint32_t i = 0; i < s->n; i++) {
        if (!s->m[i].name)
            return "a member without a name buffer";
        if (!dv_member_status_valid(s->m[i].status))
            return "invalid status";
        if (i && ref_cmp(s->m[i - 1].name, s->m[i - 1].len, s->m[i].name, s->m[i].len) >= 0)
            return "names not strictly increasing";
    }
    return NULL;
}

#define ASSERT_SET(s)                                                                              \
    do {                                                                                           \
        const char *set_err_ = set_error(s);                                                       \
        cr_assert(set_err_ == NULL, "set invariant broken: %s", set_err_);                         \
    } while (0)

/* ---- the model: an unsorted array of unique names ---- */

#define MODEL_MAX 1024

typedef struct {
    name_t e[MODEL_MAX];
    size_t n;
} model;

static long model_find(const model *m, const uint8_t *name, uint32_t len) {
    for (size_t i = 0; i < m->n; i++)
        if (same_name(m->e[i].b, m->e[i].len, name, len))
            return (long)i;
    return -1;
}

/* Insert, or keep the lower status (the documented rule for duplicates). */
static void model_merge(model *m, const name_t *n) {
    long i = model_find(m, n->b, n->len);
    if (i < 0) {
        cr_assert(m->n < MODEL_MAX);
        m->e[m->n++] = *n;
    } else if (n->st < m->e[i].st) {
        m->e[i].st = n->st;
    }
}

static void assert_matches(const dv_members *s, const model *m) {
    ASSERT_SET(s);
    cr_assert_eq(dv_members_size(s), m->n, "size %zu, model %zu", dv_members_size(s), m->n);
    for (size_t i = 0; i < m->n; i++) {
        const dv_member *f = dv_members_find(s, m->e[i].b, m->e[i].len);
        cr_assert(f, "model member %zu missing", i);
        cr_assert_eq(f->status, m->e[i].st);
    }
}

static void model_from_set(model *m, const dv_members *s) {
    m->n = 0;
    for (uint32_t i = 0; i < s->n; i++) {
        cr_assert(s->m[i].len <= MAXNAME);
        name_t n = {.len = s->m[i].len, .st = s->m[i].status};
        if (n.len)
            memcpy(n.b, s->m[i].name, n.len);
        m->e[m->n++] = n;
    }
}

static void rnd_set(dv_members *s, model *m, size_t tries) {
    m->n = 0;
    for (size_t i = 0; i < tries; i++) {
        name_t n;
        rnd_name(&n);
        int rc = dv_members_put(s, n.b, n.len, n.st);
        cr_assert(rc >= 0);
        long at = model_find(m, n.b, n.len);
        if (at < 0)
            m->e[m->n++] = n;
        else
            m->e[at].st = n.st;
    }
}

/* ---- basics ---- */

Test(members, empty_sets) {
    dv_members s, t;
    dv_members_init(&s);
    dv_members_init(&t);
    cr_assert_eq(dv_members_size(&s), 0);
    cr_assert_null(dv_members_find(&s, NULL, 0));
    cr_assert_null(dv_members_find(&s, (const uint8_t *)"a", 1));
    cr_assert_not(dv_members_remove(&s, (const uint8_t *)"a", 1));
    cr_assert_not(dv_members_remove(&s, NULL, 0));
    cr_assert_eq(dv_members_assign(&s, NULL, 0, NULL), DV_OK);
    cr_assert_eq(dv_members_size(&s), 0);
    cr_assert_eq(dv_members_copy(&t, &s), DV_OK);
    cr_assert_eq(dv_members_filter(&t, &s, DV_MEMBER_MASK(DV_MEMBER_ALIVE)), DV_OK);
    cr_assert_eq(dv_members_size(&t), 0);
    dv_members_delta d;
    dv_members_delta_init(&d);
    cr_assert_eq(dv_members_diff(&s, &t, &d), DV_OK);
    cr_assert_eq(d.nadded + d.nremoved + d.nchanged, 0);
    dv_members_delta_free(&d);
    cr_assert_eq(dv_member_normalize(NULL, 0), 0);
    dv_member one = {(const uint8_t *)"x", 1, DV_MEMBER_DEAD};
    cr_assert_eq(dv_member_normalize(&one, 1), 1);
    ASSERT_SET(&s);
    dv_members_free(&s);
    dv_members_free(&t);
    dv_members_free(&s); /* free twice is fine: free leaves an empty set */
    cr_assert_eq(live_blocks, 0);
}

Test(members, put_find_remove) {
    dv_members s;
    dv_members_init(&s);
    const uint8_t *ab = (const uint8_t *)"ab";
    cr_assert_eq(dv_members_put(&s, ab, 2, DV_MEMBER_ALIVE), DV_MEMBER_ADDED);
    cr_assert_eq(dv_members_put(&s, ab, 2, DV_MEMBER_ALIVE), DV_OK);
    cr_assert_eq(dv_members_put(&s, ab, 2, DV_MEMBER_DEAD), DV_MEMBER_CHANGED);
    cr_assert_eq(dv_members_find(&s, ab, 2)->status, DV_MEMBER_DEAD);
    cr_assert_eq(dv_members_put(&s, ab, 1, DV_MEMBER_UNINITIALIZED), DV_MEMBER_ADDED); /* "a" */
    cr_assert_eq(dv_members_put(&s, NULL, 0, DV_MEMBER_SHUTTING_DOWN), DV_MEMBER_ADDED);
    cr_assert_eq(dv_members_size(&s), 3);
    ASSERT_SET(&s);
    cr_assert_eq(s.m[0].len, 0); /* "" < "a" < "ab" */
    cr_assert_eq(s.m[1].len, 1);
    cr_assert_eq(s.m[2].len, 2);
    cr_assert_eq(dv_members_find(&s, NULL, 0)->status, DV_MEMBER_SHUTTING_DOWN);
    cr_assert_null(dv_members_find(&s, (const uint8_t *)"b", 1));
    /* invalid arguments change nothing */
    cr_assert_eq(dv_members_put(&s, NULL, 3, DV_MEMBER_ALIVE), DV_EINVAL);
    cr_assert_eq(dv_members_put(&s, ab, 2, (dv_member_status)7), DV_EINVAL);
    cr_assert_null(dv_members_find(&s, NULL, 2));
    cr_assert_not(dv_members_remove(&s, NULL, 2));
    cr_assert_eq(dv_members_size(&s), 3);
    /* the set owns copies: changing the caller's buffer changes nothing */
    uint8_t buf[2] = {'z', 'z'};
    cr_assert_eq(dv_members_put(&s, buf, 2, DV_MEMBER_ALIVE), DV_MEMBER_ADDED);
    buf[0] = 'y';
    cr_assert_not_null(dv_members_find(&s, (const uint8_t *)"zz", 2));
    cr_assert_null(dv_members_find(&s, buf, 2));
    cr_assert(dv_members_remove(&s, ab, 2));
    cr_assert_not(dv_members_remove(&s, ab, 2));
    cr_assert_not_null(dv_members_find(&s, ab, 1));
    ASSERT_SET(&s);
    dv_members_clear(&s);
    cr_assert_eq(dv_members_size(&s), 0);
    cr_assert_eq(live_blocks, 1); /* the array, kept by clear */
    dv_members_free(&s);
    cr_assert_eq(live_blocks, 0);
}

static int count_calls(void *ud, const dv_member *m) {
    (void)m;
    (*(int *)ud)++;
    return *(int *)ud == 3 ? 42 : 0;
}

Test(members, foreach_is_sorted_and_stops) {
    dv_members s;
    dv_members_init(&s);
    for (int i = 9; i >= 0; i--) {
        uint8_t b = (uint8_t)('0' + i);
        dv_members_put(&s, &b, 1, DV_MEMBER_ALIVE);
    }
    for (uint32_t i = 0; i < s.n; i++)
        cr_assert_eq(s.m[i].name[0], '0' + i);
    int calls = 0;
    cr_assert_eq(dv_members_foreach(&s, count_calls, &calls), 42);
    cr_assert_eq(calls, 3);
    dv_members_free(&s);
}

/* ---- random operations against the model ---- */

Test(members, random_put_remove_match_model) {
    rng_state = 1;
    for (int round = 0; round < 200; round++) {
        dv_members s;
        dv_members_init(&s);
        model m = {.n = 0};
        for (int op = 0; op < 300; op++) {
            name_t n;
            rnd_name(&n);
            long at = model_find(&m, n.b, n.len);
            if (rnd_below(3)) {
                int rc = dv_members_put(&s, n.len ? n.b : NULL, n.len, n.st);
                int want = at < 0               ? DV_MEMBER_ADDED
                           : m.e[at].st != n.st ? DV_MEMBER_CHANGED
                                                : DV_OK;
                cr_assert_eq(rc, want, "put returned %d, expected %d", rc, want);
                if (at < 0)
                    m.e[m.n++] = n;
                else
                    m.e[at].st = n.st;
            } else {
                bool removed = dv_members_remove(&s, n.len ? n.b : NULL, n.len);
                cr_assert_eq(removed, at >= 0);
                if (at >= 0)
                    m.e[at] = m.e[--m.n];
            }
            assert_matches(&s, &m);
        }
        dv_members_free(&s);
        cr_assert_eq(live_blocks, 0);
    }
}

Test(members, normalize_sorts_dedups_keeps_lowest_status) {
    rng_state = 2;
    for (int round = 0; round < 2000; round++) {
        size_t n = rnd_below(64);
        name_t names[64];
        dv_member v[64];
        model m = {.n = 0};
        for (size_t i = 0; i < n; i++) {
            rnd_name(&names[i]);
            v[i] = view(&names[i]);
            model_merge(&m, &names[i]);
        }
        size_t k = dv_member_normalize(v, n);
        cr_assert_eq(k, m.n);
        for (size_t i = 0; i < k; i++) {
            if (i)
                cr_assert_lt(ref_cmp(v[i - 1].name, v[i - 1].len, v[i].name, v[i].len), 0);
            long at = model_find(&m, v[i].name, v[i].len);
            cr_assert_geq(at, 0);
            cr_assert_eq(v[i].status, m.e[at].st);
        }
    }
}

/* The member set for a mode: candidates (unsorted, duplicated) plus self. */
Test(members, assign_candidates_and_self) {
    rng_state = 3;
    dv_members s;
    dv_members_init(&s);
    for (int round = 0; round < 2000; round++) {
        size_t n = rnd_below(100);
        name_t names[100], self;
        dv_member v[100];
        model m = {.n = 0};
        for (size_t i = 0; i < n; i++) {
            rnd_name(&names[i]);
            v[i] = view(&names[i]);
            model_merge(&m, &names[i]);
        }
        rnd_name(&self);
        bool with_self = rnd_below(4) != 0;
        if (with_self)
            model_merge(&m, &self);
        dv_member sv = view(&self);
        cr_assert_eq(dv_members_assign(&s, n ? v : NULL, n, with_self ? &sv : NULL), DV_OK);
        assert_matches(&s, &m);
        if (with_self)
            cr_assert_not_null(dv_members_find(&s, self.b, self.len));
        /* the candidates' memory may go away: the set holds copies */
        memset(names, 0x5a, sizeof(names));
        ASSERT_SET(&s);
    }
    dv_members_free(&s);
    cr_assert_eq(live_blocks, 0);
}

Test(members, assign_self_only_and_invalid) {
    dv_members s;
    dv_members_init(&s);
    dv_member self = {(const uint8_t *)"me", 2, DV_MEMBER_ALIVE};
    cr_assert_eq(dv_members_assign(&s, NULL, 0, &self), DV_OK);
    cr_assert_eq(dv_members_size(&s), 1);
    dv_member bad[2] = {{(const uint8_t *)"x", 1, DV_MEMBER_ALIVE}, {NULL, 4, DV_MEMBER_ALIVE}};
    cr_assert_eq(dv_members_assign(&s, bad, 2, &self), DV_EINVAL);
    bad[1] = (dv_member){(const uint8_t *)"y", 1, (dv_member_status)4};
    cr_assert_eq(dv_members_assign(&s, bad, 2, &self), DV_EINVAL);
    dv_member bad_self = {(const uint8_t *)"me", 2, (dv_member_status)-1};
    cr_assert_eq(dv_members_assign(&s, bad, 1, &bad_self), DV_EINVAL);
    cr_assert_eq(dv_members_assign(&s, NULL, 3, &self), DV_EINVAL);
    cr_assert_eq(dv_members_size(&s), 1); /* unchanged by the failures */
    cr_assert_not_null(dv_members_find(&s, (const uint8_t *)"me", 2));
    /* self also among the candidates, with a higher status: the lower one wins */
    dv_member c[3] = {{(const uint8_t *)"me", 2, DV_MEMBER_DEAD},
                      {(const uint8_t *)"b", 1, DV_MEMBER_DEAD},
                      {(const uint8_t *)"b", 1, DV_MEMBER_UNINITIALIZED}};
    cr_assert_eq(dv_members_assign(&s, c, 3, &self), DV_OK);
    cr_assert_eq(dv_members_size(&s), 2);
    cr_assert_eq(dv_members_find(&s, (const uint8_t *)"me", 2)->status, DV_MEMBER_ALIVE);
    cr_assert_eq(dv_members_find(&s, (const uint8_t *)"b", 1)->status, DV_MEMBER_UNINITIALIZED);
    cr_assert_eq(dv_members_assign(&s, NULL, 0, NULL), DV_OK);
    cr_assert_eq(dv_members_size(&s), 0);
    dv_members_free(&s);
    cr_assert_eq(live_blocks, 0);
}

Test(members, filter_by_status) {
    rng_state = 4;
    for (int round = 0; round < 500; round++) {
        dv_members s, f;
        dv_members_init(&s);
        dv_members_init(&f);
        model m;
        rnd_set(&s, &m, rnd_below(80));
        dv_members_put(&f, (const uint8_t *)"stale", 5, DV_MEMBER_ALIVE); /* replaced */
        unsigned mask = (unsigned)rnd_below(DV_MEMBER_MASK_ALL + 1);
        cr_assert_eq(dv_members_filter(&f, &s, mask), DV_OK);
        model want = {.n = 0};
        for (size_t i = 0; i < m.n; i++)
            if (mask & DV_MEMBER_MASK(m.e[i].st))
                want.e[want.n++] = m.e[i];
        assert_matches(&f, &want);
        cr_assert_eq(dv_members_copy(&f, &s), DV_OK);
        assert_matches(&f, &m);
        cr_assert_eq(dv_members_filter(&s, &s, mask), DV_EINVAL);
        assert_matches(&s, &m);
        dv_members_free(&s);
        dv_members_free(&f);
        cr_assert_eq(live_blocks, 0);
    }
}

/* ---- diff against a quadratic model ---- */

static void check_diff(const dv_members *a, const dv_members *b, const dv_members_delta *d) {
    size_t na = 0, nr = 0, nc = 0;
    /* added: in b, not in a, in b's order */
    for (uint32_t j = 0; j < b->n; j++) {
        const dv_member *x = &b->m[j];
        const dv_member *in_a = NULL;
        for (uint32_t i = 0; i < a->n; i++)
            if (same_name(a->m[i].name, a->m[i].len, x->name, x->len))
                in_a = &a->m[i];
        if (!in_a) {
            cr_assert_lt(na, d->nadded, "an added member is missing");
            cr_assert(same_name(d->added[na].name, d->added[na].len, x->name, x->len));
            cr_assert_eq(d->added[na].status, x->status);
            na++;
        } else if (in_a->status != x->status) {
            cr_assert_lt(nc, d->nchanged, "a changed member is missing");
            const dv_member_change *c = &d->changed[nc];
            cr_assert(same_name(c->name, c->len, x->name, x->len));
            cr_assert_eq(c->from, in_a->status);
            cr_assert_eq(c->to, x->status);
            nc++;
        }
    }
    for (uint32_t i = 0; i < a->n; i++) {
        const dv_member *x = &a->m[i];
        bool in_b = false;
        for (uint32_t j = 0; j < b->n; j++)
            in_b = in_b || same_name(b->m[j].name, b->m[j].len, x->name, x->len);
        if (!in_b) {
            cr_assert_lt(nr, d->nremoved, "a removed member is missing");
            cr_assert(same_name(d->removed[nr].name, d->removed[nr].len, x->name, x->len));
            cr_assert_eq(d->removed[nr].status, x->status);
            nr++;
        }
    }
    cr_assert_eq(na, d->nadded, "extra added members");
    cr_assert_eq(nr, d->nremoved, "extra removed members");
    cr_assert_eq(nc, d->nchanged, "extra changed members");
}

Test(members, diff_matches_model) {
    rng_state = 5;
    dv_members_delta d;
    dv_members_delta_init(&d);
    for (int round = 0; round < 3000; round++) {
        dv_members a, b;
        dv_members_init(&a);
        dv_members_init(&b);
        model ma, mb;
        rnd_set(&a, &ma, rnd_below(60));
        if (rnd_below(4) == 0) {
            dv_members_copy(&b, &a); /* b close to a */
            for (int k = (int)rnd_below(4); k > 0; k--) {
                name_t n;
                rnd_name(&n);
                if (rnd_below(2))
                    dv_members_put(&b, n.b, n.len, n.st);
                else
                    dv_members_remove(&b, n.b, n.len);
            }
        } else {
            rnd_set(&b, &mb, rnd_below(60));
        }
        cr_assert_eq(dv_members_diff(&a, &b, &d), DV_OK);
        check_diff(&a, &b, &d);
        cr_assert_eq(dv_members_diff(&b, &a, &d), DV_OK); /* reuses d: old lists freed */
        check_diff(&b, &a, &d);
        cr_assert_eq(dv_members_diff(&a, &a, &d), DV_OK);
        cr_assert_eq(d.nadded + d.nremoved + d.nchanged, 0);
        dv_members_free(&a);
        dv_members_free(&b);
    }
    dv_members_delta_free(&d);
    cr_assert_eq(live_blocks, 0);
}

static int stop_at_second(void *ud, dv_member_event ev, const dv_member *before,
                          const dv_member *after) {
    int *seen = ud;
    cr_assert(ev == DV_MEMBER_ADDED || ev == DV_MEMBER_REMOVED || ev == DV_MEMBER_CHANGED);
    cr_assert(ev != DV_MEMBER_ADDED || (!before && after));
    cr_assert(ev != DV_MEMBER_REMOVED || (before && !after));
    cr_assert(ev != DV_MEMBER_CHANGED || (before && after));
    return ++*seen == 2 ? -99 : 0;
}

Test(members, diff_walk_stops_on_callback_error) {
    dv_member a[2] = {{(const uint8_t *)"a", 1, DV_MEMBER_ALIVE},
                      {(const uint8_t *)"c", 1, DV_MEMBER_ALIVE}};
    dv_member b[2] = {{(const uint8_t *)"b", 1, DV_MEMBER_ALIVE},
                      {(const uint8_t *)"c", 1, DV_MEMBER_DEAD}};
    int seen = 0;
    cr_assert_eq(dv_member_diff_walk(a, 2, b, 2, stop_at_second, &seen), -99);
    cr_assert_eq(seen, 2);
    seen = 0;
    cr_assert_eq(dv_member_diff_walk(NULL, 0, NULL, 0, stop_at_second, &seen), DV_OK);
    cr_assert_eq(seen, 0);
}

/* ---- allocation failures leave everything unchanged ---- */

static bool equal_to_model(const dv_members *s, const model *m) {
    if (set_error(s) || s->n != m->n)
        return false;
    for (uint32_t i = 0; i < s->n; i++)
        if (!same_name(s->m[i].name, s->m[i].len, m->e[i].b, m->e[i].len) ||
            s->m[i].status != m->e[i].st)
            return false;
    return true;
}

Test(members, put_oom_leaves_set_unchanged) {
    rng_state = 6;
    for (int round = 0; round < 300; round++) {
        dv_members s;
        dv_members_init(&s);
        model m;
        rnd_set(&s, &m, rnd_below(40));
        model_from_set(&m, &s);
        long blocks = live_blocks;
        name_t n;
        rnd_name(&n);
        bool fresh = dv_members_find(&s, n.b, n.len) == NULL;
        int rc;
        for (long k = 0;; k++) {
            fail_after = k;
            rc = dv_members_put(&s, n.b, n.len, n.st);
            fail_after = -1;
            if (rc != DV_ENOMEM)
                break;
            cr_assert(fresh, "only an insert allocates");
            cr_assert(equal_to_model(&s, &m), "set changed by a failed put");
            cr_assert_leq(live_blocks, blocks + 1); /* at most the grown array, not a name */
            cr_assert_lt(k, 10);
        }
        cr_assert_geq(rc, 0);
        dv_members_free(&s);
        cr_assert_eq(live_blocks, 0);
    }
}

Test(members, assign_filter_copy_oom_leave_set_unchanged) {
    rng_state = 7;
    for (int round = 0; round < 200; round++) {
        dv_members s, src;
        dv_members_init(&s);
        dv_members_init(&src);
        model m, msrc;
        rnd_set(&s, &m, rnd_below(30));
        model_from_set(&m, &s);
        rnd_set(&src, &msrc, 1 + rnd_below(30));
        size_t n = rnd_below(40);
        name_t names[40], self;
        dv_member v[40];
        for (size_t i = 0; i < n; i++) {
            rnd_name(&names[i]);
            v[i] = view(&names[i]);
        }
        rnd_name(&self);
        dv_member sv = view(&self);
        long blocks = live_blocks;
        for (int which = 0; which < 3; which++) {
            int rc;
            for (long k = 0;; k++) {
                fail_after = k;
                rc = which == 0   ? dv_members_assign(&s, n ? v : NULL, n, &sv)
                     : which == 1 ? dv_members_filter(&s, &src, DV_MEMBER_MASK(DV_MEMBER_ALIVE))
                                  : dv_members_copy(&s, &src);
                fail_after = -1;
                if (rc != DV_ENOMEM)
                    break;
                cr_assert(equal_to_model(&s, &m), "set changed by a failed call %d", which);
                cr_assert_eq(live_blocks, blocks, "leak after a failed call %d", which);
                cr_assert_lt(k, 200);
            }
            cr_assert_eq(rc, DV_OK);
            ASSERT_SET(&s);
            /* back to the original contents for the next call */
            dv_members_clear(&s);
            for (size_t i = 0; i < m.n; i++)
                dv_members_put(&s, m.e[i].b, m.e[i].len, m.e[i].st);
            blocks = live_blocks;
        }
        dv_members_free(&s);
        dv_members_free(&src);
        cr_assert_eq(live_blocks, 0);
    }
}

Test(members, diff_oom_leaves_delta_empty) {
    rng_state = 8;
    dv_members_delta d;
    dv_members_delta_init(&d);
    for (int round = 0; round < 300; round++) {
        dv_members a, b;
        dv_members_init(&a);
        dv_members_init(&b);
        model ma, mb;
        rnd_set(&a, &ma, rnd_below(40));
        rnd_set(&b, &mb, rnd_below(40));
        long blocks = live_blocks;
        int rc;
        for (long k = 0;; k++) {
            fail_after = k;
            rc = dv_members_diff(&a, &b, &d);
            fail_after = -1;
            if (rc != DV_ENOMEM)
                break;
            cr_assert_eq(d.nadded + d.nremoved + d.nchanged, 0);
            cr_assert(!d.added && !d.removed && !d.changed);
            cr_assert_eq(live_blocks, blocks);
            cr_assert_lt(k, 4);
        }
        cr_assert_eq(rc, DV_OK);
        check_diff(&a, &b, &d);
        dv_members_delta_free(&d);
        dv_members_free(&a);
        dv_members_free(&b);
        cr_assert_eq(live_blocks, 0);
    }
}

/* ---- large sets ---- */

/* Member i is the 8-byte big-endian encoding of i: memcmp order is numeric order. */
static void be64(uint8_t *p, uint64_t v) {
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static uint64_t from_be64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

#define LARGE 100000

Test(members, large_sets) {
    rng_state = 9;
    /* 2 * LARGE candidates over ids 0..LARGE-1 (even ids only), in random order with dups */
    size_t n = 2 * LARGE;
    uint8_t *store = malloc(n * 8);
    dv_member *v = malloc(n * sizeof(dv_member));
    cr_assert(store && v);
    for (size_t i = 0; i < n; i++) {
        be64(&store[i * 8], 2 * rnd_below(LARGE / 2));
        v[i] = (dv_member){&store[i * 8], 8, (dv_member_status)rnd_below(DV_MEMBER_NSTATUS)};
    }
    uint8_t self_name[8];
    be64(self_name, 1); /* odd: never a candidate */
    dv_member self = {self_name, 8, DV_MEMBER_ALIVE};
    dv_members a, b;
    dv_members_init(&a);
    dv_members_init(&b);
    cr_assert_eq(dv_members_assign(&a, v, n, &self), DV_OK);
    ASSERT_SET(&a);
    cr_assert_not_null(dv_members_find(&a, self_name, 8));
    for (uint32_t i = 0; i < a.n; i++) {
        uint64_t id = from_be64(a.m[i].name);
        cr_assert(id == 1 || id % 2 == 0);
    }
    /* b: a without its first 1000 members, plus 1000 odd ids, 1000 statuses changed */
    cr_assert_eq(dv_members_copy(&b, &a), DV_OK);
    uint32_t before = a.n;
    for (int i = 0; i < 1000; i++)
        cr_assert(dv_members_remove(&b, a.m[i].name, 8));
    for (uint64_t i = 0; i < 1000; i++) {
        uint8_t nm[8];
        be64(nm, 2 * (LARGE + i) + 1);
        cr_assert_eq(dv_members_put(&b, nm, 8, DV_MEMBER_UNINITIALIZED), DV_MEMBER_ADDED);
    }
    size_t changed = 0;
    for (uint32_t i = 2000; i < 3000; i++) {
        dv_member_status st = (dv_member_status)((b.m[i].status + 1) % DV_MEMBER_NSTATUS);
        cr_assert_eq(dv_members_put(&b, b.m[i].name, 8, st), DV_MEMBER_CHANGED);
        changed++;
    }
    ASSERT_SET(&b);
    cr_assert_eq(b.n, before);
    dv_members_delta d;
    dv_members_delta_init(&d);
    cr_assert_eq(dv_members_diff(&a, &b, &d), DV_OK);
    cr_assert_eq(d.nadded, 1000);
    cr_assert_eq(d.nremoved, 1000);
    cr_assert_eq(d.nchanged, changed);
    for (size_t i = 0; i < d.nadded; i++)
        cr_assert_eq(from_be64(d.added[i].name), 2 * (LARGE + i) + 1);
    for (size_t i = 0; i < d.nremoved; i++)
        cr_assert_eq(from_be64(d.removed[i].name), from_be64(a.m[i].name));
    dv_members filtered;
    dv_members_init(&filtered);
    cr_assert_eq(dv_members_filter(&filtered, &b, DV_MEMBER_MASK(DV_MEMBER_UNINITIALIZED)), DV_OK);
    ASSERT_SET(&filtered);
    cr_assert_geq(filtered.n, 1000);
    dv_members_delta_free(&d);
    dv_members_free(&filtered);
    dv_members_free(&a);
    dv_members_free(&b);
    free(store);
    free(v);
    cr_assert_eq(live_blocks, 0);
}

Test(members, many_puts_in_random_order) {
    rng_state = 10;
    dv_members s;
    dv_members_init(&s);
    enum { N = 5000 };
    static bool have[N];
    memset(have, 0, sizeof(have));
    size_t count = 0;
    for (int i = 0; i < 3 * N; i++) {
        uint64_t id = rnd_below(N);
        uint8_t nm[8];
        be64(nm, id);
        int rc = dv_members_put(&s, nm, 8, DV_MEMBER_ALIVE);
        cr_assert_eq(rc, have[id] ? DV_OK : DV_MEMBER_ADDED);
        if (!have[id])
            count++;
        have[id] = true;
    }
    ASSERT_SET(&s);
    cr_assert_eq(s.n, count);
    for (uint32_t i = 0; i + 1 < s.n; i++)
        cr_assert_lt(from_be64(s.m[i].name), from_be64(s.m[i + 1].name));
    dv_members_free(&s);
    cr_assert_eq(live_blocks, 0);
}
