/* Test seams of config.h: one variable parsed, found and written back, for the tests and the
 * fuzzer. Not part of the contract: the program never calls these; only the module itself, its
 * tests, fuzzers and benchmarks include this header. */
#ifndef CMH_CONFIG_INT_H
#define CMH_CONFIG_INT_H

#include "cmh/core/config.h"

/* Parses one value of var into cfg, replacing what was there (used by load, tests and the fuzzer).
 * Returns 0 or -EINVAL/-ENOMEM with err filled. */
int cmh_config_set(struct cmh_config *cfg, const struct cmh_config_var *var, const char *value,
                   char err[CMH_CONFIG_ERR_MAX]);

const struct cmh_config_var *cmh_config_find(const char *name);

/* Writes the current value of var in cfg as text (secrets are not redacted here). */
size_t cmh_config_value_text(const struct cmh_config *cfg, const struct cmh_config_var *var,
                             char *buf, size_t len);

#endif
