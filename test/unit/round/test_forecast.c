/* Time to exhaustion: every estimator over the scripted scenarios (forecast_scenarios.h), the
 * chosen one held to the figures (within 25% of the true remaining time at every judged round of a
 * steady stepwise drain, the 60-minute alarm before exhaustion, a flat subnet with noise never
 * within 24 hours, the drain half of a daily cycle never within 60 minutes), the publication rules
 * (the 7-day cap, nothing before the window holds enough history, nothing across a stale gap),
 * and each estimator against a hand-computed slope. `test_forecast --table` prints the comparison
 * of docs/forecast.md. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "forecast_scenarios.h"

#include <errno.h>
#include <stdio.h>

#include "cmh/round/forecast_int.h"

/* Rounds judged against the true remaining time while at least one window of it is left: below
 * that the next few steps of the drain decide, and no estimator can know them. */
#define JUDGE_MIN SC_WINDOW
#define SEEDS     20

static void forecast_estimators_match_hand_slopes(void **state)
{
    (void)state;
    /* A straight line 1000 - 2t: every estimator finds 2/s; 500 left at t = 250 -> 250 s. */
    struct cmh_forecast_sample s[6];
    for (int i = 0; i < 6; i++)
        s[i] = (struct cmh_forecast_sample){50.0 * i, 1000 - 2 * 50.0 * i};
    for (int m = 0; m < CMH_FC_METHODS; m++) {
        double tte = -1;
        assert_int_equal(cmh_forecast_estimate(m, s, 6, &tte), 0);
        assert_float_equal(tte, 500.0 / 2.0, 1e-6);
    }
    /* Rising: the cap. Exhausted: 0. */
    for (int i = 0; i < 6; i++)
        s[i].v = 100 + i;
    double tte = -1;
    assert_int_equal(cmh_forecast_estimate(CMH_FC_OLS, s, 6, &tte), 0);
    assert_float_equal(tte, CMH_FORECAST_CAP_S, 0);
    s[5].v = 0;
    assert_int_equal(cmh_forecast_estimate(CMH_FC_OLS, s, 6, &tte), 0);
    assert_float_equal(tte, 0, 0);
    /* Very slow: capped at 7 days, not 20. */
    for (int i = 0; i < 6; i++)
        s[i].v = 1e6 - 0.5 * s[i].t;
    assert_int_equal(cmh_forecast_estimate(CMH_FC_OLS_LOWER, s, 6, &tte), 0);
    assert_float_equal(tte, CMH_FORECAST_CAP_S, 0);
    /* Outliers: Theil-Sen ignores one wild sample, least squares does not. */
    for (int i = 0; i < 6; i++)
        s[i].v = 1000 - 2 * s[i].t;
    s[2].v += 400;
    double ts, ols;
    assert_int_equal(cmh_forecast_estimate(CMH_FC_THEIL_SEN, s, 6, &ts), 0);
    assert_int_equal(cmh_forecast_estimate(CMH_FC_OLS, s, 6, &ols), 0);
    assert_float_equal(ts, 250, 1e-6);
    assert_true(fabs(ols - 250) > 1);
    /* Too few samples, no span. */
    assert_int_equal(cmh_forecast_estimate(CMH_FC_OLS, s, 2, &tte), -EAGAIN);
    s[1].t = s[0].t;
    s[2].t = s[0].t;
    assert_int_equal(cmh_forecast_estimate(CMH_FC_OLS, s, 3, &tte), -EAGAIN);
    assert_int_equal(cmh_forecast_estimate(CMH_FC_METHODS, s, 6, &tte), -EINVAL);
}

static void forecast_series_waits_for_full_window_and_clears_on_stale_gap(void **state)
{
    (void)state;
    struct cmh_forecast_series fs;
    cmh_forecast_series_init(&fs, 1800, 300);
    double tte;
    /* Samples every 300 s: the window (1800 s) is full at the 7th sample, not before. */
    for (int i = 0; i < 7; i++) {
        assert_int_equal(cmh_forecast_series_estimate(&fs, &tte), -EAGAIN);
        assert_int_equal(cmh_forecast_series_add(&fs, 300.0 * i, 4000 - 30.0 * i), 0);
    }
    assert_true(cmh_forecast_series_ready(&fs));
    assert_int_equal(cmh_forecast_series_estimate(&fs, &tte), 0);
    assert_float_equal(tte, (4000 - 180) / 0.1, 1e-6);
    /* Old samples leave: never more than window / interval + 1. */
    for (int i = 7; i < 40; i++)
        assert_int_equal(cmh_forecast_series_add(&fs, 300.0 * i, 4000 - 30.0 * i), 0);
    assert_int_equal(fs.n, 7);
    /* A repeated or older time is ignored. */
    assert_int_equal(cmh_forecast_series_add(&fs, 300.0 * 39, 1), 0);
    assert_int_equal(fs.n, 7);
    /* A gap of more than 3 intervals (the view went stale): history starts again, and nothing is
     * estimated until a whole window has been seen after the gap. */
    double t = 300.0 * 39 + 4 * 300.0;
    for (int i = 0; i < 7; i++) {
        assert_int_equal(cmh_forecast_series_add(&fs, t + 300.0 * i, 500), 0);
        assert_int_equal(cmh_forecast_series_estimate(&fs, &tte), i < 6 ? -EAGAIN : 0);
    }
    assert_float_equal(tte, CMH_FORECAST_CAP_S, 0); /* flat after the gap */
    /* Exactly 3 intervals is not a gap. */
    assert_int_equal(cmh_forecast_series_add(&fs, t + 300.0 * 9, 500), 0);
    assert_true(cmh_forecast_series_ready(&fs));
    cmh_forecast_series_close(&fs);
}

