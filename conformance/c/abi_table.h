/*
 * Layout tables for the conformance tests: each entry is a key and the value that the C compiler gives for
 * it when it compiles Xen's public headers. The Rust side builds the same keys from xen-abi's types.
 *
 *   size:TYPE  align:TYPE  offset:TYPE.FIELD  const:NAME
 */
#ifndef BLANKET_ABI_TABLE_H
#define BLANKET_ABI_TABLE_H

#include <stddef.h>
#include <stdint.h>

struct abi_entry {
    const char *name;
    long long value;
};

#define ABI_SIZE(T)       { "size:" #T, (long long)sizeof(T) }
#define ABI_ALIGN(T)      { "align:" #T, (long long)_Alignof(T) }
#define ABI_OFFSET(T, F)  { "offset:" #T "." #F, (long long)offsetof(T, F) }
/* The size, alignment and nothing else: use ABI_OFFSET for each field. */
#define ABI_TYPE(T)       ABI_SIZE(T), ABI_ALIGN(T)
#define ABI_CONST(C)      { "const:" #C, (long long)(C) }

/* Defines `const struct abi_entry *abi_table_NAME(size_t *n)` over the array `entries`. */
#define ABI_TABLE(NAME, entries)                                          \
    const struct abi_entry *abi_table_##NAME(size_t *n);                  \
    const struct abi_entry *abi_table_##NAME(size_t *n)                   \
    {                                                                     \
        *n = sizeof(entries) / sizeof((entries)[0]);                      \
        return entries;                                                   \
    }

#endif
