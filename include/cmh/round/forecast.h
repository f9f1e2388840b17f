/* Time to exhaustion: a window of (time, free) samples in, the seconds until free reaches zero
 * out. Pure: no I/O, no clock (times are passed in). A series is owned by its holder (the EC2
 * watch keeps one per subnet); thread: any, one series per thread. */
#ifndef CMH_FORECAST_H
#define CMH_FORECAST_H

#include <stddef.h>

/* Published when free space is not declining or runs out later than this: 7 days. Alarms never
 * see missing data, and "less than an hour" means what it says. */
#define CMH_FORECAST_CAP_S 604800.0
/* Fewest samples an estimate is made from. */
#define CMH_FORECAST_MIN_SAMPLES 3
/* Most samples a series keeps (a 24 h window at a 10 s interval). */
#define CMH_FORECAST_MAX_SAMPLES 8640

struct cmh_forecast_sample {
    double t; /* seconds, monotonic */
    double v; /* free addresses (or free /28 blocks) at t */
};

/* The estimators compared in docs/forecast.md. The daemon uses CMH_FORECAST_METHOD. */
enum cmh_forecast_method {
    CMH_FC_ENDPOINTS, /* (first - last) / span: the two ends of the window */
    CMH_FC_EWMA,      /* exponentially weighted mean of the per-interval rates */
    CMH_FC_OLS,       /* least-squares slope */
    CMH_FC_THEIL_SEN, /* median of the pairwise slopes */
    CMH_FC_OLS_LOWER, /* least-squares slope less one standard error */
    CMH_FC_METHODS
};
#define CMH_FORECAST_METHOD CMH_FC_OLS_LOWER

/* The samples of one quantity over the last window. */
struct cmh_forecast_series {
    /* read-only */
    struct cmh_forecast_sample *s;
    size_t n;
    /* private */
    size_t cap;
    double window_s;   /* FORECAST_WINDOW */
    double interval_s; /* the fetch interval: the slack on "the window is full", and a gap of more
                          than 3 intervals (the view was stale) clears the series */
};

void cmh_forecast_series_init(struct cmh_forecast_series *fs, double window_s, double interval_s);
void cmh_forecast_series_close(struct cmh_forecast_series *fs);

/* Adds the sample (t, v): a t not after the last sample's is ignored; a gap of more than 3
 * intervals since the last sample clears the series first (no estimate across a stale view);
 * samples older than window + interval/2 before t are dropped. Returns 0 or -ENOMEM (the series
 * is then cleared: a hole is never bridged). */
int cmh_forecast_series_add(struct cmh_forecast_series *fs, double t, double v);

/* cmh_forecast_estimate with CMH_FORECAST_METHOD over the series. Returns 0, or -EAGAIN while the
 * series is not ready. */
int cmh_forecast_series_estimate(const struct cmh_forecast_series *fs, double *tte_s);

#endif
