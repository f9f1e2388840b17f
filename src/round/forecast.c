/* Time to exhaustion from a window of samples: the estimators compared in docs/forecast.md and
 * the series that keeps one window of history. */
#include "cmh/round/forecast.h"
#include "cmh/round/forecast_int.h"

#include "cmh/core/alloc.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Theil-Sen looks at every pair; past this many samples it uses this many, evenly spaced. */
#define THEIL_SEN_MAX 256
/* CMH_FC_OLS_LOWER: the rate of decline taken this many standard errors of the slope slower than
 * least squares finds it (0 when that is not a decline). */
#define LOWER_SE 1.0

const char *cmh_forecast_method_name(enum cmh_forecast_method m)
{
    static const char *const names[CMH_FC_METHODS] = {
        [CMH_FC_ENDPOINTS] = "endpoints",
        [CMH_FC_EWMA] = "ewma-rate",
        [CMH_FC_OLS] = "least-squares",
        [CMH_FC_THEIL_SEN] = "theil-sen",
        [CMH_FC_OLS_LOWER] = "least-squares, lower bound",
    };
    return (unsigned)m < CMH_FC_METHODS ? names[m] : "?";
}

/* The rate of decline (free per second, > 0 when declining) by least squares; with lower, the
 * slope's lower bound: LOWER_SE standard errors slower, so noise that happens to line up in a
 * short window does not read as a drain. */
