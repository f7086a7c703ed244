/* Preloaded into tritonserver by `longdoc serve` (longdoc/server/argv_secret.py).
 *
 * Triton 2.51 takes the admin key only on its command line, and /proc/<pid>/cmdline is
 * readable by every local user. So the command line carries a placeholder, and this
 * constructor, which runs before main(), points the argv entries that hold it at copies
 * with the real key taken from the environment (readable only by the server's own user).
 * The kernel shows the original argument area: the key is never in /proc/<pid>/cmdline.
 * The variable is then wiped in place (its bytes in /proc/<pid>/environ) and unset, so
 * the Python backend's stubs, forked later, never receive it.
 */
#include <stdlib.h>
#include <string.h>

#define SECRET_ENV "LONGDOC_ARGV_SECRET"
#define PLACEHOLDER "@longdoc-admin-key@"

__attribute__((constructor)) static void longdoc_inject_secret(int argc, char **argv, char **envp) {
    (void)envp;
    char *secret = getenv(SECRET_ENV);
    if (secret == NULL || argv == NULL) return;
    size_t secret_len = strlen(secret), mark_len = strlen(PLACEHOLDER);
    for (int i = 0; i < argc; i++) {
        char *at = argv[i] ? strstr(argv[i], PLACEHOLDER) : NULL;
        if (at == NULL) continue;
        size_t head = (size_t)(at - argv[i]), tail = strlen(at + mark_len);
        char *arg = malloc(head + secret_len + tail + 1);
        if (arg == NULL) continue;
        memcpy(arg, argv[i], head);
        memcpy(arg + head, secret, secret_len);
        memcpy(arg + head + secret_len, at + mark_len, tail + 1);
        argv[i] = arg;
    }
    memset(secret, 0, secret_len);
    unsetenv(SECRET_ENV);
}
