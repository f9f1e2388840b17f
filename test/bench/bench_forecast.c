/* The forecast's cost per estimate, for each estimator, at window sizes from the default (7
 * samples: 30 minutes at 5-minute fetches) to the largest series (CMH_FORECAST_MAX_SAMPLES), on a
 * noisy drain. Usage: bench_forecast; prints a table and one BENCH line per method and size. */
#include "cmh/round/forecast_int.h"
#include "cmh/core/rng.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(void)
{
    static const size_t sizes[] = {7, 61, 361, CMH_FORECAST_MAX_SAMPLES};
    struct cmh_forecast_sample *s = calloc(CMH_FORECAST_MAX_SAMPLES, sizeof *s);
    if (s == NULL)
        return 1;
    uint64_t r = 42;
    for (size_t i = 0; i < CMH_FORECAST_MAX_SAMPLES; i++)
        s[i] = (struct cmh_forecast_sample){10.0 * (double)i, 50000 - 0.5 * (double)i +
                                                                  (double)(cmh_rng_next(&r) % 41)};
    printf("%-28s %8s %14s\n", "estimator", "samples", "ns/estimate");
    double sink = 0;
    for (int m = 0; m < CMH_FC_METHODS; m++) {
        for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
            size_t n = sizes[k];
            /* About 0.2 s per cell. */
            unsigned iters = 1;
            double t0 = now_s(), t1 = t0;
            while (t1 - t0 < 0.2) {
                for (unsigned i = 0; i < iters; i++) {
                    double tte;
                    if (cmh_forecast_estimate(m, s, n, &tte) == 0)
                        sink += tte;
                }
                t1 = now_s();
                if (t1 - t0 < 0.2)
                    iters *= 2;
            }
            unsigned total = 2 * iters - 1;
            double ns = (t1 - t0) * 1e9 / (double)total;
            printf("%-28s %8zu %14.0f\n", cmh_forecast_method_name(m), n, ns);
            printf("BENCH forecast method=%s samples=%zu ns_per_estimate=%.0f\n",
                   cmh_forecast_method_name(m), n, ns);
        }
    }
    free(s);
    return sink == 0; /* keeps the work from being optimised away */
}
