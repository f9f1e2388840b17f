/* Test seams of prom.h: parser internals for the tests and benchmarks. Not part of the contract:
 * the program never calls these; only the module itself, its tests, fuzzers and benchmarks include
 * this header. */
#ifndef CMH_PROM_INT_H
#define CMH_PROM_INT_H

#include "cmh/scrape/prom.h"

/* A ready-made want callback. arg is a struct cmh_prom_names: a family is wanted when its name
 * equals one of the names, or starts with one that ends in '*' (the '*' excluded). */
struct cmh_prom_names {
    const char *const *names;
    size_t n;
};
int cmh_prom_want_names(void *arg, const char *family, size_t len, enum cmh_prom_type type);

/* Text of a type as in a TYPE line ("counter", ...). */
const char *cmh_prom_type_name(enum cmh_prom_type type);

#endif
