/* tpl_code.c: mostly machine code, the bulk of a typical dylib's __TEXT.
 *
 * 48 static "kernel" functions with loops and arithmetic, a bytecode interpreter whose switch
 * becomes a jump table, string helpers that call libSystem (stubs -> binds), and the exported
 * API of bench.h (functions, data, a const dispatch table of function pointers: rebases).
 * Compiled with -DPREFIX=Zc0000_.
 */
#include "bench.h"

BENCH_API(S);

int S(api_counter) = 17;
const int S(api_table)[64] = {
    3,   1,   4,   1,   5,   9,   2,   6,   5,   3,   5,   8,   9,   7,   9,   3,   2,   3,   8,   4,  6,  2,
    6,   4,   3,   3,   8,   3,   2,   7,   9,   5,   0,   2,   8,   8,   4,   1,   9,   7,   1,   6,   9,  3,
    9,   9,   3,   7,   5,   1,   0,   5,   8,   2,   0,   9,   7,   4,   9,   4,   4,   5,   9,   2};
const char *S(api_name) = "bench-code-template";

/* ---- kernels: K(n, a, b) makes a function whose loop body differs by two constants ---- */

#define K(n, a, b)                                                                                 \
    static NOINLINE int kern##n(int x) {                                                           \
        unsigned h = (unsigned)x * (a##u) + (b##u);                                                \
        for (int i = 0; i < (x & 31) + 3; i++) {                                                   \
            h ^= h >> (i % 7 + 1);                                                                 \
            h *= (a##u) | 1u;                                                                      \
            h += (unsigned)S(api_table)[(h + (b##u)) & 63];                                        \
            if ((h & 0xff) == (b & 0xff))                                                          \
                h = (h << 3) | (h >> 29);                                                          \
        }                                                                                          \
        return (int)(h ^ (h >> 16));                                                               \
    }

K(0, 2654435761, 17) K(1, 2246822519, 31) K(2, 3266489917, 5) K(3, 668265263, 101)
K(4, 374761393, 7) K(5, 2166136261, 19) K(6, 16777619, 23) K(7, 1103515245, 12345)
K(8, 1664525, 1013904223) K(9, 22695477, 1) K(10, 69069, 362437) K(11, 1812433253, 9)
K(12, 1566083941, 3) K(13, 1297, 4099) K(14, 40503, 65537) K(15, 2891336453, 11)
K(16, 2654435769, 27) K(17, 3812015801, 33) K(18, 1597334677, 65) K(19, 2869860233, 129)
K(20, 3084996963, 255) K(21, 3336916453, 511) K(22, 3421843163, 1023) K(23, 3926368853, 2047)
K(24, 4235890717, 4095) K(25, 747796405, 8191) K(26, 2891336453, 16383) K(27, 1540483477, 32767)
K(28, 3432918353, 13) K(29, 461845907, 29) K(30, 3864292196, 57) K(31, 2246822507, 77)
K(32, 3266489909, 91) K(33, 668265261, 111) K(34, 374761391, 131) K(35, 2654435767, 151)
K(36, 2166136259, 171) K(37, 16777617, 191) K(38, 1103515243, 211) K(39, 1664523, 231)
K(40, 22695479, 251) K(41, 69071, 271) K(42, 1812433251, 291) K(43, 1566083943, 311)
K(44, 1291, 331) K(45, 40507, 351) K(46, 2891336451, 371) K(47, 1540483479, 391)

typedef int (*kern_fn)(int);
static kern_fn const kernels[48] = {
    kern0,  kern1,  kern2,  kern3,  kern4,  kern5,  kern6,  kern7,  kern8,  kern9,  kern10, kern11,
    kern12, kern13, kern14, kern15, kern16, kern17, kern18, kern19, kern20, kern21, kern22, kern23,
    kern24, kern25, kern26, kern27, kern28, kern29, kern30, kern31, kern32, kern33, kern34, kern35,
    kern36, kern37, kern38, kern39, kern40, kern41, kern42, kern43, kern44, kern45, kern46, kern47};

/* ---- a small bytecode interpreter: the dense switch becomes a jump table ---- */

static NOINLINE int interp(const unsigned char *code, int n, int acc) {
    int stack[16];
    int sp = 0;
    for (int pc = 0; pc < n; pc++) {
        switch (code[pc] & 15) {
        case 0: acc += 1; break;
        case 1: acc -= 3; break;
        case 2: acc *= 5; break;
        case 3: acc ^= 0x5a5a; break;
        case 4: if (sp < 16) stack[sp++] = acc; break;
        case 5: if (sp > 0) acc += stack[--sp]; break;
        case 6: acc = kernels[(unsigned)acc % 48u](acc); break;
        case 7: acc = (acc << 2) | ((unsigned)acc >> 30); break;
        case 8: acc = -acc; break;
        case 9: acc += S(api_table)[(unsigned)acc & 63]; break;
        case 10: acc = acc / 7 + 1; break;
        case 11: acc = acc % 1000003; break;
        case 12: S(api_counter) += acc & 1; break;
        case 13: pc += acc & 1; break;
        case 14: acc |= 0x100; break;
        default: acc &= 0x7fffffff; break;
        }
    }
    return acc;
}

/* ---- string helpers: calls into libSystem ---- */

static NOINLINE char *dup_string(const char *s) {
    bench_size_t n = strlen(s);
    char *p = malloc(n + 1);
    if (p)
        memcpy(p, s, n + 1);
    return p;
}

static NOINLINE int compare_names(const char *a, const char *b) { return strcmp(a, b); }

int S(api_checksum)(const char *s, int n) {
    char *copy = dup_string(s);
    if (!copy)
        return -1;
    unsigned h = 5381;
    for (int i = 0; copy[i] && i < n; i++)
        h = h * 33u + (unsigned char)copy[i];
    memset(copy, 0, strlen(copy));
    free(copy);
    return (int)h + compare_names(s, S(api_name));
}

/* ---- the exported API ---- */

int S(api_fn0)(int x) { return kern0(x) + kern8(x + 1) + kern16(x + 2); }
int S(api_fn1)(int x) { return kern1(x) ^ kern9(x) ^ kern17(x) ^ kern24(x); }
int S(api_fn2)(int x) { return kern2(x) - kern10(x) + kern18(x) - kern25(x) + kern32(x); }
int S(api_fn3)(int x) { return kern3(x) + kern11(x * 3) + kern19(x * 5) + kern26(x * 7); }
int S(api_fn4)(int x) {
    static const unsigned char prog[24] = {0, 2, 4, 6, 9, 5, 7, 3, 11, 1, 8, 14,
                                           15, 6, 10, 4, 2, 5, 12, 13, 0, 9, 3, 6};
    return interp(prog, 24, x) + kern4(x) + kern33(x) + kern40(x);
}
int S(api_fn5)(int x) { return kern5(x) + kern12(x) + kern20(x) + kern27(x) + kern34(x) + kern41(x); }
int S(api_fn6)(int x) {
    int acc = 0;
    for (int i = 0; i < 48; i++)
        acc += kernels[i](x + i);
    return acc + kern6(x) + kern13(x) + kern21(x) + kern28(x) + kern35(x) + kern42(x) + kern44(x);
}
int S(api_fn7)(int x) {
    return kern7(x) + kern14(x) + kern15(x) + kern22(x) + kern23(x) + kern29(x) + kern30(x) + kern31(x) +
           kern36(x) + kern37(x) + kern38(x) + kern39(x) + kern43(x) + kern45(x) + kern46(x) + kern47(x);
}

int (*const S(api_dispatch)[8])(int) = {S(api_fn0), S(api_fn1), S(api_fn2), S(api_fn3),
                                        S(api_fn4), S(api_fn5), S(api_fn6), S(api_fn7)};
