/* Test seams of forecast.h: the estimator under the series, for the tests. Not part of the
 * contract: the program never calls these; only the module itself, its tests, fuzzers and
 * benchmarks include this header. */
#ifndef CMH_FORECAST_INT_H
#define CMH_FORECAST_INT_H

#include "cmh/round/forecast.h"

const char *cmh_forecast_method_name(enum cmh_forecast_method m);

/* The seconds until the last sample's value reaches zero at the rate of decline method finds in
 * s[0..n) (times increasing), capped at CMH_FORECAST_CAP_S (also when the value is not
 * declining); 0 when the last value is 0 or less. Returns 0, or -EAGAIN for fewer than
 * CMH_FORECAST_MIN_SAMPLES samples or a span of 0, -EINVAL for an unknown method. */
int cmh_forecast_estimate(enum cmh_forecast_method m, const struct cmh_forecast_sample *s, size_t n,
                          double *tte_s);

/* 1 when the series holds enough history to say anything: at least CMH_FORECAST_MIN_SAMPLES
 * samples spanning at least the window less half an interval. */
int cmh_forecast_series_ready(const struct cmh_forecast_series *fs);

#endif
