/* owners.c - the pid -> keys index (owners.h). */
#include "owners.h"

#include <string.h>

#include "alloc.h"
#include "dots.h" /* DV_OK, DV_ENOMEM */
#include "hash.h"

#define MIN_CAP    16
#define SET_MIN    (4 * DV_OWNERS_ARRAY_MAX) /* a key set's first size: at most half full */
#define ARRAY_BACK (DV_OWNERS_ARRAY_MAX / 2) /* a set this small goes back to an array */

void dv_owners_init(dv_owners *o) {
    memset(o, 0, sizeof(*o));
}

static inline bool is_set(const dv_owner_slot *s) {
    return s->cap > DV_OWNERS_ARRAY_MAX;
}

static void slot_clear_keys(dv_owners *o, dv_owner_slot *s) {
    if (s->cap) {
        dv_free(s->k.many);
        o->heap -= (size_t)s->cap * sizeof(uint64_t);
    }
}

void dv_owners_free(dv_owners *o) {
    for (size_t i = 0; i < o->cap; i++)
        if (o->slots[i].pid)
            slot_clear_keys(o, &o->slots[i]);
    if (o->slots)
        dv_pages_free(o->slots, o->cap * sizeof(dv_owner_slot));
    dv_owners_init(o);
}

static inline uint64_t norm(uint64_t id) {
    return id ? id : 1;
}

/* ---------------------------------------------------------------- key sets
 * A process's keys beyond DV_OWNERS_ARRAY_MAX: linear probing over cap (a power of two)
 * places, 0 = empty, at most half full. */

static inline size_t key_home(uint64_t key, uint32_t cap) {
    return (size_t)dv_mix64(key) & (cap - 1);
}

/* The place of key in the set, or of the empty place ending its probe run. */
static size_t set_find(const uint64_t *set, uint32_t cap, uint64_t key) {
    size_t i = key_home(key, cap);
    while (set[i] && set[i] != key)
        i = (i + 1) & (cap - 1);
    return i;
}

static void set_insert_new(uint64_t *set, uint32_t cap, uint64_t key) {
    set[set_find(set, cap, key)] = key;
}

static void set_delete_at(uint64_t *set, uint32_t cap, size_t i) {
    size_t mask = cap - 1;
    for (size_t j = (i + 1) & mask; set[j]; j = (j + 1) & mask) {
        size_t h = key_home(set[j], cap);
        bool stays = i < j ? (h > i && h <= j) : (h > i || h <= j);
        if (!stays) {
            set[i] = set[j];
            i = j;
        }
    }
    set[i] = 0;
}

/* Moves s's keys to ncap places: an array (ncap <= DV_OWNERS_ARRAY_MAX, n <= ncap) or a set. */
static int rebuild(dv_owners *o, dv_owner_slot *s, uint32_t ncap) {
    uint64_t *nk = dv_calloc(ncap, sizeof(uint64_t));
    if (!nk)
        return DV_ENOMEM;
    const uint64_t *old = s->cap ? s->k.many : &s->k.one;
    size_t nold = s->cap ? s->cap : 1, m = 0;
    for (size_t i = 0; i < nold; i++) {
        if (!old[i])
            continue;
        if (ncap > DV_OWNERS_ARRAY_MAX)
            set_insert_new(nk, ncap, old[i]);
        else
            nk[m++] = old[i];
    }
    slot_clear_keys(o, s);
    o->heap += (size_t)ncap * sizeof(uint64_t);
    s->k.many = nk;
    s->cap = ncap;
    return DV_OK;
}

/* ---------------------------------------------------------------- the pid table */

static inline size_t home(const dv_owners *o, uint64_t pid) {
    return (size_t)dv_mix64(pid) & (o->cap - 1);
}

/* The slot of pid, or NULL. */
static dv_owner_slot *find(const dv_owners *o, uint64_t pid) {
    if (!o->count)
        return NULL;
    size_t mask = o->cap - 1;
    for (size_t i = home(o, pid);; i = (i + 1) & mask) {
        dv_owner_slot *s = &o->slots[i];
        if (!s->pid)
            return NULL;
        if (s->pid == pid)
            return s;
    }
}

static int resize(dv_owners *o, size_t ncap) {
    if (ncap > SIZE_MAX / sizeof(dv_owner_slot))
        return DV_ENOMEM;
    dv_owner_slot *ns = dv_pages_alloc(ncap * sizeof(dv_owner_slot));
    if (!ns)
        return DV_ENOMEM;
    size_t mask = ncap - 1;
    for (size_t i = 0; i < o->cap; i++) {
        if (!o->slots[i].pid)
            continue;
        size_t j = (size_t)dv_mix64(o->slots[i].pid) & mask;
        while (ns[j].pid)
            j = (j + 1) & mask;
        ns[j] = o->slots[i];
    }
    if (o->slots)
        dv_pages_free(o->slots, o->cap * sizeof(dv_owner_slot));
    o->slots = ns;
    o->cap = ncap;
    return DV_OK;
}

