#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

void metrics_text_done(MetricsText *m)
{
        free(m->data);
        *m = METRICS_TEXT_NULL;
}

static void put(MetricsText *m, const char *s, size_t n)
{
        if (m->error < 0)
                return;
        if (m->len + n + 1 > m->allocated) {
                size_t want = m->allocated ? m->allocated : 1024;
                char *p;

                while (want < m->len + n + 1)
                        want *= 2;
                p = realloc(m->data, want);
                if (!p) {
                        m->error = -ENOMEM;
                        return;
                }
                m->data = p;
                m->allocated = want;
        }
        memcpy(m->data + m->len, s, n);
        m->len += n;
        m->data[m->len] = '\0';
}

static void puts_(MetricsText *m, const char *s)
{
        put(m, s, strlen(s));
}

/* HELP text escapes backslash and newline; label values also the double
 * quote. */
static void put_escaped(MetricsText *m, const char *s, int quote)
{
        for (; *s; s++) {
                if (*s == '\\')
                        puts_(m, "\\\\");
                else if (*s == '\n')
                        puts_(m, "\\n");
                else if (quote && *s == '"')
                        puts_(m, "\\\"");
                else
                        put(m, s, 1);
        }
}

void metrics_text_family(MetricsText *m, const char *name, const char *type, const char *help)
{
        puts_(m, "# HELP ");
        puts_(m, name);
        puts_(m, " ");
        put_escaped(m, help, 0);
        puts_(m, "\n# TYPE ");
        puts_(m, name);
        puts_(m, " ");
        puts_(m, type);
        puts_(m, "\n");
}

void metrics_text_sample(MetricsText *m, const char *name, const char *const *labels, size_t n_labels,
                         double value)
{
        char num[64];

        puts_(m, name);
        if (n_labels > 0) {
                puts_(m, "{");
                for (size_t k = 0; k < n_labels; k++) {
                        if (k > 0)
                                puts_(m, ",");
                        puts_(m, labels[2 * k]);
                        puts_(m, "=\"");
                        put_escaped(m, labels[2 * k + 1], 1);
                        puts_(m, "\"");
                }
                puts_(m, "}");
        }
        if (isnan(value))
                snprintf(num, sizeof(num), " NaN\n");
        else if (isinf(value))
                snprintf(num, sizeof(num), " %s\n", value > 0 ? "+Inf" : "-Inf");
        else if (value == floor(value) && fabs(value) < 1e15)
                snprintf(num, sizeof(num), " %.0f\n", value);
        else {
                /* The shortest form that reads back as the same double:
                 * "0.1", not "0.10000000000000001". */
                for (int digits = 15; digits <= 17; digits++) {
                        snprintf(num, sizeof(num), " %.*g\n", digits, value);
                        if (strtod(num, NULL) == value)
                                break;
                }
        }
        puts_(m, num);
}

void metrics_text_value(MetricsText *m, const char *name, double value)
{
        metrics_text_sample(m, name, NULL, 0, value);
}

void metrics_text_single(MetricsText *m, const char *name, const char *type, const char *help, double value)
{
        metrics_text_family(m, name, type, help);
        metrics_text_value(m, name, value);
}

void metrics_text_labelled(MetricsText *m, const char *name, const char *label, const char *label_value,
                           double value)
{
        const char *labels[2] = {label, label_value};

        metrics_text_sample(m, name, labels, 1, value);
}

int metrics_histogram_init(MetricsHistogram *h, const double *bounds, size_t n_bounds)
{
        if (n_bounds > METRICS_HISTOGRAM_BOUNDS_MAX)
                return -EINVAL;
        for (size_t k = 1; k < n_bounds; k++)
                if (!(bounds[k] > bounds[k - 1]))
                        return -EINVAL;
        *h = (MetricsHistogram){.n_bounds = n_bounds};
        if (n_bounds > 0)
                memcpy(h->bounds, bounds, n_bounds * sizeof(double));
        return 0;
}

void metrics_histogram_observe(MetricsHistogram *h, double value)
{
        size_t k = 0;

        /* A bucket holds the values up to and including its bound ("le"). */
        while (k < h->n_bounds && value > h->bounds[k])
                k++;
        h->counts[k]++;
        h->count++;
        h->sum += value;
}

void metrics_text_histogram(MetricsText *m, const char *name, const char *help, const MetricsHistogram *h)
{
        char series[256], le[32];
        const char *labels[2] = {"le", le};
        uint64_t cumulative = 0;

        metrics_text_family(m, name, "histogram", help);
        snprintf(series, sizeof(series), "%s_bucket", name);
        for (size_t k = 0; k <= h->n_bounds; k++) {
                cumulative += h->counts[k];
                if (k < h->n_bounds)
                        snprintf(le, sizeof(le), "%g", h->bounds[k]);
                else
                        snprintf(le, sizeof(le), "+Inf");
                metrics_text_sample(m, series, labels, 1, (double)cumulative);
        }
        snprintf(series, sizeof(series), "%s_sum", name);
        metrics_text_value(m, series, h->sum);
        snprintf(series, sizeof(series), "%s_count", name);
        metrics_text_value(m, series, (double)h->count);
}
