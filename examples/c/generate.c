/* Greedy generation through the C API, printed like `layerskip generate`.
 *   cc -std=c99 examples/c/generate.c $(pkg-config --cflags --libs target/release/layerskip.pc) -o generate
 *   ./generate assets/layerskip-pycode-8l "def fibonacci(n):" 64 */
#include "layerskip.h"

#include <stdio.h>
#include <stdlib.h>

static int32_t print_piece(void *user, int32_t token, const char *text, size_t len) {
    (void)user;
    (void)token;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

static int fail(lsk_error *err) {
    fprintf(stderr, "error: %s\n", lsk_error_message(err));
    lsk_error_free(err);
    return 1;
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "assets/layerskip-pycode-8l";
    const char *prompt = argc > 2 ? argv[2] : "def fibonacci(n):";
    uint32_t n_new = argc > 3 ? (uint32_t)atoi(argv[3]) : 64;
    lsk_model *model = NULL;
    lsk_session *session = NULL;
    lsk_error *err = NULL;
    lsk_generate_options opts;
    int32_t ids[4096];
    size_t n_ids = 0;
    size_t i;

    if (lsk_model_load(path, NULL, &model, &err) != LSK_OK) return fail(err);
    for (i = 0; prompt[i]; i++) {}
    if (lsk_tokenize(model, prompt, i, 1, ids, 4096, &n_ids, &err) != LSK_OK) return fail(err);
    if (lsk_session_new(model, NULL, &session, &err) != LSK_OK) return fail(err);
    lsk_generate_options_init(&opts, sizeof opts);
    opts.max_new_tokens = n_new;
    fputs(prompt, stdout);
    if (lsk_session_generate(session, ids, n_ids, &opts, print_piece, NULL, NULL, &err) != LSK_OK) return fail(err);
    fputs("\n", stdout);
    lsk_session_free(session);
    lsk_model_free(model);
    return 0;
}
