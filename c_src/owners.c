/* owners.c - the pid -> keys index (owners.h). */
#include "owners.h"

#include <string.h>

#include "alloc.h"
#include "errors.h"
#include "hash.h"

#define MIN_CAP   16
#define REC       1                         /* bit 0 of a slot's pid: v is a record */
#define SET_MIN   (4 * DV_OWNERS_ARRAY_MAX) /* a key set's first size: at most half full */
#define SET_BACK  (DV_OWNERS_ARRAY_MAX / 2) /* a set this small goes back to an array */
#define ARRAY_MIN 4

void dv_owners_init(dv_owners *o) {
    memset(o, 0, sizeof(*o));
}

/* The stored form of a pid id: 63 bits, never 0. */
static inline uint64_t pid_norm(uint64_t pid) {
    pid &= ~(uint64_t)REC;
    return pid ? pid : 2;
}

static inline uint64_t key_norm(uint64_t key) {
    return key ? key : 1;
}

static inline dv_owner_rec *rec_of(const dv_owner_slot *s) {
    return (s->pid & REC) ? (dv_owner_rec *)(uintptr_t)s->v : NULL;
}

static inline bool is_set(const dv_owner_rec *r) {
    return r->cap > DV_OWNERS_ARRAY_MAX;
}

static inline size_t rec_size(uint32_t cap) {
    return sizeof(dv_owner_rec) + (size_t)cap * sizeof(uint64_t);
}

static void rec_free(dv_owners *o, dv_owner_rec *r) {
    o->heap -= rec_size(r->cap);
    dv_free(r);
}

static void shrink_abort(dv_owners *o) {
    if (o->nslots)
        dv_pages_free(o->nslots, o->ncap * sizeof(dv_owner_slot));
    o->nslots = NULL;
    o->ncap = o->cur = 0;
}

