#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "runbooks.h"

/* FNV-1a: runbook ids are short and come from the API, not from an attacker
 * who could aim at the table (a flood of distinct ids is capped anyway). */
static uint32_t hash(const char *s, size_t len)
{
        uint32_t h = 2166136261u;

        for (size_t k = 0; k < len; k++) {
                h ^= (uint8_t)s[k];
                h *= 16777619u;
        }
        return h;
}

void runbooks_done(Runbooks *r)
{
        for (size_t k = 0; k < r->n_names; k++)
                free(r->names[k]);
        free(r->names);
        free(r->slots);
        free(r->of);
        *r = (Runbooks){};
}

uint32_t runbooks_find(const Runbooks *r, const char *id, size_t len)
{
        if (r->n_slots == 0)
                return 0;
        for (size_t p = hash(id, len) & (r->n_slots - 1);; p = (p + 1) & (r->n_slots - 1)) {
                uint32_t n = r->slots[p];

                if (n == 0)
                        return 0;
                if (strncmp(r->names[n - 1], id, len) == 0 && r->names[n - 1][len] == '\0')
                        return n;
        }
}

static void insert_slot(uint32_t *slots, size_t n_slots, const char *name, uint32_t n)
{
        size_t p = hash(name, strlen(name)) & (n_slots - 1);

        while (slots[p] != 0)
                p = (p + 1) & (n_slots - 1);
        slots[p] = n;
}

/* Interns `id`: its number, new or known. */
int runbooks_intern(Runbooks *r, const char *id, size_t len, uint32_t *ret)
{
        uint32_t n = runbooks_find(r, id, len);
        char *copy, **names;

        if (n) {
                *ret = n;
                return 0;
        }
        if (r->n_names >= RUNBOOKS_MAX)
                return -ENOSPC;
        /* Keep the table at most half full. */
        if ((r->n_names + 1) * 2 > r->n_slots) {
                size_t n_slots = r->n_slots ? r->n_slots * 2 : 64;
                uint32_t *slots = calloc(n_slots, sizeof(*slots));

                if (!slots)
                        return -ENOMEM;
                for (size_t k = 0; k < r->n_names; k++)
                        insert_slot(slots, n_slots, r->names[k], (uint32_t)k + 1);
                free(r->slots);
                r->slots = slots;
                r->n_slots = n_slots;
        }
        names = realloc(r->names, (r->n_names + 1) * sizeof(*names));
        if (!names)
                return -ENOMEM;
        r->names = names;
        copy = strndup(id, len);
        if (!copy)
                return -ENOMEM;
        r->names[r->n_names++] = copy;
        n = (uint32_t)r->n_names;
        insert_slot(r->slots, r->n_slots, copy, n);
        *ret = n;
        return 0;
}

static int grow_of(Runbooks *r, SessionIndex i)
{
        size_t n_of = r->n_of ? r->n_of : 1024;
        uint32_t *of;

        if (i < r->n_of)
                return 0;
        while (n_of <= i)
                n_of *= 2;
        of = realloc(r->of, n_of * sizeof(*of));
        if (!of)
                return -ENOMEM;
        memset(of + r->n_of, 0, (n_of - r->n_of) * sizeof(*of));
        r->of = of;
        r->n_of = n_of;
        return 0;
}

int runbooks_set_none(Runbooks *r, SessionIndex i)
{
        int e = grow_of(r, i);

        if (e < 0)
                return e;
        r->of[i] = RUNBOOK_NONE;
        return 0;
}

int runbooks_set(Runbooks *r, SessionIndex i, const char *id, size_t len)
{
        uint32_t n;
        int e;

        if (!id || len == 0 || len > RUNBOOK_ID_MAX || memchr(id, '\0', len))
                return -EINVAL;
        if (i < r->n_of && r->of[i] != 0 && r->of[i] != RUNBOOK_NONE && strncmp(r->names[r->of[i] - 1], id, len) == 0 &&
            r->names[r->of[i] - 1][len] == '\0')
                return 0;
        e = runbooks_intern(r, id, len, &n);
        if (e < 0)
                return e;
        e = grow_of(r, i);
        if (e < 0)
                return e;
        r->of[i] = n;
        return 0;
}

uint32_t runbooks_of(const Runbooks *r, SessionIndex i)
{
        return i < r->n_of ? r->of[i] : 0;
}

const char *runbooks_name(const Runbooks *r, SessionIndex i)
{
        uint32_t n = runbooks_of(r, i);

        return n && n != RUNBOOK_NONE ? r->names[n - 1] : NULL;
}

void runbooks_forget(Runbooks *r, SessionIndex i)
{
        if (i < r->n_of)
                r->of[i] = 0;
}