/* Worst figures of method m over SEEDS seeds of each scenario. */
struct worst {
    double steady_err, steady_lead, flat_min, daily_drain_min, pauses_lead, releases_lead;
};

static void run_all(enum cmh_forecast_method m, struct worst *w)
{
    w->steady_err = 0;
    w->steady_lead = w->flat_min = w->daily_drain_min = w->pauses_lead = w->releases_lead = 1e18;
    for (uint64_t seed = 1; seed <= SEEDS; seed++) {
        for (int k = 0; k < SC_KINDS; k++) {
            struct scenario sc;
            struct sc_result r;
            sc_build(&sc, k, seed * 7919 + (uint64_t)k);
            assert_int_equal(sc_run(&sc, m, JUDGE_MIN, &r), 0);
            switch (k) {
            case SC_STEADY:
                assert_true(r.judged > 100);
                w->steady_err = fmax(w->steady_err, r.max_err);
                w->steady_lead = fmin(w->steady_lead, r.alarm_lead);
                break;
            case SC_FLAT_NOISE:
                w->flat_min = fmin(w->flat_min, r.min_tte);
                break;
            case SC_DAILY:
                assert_true(sc_exhausted_at(&sc) < 0);
                w->daily_drain_min = fmin(w->daily_drain_min, r.min_tte_drain);
                break;
            case SC_PAUSES:
                w->pauses_lead = fmin(w->pauses_lead, r.alarm_lead);
                break;
            case SC_RELEASES:
                w->releases_lead = fmin(w->releases_lead, r.alarm_lead);
                break;
            default:
                break;
            }
            sc_free(&sc);
        }
    }
}

static int meets(const struct worst *w)
{
    return w->steady_err <= 0.25 && w->steady_lead > 0 && w->flat_min > 86400 &&
           w->daily_drain_min > 3600;
}

static void forecast_chosen_estimator_meets_scenario_figures(void **state)
{
    (void)state;
    struct worst w;
    run_all(CMH_FORECAST_METHOD, &w);
    print_message("%s: steady max err %.1f%%, alarm lead %.0f s, flat min %.1f h, daily drain min "
                  "%.1f h\n",
                  cmh_forecast_method_name(CMH_FORECAST_METHOD), 100 * w.steady_err, w.steady_lead,
                  w.flat_min / 3600, w.daily_drain_min / 3600);
    assert_true(w.steady_err <= 0.25);
    assert_true(w.steady_lead > 0);
    assert_true(w.flat_min > 86400);
    assert_true(w.daily_drain_min > 3600);
    /* The comparison is a comparison: at least one other estimator fails a figure. */
    int failing = 0;
    for (int m = 0; m < CMH_FC_METHODS; m++) {
        struct worst o;
        run_all(m, &o);
        failing += !meets(&o);
    }
    assert_true(failing > 0);
}

static void print_table(void)
{
    printf("| Estimator | Steady drain: worst error | 60-min alarm: least lead before exhaustion "
           "(steady / pauses / releases) | Flat + noise: soonest | Daily cycle, drain half: "
           "soonest | Meets all |\n|---|---|---|---|---|---|\n");
    for (int m = 0; m < CMH_FC_METHODS; m++) {
        struct worst w;
        run_all(m, &w);
        printf("| %s%s | %.1f%% | %.0f / %.0f / %.0f min | %.1f h | %.1f h | %s |\n",
               cmh_forecast_method_name(m), m == CMH_FORECAST_METHOD ? " (chosen)" : "",
               100 * w.steady_err, w.steady_lead / 60, w.pauses_lead / 60, w.releases_lead / 60,
               w.flat_min / 3600, w.daily_drain_min / 3600, meets(&w) ? "yes" : "no");
    }
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--table") == 0) {
        print_table();
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(forecast_estimators_match_hand_slopes),
        cmocka_unit_test(forecast_series_waits_for_full_window_and_clears_on_stale_gap),
        cmocka_unit_test(forecast_chosen_estimator_meets_scenario_figures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
