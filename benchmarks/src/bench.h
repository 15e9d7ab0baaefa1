/* bench.h: shared by the benchmark's template objects (see ../README.md).
 *
 * Every external symbol of a template is spelled S(name), i.e. PREFIX##name, where PREFIX is a
 * 7-character token such as Zc0000_ given on the command line.  The corpus generator copies a
 * template object and rewrites that token in the object's string table (same length, so no
 * offset moves), which gives any number of copies with distinct symbols from one clang-22
 * object.  Imports from another template's copy use I1(name)..I3(name), with the tokens
 * Zi0001_..Zi0003_, rewritten the same way to the prefix of the copy they should bind to.
 *
 * No system header: libSystem is the example libsystem.c, declared here.
 */
#ifndef BENCH_H
#define BENCH_H

#define BENCH_CAT2(a, b) a##b
#define BENCH_CAT(a, b) BENCH_CAT2(a, b)
#define S(name) BENCH_CAT(PREFIX, name)
#define I1(name) BENCH_CAT(Zi0001_, name)
#define I2(name) BENCH_CAT(Zi0002_, name)
#define I3(name) BENCH_CAT(Zi0003_, name)

#define NOINLINE __attribute__((noinline))
#define HIDDEN __attribute__((visibility("hidden")))

typedef unsigned long bench_size_t;

void *malloc(bench_size_t size);
void *calloc(bench_size_t count, bench_size_t size);
void free(void *ptr);
bench_size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
void *memcpy(void *dst, const void *src, bench_size_t n);
void *memset(void *dst, int c, bench_size_t n);

/* The API every copy of tpl_code exports, and tpl_client imports (from up to three copies). */
#define BENCH_API(P)                                                                               \
    int P(api_fn0)(int x);                                                                         \
    int P(api_fn1)(int x);                                                                         \
    int P(api_fn2)(int x);                                                                         \
    int P(api_fn3)(int x);                                                                         \
    int P(api_fn4)(int x);                                                                         \
    int P(api_fn5)(int x);                                                                         \
    int P(api_fn6)(int x);                                                                         \
    int P(api_fn7)(int x);                                                                         \
    int P(api_checksum)(const char *s, int n);                                                     \
    extern int P(api_counter);                                                                     \
    extern const int P(api_table)[64];                                                             \
    extern const char *P(api_name);                                                                \
    extern int (*const P(api_dispatch)[8])(int)

#endif
