/* test_dots.c - causal context (dots.h): version vector + dot cloud.
 *
 * Checks every operation against a brute-force model (a bitset per replica over small
 * counters) and checks the normal form of dots.h after every mutation. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "dots.h"

/* ---- helpers ---- */

static uint64_t rng_state;

static uint64_t rnd(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static uint64_t rnd_below(uint64_t n) {
    return rnd() % n;
}

/* Normal form of dots.h. Returns NULL when it holds, else a description. */
static const char *normal_form_error(const dv_ctx *c) {
    if (c->n > c->cap)
        return "n > cap";
    if (c->n && !c->v)
        return "entries without storage";
    for (uint32_t i = 0; i < c->n; i++) {
        const dv_vv *e = &c->v[i];
        if (i && c->v[i - 1].rid >= e->rid)
            return "rids not strictly sorted";
        if (e->base == 0 && e->ncloud == 0)
            return "empty entry";
        if (e->base > DV_MAX_CTR)
            return "base > DV_MAX_CTR";
        if (e->ncloud > e->capcloud)
            return "ncloud > capcloud";
        if (e->ncloud && !e->cloud)
            return "cloud without storage";
        for (uint32_t k = 0; k < e->ncloud; k++) {
            const dv_ival *iv = &e->cloud[k];
            if (iv->lo > iv->hi)
                return "interval lo > hi";
            if (iv->hi > DV_MAX_CTR)
                return "interval hi > DV_MAX_CTR";
            if (iv->lo <= e->base + 1)
                return "interval touches the prefix";
            if (k && iv->lo <= e->cloud[k - 1].hi + 1)
                return "intervals unsorted, overlapping or adjacent";
        }
    }
    return NULL;
}

#define ASSERT_NF(c)                                                                               \
    do {                                                                                           \
        const char *nf_err_ = normal_form_error(c);                                                \
        cr_assert(nf_err_ == NULL, "normal form broken: %s", nf_err_);                             \
    } while (0)

/* Brute-force model: NR replicas, counters 1..MAXC. */
#define NR   4
#define MAXC 72
static const uint64_t RIDS[NR] = {0, 7, (uint64_t)1 << 40, UINT64_MAX};

typedef struct {
    bool has[NR][MAXC + 1];
} model;

static void model_add_range(model *m, int r, uint64_t lo, uint64_t hi) {
    for (uint64_t c = lo; c <= hi; c++)
        m->has[r][c] = true;
}

/* Compare contains() against the model for every dot in the model's universe, plus dots
 * just outside it and replicas that are not in it. */
static void assert_matches(const dv_ctx *c, const model *m) {
    ASSERT_NF(c);
    for (int r = 0; r < NR; r++) {
        uint64_t max = 0;
        for (uint64_t k = 0; k <= MAXC + 2; k++) {
            bool want = k >= 1 && k <= MAXC && m->has[r][k];
            bool got = dv_ctx_contains(c, (dv_dot){RIDS[r], k});
            cr_assert_eq(got, want, "contains(rid #%d, %llu) = %d, model says %d", r,
                         (unsigned long long)k, got, want);
            if (want)
                max = k;
        }
        cr_assert_eq(dv_ctx_max(c, RIDS[r]), max);
    }
    /* replicas never added */
    cr_assert(!dv_ctx_contains(c, (dv_dot){1, 1}));
    cr_assert(!dv_ctx_contains(c, (dv_dot){UINT64_MAX - 1, 1}));
    cr_assert_eq(dv_ctx_max(c, 1), 0);
    /* total number of dots beyond the bases */
    uint64_t cloud_total = 0;
    for (int r = 0; r < NR; r++) {
        uint64_t base = 0;
        while (base < MAXC && m->has[r][base + 1])
            base++;
        for (uint64_t k = base + 1; k <= MAXC; k++)
            cloud_total += m->has[r][k];
    }
    cr_assert_eq(dv_ctx_cloud_dots(c), cloud_total);
}

/* Random context with its model: single dots and ranges over NR replicas. */
static void random_ctx(dv_ctx *c, model *m, int ops, int density) {
    for (int i = 0; i < ops; i++) {
        int r = (int)rnd_below(NR);
        uint64_t lo = 1 + rnd_below(MAXC);
        uint64_t hi = lo;
        if (rnd_below(4) == 0)
            hi = lo + rnd_below((uint64_t)density);
        if (hi > MAXC)
            hi = MAXC;
        int rc = (lo == hi && rnd_below(2)) ? dv_ctx_add(c, (dv_dot){RIDS[r], lo})
                                            : dv_ctx_add_range(c, RIDS[r], lo, hi);
        cr_assert_eq(rc, DV_OK);
        model_add_range(m, r, lo, hi);
    }
}

/* The set of dots of c restricted to the model's universe, as a model. */
static void to_model(const dv_ctx *c, model *m) {
    memset(m, 0, sizeof(*m));
    for (int r = 0; r < NR; r++)
        for (uint64_t k = 1; k <= MAXC; k++)
            m->has[r][k] = dv_ctx_contains(c, (dv_dot){RIDS[r], k});
}

static void assert_ctx_copy_equal(const dv_ctx *a, const dv_ctx *b) {
    cr_assert(dv_ctx_equal(a, b));
    cr_assert(dv_ctx_equal(b, a));
}

/* ---- add / contains ---- */

Test(dots, empty_context) {
    dv_ctx c;
    dv_ctx_init(&c);
    ASSERT_NF(&c);
    cr_assert(!dv_ctx_contains(&c, (dv_dot){0, 1}));
    cr_assert(!dv_ctx_contains(&c, (dv_dot){0, 0}));
    cr_assert_eq(dv_ctx_max(&c, 0), 0);
    cr_assert_eq(dv_ctx_cloud_dots(&c), 0);
    dv_ctx d;
    dv_ctx_init(&d);
    cr_assert(dv_ctx_equal(&c, &d));
    dv_ctx_free(&c);
    dv_ctx_free(&d);
}

Test(dots, add_contains) {
    dv_ctx c;
    dv_ctx_init(&c);
    cr_assert_eq(dv_ctx_add(&c, (dv_dot){5, 1}), DV_OK);
    cr_assert(dv_ctx_contains(&c, (dv_dot){5, 1}));
    cr_assert(!dv_ctx_contains(&c, (dv_dot){5, 2}));
    cr_assert(!dv_ctx_contains(&c, (dv_dot){5, 0}), "ctr 0 is never a dot");
    cr_assert(!dv_ctx_contains(&c, (dv_dot){4, 1}));
    cr_assert(!dv_ctx_contains(&c, (dv_dot){6, 1}));
    cr_assert_eq(c.n, 1);
    cr_assert_eq(c.v[0].base, 1);
    cr_assert_eq(c.v[0].ncloud, 0);

    /* a dot beyond the prefix does not imply the ones before it (delta_crdt_ex#65) */
    cr_assert_eq(dv_ctx_add(&c, (dv_dot){5, 10}), DV_OK);
    cr_assert(dv_ctx_contains(&c, (dv_dot){5, 10}));
    for (uint64_t k = 2; k < 10; k++)
        cr_assert(!dv_ctx_contains(&c, (dv_dot){5, k}));
    cr_assert(!dv_ctx_contains(&c, (dv_dot){5, 11}));
    cr_assert_eq(c.v[0].base, 1);
    cr_assert_eq(c.v[0].ncloud, 1);
    cr_assert_eq(dv_ctx_max(&c, 5), 10);
    cr_assert_eq(dv_ctx_cloud_dots(&c), 1);

    /* adding again is a no-op */
    dv_ctx before;
    dv_ctx_init(&before);
    cr_assert_eq(dv_ctx_copy(&before, &c), DV_OK);
    cr_assert_eq(dv_ctx_add(&c, (dv_dot){5, 10}), DV_OK);
    cr_assert_eq(dv_ctx_add(&c, (dv_dot){5, 1}), DV_OK);
    assert_ctx_copy_equal(&c, &before);

    /* a first dot of a new replica past 1 goes to the cloud, entries stay sorted */
    cr_assert_eq(dv_ctx_add(&c, (dv_dot){UINT64_MAX, 3}), DV_OK);
    cr_assert_eq(dv_ctx_add(&c, (dv_dot){0, 2}), DV_OK);
    ASSERT_NF(&c);
    cr_assert_eq(c.n, 3);
    cr_assert_eq(c.v[0].rid, 0);
    cr_assert_eq(c.v[0].base, 0);
    cr_assert_eq(c.v[2].rid, UINT64_MAX);
    cr_assert(dv_ctx_contains(&c, (dv_dot){UINT64_MAX, 3}));
    cr_assert(!dv_ctx_contains(&c, (dv_dot){UINT64_MAX, 1}));
    cr_assert(dv_ctx_contains(&c, (dv_dot){0, 2}));
    cr_assert(!dv_ctx_contains(&c, (dv_dot){0, 1}));
    dv_ctx_free(&before);
    dv_ctx_free(&c);
}

Test(dots, add_out_of_order_fills_gaps_into_base) {
    /* every permutation order of 1..N ends with base N and an empty cloud */
    for (int seed = 1; seed <= 50; seed++) {
        rng_state = (uint64_t)seed;
        enum { N = 40 };
        uint64_t perm[N];
        for (int i = 0; i < N; i++)
            perm[i] = (uint64_t)i + 1;
        for (int i = N - 1; i > 0; i--) {
            int j = (int)rnd_below((uint64_t)i + 1);
            uint64_t t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        dv_ctx c;
        dv_ctx_init(&c);
        for (int i = 0; i < N; i++) {
            cr_assert_eq(dv_ctx_add(&c, (dv_dot){9, perm[i]}), DV_OK);
            ASSERT_NF(&c);
            for (int j = 0; j <= i; j++)
                cr_assert(dv_ctx_contains(&c, (dv_dot){9, perm[j]}));
        }
        cr_assert_eq(c.n, 1);
        cr_assert_eq(c.v[0].base, N);
        cr_assert_eq(c.v[0].ncloud, 0, "cloud must be empty once the gaps are filled");
        cr_assert_eq(dv_ctx_cloud_dots(&c), 0);
        cr_assert_eq(dv_ctx_compact(&c), 0);
        dv_ctx_free(&c);
    }

    /* strictly descending order: the cloud holds one interval until the last dot */
    dv_ctx c;
    dv_ctx_init(&c);
    for (uint64_t k = 20; k >= 2; k--) {
        cr_assert_eq(dv_ctx_add(&c, (dv_dot){1, k}), DV_OK);
        ASSERT_NF(&c);
        cr_assert_eq(c.v[0].base, 0);
        cr_assert_eq(c.v[0].ncloud, 1);
        cr_assert_eq(c.v[0].cloud[0].lo, k);
        cr_assert_eq(c.v[0].cloud[0].hi, 20);
    }
    cr_assert_eq(dv_ctx_add(&c, (dv_dot){1, 1}), DV_OK);
    cr_assert_eq(c.v[0].base, 20);
    cr_assert_eq(c.v[0].ncloud, 0);
    dv_ctx_free(&c);

    /* odd counters then even ones */
    dv_ctx_init(&c);
    for (uint64_t k = 1; k <= 31; k += 2)
        cr_assert_eq(dv_ctx_add(&c, (dv_dot){1, k}), DV_OK);
    cr_assert_eq(c.v[0].base, 1);
    cr_assert_eq(c.v[0].ncloud, 15);
    ASSERT_NF(&c);
    for (uint64_t k = 30; k >= 2; k -= 2) {
        cr_assert_eq(dv_ctx_add(&c, (dv_dot){1, k}), DV_OK);
        ASSERT_NF(&c);
    }
    cr_assert_eq(c.v[0].base, 31);
    cr_assert_eq(c.v[0].ncloud, 0);
    dv_ctx_free(&c);
}

Test(dots, add_range_merging) {
    dv_ctx c;
    dv_ctx_init(&c);
    cr_assert_eq(dv_ctx_add_range(&c, 3, 10, 20), DV_OK);
    cr_assert_eq(dv_ctx_add_range(&c, 3, 30, 40), DV_OK);
    ASSERT_NF(&c);
    cr_assert_eq(c.v[0].ncloud, 2);

    /* adjacent on the right of the first interval: joins it */
    cr_assert_eq(dv_ctx_add_range(&c, 3, 21, 25), DV_OK);
    ASSERT_NF(&c);
    cr_assert_eq(c.v[0].ncloud, 2);
    cr_assert_eq(c.v[0].cloud[0].lo, 10);
    cr_assert_eq(c.v[0].cloud[0].hi, 25);

    /* adjacent on the left of the second one */
    cr_assert_eq(dv_ctx_add_range(&c, 3, 27, 29), DV_OK);
    cr_assert_eq(c.v[0].ncloud, 2);
    cr_assert_eq(c.v[0].cloud[1].lo, 27);
    cr_assert_eq(c.v[0].cloud[1].hi, 40);

    /* a single dot bridging the gap joins both */
    cr_assert_eq(dv_ctx_add(&c, (dv_dot){3, 26}), DV_OK);
    ASSERT_NF(&c);
    cr_assert_eq(c.v[0].ncloud, 1);
    cr_assert_eq(c.v[0].cloud[0].lo, 10);
    cr_assert_eq(c.v[0].cloud[0].hi, 40);

    /* overlapping several intervals at once */
    cr_assert_eq(dv_ctx_add_range(&c, 3, 50, 55), DV_OK);
    cr_assert_eq(dv_ctx_add_range(&c, 3, 60, 65), DV_OK);
    cr_assert_eq(dv_ctx_add_range(&c, 3, 70, 75), DV_OK);
    cr_assert_eq(c.v[0].ncloud, 4);
    cr_assert_eq(dv_ctx_add_range(&c, 3, 35, 72), DV_OK);
    ASSERT_NF(&c);
    cr_assert_eq(c.v[0].ncloud, 1);
    cr_assert_eq(c.v[0].cloud[0].lo, 10);
    cr_assert_eq(c.v[0].cloud[0].hi, 75);

    /* a range inside an existing one changes nothing */
    cr_assert_eq(dv_ctx_add_range(&c, 3, 11, 74), DV_OK);
    cr_assert_eq(c.v[0].ncloud, 1);
    cr_assert_eq(c.v[0].cloud[0].lo, 10);
    cr_assert_eq(c.v[0].cloud[0].hi, 75);

    /* a range reaching the prefix absorbs everything it touches */
    cr_assert_eq(dv_ctx_add_range(&c, 3, 100, 110), DV_OK);
    cr_assert_eq(dv_ctx_add_range(&c, 3, 1, 9), DV_OK);
    ASSERT_NF(&c);
    cr_assert_eq(c.v[0].base, 75);
    cr_assert_eq(c.v[0].ncloud, 1);
    cr_assert_eq(c.v[0].cloud[0].lo, 100);

    /* a range overlapping the base partially extends it */
    cr_assert_eq(dv_ctx_add_range(&c, 3, 50, 98), DV_OK);
    cr_assert_eq(c.v[0].base, 98);
    cr_assert_eq(c.v[0].ncloud, 1);
    cr_assert_eq(dv_ctx_add(&c, (dv_dot){3, 99}), DV_OK);
    cr_assert_eq(c.v[0].base, 110);
    cr_assert_eq(c.v[0].ncloud, 0);
    ASSERT_NF(&c);

    /* the extreme counters */
    cr_assert_eq(dv_ctx_add(&c, (dv_dot){3, DV_MAX_CTR}), DV_OK);
    cr_assert(dv_ctx_contains(&c, (dv_dot){3, DV_MAX_CTR}));
    cr_assert(!dv_ctx_contains(&c, (dv_dot){3, DV_MAX_CTR - 1}));
    cr_assert(!dv_ctx_contains(&c, (dv_dot){3, DV_MAX_CTR + 1}));
    cr_assert_eq(dv_ctx_max(&c, 3), DV_MAX_CTR);
    cr_assert_eq(dv_ctx_add_range(&c, 3, 1, DV_MAX_CTR), DV_OK);
    ASSERT_NF(&c);
    cr_assert_eq(c.v[0].base, DV_MAX_CTR);
    cr_assert_eq(c.v[0].ncloud, 0);
    cr_assert(dv_ctx_contains(&c, (dv_dot){3, DV_MAX_CTR}));
    cr_assert(!dv_ctx_contains(&c, (dv_dot){3, UINT64_MAX}));
    dv_ctx_free(&c);
}

Test(dots, random_ops_match_model_and_keep_normal_form) {
    for (int seed = 1; seed <= 200; seed++) {
        rng_state = (uint64_t)seed * 7919;
        dv_ctx c;
        model m;
        dv_ctx_init(&c);
        memset(&m, 0, sizeof(m));
        int ops = 1 + (int)rnd_below(120);
        for (int i = 0; i < ops; i++) {
            random_ctx(&c, &m, 1, 1 + (int)rnd_below(12));
            cr_assert(normal_form_error(&c) == NULL, "seed %d op %d: %s", seed, i,
                      normal_form_error(&c));
        }
        assert_matches(&c, &m);
        dv_ctx_free(&c);
    }
}

/* ---- invalid input ---- */

Test(dots, invalid_ranges_rejected_without_change) {
    dv_ctx c, before;
    dv_ctx_init(&c);
    dv_ctx_init(&before);
    cr_assert_eq(dv_ctx_add_range(&c, 1, 1, 5), DV_OK);
    cr_assert_eq(dv_ctx_add_range(&c, 1, 9, 12), DV_OK);
    cr_assert_eq(dv_ctx_copy(&before, &c), DV_OK);

    struct {
        uint64_t rid, lo, hi;
    } bad[] = {
        {1, 0, 0},
        {1, 0, 3},
        {1, 0, DV_MAX_CTR},
        {1, 7, 6},
        {1, 2, 1},
        {1, DV_MAX_CTR, DV_MAX_CTR + 1},
        {1, DV_MAX_CTR + 1, DV_MAX_CTR + 1},
        {1, 6, UINT64_MAX},
        {1, UINT64_MAX, UINT64_MAX},
        {2, 0, 4}, /* a replica that is not in the context yet: no entry may appear */
        {2, 5, 4},
        {2, 1, DV_MAX_CTR + 1},
        {0, 0, 0},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cr_assert_eq(dv_ctx_add_range(&c, bad[i].rid, bad[i].lo, bad[i].hi), DV_EINVAL,
                     "range #%zu accepted", i);
        assert_ctx_copy_equal(&c, &before);
        ASSERT_NF(&c);
    }
    cr_assert_eq(dv_ctx_add(&c, (dv_dot){1, 0}), DV_EINVAL);
    cr_assert_eq(dv_ctx_add(&c, (dv_dot){3, 0}), DV_EINVAL);
    cr_assert_eq(dv_ctx_add(&c, (dv_dot){1, DV_MAX_CTR + 1}), DV_EINVAL);
    cr_assert_eq(dv_ctx_add(&c, (dv_dot){3, UINT64_MAX}), DV_EINVAL);
    assert_ctx_copy_equal(&c, &before);
    cr_assert_eq(c.n, 1);

    /* from_ranges with an invalid range reports it */
    dv_range r[] = {{1, 1, 2}, {1, 0, 2}};
    dv_ctx f;
    dv_ctx_init(&f);
    cr_assert_eq(dv_ctx_from_ranges(&f, r, 2), DV_EINVAL);
    ASSERT_NF(&f);
    dv_ctx_free(&f);
    dv_ctx_free(&c);
    dv_ctx_free(&before);
}

/* ---- merge ---- */

Test(dots, merge_is_set_union) {
    for (int seed = 1; seed <= 300; seed++) {
        rng_state = (uint64_t)seed * 104729;
        dv_ctx a, b;
        model ma, mb, mu;
        dv_ctx_init(&a);
        dv_ctx_init(&b);
        memset(&ma, 0, sizeof(ma));
        memset(&mb, 0, sizeof(mb));
        random_ctx(&a, &ma, (int)rnd_below(60), 1 + (int)rnd_below(10));
        random_ctx(&b, &mb, (int)rnd_below(60), 1 + (int)rnd_below(10));
        for (int r = 0; r < NR; r++)
            for (int k = 0; k <= MAXC; k++)
                mu.has[r][k] = ma.has[r][k] || mb.has[r][k];

        dv_ctx b_before;
        dv_ctx_init(&b_before);
        cr_assert_eq(dv_ctx_copy(&b_before, &b), DV_OK);
        cr_assert_eq(dv_ctx_merge(&a, &b), DV_OK);
        assert_matches(&a, &mu);
        assert_ctx_copy_equal(&b, &b_before); /* src untouched */
        assert_matches(&b, &mb);

        /* merging into an empty context is a copy */
        dv_ctx e;
        dv_ctx_init(&e);
        cr_assert_eq(dv_ctx_merge(&e, &b), DV_OK);
        assert_ctx_copy_equal(&e, &b);
        /* merging an empty context changes nothing */
        dv_ctx z;
        dv_ctx_init(&z);
        cr_assert_eq(dv_ctx_merge(&e, &z), DV_OK);
        assert_ctx_copy_equal(&e, &b);
        dv_ctx_free(&z);
        dv_ctx_free(&e);
        dv_ctx_free(&a);
        dv_ctx_free(&b);
        dv_ctx_free(&b_before);
    }
}

static void merged(dv_ctx *out, const dv_ctx *x, const dv_ctx *y) {
    cr_assert_eq(dv_ctx_copy(out, x), DV_OK);
    cr_assert_eq(dv_ctx_merge(out, y), DV_OK);
    ASSERT_NF(out);
}

Test(dots, merge_commutative_associative_idempotent) {
    for (int seed = 1; seed <= 300; seed++) {
        rng_state = (uint64_t)seed * 15485863;
        dv_ctx a, b, c;
        model ma, mb, mc;
        dv_ctx_init(&a);
        dv_ctx_init(&b);
        dv_ctx_init(&c);
        memset(&ma, 0, sizeof(ma));
        memset(&mb, 0, sizeof(mb));
        memset(&mc, 0, sizeof(mc));
        random_ctx(&a, &ma, (int)rnd_below(50), 1 + (int)rnd_below(8));
        random_ctx(&b, &mb, (int)rnd_below(50), 1 + (int)rnd_below(8));
        random_ctx(&c, &mc, (int)rnd_below(50), 1 + (int)rnd_below(8));

        dv_ctx ab, ba, ab_c, bc, a_bc, aa;
        dv_ctx_init(&ab);
        dv_ctx_init(&ba);
        dv_ctx_init(&ab_c);
        dv_ctx_init(&bc);
        dv_ctx_init(&a_bc);
        dv_ctx_init(&aa);
        merged(&ab, &a, &b);
        merged(&ba, &b, &a);
        cr_assert(dv_ctx_equal(&ab, &ba), "seed %d: merge not commutative", seed);
        merged(&ab_c, &ab, &c);
        merged(&bc, &b, &c);
        merged(&a_bc, &a, &bc);
        cr_assert(dv_ctx_equal(&ab_c, &a_bc), "seed %d: merge not associative", seed);
        merged(&aa, &a, &a);
        cr_assert(dv_ctx_equal(&aa, &a), "seed %d: merge not idempotent", seed);
        /* merging a context into itself (aliasing) */
        cr_assert_eq(dv_ctx_merge(&aa, &aa), DV_OK);
        cr_assert(dv_ctx_equal(&aa, &a));
        /* absorption: (a ∪ b) ∪ a == a ∪ b */
        cr_assert_eq(dv_ctx_merge(&ab, &a), DV_OK);
        cr_assert(dv_ctx_equal(&ab, &ba));

        /* equality agrees with the model */
        model m1, m2;
        to_model(&a, &m1);
        to_model(&b, &m2);
        cr_assert_eq(dv_ctx_equal(&a, &b), memcmp(&m1, &m2, sizeof(m1)) == 0);

        dv_ctx *all[] = {&a, &b, &c, &ab, &ba, &ab_c, &bc, &a_bc, &aa};
        for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
            dv_ctx_free(all[i]);
    }
}

/* ---- diff ---- */

static void check_diff(const dv_ctx *a, const dv_ctx *b, const model *ma, const model *mb) {
    dv_ranges out;
    dv_ranges_init(&out);
    cr_assert_eq(dv_ctx_diff(a, b, &out), DV_OK);
    model got;
    memset(&got, 0, sizeof(got));
    for (size_t i = 0; i < out.n; i++) {
        const dv_range *r = &out.r[i];
        cr_assert(r->lo >= 1 && r->lo <= r->hi && r->hi <= DV_MAX_CTR, "invalid range");
        if (i) { /* sorted by (rid, lo), disjoint */
            const dv_range *p = &out.r[i - 1];
            cr_assert(p->rid < r->rid || (p->rid == r->rid && p->hi < r->lo),
                      "diff output not sorted/disjoint");
        }
        int ri = -1;
        for (int k = 0; k < NR; k++)
            if (RIDS[k] == r->rid)
                ri = k;
        cr_assert(ri >= 0, "diff invented a replica");
        cr_assert(r->hi <= MAXC, "diff range beyond the universe");
        for (uint64_t k = r->lo; k <= r->hi; k++)
            got.has[ri][k] = true;
    }
    for (int r = 0; r < NR; r++)
        for (int k = 1; k <= MAXC; k++) {
            bool want = ma->has[r][k] && !(mb && mb->has[r][k]);
            cr_assert_eq(got.has[r][k], want, "diff wrong at rid #%d ctr %d", r, k);
        }
    dv_ranges_free(&out);
}

Test(dots, diff_is_set_difference) {
    for (int seed = 1; seed <= 300; seed++) {
        rng_state = (uint64_t)seed * 32452843;
        dv_ctx a, b;
        model ma, mb;
        dv_ctx_init(&a);
        dv_ctx_init(&b);
        memset(&ma, 0, sizeof(ma));
        memset(&mb, 0, sizeof(mb));
        random_ctx(&a, &ma, (int)rnd_below(60), 1 + (int)rnd_below(10));
        random_ctx(&b, &mb, (int)rnd_below(60), 1 + (int)rnd_below(10));
        check_diff(&a, &b, &ma, &mb);
        check_diff(&b, &a, &mb, &ma);
        check_diff(&a, NULL, &ma, NULL);
        check_diff(&a, &a, &ma, &ma);

        /* a ∪ (b \ a)-ranges == a ∪ b; and diff of the union against a is b \ a */
        dv_ranges out;
        dv_ranges_init(&out);
        cr_assert_eq(dv_ctx_diff(&b, &a, &out), DV_OK);
        dv_ctx u1, u2;
        dv_ctx_init(&u1);
        dv_ctx_init(&u2);
        cr_assert_eq(dv_ctx_copy(&u1, &a), DV_OK);
        cr_assert_eq(dv_ctx_from_ranges(&u1, out.r, out.n), DV_OK);
        merged(&u2, &a, &b);
        cr_assert(dv_ctx_equal(&u1, &u2));
        dv_ranges_free(&out);
        dv_ctx_free(&u1);
        dv_ctx_free(&u2);
        dv_ctx_free(&a);
        dv_ctx_free(&b);
    }
}

Test(dots, diff_appends_and_handles_extremes) {
    dv_ctx a, b;
    dv_ctx_init(&a);
    dv_ctx_init(&b);
    cr_assert_eq(dv_ctx_add_range(&a, 1, 1, DV_MAX_CTR), DV_OK);
    cr_assert_eq(dv_ctx_add_range(&b, 1, 5, 10), DV_OK);
    cr_assert_eq(dv_ctx_add_range(&b, 1, DV_MAX_CTR, DV_MAX_CTR), DV_OK);
    dv_ranges out;
    dv_ranges_init(&out);
    cr_assert_eq(dv_ranges_push(&out, 42, 1, 1), DV_OK); /* existing content is kept */
    cr_assert_eq(dv_ctx_diff(&a, &b, &out), DV_OK);
    cr_assert_eq(out.n, 3);
    cr_assert_eq(out.r[0].rid, 42);
    cr_assert_eq(out.r[1].rid, 1);
    cr_assert_eq(out.r[1].lo, 1);
    cr_assert_eq(out.r[1].hi, 4);
    cr_assert_eq(out.r[2].lo, 11);
    cr_assert_eq(out.r[2].hi, DV_MAX_CTR - 1);

    /* b covers the top counter and beyond a: nothing extra */
    out.n = 0;
    cr_assert_eq(dv_ctx_diff(&b, &a, &out), DV_OK);
    cr_assert_eq(out.n, 0);

    /* a replica b has never heard of is returned whole */
    cr_assert_eq(dv_ctx_add_range(&a, 2, 3, 3), DV_OK);
    cr_assert_eq(dv_ctx_add_range(&a, 2, 7, 9), DV_OK);
    out.n = 0;
    cr_assert_eq(dv_ctx_diff(&a, &b, &out), DV_OK);
    cr_assert_eq(out.n, 4);
    cr_assert_eq(out.r[2].rid, 2);
    cr_assert_eq(out.r[2].lo, 3);
    cr_assert_eq(out.r[2].hi, 3);
    cr_assert_eq(out.r[3].lo, 7);
    cr_assert_eq(out.r[3].hi, 9);

    /* many ranges: growth of dv_ranges */
    dv_ctx many;
    dv_ctx_init(&many);
    for (uint64_t k = 2; k <= 2000; k += 2)
        cr_assert_eq(dv_ctx_add(&many, (dv_dot){5, k}), DV_OK);
    out.n = 0;
    cr_assert_eq(dv_ctx_diff(&many, NULL, &out), DV_OK);
    cr_assert_eq(out.n, 1000);
    for (size_t i = 0; i < out.n; i++) {
        cr_assert_eq(out.r[i].lo, 2 * (i + 1));
        cr_assert_eq(out.r[i].hi, 2 * (i + 1));
    }
    dv_ctx_free(&many);
    dv_ranges_free(&out);
    dv_ctx_free(&a);
    dv_ctx_free(&b);
}

/* ---- copy, clear, from_ranges, compact ---- */

Test(dots, copy_is_deep_and_replaces) {
    rng_state = 99;
    dv_ctx a, b;
    model ma, mb;
    dv_ctx_init(&a);
    dv_ctx_init(&b);
    memset(&ma, 0, sizeof(ma));
    memset(&mb, 0, sizeof(mb));
    random_ctx(&a, &ma, 80, 6);
    random_ctx(&b, &mb, 80, 6);
    cr_assert(!dv_ctx_equal(&a, &b));

    cr_assert_eq(dv_ctx_copy(&b, &a), DV_OK); /* replaces b's content */
    assert_ctx_copy_equal(&a, &b);
    assert_matches(&b, &ma);
    cr_assert(b.v != a.v);
    for (uint32_t i = 0; i < a.n; i++)
        if (a.v[i].ncloud)
            cr_assert(a.v[i].cloud != b.v[i].cloud, "cloud shared");

    /* mutating the copy leaves the original alone */
    cr_assert_eq(dv_ctx_add_range(&b, RIDS[1], 1, MAXC), DV_OK);
    cr_assert_eq(dv_ctx_add(&b, (dv_dot){12345, 3}), DV_OK);
    assert_matches(&a, &ma);
    cr_assert(!dv_ctx_equal(&a, &b));

    /* copy of an empty context empties */
    dv_ctx e;
    dv_ctx_init(&e);
    cr_assert_eq(dv_ctx_copy(&b, &e), DV_OK);
    cr_assert_eq(b.n, 0);
    cr_assert(dv_ctx_equal(&b, &e));
    /* and the emptied one is usable */
    cr_assert_eq(dv_ctx_add(&b, (dv_dot){1, 1}), DV_OK);
    cr_assert(dv_ctx_contains(&b, (dv_dot){1, 1}));
    dv_ctx_free(&e);
    dv_ctx_free(&a);
    dv_ctx_free(&b);
}

Test(dots, clear_and_reuse) {
    rng_state = 5;
    dv_ctx a;
    model m;
    dv_ctx_init(&a);
    memset(&m, 0, sizeof(m));
    random_ctx(&a, &m, 50, 4);
    dv_ctx_clear(&a);
    cr_assert_eq(a.n, 0);
    memset(&m, 0, sizeof(m));
    assert_matches(&a, &m);
    random_ctx(&a, &m, 50, 4);
    assert_matches(&a, &m);
    dv_ctx_free(&a);
    cr_assert_eq(a.n, 0);
    cr_assert(a.v == NULL);
    dv_ctx_free(&a); /* double free after free is harmless: free re-initialises */
}

Test(dots, from_ranges_any_order) {
    for (int seed = 1; seed <= 200; seed++) {
        rng_state = (uint64_t)seed * 31;
        size_t n = rnd_below(40);
        dv_range r[40];
        model m;
        memset(&m, 0, sizeof(m));
        for (size_t i = 0; i < n; i++) {
            int ri = (int)rnd_below(NR);
            uint64_t lo = 1 + rnd_below(MAXC), hi = lo + rnd_below(10);
            if (hi > MAXC)
                hi = MAXC;
            r[i] = (dv_range){RIDS[ri], lo, hi};
            model_add_range(&m, ri, lo, hi);
        }
        dv_ctx c;
        dv_ctx_init(&c);
        cr_assert_eq(dv_ctx_from_ranges(&c, r, n), DV_OK);
        assert_matches(&c, &m);

        /* reversed order gives the same normal form */
        dv_range rev[40];
        for (size_t i = 0; i < n; i++)
            rev[i] = r[n - 1 - i];
        dv_ctx d;
        dv_ctx_init(&d);
        cr_assert_eq(dv_ctx_from_ranges(&d, rev, n), DV_OK);
        cr_assert(dv_ctx_equal(&c, &d));

        /* round trip: from_ranges(diff(c, NULL)) == c */
        dv_ranges out;
        dv_ranges_init(&out);
        cr_assert_eq(dv_ctx_diff(&c, NULL, &out), DV_OK);
        dv_ctx e;
        dv_ctx_init(&e);
        cr_assert_eq(dv_ctx_from_ranges(&e, out.r, out.n), DV_OK);
        cr_assert(dv_ctx_equal(&c, &e));
        dv_ranges_free(&out);
        dv_ctx_free(&c);
        dv_ctx_free(&d);
        dv_ctx_free(&e);
    }
    dv_ctx c;
    dv_ctx_init(&c);
    cr_assert_eq(dv_ctx_from_ranges(&c, NULL, 0), DV_OK);
    cr_assert_eq(c.n, 0);
    dv_ctx_free(&c);
}

Test(dots, compact_normalises_direct_edits) {
    dv_ctx c;
    dv_ctx_init(&c);
    cr_assert_eq(dv_ctx_add_range(&c, 1, 10, 12), DV_OK);
    cr_assert_eq(dv_ctx_add_range(&c, 1, 20, 22), DV_OK);
    cr_assert_eq(dv_ctx_add_range(&c, 1, 30, 32), DV_OK);
    cr_assert_eq(dv_ctx_add_range(&c, 2, 5, 5), DV_OK);
    cr_assert_eq(dv_ctx_add_range(&c, 3, 1, 4), DV_OK);
    cr_assert_eq(dv_ctx_compact(&c), 4);

    /* edit entries directly: rid 1's base grows to touch the first interval; the second
     * one is widened to touch the third; rid 2's only interval is dropped (empty entry) */
    c.v[0].base = 9;
    c.v[0].cloud[1].hi = 29;
    c.v[1].ncloud = 0;
    cr_assert_eq(dv_ctx_compact(&c), 1);
    ASSERT_NF(&c);
    cr_assert_eq(c.n, 2);
    cr_assert_eq(c.v[0].rid, 1);
    cr_assert_eq(c.v[0].base, 12);
    cr_assert_eq(c.v[0].ncloud, 1);
    cr_assert_eq(c.v[0].cloud[0].lo, 20);
    cr_assert_eq(c.v[0].cloud[0].hi, 32);
    cr_assert_eq(c.v[1].rid, 3);
    cr_assert_eq(c.v[1].base, 4);

    /* base jumps over every interval */
    c.v[0].base = 40;
    cr_assert_eq(dv_ctx_compact(&c), 0);
    ASSERT_NF(&c);
    cr_assert_eq(c.v[0].base, 40);
    cr_assert_eq(c.v[0].ncloud, 0);
    /* the compacted context still works */
    cr_assert_eq(dv_ctx_add(&c, (dv_dot){1, 42}), DV_OK);
    cr_assert_eq(dv_ctx_add(&c, (dv_dot){1, 41}), DV_OK);
    cr_assert_eq(c.v[0].base, 42);
    ASSERT_NF(&c);
    dv_ctx_free(&c);
}

Test(dots, memory_grows_with_content) {
    dv_ctx c;
    dv_ctx_init(&c);
    size_t m0 = dv_ctx_memory(&c);
    for (uint64_t k = 2; k <= 400; k += 2)
        cr_assert_eq(dv_ctx_add(&c, (dv_dot){1, k}), DV_OK);
    size_t m1 = dv_ctx_memory(&c);
    cr_assert(m1 >= m0 + 200 * sizeof(dv_ival), "memory %zu too small for 200 intervals", m1);
    cr_assert(m1 < 1 << 20);
    dv_ctx_free(&c);
}

/* ---- allocation failure ---- */

static long fail_after = -1; /* allocations left before failing; -1: never fail */
static long live_blocks;

static void *t_alloc(size_t n) {
    if (fail_after == 0)
        return NULL;
    if (fail_after > 0)
        fail_after--;
    void *p = malloc(n);
    if (p)
        live_blocks++;
    return p;
}

static void *t_realloc(void *p, size_t n) {
    if (fail_after == 0)
        return NULL;
    if (fail_after > 0)
        fail_after--;
    void *q = realloc(p, n);
    if (q && !p)
        live_blocks++;
    return q;
}

static void t_free(void *p) {
    if (p)
        live_blocks--;
    free(p);
}

static const dv_allocator test_allocator = {t_alloc, t_realloc, t_free};

Test(dots, oom_keeps_normal_form_and_a_subset) {
    dv_set_allocator(&test_allocator);
    for (int seed = 1; seed <= 150; seed++) {
        rng_state = (uint64_t)seed * 7;
        live_blocks = 0;
        dv_ctx a, b;
        model ma, mb;
        dv_ctx_init(&a);
        dv_ctx_init(&b);
        memset(&ma, 0, sizeof(ma));
        memset(&mb, 0, sizeof(mb));
        random_ctx(&a, &ma, (int)rnd_below(40), 5);
        random_ctx(&b, &mb, (int)rnd_below(40), 5);

        /* merge with the k-th allocation failing */
        fail_after = (long)rnd_below(6);
        int rc = dv_ctx_merge(&a, &b);
        fail_after = -1;
        cr_assert(rc == DV_OK || rc == DV_ENOMEM);
        ASSERT_NF(&a);
        model got;
        to_model(&a, &got);
        for (int r = 0; r < NR; r++)
            for (int k = 1; k <= MAXC; k++) {
                cr_assert(!ma.has[r][k] || got.has[r][k], "lost a dot of dst on ENOMEM");
                cr_assert(!got.has[r][k] || ma.has[r][k] || mb.has[r][k], "invented a dot");
            }

        /* single adds with a failing allocator */
        fail_after = 0;
        dv_ctx before;
        dv_ctx_init(&before);
        fail_after = -1;
        cr_assert_eq(dv_ctx_copy(&before, &a), DV_OK);
        fail_after = 0;
        rc = dv_ctx_add(&a, (dv_dot){0xabcdef, 1 + rnd_below(MAXC)});
        fail_after = -1;
        cr_assert(rc == DV_OK || rc == DV_ENOMEM);
        ASSERT_NF(&a);
        if (rc == DV_ENOMEM)
            cr_assert(dv_ctx_equal(&a, &before), "failed add changed the set");

        /* copy failing midway leaves dst alone and leaks nothing */
        dv_ctx cp;
        dv_ctx_init(&cp);
        fail_after = (long)rnd_below(4);
        rc = dv_ctx_copy(&cp, &a);
        fail_after = -1;
        if (rc == DV_OK)
            cr_assert(dv_ctx_equal(&cp, &a));
        else
            cr_assert_eq(cp.n, 0);
        dv_ctx_free(&cp);
        dv_ctx_free(&before);
        dv_ctx_free(&a);
        dv_ctx_free(&b);
        cr_assert_eq(live_blocks, 0, "leaked %ld blocks", live_blocks);
    }
    dv_set_allocator(NULL);
}

/* Minimal reproducer: the first dot of a new replica beyond counter 1 needs a cloud
 * allocation; when it fails, the entry inserted for the replica must not stay behind
 * (normal form: no empty entry; equal sets must compare equal). */
Test(dots, oom_on_new_replica_cloud_leaves_no_empty_entry) {
    dv_ctx c, before;
    dv_ctx_init(&c);
    dv_ctx_init(&before);
    cr_assert_eq(dv_ctx_add(&c, (dv_dot){1, 1}), DV_OK); /* c.cap == 4: no entry realloc */
    cr_assert_eq(dv_ctx_copy(&before, &c), DV_OK);
    dv_set_allocator(&test_allocator);
    fail_after = 0;
    int rc = dv_ctx_add(&c, (dv_dot){2, 5});
    fail_after = -1;
    dv_set_allocator(NULL);
    cr_assert_eq(rc, DV_ENOMEM);
    cr_assert(!dv_ctx_contains(&c, (dv_dot){2, 5}));
    cr_assert_eq(c.n, 1, "an empty entry for rid 2 was left behind (n = %u)", c.n);
    ASSERT_NF(&c);
    cr_assert(dv_ctx_equal(&c, &before));
    dv_ctx_free(&c);
    dv_ctx_free(&before);
}

Test(dots, equal_detects_every_difference) {
    dv_ctx a, b;
    dv_ctx_init(&a);
    dv_ctx_init(&b);
    cr_assert_eq(dv_ctx_add_range(&a, 1, 1, 3), DV_OK);
    cr_assert_eq(dv_ctx_add_range(&a, 1, 10, 12), DV_OK);
    cr_assert_eq(dv_ctx_copy(&b, &a), DV_OK);
    cr_assert(dv_ctx_equal(&a, &b));

    cr_assert_eq(dv_ctx_add_range(&b, 1, 20, 22), DV_OK); /* one more interval */
    cr_assert(!dv_ctx_equal(&a, &b));
    cr_assert(!dv_ctx_equal(&b, &a));
    cr_assert_eq(dv_ctx_copy(&b, &a), DV_OK);
    cr_assert_eq(dv_ctx_add(&b, (dv_dot){1, 13}), DV_OK); /* longer interval */
    cr_assert(!dv_ctx_equal(&a, &b));
    cr_assert(!dv_ctx_equal(&b, &a));
    cr_assert_eq(dv_ctx_copy(&b, &a), DV_OK);
    cr_assert_eq(dv_ctx_add(&b, (dv_dot){1, 4}), DV_OK); /* larger base */
    cr_assert(!dv_ctx_equal(&a, &b));
    cr_assert_eq(dv_ctx_copy(&b, &a), DV_OK);
    cr_assert_eq(dv_ctx_add(&b, (dv_dot){2, 1}), DV_OK); /* one more replica */
    cr_assert(!dv_ctx_equal(&a, &b));
    cr_assert(!dv_ctx_equal(&b, &a));

    /* same shape, other replica */
    dv_ctx c, d;
    dv_ctx_init(&c);
    dv_ctx_init(&d);
    cr_assert_eq(dv_ctx_add_range(&c, 1, 1, 3), DV_OK);
    cr_assert_eq(dv_ctx_add_range(&d, 2, 1, 3), DV_OK);
    cr_assert(!dv_ctx_equal(&c, &d));
    dv_ctx_free(&a);
    dv_ctx_free(&b);
    dv_ctx_free(&c);
    dv_ctx_free(&d);
}

Test(dots, compact_merges_overlapping_and_contained_intervals) {
    dv_ctx c;
    dv_ctx_init(&c);
    cr_assert_eq(dv_ctx_add_range(&c, 1, 10, 20), DV_OK);
    cr_assert_eq(dv_ctx_add_range(&c, 1, 30, 40), DV_OK);
    cr_assert_eq(dv_ctx_add_range(&c, 1, 50, 60), DV_OK);
    /* direct edits: the second interval is moved inside the first one, the third one now
     * overlaps the first one's tail */
    c.v[0].cloud[1] = (dv_ival){12, 15};
    c.v[0].cloud[2] = (dv_ival){18, 25};
    cr_assert_eq(dv_ctx_compact(&c), 1);
    ASSERT_NF(&c);
    cr_assert_eq(c.v[0].cloud[0].lo, 10);
    cr_assert_eq(c.v[0].cloud[0].hi, 25);
    for (uint64_t k = 10; k <= 25; k++)
        cr_assert(dv_ctx_contains(&c, (dv_dot){1, k}));
    cr_assert(!dv_ctx_contains(&c, (dv_dot){1, 26}));
    dv_ctx_free(&c);
}

Test(dots, next_seen_matches_model) {
    for (int seed = 1; seed <= 200; seed++) {
        rng_state = (uint64_t)seed * 48271;
        dv_ctx c;
        model m;
        dv_ctx_init(&c);
        memset(&m, 0, sizeof(m));
        random_ctx(&c, &m, (int)rnd_below(50), 1 + (int)rnd_below(8));
        for (int r = 0; r < NR; r++)
            for (uint64_t k = 0; k <= MAXC + 2; k++) {
                uint64_t want = 0;
                for (uint64_t j = k ? k : 1; j <= MAXC && !want; j++)
                    if (m.has[r][j])
                        want = j;
                uint64_t got = dv_ctx_next_seen(&c, RIDS[r], k);
                cr_assert_eq(got, want, "seed %d: next_seen(rid #%d, %llu) = %llu, want %llu", seed,
                             r, (unsigned long long)k, (unsigned long long)got,
                             (unsigned long long)want);
            }
        cr_assert_eq(dv_ctx_next_seen(&c, 12345, 1), 0);
        dv_ctx_free(&c);
    }
    dv_ctx c;
    dv_ctx_init(&c);
    cr_assert_eq(dv_ctx_add(&c, (dv_dot){1, DV_MAX_CTR}), DV_OK);
    cr_assert_eq(dv_ctx_next_seen(&c, 1, 1), DV_MAX_CTR);
    cr_assert_eq(dv_ctx_next_seen(&c, 1, DV_MAX_CTR), DV_MAX_CTR);
    cr_assert_eq(dv_ctx_next_seen(&c, 1, DV_MAX_CTR + 1), 0);
    cr_assert_eq(dv_ctx_next_seen(&c, 1, UINT64_MAX), 0);
    dv_ctx_free(&c);
}
