/* metrics: the Prometheus text exposition format (version 0.0.4).
 *
 * Pure: a small writer that appends HELP/TYPE lines and samples to a
 * growable buffer, escaping help texts and label values as the format
 * requires. The daemon fills it with its counters for the control socket's
 * `metrics` command. */
#pragma once

#include <stddef.h>
#include <stdint.h>

typedef struct MetricsText {
        char *data; /* NUL-terminated when len > 0 */
        size_t len;
        size_t allocated;
        int error; /* the first failure (-ENOMEM), sticky: check it once at the end */
} MetricsText;

#define METRICS_TEXT_NULL ((MetricsText){})

void metrics_text_done(MetricsText *m);

/* "# HELP name help" and "# TYPE name type" (type: counter, gauge, ...). */
void metrics_text_family(MetricsText *m, const char *name, const char *type, const char *help);

/* "name{label="value"} v". `labels` holds n_labels name/value pairs
 * (labels[2k] the name, labels[2k+1] the value); n_labels may be 0. */
void metrics_text_sample(MetricsText *m, const char *name, const char *const *labels, size_t n_labels,
                         double value);

/* A family of one unlabelled sample: its HELP and TYPE lines, then it. */
void metrics_text_single(MetricsText *m, const char *name, const char *type, const char *help, double value);

/* The common cases: no label, or one. */
void metrics_text_value(MetricsText *m, const char *name, double value);
void metrics_text_labelled(MetricsText *m, const char *name, const char *label, const char *label_value,
                           double value);

/* A histogram with fixed upper bounds (increasing; the +Inf bucket is
 * implied). Observing costs a short scan and no allocation, so it can sit on
 * every poll completion. */
#define METRICS_HISTOGRAM_BOUNDS_MAX 24

typedef struct MetricsHistogram {
        double bounds[METRICS_HISTOGRAM_BOUNDS_MAX];
        size_t n_bounds;
        uint64_t counts[METRICS_HISTOGRAM_BOUNDS_MAX + 1]; /* per bucket, not cumulative; [n_bounds]: +Inf */
        uint64_t count;
        double sum;
} MetricsHistogram;

/* Sets the bounds (at most METRICS_HISTOGRAM_BOUNDS_MAX, increasing) and
 * clears the counts. Returns 0 or -EINVAL. */
int metrics_histogram_init(MetricsHistogram *h, const double *bounds, size_t n_bounds);
void metrics_histogram_observe(MetricsHistogram *h, double value);

/* The whole family: HELP, TYPE histogram, the cumulative name_bucket{le=...}
 * samples, name_sum and name_count. */
void metrics_text_histogram(MetricsText *m, const char *name, const char *help, const MetricsHistogram *h);
