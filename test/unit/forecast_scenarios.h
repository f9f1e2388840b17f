/* The scripted subnet scenarios the forecast is judged on (docs/forecast.md), at full scale: a
 * fetch every 300 s, a 1800 s window, a round every 60 s. Shared by the unit test and the bench.
 * Each scenario is a list of (time, change of free addresses) events from a fixed seed; the free
 * count at any time is the start plus the changes up to then, never below 0. */
#ifndef CMH_FORECAST_SCENARIOS_H
#define CMH_FORECAST_SCENARIOS_H

#include "cmh/round/forecast_int.h"
#include "cmh/core/rng.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SC_INTERVAL 300.0
#define SC_WINDOW   1800.0
#define SC_ROUND    60.0
#define SC_DAY      86400.0
#define SC_MAX_EV   200000

enum sc_kind { SC_STEADY, SC_FLAT_NOISE, SC_DAILY, SC_PAUSES, SC_RELEASES, SC_KINDS };

static const char *const sc_names[SC_KINDS] = {
    [SC_STEADY] = "steady stepwise drain", [SC_FLAT_NOISE] = "flat with noise",
    [SC_DAILY] = "daily fill-and-drain",   [SC_PAUSES] = "drain with pauses",
    [SC_RELEASES] = "drain with releases",
};

struct sc_event {
    double t, d;
};

struct scenario {
    enum sc_kind kind;
    double start, horizon;
    struct sc_event *ev;
    size_t nev;
    uint64_t rng;
};

static double sc_uniform(uint64_t *r)
{
    return (double)(cmh_rng_next(r) >> 11) / 9007199254740992.0;
}

static void sc_push(struct scenario *s, double t, double d)
{
    if (s->nev < SC_MAX_EV)
        s->ev[s->nev++] = (struct sc_event){t, d};
}

/* Builds scenario kind from seed. Times start at 0. */
static void sc_build(struct scenario *s, enum sc_kind kind, uint64_t seed)
{
    memset(s, 0, sizeof *s);
    s->kind = kind;
    s->rng = seed;
    s->ev = calloc(SC_MAX_EV, sizeof *s->ev);
    uint64_t *r = &s->rng;
    switch (kind) {
    case SC_STEADY:
        /* Node launches at a steady average rate, in steps: 8 addresses every 120 s on average,
         * each launch anywhere in its 120 s slot, 1/15 address per second: 4000 free run out
         * after about 16.7 hours. */
        s->start = 4000;
        s->horizon = 2 * SC_DAY;
        for (double slot = 0; slot < s->horizon; slot += 120)
            sc_push(s, slot + 120 * sc_uniform(r), -8);
        break;
    case SC_FLAT_NOISE:
        /* Pods come and go faster than the fetch interval: every 60 s the count sits at 2000 plus
         * an independent draw of -40..40 (2% of the free space). */
        s->start = 2000;
        s->horizon = 3 * SC_DAY;
        {
            double off = 0;
            for (double t = 30; t < s->horizon; t += 60) {
                double want = (double)((int)(cmh_rng_next(r) % 41) - 20);
                sc_push(s, t, want - off);
                off = want;
            }
        }
        break;
    case SC_DAILY:
        /* A day of scale-out and scale-in: free follows 2500 + 1800 cos(2 pi t / day) in steps of
         * 8 (nodes), with pods of +-16 coming and going every 60 s; the low point keeps 700 free.
         */
        s->start = 4300;
        s->horizon = 3 * SC_DAY;
        {
            double cur = 4300;
            for (double t = 60; t < s->horizon; t += 60) {
                double want = 2500 + 1800 * cos(2 * M_PI * t / SC_DAY);
                double d = 8.0 * floor((want - cur) / 8.0 + 0.5);
                double noise = (double)((int)(cmh_rng_next(r) % 41) - 20);
                if (d != 0)
                    sc_push(s, t, d);
                sc_push(s, t + 30, noise);
                sc_push(s, t + 30 + 60 * (double)(1 + cmh_rng_next(r) % 10), -noise);
                cur += d;
            }
        }
        break;
    case SC_PAUSES:
        /* The steady drain, paused for 40 minutes out of every 90. */
        s->start = 3000;
        s->horizon = 2 * SC_DAY;
        for (double slot = 0; slot < s->horizon; slot += 120)
            if (fmod(slot, 5400) < 3000)
                sc_push(s, slot + 120 * sc_uniform(r), -8);
        break;
    case SC_RELEASES:
        /* The steady drain, and every 2 hours a node scale-in returns 120 addresses at once. */
        s->start = 3000;
        s->horizon = 2 * SC_DAY;
        for (double slot = 0; slot < s->horizon; slot += 120)
            sc_push(s, slot + 120 * sc_uniform(r), -8);
        for (double t = 7200; t < s->horizon; t += 7200)
            sc_push(s, t, 120);
        break;
    default:
        break;
    }
    /* Sorted by time (the ENI releases of the flat scenario are out of order). */
    for (size_t i = 1; i < s->nev; i++)
        for (size_t j = i; j > 0 && s->ev[j - 1].t > s->ev[j].t; j--) {
            struct sc_event e = s->ev[j];
            s->ev[j] = s->ev[j - 1];
            s->ev[j - 1] = e;
        }
}

