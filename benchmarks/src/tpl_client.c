/* tpl_client.c: the imports that tie a dylib to the dylibs it depends on.
 *
 * Uses the bench.h API of three other tpl_code copies (tokens Zi0001_..Zi0003_, which the
 * generator rewrites to copies in this dylib's dependencies): calls (stubs), addresses of
 * their data in code (GOT), and const and writable tables of pointers to their functions and
 * data (binds in __DATA_CONST / __AUTH_CONST and __DATA), some with addends.
 * Compiled with -DPREFIX=Ze0000_.
 */
#include "bench.h"

BENCH_API(I1);
BENCH_API(I2);
BENCH_API(I3);

/* binds in constant data: pointers to imported functions */
int (*const S(client_fns)[24])(int) = {
    I1(api_fn0), I1(api_fn1), I1(api_fn2), I1(api_fn3), I1(api_fn4), I1(api_fn5), I1(api_fn6), I1(api_fn7),
    I2(api_fn0), I2(api_fn1), I2(api_fn2), I2(api_fn3), I2(api_fn4), I2(api_fn5), I2(api_fn6), I2(api_fn7),
    I3(api_fn0), I3(api_fn1), I3(api_fn2), I3(api_fn3), I3(api_fn4), I3(api_fn5), I3(api_fn6), I3(api_fn7)};

/* binds in writable data, two with addends */
const int *S(client_data)[6] = {&I1(api_table)[0], &I2(api_table)[8], &I3(api_table)[60],
                                &I1(api_counter),  &I2(api_counter),  &I3(api_counter)};
const char **S(client_names)[3] = {&I1(api_name), &I2(api_name), &I3(api_name)};

int S(client_run)(int x) {
    int acc = I1(api_fn0)(x) + I2(api_fn1)(x) + I3(api_fn2)(x);
    acc += I1(api_fn3)(acc) ^ I2(api_fn4)(acc) ^ I3(api_fn5)(acc);
    acc += I1(api_dispatch)[x & 7](x) + I2(api_dispatch)[(x >> 3) & 7](x) + I3(api_dispatch)[(x >> 6) & 7](x);
    return acc + I1(api_fn6)(x) + I2(api_fn7)(x) + I3(api_fn7)(x);
}

int S(client_sum)(void) {
    int acc = I1(api_counter) + I2(api_counter) + I3(api_counter);
    for (int i = 0; i < 64; i++)
        acc += I1(api_table)[i] * 3 + I2(api_table)[i] * 5 + I3(api_table)[i] * 7;
    for (int i = 0; i < 6; i++)
        acc += *S(client_data)[i];
    return acc;
}

int S(client_check)(const char *s) {
    return I1(api_checksum)(s, 16) + I2(api_checksum)(*S(client_names)[1], 8) +
           I3(api_checksum)(I3(api_name), 4) + (int)strlen(s);
}

int S(client_call)(int k, int x) { return S(client_fns)[(unsigned)k % 24u](x); }
