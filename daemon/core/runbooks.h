/* runbooks: which runbook each session belongs to, for `list --runbook`.
 *
 * Pure. Runbook ids are interned once (sessions of one runbook share the
 * string) and each session slot holds a 4-byte reference, allocated only
 * once a runbook is known at all. A session's runbook is learnt from a full
 * answer (its first poll after start, every transition) or a list page. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "sessions.h"

/* The most distinct runbook ids kept; past it, new ones stay unknown. */
#define RUNBOOKS_MAX 65536
#define RUNBOOK_ID_MAX 64

typedef struct Runbooks {
        char **names;    /* names[k - 1] is runbook k */
        size_t n_names;
        uint32_t *slots; /* open-addressed hash of runbook numbers, n_slots a power of two */
        size_t n_slots;
        uint32_t *of;    /* per session index: its runbook number, 0 when unknown */
        size_t n_of;
} Runbooks;

void runbooks_done(Runbooks *r);

/* The runbook number of `id`, 0 when it was never seen. */
uint32_t runbooks_find(const Runbooks *r, const char *id, size_t len);

/* The number of runbook `id`, interned now if it was not known. Returns 0,
 * or -EINVAL, -ENOSPC, -ENOMEM as runbooks_set(). */
int runbooks_intern(Runbooks *r, const char *id, size_t len, uint32_t *ret);

/* Records that session i belongs to runbook `id`. Returns 0, -EINVAL for an
 * id that is empty or longer than RUNBOOK_ID_MAX, -ENOSPC past RUNBOOKS_MAX
 * distinct ids, -ENOMEM. */
int runbooks_set(Runbooks *r, SessionIndex i, const char *id, size_t len);

/* Records that session i's answers carry no runbook id (so that it is not
 * looked for again); runbooks_of() is then RUNBOOK_NONE. */
#define RUNBOOK_NONE UINT32_MAX
int runbooks_set_none(Runbooks *r, SessionIndex i);

/* Session i's runbook number (0: unknown, RUNBOOK_NONE: none) and id (NULL:
 * unknown or none). */
uint32_t runbooks_of(const Runbooks *r, SessionIndex i);
const char *runbooks_name(const Runbooks *r, SessionIndex i);

/* Session i left the table: its slot may be reused by another session. */
void runbooks_forget(Runbooks *r, SessionIndex i);