static void sc_free(struct scenario *s)
{
    free(s->ev);
    s->ev = NULL;
}

/* Free addresses at time t (the events up to t), floored at 0 along the way. */
static double sc_free_at(const struct scenario *s, double t)
{
    double f = s->start;
    for (size_t i = 0; i < s->nev && s->ev[i].t <= t; i++) {
        f += s->ev[i].d;
        if (f < 0)
            f = 0;
    }
    return f;
}

/* The first time free reaches 0, or -1 within the horizon. */
static double sc_exhausted_at(const struct scenario *s)
{
    double f = s->start;
    for (size_t i = 0; i < s->nev; i++) {
        f += s->ev[i].d;
        if (f <= 0)
            return s->ev[i].t;
    }
    return -1;
}

/* What one estimator published over a scenario, round by round. */
struct sc_result {
    double max_err; /* steady: largest |published - true| / true over judged rounds */
    size_t judged, rounds;
    double min_tte;       /* smallest value published (s); CMH_FORECAST_CAP_S when none below */
    double alarm_lead;    /* seconds between the first value < 3600 and exhaustion; -1 never */
    double min_tte_drain; /* daily: smallest value in the drain halves */
};

/* Runs method m over s: a fetch every SC_INTERVAL feeds a series, every SC_ROUND the estimate of
 * the last fetch counted down by the time since, as the daemon publishes it. Rounds are judged
 * against the true remaining time from the window's filling while it is at least judge_min. */
static int sc_run(const struct scenario *s, enum cmh_forecast_method m, double judge_min,
                  struct sc_result *out)
{
    struct cmh_forecast_series fs;
    cmh_forecast_series_init(&fs, SC_WINDOW, SC_INTERVAL);
    double end = sc_exhausted_at(s);
    double stop = end >= 0 ? end : s->horizon;
    double est = -1, est_t = 0;
    int rc = 0;
    memset(out, 0, sizeof *out);
    out->min_tte = out->min_tte_drain = CMH_FORECAST_CAP_S;
    out->alarm_lead = -1;
    for (double t = 0; t < stop && rc == 0; t += SC_ROUND) {
        if (fmod(t, SC_INTERVAL) == 0) {
            rc = cmh_forecast_series_add(&fs, t, sc_free_at(s, t));
            if (rc == 0 && cmh_forecast_series_ready(&fs)) {
                rc = cmh_forecast_estimate(m, fs.s, fs.n, &est);
                est_t = t;
            }
        }
        if (est < 0)
            continue;
        double pub = est >= CMH_FORECAST_CAP_S ? est : fmax(0, est - (t - est_t));
        out->rounds++;
        if (pub < out->min_tte)
            out->min_tte = pub;
        if (s->kind == SC_DAILY && sin(2 * M_PI * t / SC_DAY) > 0 && pub < out->min_tte_drain)
            out->min_tte_drain = pub;
        if (pub < 3600 && out->alarm_lead < 0 && end >= 0)
            out->alarm_lead = end - t;
        double truth = end >= 0 ? end - t : -1;
        if (truth >= judge_min) {
            double err = fabs(pub - truth) / truth;
            out->judged++;
            if (err > out->max_err)
                out->max_err = err;
        }
    }
    cmh_forecast_series_close(&fs);
    return rc;
}

#endif
