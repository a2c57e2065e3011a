/* main() of the x86_32 layout programs: prints the table of one c/x86_32/NAME.c as "key<TAB>value" lines. */
#include <stdio.h>
#include "abi_table.h"

const struct abi_entry *abi_table(size_t *n);

int main(void)
{
    size_t n, i;
    const struct abi_entry *e = abi_table(&n);
    for (i = 0; i < n; i++)
        printf("%s\t%lld\n", e[i].name, e[i].value);
    return 0;
}
