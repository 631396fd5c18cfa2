/* Orphaned webhook queues: the outbox files of webhooks that are no longer
 * configured, whether a reload removed them or the daemon started without
 * them. Each is a webhook sink in orphan mode (sink-webhook.h) that only
 * expires its events by max-age; once it is empty its file is gone and it
 * leaves the list. A webhook of the same name that comes back takes its
 * queue over. All of it runs on the loop thread. */
#include <dirent.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

#include "daemon-private.h"
#include "sink-webhook.h"

#define OUTBOX_PREFIX "outbox-"

static bool list_add(Daemon *d, Sink *s)
{
        Sink **l = realloc(d->orphans, (d->n_orphans + 1) * sizeof(Sink *));

        if (!l)
                return false;
        d->orphans = l;
        d->orphans[d->n_orphans++] = s;
        return true;
}

static void list_remove(Daemon *d, Sink *s)
{
        for (size_t k = 0; k < d->n_orphans; k++)
                if (d->orphans[k] == s) {
                        d->orphans[k] = d->orphans[--d->n_orphans];
                        return;
                }
}

/* Its last event expired and its file is removed, from the sink's dispatch. */
static void on_orphan_emptied(void *userdata, Sink *s)
{
        Daemon *d = userdata;

        list_remove(d, s);
        sink_close(s);
}

void daemon_orphan_webhook(Daemon *d, Sink *s)
{
        if (!list_add(d, s)) {
                /* The file stays for a later run: nothing is lost, only
                 * not expired meanwhile. */
                log_error("Out of memory: the outbox of webhook '%s' is kept but not watched.",
                          sink_webhook_name(s));
                sink_close(s);
                return;
        }
        sink_webhook_orphan(s, on_orphan_emptied, d);
}

Sink *daemon_orphan_take(Daemon *d, const char *name)
{
        for (size_t k = 0; k < d->n_orphans; k++) {
                Sink *s = d->orphans[k];

                if (strcmp(sink_webhook_name(s), name) == 0) {
                        list_remove(d, s);
                        return s;
                }
        }
        return NULL;
}

void daemon_orphans_close(Daemon *d)
{
        for (size_t k = 0; k < d->n_orphans; k++)
                sink_close(d->orphans[k]);
        free(d->orphans);
        d->orphans = NULL;
        d->n_orphans = 0;
}

/* "outbox-NAME" for a webhook name; the outbox's own temporary and
 * corrupt files ("outbox-NAME.tmp", "outbox-NAME.corrupt-…") are not
 * queues. */
static const char *queue_name(const char *file)
{
        const char *name;
        size_t n;

        if (strncmp(file, OUTBOX_PREFIX, strlen(OUTBOX_PREFIX)) != 0)
                return NULL;
        name = file + strlen(OUTBOX_PREFIX);
        n = strlen(name);
        if (n == 0 || n > 64 || strstr(name, ".corrupt-") || (n >= 4 && strcmp(name + n - 4, ".tmp") == 0))
                return NULL;
        for (const char *p = name; *p; p++)
                if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
                      *p == '_' || *p == '-' || *p == '.'))
                        return NULL;
        return name;
}

static bool configured(const Config *c, const char *name)
{
        for (size_t k = 0; k < c->n_webhooks; k++)
                if (strcmp(c->webhooks[k].name, name) == 0)
                        return true;
        return false;
}

int daemon_orphans_scan(Daemon *d)
{
        const char *folder = d->config->state.path;
        struct dirent *de;
        DIR *dir;
        int r;

        if (!folder)
                return 0;
        dir = opendir(folder);
        if (!dir) {
                if (errno == ENOENT)
                        return 0;
                r = -errno;
                log_error_errno(r, "Failed to look for orphaned webhook outboxes in '%s': %m", folder);
                return 0;
        }
        while ((de = readdir(dir))) {
                const char *name = queue_name(de->d_name);
                Sink *s;

                if (!name || configured(d->config, name) ||
                    (de->d_type != DT_REG && de->d_type != DT_UNKNOWN))
                        continue;
                r = sink_webhook_new_orphan(&d->loop, folder, name, CONFIG_DEFAULT_WEBHOOK_MAX_AGE_MS, &s);
                if (r < 0) {
                        /* Logged by the sink; the file stays as it is. */
                        if (r == -ENOMEM) {
                                closedir(dir);
                                return r;
                        }
                        continue;
                }
                log_info("Webhook '%s' is not configured: its outbox '%s/%s' is kept as an orphaned queue "
                         "until its events expire.",
                         name, folder, de->d_name);
                daemon_orphan_webhook(d, s);
        }
        closedir(dir);
        return 0;
}

struct json_object *daemon_orphans_status(Daemon *d)
{
        json_object *list = json_object_new_array();

        for (size_t k = 0; list && k < d->n_orphans; k++) {
                json_object *o = json_object_new_object();
                WebhookStats ws;

                if (!o)
                        break;
                sink_webhook_stats(d->orphans[k], &ws);
                json_object_object_add(o, "name", json_object_new_string(sink_webhook_name(d->orphans[k])));
                json_object_object_add(o, "file",
                                       json_object_new_string(sink_webhook_outbox_path(d->orphans[k])));
                json_object_object_add(o, "events", json_object_new_int64((int64_t)ws.queue_depth));
                json_object_object_add(o, "oldestAgeSeconds",
                                       json_object_new_double(ws.oldest_age_ms / 1000.0));
                json_object_array_add(list, o);
        }
        return list;
}

void daemon_orphans_metrics(Daemon *d, MetricsText *m)
{
        uint64_t events = 0;

        for (size_t k = 0; k < d->n_orphans; k++) {
                WebhookStats ws;

                sink_webhook_stats(d->orphans[k], &ws);
                events += ws.queue_depth;
        }
        metrics_text_single(m, "sessionwatch_webhook_orphaned_queues", "gauge",
                            "Outbox files of webhooks no longer configured, kept until their events expire.",
                            (double)d->n_orphans);
        metrics_text_single(m, "sessionwatch_webhook_orphaned_events", "gauge",
                            "Undelivered events in the orphaned webhook outboxes.", (double)events);
}