static double ols_decline(const struct cmh_forecast_sample *s, size_t n, int lower)
{
    double mt = 0, mv = 0;
    for (size_t i = 0; i < n; i++) {
        mt += s[i].t;
        mv += s[i].v;
    }
    mt /= (double)n;
    mv /= (double)n;
    double sxx = 0, sxy = 0;
    for (size_t i = 0; i < n; i++) {
        sxx += (s[i].t - mt) * (s[i].t - mt);
        sxy += (s[i].t - mt) * (s[i].v - mv);
    }
    if (sxx <= 0)
        return 0;
    double b = sxy / sxx;
    if (b >= 0)
        return 0;
    if (lower) {
        double ss = 0;
        for (size_t i = 0; i < n; i++) {
            double r = s[i].v - (mv + b * (s[i].t - mt));
            ss += r * r;
        }
        double se = sqrt(ss / (double)(n - 2) / sxx);
        return -b > LOWER_SE * se ? -b - LOWER_SE * se : 0;
    }
    return -b;
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

static int theil_sen_decline(const struct cmh_forecast_sample *s, size_t n, double *rate)
{
    size_t m = n > THEIL_SEN_MAX ? THEIL_SEN_MAX : n;
    double *sl = cmh_calloc(m * (m - 1) / 2, sizeof *sl);
    if (sl == NULL)
        return -ENOMEM;
    size_t k = 0;
    for (size_t a = 0; a < m; a++) {
        const struct cmh_forecast_sample *p = &s[a * (n - 1) / (m - 1)];
        for (size_t b = a + 1; b < m; b++) {
            const struct cmh_forecast_sample *q = &s[b * (n - 1) / (m - 1)];
            if (q->t > p->t)
                sl[k++] = (q->v - p->v) / (q->t - p->t);
        }
    }
    double med = 0;
    if (k > 0) {
        qsort(sl, k, sizeof *sl, cmp_double);
        med = k % 2 ? sl[k / 2] : (sl[k / 2 - 1] + sl[k / 2]) / 2;
    }
    cmh_free(sl);
    *rate = med < 0 ? -med : 0;
    return 0;
}

static double ewma_decline(const struct cmh_forecast_sample *s, size_t n)
{
    /* The usual span rule: the weight of a window of n samples. */
    double alpha = 2.0 / ((double)n + 1.0), e = 0;
    for (size_t i = 1; i < n; i++) {
        double dt = s[i].t - s[i - 1].t;
        double r = dt > 0 ? (s[i - 1].v - s[i].v) / dt : 0;
        e = i == 1 ? r : alpha * r + (1 - alpha) * e;
    }
    return e > 0 ? e : 0;
}

int cmh_forecast_estimate(enum cmh_forecast_method m, const struct cmh_forecast_sample *s, size_t n,
                          double *tte_s)
{
    if (n < CMH_FORECAST_MIN_SAMPLES || !(s[n - 1].t > s[0].t))
        return -EAGAIN;
    double rate = 0;
    switch (m) {
    case CMH_FC_ENDPOINTS:
        rate = (s[0].v - s[n - 1].v) / (s[n - 1].t - s[0].t);
        break;
    case CMH_FC_EWMA:
        rate = ewma_decline(s, n);
        break;
    case CMH_FC_OLS:
    case CMH_FC_OLS_LOWER:
        rate = ols_decline(s, n, m == CMH_FC_OLS_LOWER);
        break;
    case CMH_FC_THEIL_SEN: {
        int rc = theil_sen_decline(s, n, &rate);
        if (rc != 0)
            return rc;
        break;
    }
    default:
        return -EINVAL;
    }
    double last = s[n - 1].v;
    if (last <= 0)
        *tte_s = 0;
    else if (!(rate > 0) || last / rate > CMH_FORECAST_CAP_S)
        *tte_s = CMH_FORECAST_CAP_S;
    else
        *tte_s = last / rate;
    return 0;
}

/* ---- the series -------------------------------------------------------------------------- */

void cmh_forecast_series_init(struct cmh_forecast_series *fs, double window_s, double interval_s)
{
    memset(fs, 0, sizeof *fs);
    fs->window_s = window_s;
    fs->interval_s = interval_s;
}

void cmh_forecast_series_close(struct cmh_forecast_series *fs)
{
    cmh_free(fs->s);
    fs->s = NULL;
    fs->n = fs->cap = 0;
}

int cmh_forecast_series_add(struct cmh_forecast_series *fs, double t, double v)
{
    if (fs->n > 0) {
        double last = fs->s[fs->n - 1].t;
        if (!(t > last))
            return 0;
        if (t - last > 3 * fs->interval_s)
            fs->n = 0; /* the view was stale in between: never estimate across the gap */
    }
    /* Drop what fell out of the window (kept: half an interval of slack). */
    size_t drop = 0;
    while (drop < fs->n && fs->s[drop].t < t - fs->window_s - fs->interval_s / 2)
        drop++;
    if (drop == 0 && fs->n == CMH_FORECAST_MAX_SAMPLES)
        drop = 1;
    if (drop > 0) {
        memmove(fs->s, fs->s + drop, (fs->n - drop) * sizeof *fs->s);
        fs->n -= drop;
    }
    if (fs->n == fs->cap) {
        size_t cap = fs->cap ? fs->cap * 2 : 16;
        if (cap > CMH_FORECAST_MAX_SAMPLES)
            cap = CMH_FORECAST_MAX_SAMPLES;
        struct cmh_forecast_sample *ns = cmh_reallocarray(fs->s, cap, sizeof *ns);
        if (ns == NULL) {
            fs->n = 0;
            return -ENOMEM;
        }
        fs->s = ns;
        fs->cap = cap;
    }
    fs->s[fs->n++] = (struct cmh_forecast_sample){t, v};
    return 0;
}

int cmh_forecast_series_ready(const struct cmh_forecast_series *fs)
{
    return fs->n >= CMH_FORECAST_MIN_SAMPLES &&
           fs->s[fs->n - 1].t - fs->s[0].t >= fs->window_s - fs->interval_s / 2;
}

int cmh_forecast_series_estimate(const struct cmh_forecast_series *fs, double *tte_s)
{
    if (!cmh_forecast_series_ready(fs))
        return -EAGAIN;
    return cmh_forecast_estimate(CMH_FORECAST_METHOD, fs->s, fs->n, tte_s);
}