/* Empties slot i, shifting back the slots after it that probed past it. */
static void delete_at(dv_owners *o, size_t i) {
    size_t mask = o->cap - 1;
    for (size_t j = (i + 1) & mask; o->slots[j].pid; j = (j + 1) & mask) {
        size_t h = home(o, o->slots[j].pid);
        /* slot j may move to i when its home is not in the cyclic range (i, j] */
        bool stays = i < j ? (h > i && h <= j) : (h > i || h <= j);
        if (!stays) {
            o->slots[i] = o->slots[j];
            i = j;
        }
    }
    memset(&o->slots[i], 0, sizeof(o->slots[i]));
    o->count--;
    if (!o->count) { /* the last process went: give the table back */
        dv_pages_free(o->slots, o->cap * sizeof(dv_owner_slot));
        o->slots = NULL;
        o->cap = 0;
    }
}

/* Adds key (not held yet) to s. */
static int slot_add(dv_owners *o, dv_owner_slot *s, uint64_t key) {
    if (s->n == UINT32_MAX / 4)
        return DV_ENOMEM;
    if (is_set(s)) {
        if ((s->n + 1) * 2 > s->cap && rebuild(o, s, s->cap * 2))
            return DV_ENOMEM;
        set_insert_new(s->k.many, s->cap, key);
    } else if (s->n < s->cap) {
        s->k.many[s->n] = key;
    } else if (s->n < DV_OWNERS_ARRAY_MAX) { /* the inline key or a full array: grow */
        if (rebuild(o, s, s->cap ? s->cap * 2 : 4))
            return DV_ENOMEM;
        s->k.many[s->n] = key;
    } else { /* a full array of the most: a set */
        if (rebuild(o, s, SET_MIN))
            return DV_ENOMEM;
        set_insert_new(s->k.many, s->cap, key);
    }
    s->n++;
    o->keys++;
    return DV_OK;
}

int dv_owners_add(dv_owners *o, uint64_t pid, uint64_t key) {
    pid = norm(pid);
    key = norm(key);
    dv_owner_slot *s = find(o, pid);
    if (s) {
        if (is_set(s)) {
            if (s->k.many[set_find(s->k.many, s->cap, key)] == key)
                return DV_OK;
        } else {
            const uint64_t *k = s->cap ? s->k.many : &s->k.one;
            for (uint32_t i = 0; i < s->n; i++)
                if (k[i] == key)
                    return DV_OK;
        }
        return slot_add(o, s, key);
    }
    if ((o->count + 1) * 4 > o->cap * 3) {
        if (resize(o, o->cap ? o->cap * 2 : MIN_CAP))
            return DV_ENOMEM;
    }
    size_t mask = o->cap - 1, i = home(o, pid);
    while (o->slots[i].pid)
        i = (i + 1) & mask;
    o->slots[i] = (dv_owner_slot){.pid = pid, .n = 1, .cap = 0, .k.one = key};
    o->count++;
    o->keys++;
    return DV_OK;
}

bool dv_owners_remove(dv_owners *o, uint64_t pid, uint64_t key) {
    key = norm(key);
    dv_owner_slot *s = find(o, norm(pid));
    if (!s)
        return false;
    if (is_set(s)) {
        size_t i = set_find(s->k.many, s->cap, key);
        if (s->k.many[i] != key)
            return false;
        set_delete_at(s->k.many, s->cap, i);
    } else {
        uint64_t *k = s->cap ? s->k.many : &s->k.one;
        uint32_t i = 0;
        while (i < s->n && k[i] != key)
            i++;
        if (i == s->n)
            return false;
        k[i] = k[s->n - 1];
        k[s->n - 1] = 0;
    }
    s->n--;
    o->keys--;
    if (s->n == 0) {
        slot_clear_keys(o, s);
        delete_at(o, (size_t)(s - o->slots));
    } else if (s->n == 1 && s->cap) { /* back to one inline key */
        uint64_t last = 0;
        for (size_t i = 0; !last; i++)
            last = s->k.many[i];
        slot_clear_keys(o, s);
        s->cap = 0;
        s->k.one = last;
    } else if (is_set(s) && s->n <= ARRAY_BACK) {
        rebuild(o, s, DV_OWNERS_ARRAY_MAX); /* on failure it stays a set, which is fine */
    }
    return true;
}

size_t dv_owners_get(const dv_owners *o, uint64_t pid, const uint64_t **places, size_t *nplaces) {
    dv_owner_slot *s = find(o, norm(pid));
    if (!s) {
        *places = NULL;
        *nplaces = 0;
        return 0;
    }
    *places = s->cap ? s->k.many : &s->k.one;
    *nplaces = is_set(s) ? s->cap : s->n;
    return s->n;
}

bool dv_owners_drop(dv_owners *o, uint64_t pid) {
    dv_owner_slot *s = find(o, norm(pid));
    if (!s)
        return false;
    o->keys -= s->n;
    slot_clear_keys(o, s);
    delete_at(o, (size_t)(s - o->slots));
    return true;
}

size_t dv_owners_memory(const dv_owners *o) {
    return o->cap * sizeof(dv_owner_slot) + o->heap;
}
