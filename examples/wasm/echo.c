#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reads the event (JSON) on stdin, answers {"echo": <event>, "bytes": n}.
 * Under a CGI host (Spin's WAGI executor, for scripts/bench-peer-spin.sh) the answer
 * starts with the CGI header that such a host requires. */
int main(void) {
    if (getenv("GATEWAY_INTERFACE")) printf("Content-Type: application/json\n\n");
    size_t cap = 4096, len = 0, n;
    char *buf = malloc(cap);
    while ((n = fread(buf + len, 1, cap - len, stdin)) > 0) {
        len += n;
        if (len == cap) buf = realloc(buf, cap *= 2);
    }
    fprintf(stderr, "got %zu bytes\n", len);
    printf("{\"echo\": %.*s, \"bytes\": %zu}", (int)len, len ? buf : "null", len);
    return 0;
}