void dv_owners_free(dv_owners *o) {
    for (size_t i = 0; i < o->cap; i++)
        if (o->slots[i].pid & REC)
            rec_free(o, rec_of(&o->slots[i]));
    if (o->slots)
        dv_pages_free(o->slots, o->cap * sizeof(dv_owner_slot));
    shrink_abort(o); /* (its slots point to the same records) */
    dv_owners_init(o);
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

/* A record of ncap places (an array when ncap <= DV_OWNERS_ARRAY_MAX, else a set) holding
 * the n keys in places[0..nplaces) (zeros skipped). NULL on allocation failure. */
static dv_owner_rec *rec_new(dv_owners *o, uint32_t ncap, const uint64_t *places, size_t nplaces) {
    dv_owner_rec *r = dv_calloc(1, rec_size(ncap));
    if (!r)
        return NULL;
    r->cap = ncap;
    for (size_t i = 0; i < nplaces; i++) {
        if (!places[i])
            continue;
        if (is_set(r))
            r->k[set_find(r->k, ncap, places[i])] = places[i];
        else
            r->k[r->n] = places[i];
        r->n++;
    }
    o->heap += rec_size(ncap);
    return r;
}

/* Moves slot s's record to one of ncap places. */
static int rec_rebuild(dv_owners *o, dv_owner_slot *s, uint32_t ncap) {
    dv_owner_rec *r = rec_of(s);
    dv_owner_rec *nr = rec_new(o, ncap, r->k, is_set(r) ? r->cap : r->n);
    if (!nr)
        return DV_ENOMEM;
    rec_free(o, r);
    s->v = (uint64_t)(uintptr_t)nr;
    return DV_OK;
}

/* ---------------------------------------------------------------- the pid table */

static inline size_t home(const dv_owners *o, uint64_t pid) {
    return (size_t)dv_mix64(pid) & (o->cap - 1);
}

static inline uint64_t slot_pid(const dv_owner_slot *s) {
    return s->pid & ~(uint64_t)REC;
}

/* ---------------------------------------------------------------- shrinking
 * As the map's tables (awmap.c, "giving memory back"): nslots holds exactly the slots of
 * the places below cur; a change at a place below cur is mirrored there, a backward shift
 * across cur inserts or deletes there, and a step copies the next places. */

#define SHRINK_STEP ((size_t)16384)
static size_t shrink_step = SHRINK_STEP;

void dv_owners_set_step(size_t places) {
    shrink_step = places ? places : SHRINK_STEP;
}

static void tab_put(dv_owner_slot *t, size_t cap, dv_owner_slot s) {
    size_t i = (size_t)dv_mix64(slot_pid(&s)) & (cap - 1);
    while (t[i].pid)
        i = (i + 1) & (cap - 1);
    t[i] = s;
}

static size_t tab_find(const dv_owner_slot *t, size_t cap, uint64_t pid) {
    size_t i = (size_t)dv_mix64(pid) & (cap - 1);
    while (slot_pid(&t[i]) != pid)
        i = (i + 1) & (cap - 1);
    return i;
}

static void tab_del(dv_owner_slot *t, size_t cap, uint64_t pid) {
    size_t mask = cap - 1, i = tab_find(t, cap, pid);
    for (size_t j = (i + 1) & mask; t[j].pid; j = (j + 1) & mask) {
        size_t h = (size_t)dv_mix64(slot_pid(&t[j])) & mask;
        bool stays = i < j ? (h > i && h <= j) : (h > i || h <= j);
        if (!stays) {
            t[i] = t[j];
            i = j;
        }
    }
    memset(&t[i], 0, sizeof(t[i]));
}

/* Slot i changed in place (its keys): the shrink's copy follows. */
static void mirror(dv_owners *o, size_t i) {
    if (o->nslots && i < o->cur)
        o->nslots[tab_find(o->nslots, o->ncap, slot_pid(&o->slots[i]))] = o->slots[i];
}

/* At the end of every change: a step of the shrink in progress, or a new one when the table
 * is below an eighth full. */
static void shrink_step_run(dv_owners *o) {
    if (!o->nslots) {
        if (o->cap <= MIN_CAP || o->count * 8 >= o->cap)
            return;
        size_t ncap = MIN_CAP;
        while (o->count * 2 * 4 > ncap * 3) /* about three eighths full */
            ncap *= 2;
        if (!(o->nslots = dv_pages_alloc(ncap * sizeof(dv_owner_slot))))
            return;
        o->ncap = ncap;
        o->cur = 0;
    }
    size_t end = o->cur + shrink_step;
    for (; o->cur < o->cap && o->cur < end; o->cur++)
        if (o->slots[o->cur].pid)
            tab_put(o->nslots, o->ncap, o->slots[o->cur]);
    if (o->cur < o->cap)
        return;
    dv_pages_free(o->slots, o->cap * sizeof(dv_owner_slot));
    o->slots = o->nslots;
    o->cap = o->ncap;
    o->nslots = NULL;
    o->ncap = o->cur = 0;
}

/* The slot of pid (normalised), or NULL. */
static dv_owner_slot *find(const dv_owners *o, uint64_t pid) {
    if (!o->count)
        return NULL;
    size_t mask = o->cap - 1;
    for (size_t i = home(o, pid);; i = (i + 1) & mask) {
        dv_owner_slot *s = &o->slots[i];
        if (!s->pid)
            return NULL;
        if (slot_pid(s) == pid)
            return s;
    }
}

static int resize(dv_owners *o, size_t ncap) {
    if (ncap > SIZE_MAX / sizeof(dv_owner_slot))
        return DV_ENOMEM;
    dv_owner_slot *ns = dv_pages_alloc(ncap * sizeof(dv_owner_slot));
    if (!ns)
        return DV_ENOMEM;
    shrink_abort(o);
    size_t mask = ncap - 1;
    for (size_t i = 0; i < o->cap; i++) {
        if (!o->slots[i].pid)
            continue;
        size_t j = (size_t)dv_mix64(slot_pid(&o->slots[i])) & mask;
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

/* Empties slot i (its record already freed), shifting back the slots after it that probed
 * past it. */
static void delete_at(dv_owners *o, size_t i) {
    size_t mask = o->cap - 1;
    if (o->nslots && i < o->cur)
        tab_del(o->nslots, o->ncap, slot_pid(&o->slots[i]));
    for (size_t j = (i + 1) & mask; o->slots[j].pid; j = (j + 1) & mask) {
        size_t h = home(o, slot_pid(&o->slots[j]));
        /* slot j may move to i when its home is not in the cyclic range (i, j] */
        bool stays = i < j ? (h > i && h <= j) : (h > i || h <= j);
        if (!stays) {
            if (o->nslots && (i < o->cur) != (j < o->cur)) { /* across the shrink's cursor */
                if (i < o->cur)
                    tab_put(o->nslots, o->ncap, o->slots[j]);
                else
                    tab_del(o->nslots, o->ncap, slot_pid(&o->slots[j]));
            }
            o->slots[i] = o->slots[j];
            i = j;
        }
    }
    memset(&o->slots[i], 0, sizeof(o->slots[i]));
    o->count--;
    if (!o->count) { /* the last process went: give the table back */
        shrink_abort(o);
        dv_pages_free(o->slots, o->cap * sizeof(dv_owner_slot));
        o->slots = NULL;
        o->cap = 0;
    }
}

static bool slot_has(const dv_owner_slot *s, uint64_t key) {
    const dv_owner_rec *r = rec_of(s);
    if (!r)
        return s->v == key;
    if (is_set(r))
        return r->k[set_find(r->k, r->cap, key)] == key;
    for (uint32_t i = 0; i < r->n; i++)
        if (r->k[i] == key)
            return true;
    return false;
}

/* Adds key (not held yet) to the process of slot s. */
static int slot_add(dv_owners *o, dv_owner_slot *s, uint64_t key) {
    dv_owner_rec *r = rec_of(s);
    if (!r) { /* one key inline: a record of two */
        uint64_t two[2] = {s->v, key};
        if (!(r = rec_new(o, ARRAY_MIN, two, 2)))
            return DV_ENOMEM;
        s->pid |= REC;
        s->v = (uint64_t)(uintptr_t)r;
        o->keys++;
        return DV_OK;
    }
    if (r->n >= UINT32_MAX / 4)
        return DV_ENOMEM;
    uint32_t ncap = 0;
    if (is_set(r))
        ncap = (r->n + 1) * 2 > r->cap ? r->cap * 2 : 0;
    else if (r->n == r->cap)
        ncap = r->cap < DV_OWNERS_ARRAY_MAX ? r->cap * 2 : SET_MIN;
    if (ncap) {
        if (rec_rebuild(o, s, ncap))
            return DV_ENOMEM;
        r = rec_of(s);
    }
    if (is_set(r))
        r->k[set_find(r->k, r->cap, key)] = key;
    else
        r->k[r->n] = key;
    r->n++;
    o->keys++;
    return DV_OK;
}

int dv_owners_add(dv_owners *o, uint64_t pid, uint64_t key) {
    pid = pid_norm(pid);
    key = key_norm(key);
    dv_owner_slot *s = find(o, pid);
    if (s) {
        if (slot_has(s, key))
            return DV_OK;
        int rc = slot_add(o, s, key);
        mirror(o, (size_t)(s - o->slots));
        return rc;
    }
    if (o->nslots && (o->count + 1) * 4 > o->ncap * 3)
        shrink_abort(o); /* it would not hold them */
    if ((o->count + 1) * 4 > o->cap * 3) {
        if (resize(o, o->cap ? o->cap * 2 : MIN_CAP))
            return DV_ENOMEM;
    }
    size_t mask = o->cap - 1, i = home(o, pid);
    while (o->slots[i].pid)
        i = (i + 1) & mask;
    o->slots[i] = (dv_owner_slot){.pid = pid, .v = key};
    if (o->nslots && i < o->cur)
        tab_put(o->nslots, o->ncap, o->slots[i]);
    o->count++;
    o->keys++;
    shrink_step_run(o);
    return DV_OK;
}

bool dv_owners_remove(dv_owners *o, uint64_t pid, uint64_t key) {
    key = key_norm(key);
    dv_owner_slot *s = find(o, pid_norm(pid));
    if (!s)
        return false;
    dv_owner_rec *r = rec_of(s);
    if (!r) {
        if (s->v != key)
            return false;
        o->keys--;
        delete_at(o, (size_t)(s - o->slots));
        shrink_step_run(o);
        return true;
    }
    if (is_set(r)) {
        size_t i = set_find(r->k, r->cap, key);
        if (r->k[i] != key)
            return false;
        set_delete_at(r->k, r->cap, i);
    } else {
        uint32_t i = 0;
        while (i < r->n && r->k[i] != key)
            i++;
        if (i == r->n)
            return false;
        r->k[i] = r->k[r->n - 1];
        r->k[r->n - 1] = 0;
    }
    r->n--;
    o->keys--;
    if (r->n == 1) { /* back to one key inline */
        uint64_t last = 0;
        for (size_t i = 0; !last; i++)
            last = r->k[i];
        rec_free(o, r);
        s->pid &= ~(uint64_t)REC;
        s->v = last;
    } else if (is_set(r) && r->n <= SET_BACK) {
        rec_rebuild(o, s, DV_OWNERS_ARRAY_MAX); /* on failure it stays a set, which is fine */
    } else if (is_set(r) && (size_t)r->n * 8 < r->cap) { /* a quarter full, at least SET_MIN */
        uint32_t ncap = SET_MIN;
        while ((size_t)ncap < (size_t)r->n * 4)
            ncap *= 2;
        rec_rebuild(o, s, ncap); /* the same */
    }
    mirror(o, (size_t)(s - o->slots));
    shrink_step_run(o);
    return true;
}

size_t dv_owners_get(const dv_owners *o, uint64_t pid, const uint64_t **places, size_t *nplaces) {
    const dv_owner_slot *s = find(o, pid_norm(pid));
    const dv_owner_rec *r = s ? rec_of(s) : NULL;
    if (!s) {
        *places = NULL;
        *nplaces = 0;
        return 0;
    }
    if (!r) {
        *places = &s->v;
        *nplaces = 1;
        return 1;
    }
    *places = r->k;
    *nplaces = is_set(r) ? r->cap : r->n;
    return r->n;
}

bool dv_owners_drop(dv_owners *o, uint64_t pid) {
    dv_owner_slot *s = find(o, pid_norm(pid));
    if (!s)
        return false;
    dv_owner_rec *r = rec_of(s);
    o->keys -= r ? r->n : 1;
    if (r)
        rec_free(o, r);
    delete_at(o, (size_t)(s - o->slots));
    shrink_step_run(o);
    return true;
}

size_t dv_owners_memory(const dv_owners *o) {
    return (o->cap + o->ncap) * sizeof(dv_owner_slot) + o->heap;
}
