/* tpl_data.c: pointer-rich data, what gives a dylib most of its rebases.
 *
 * A const table of descriptors (name, function, data: three pointers each, __DATA_CONST /
 * __AUTH_CONST), a writable table of pointers into its own data (__DATA), string tables,
 * zero-filled state (__bss) and a few functions that walk the tables.
 * Compiled with -DPREFIX=Zd0000_.
 */
#include "bench.h"

#define NDESC 64
#define NSLOTS 384

struct desc {
    const char *name;
    int (*fn)(int);
    const int *data;
    int weight;
};

static int cells[NSLOTS];          /* __bss: targets of the slot pointers */
static int scratch[1024];          /* __bss */
int S(data_state)[32];             /* exported zero-fill */
int S(data_version) = 3;

static const int weights[NDESC] = {
    5, 3, 8, 1, 9, 2, 7, 4, 6, 0, 5, 3, 8, 1, 9, 2, 7, 4, 6, 0, 5, 3, 8, 1, 9, 2, 7, 4, 6, 0, 5, 3,
    8, 1, 9, 2, 7, 4, 6, 0, 5, 3, 8, 1, 9, 2, 7, 4, 6, 0, 5, 3, 8, 1, 9, 2, 7, 4, 6, 0, 5, 3, 8, 1};

#define F(n)                                                                                       \
    static NOINLINE int op##n(int x) { return (x * (n * 2 + 1)) ^ (cells[(n * 7) % NSLOTS] + n); }
F(0) F(1) F(2) F(3) F(4) F(5) F(6) F(7) F(8) F(9) F(10) F(11) F(12) F(13) F(14) F(15)

#define D(i, name) {name, op##i, &weights[(i * 5) % NDESC], i}
#define D4(i, a, b, c, d) D(i, a), D(i, b), D(i, c), D(i, d)

/* 64 descriptors, 3 pointers each (192 rebases), in constant data */
static const struct desc descs[NDESC] = {
    D4(0, "alpha", "beta", "gamma", "delta"),       D4(1, "epsilon", "zeta", "eta", "theta"),
    D4(2, "iota", "kappa", "lambda", "mu"),         D4(3, "nu", "xi", "omicron", "pi"),
    D4(4, "rho", "sigma", "tau", "upsilon"),        D4(5, "phi", "chi", "psi", "omega"),
    D4(6, "red", "orange", "yellow", "green"),      D4(7, "blue", "indigo", "violet", "black"),
    D4(8, "white", "grey", "brown", "pink"),        D4(9, "north", "south", "east", "west"),
    D4(10, "spring", "summer", "autumn", "winter"), D4(11, "one", "two", "three", "four"),
    D4(12, "five", "six", "seven", "eight"),        D4(13, "nine", "ten", "eleven", "twelve"),
    D4(14, "copper", "silver", "gold", "iron"),     D4(15, "oak", "elm", "ash", "birch")};

/* a writable table of pointers into this image's own zero-filled data: rebases in __DATA */
#define P(i) &cells[i]
#define P8(i) P(i), P(i + 1), P(i + 2), P(i + 3), P(i + 4), P(i + 5), P(i + 6), P(i + 7)
#define P64(i) P8(i), P8(i + 8), P8(i + 16), P8(i + 24), P8(i + 32), P8(i + 40), P8(i + 48), P8(i + 56)
int *S(data_slots)[NSLOTS] = {P64(0), P64(64), P64(128), P64(192), P64(256), P64(320)};

/* exported const pointers to the descriptors */
const struct desc *const S(data_index)[4] = {&descs[0], &descs[16], &descs[32], &descs[48]};

int S(data_lookup)(const char *name) {
    for (int i = 0; i < NDESC; i++)
        if (strcmp(descs[i].name, name) == 0)
            return descs[i].fn(descs[i].weight) + *descs[i].data;
    return -1;
}

int S(data_sum)(int seed) {
    int acc = seed;
    for (int i = 0; i < NSLOTS; i++) {
        *S(data_slots)[i] += i & 3;
        acc += *S(data_slots)[i];
    }
    for (int i = 0; i < 1024; i++)
        scratch[i] = acc + i;
    return acc + scratch[seed & 1023] + S(data_state)[seed & 31];
}

int S(data_apply)(int k, int x) { return descs[(unsigned)k % NDESC].fn(x) + S(data_version); }
