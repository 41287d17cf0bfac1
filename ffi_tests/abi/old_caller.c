/* A program built against the frozen 1.0 header, run against the current
 * library: every struct it passes is its own (1.0) size, followed by canary
 * bytes that the library must never touch. It must keep working for the
 * library's whole 1.x life (tests/abi.rs).
 *
 *   old_caller MODEL_DIR */
#include "layerskip-1.0.h"

#include <stdio.h>
#include <string.h>

static int passed = 0, failed = 0;
#define CHECK(cond)                                                          \
    do {                                                                     \
        if (cond) passed++;                                                  \
        else {                                                               \
            failed++;                                                        \
            fprintf(stderr, "FAILED line %d: %s\n", __LINE__, #cond);        \
        }                                                                    \
    } while (0)

#define CANARY 0xA5
#define GUARDED(T) struct { T s; unsigned char canary[64]; }
#define ARM(g) memset((g).canary, CANARY, sizeof (g).canary)

static int intact(const unsigned char *c, size_t n) {
    size_t i;
    for (i = 0; i < n; i++)
        if (c[i] != CANARY) return 0;
    return 1;
}
#define INTACT(g) intact((g).canary, sizeof (g).canary)

static int32_t count(void *user, int32_t token, const char *text, size_t len) {
    (void)token;
    (void)text;
    (void)len;
    (*(int *)user)++;
    return 0;
}

int main(int argc, char **argv) {
    lsk_model *model = NULL;
    lsk_session *s = NULL;
    lsk_batch *batch = NULL;
    lsk_error *err = NULL;
    int32_t prompt[3] = {2, 3, 4};
    int calls = 0;
    uint64_t id = 0;
    size_t running = 0;
    GUARDED(lsk_model_options) mo;
    GUARDED(lsk_session_options) so;
    GUARDED(lsk_sampling) smp;
    GUARDED(lsk_generate_options) go;
    GUARDED(lsk_generate_result) res;
    GUARDED(lsk_stats) st;
    GUARDED(lsk_model_summary) info;
    if (argc != 2) return 2;

    CHECK(lsk_abi_version() == LSK_ABI_VERSION);

    ARM(mo);
    CHECK(lsk_model_options_init(&mo.s, sizeof mo.s) == LSK_OK && INTACT(mo));
    CHECK(mo.s.struct_size == sizeof mo.s);
    CHECK(lsk_model_load(argv[1], &mo.s, &model, &err) == LSK_OK);
    if (!model) {
        fprintf(stderr, "%s\n", lsk_error_message(err));
        return 1;
    }

    ARM(info);
    CHECK(lsk_model_summary_init(&info.s, sizeof info.s) == LSK_OK && INTACT(info));
    CHECK(lsk_model_info(model, &info.s, &err) == LSK_OK && INTACT(info));
    CHECK(info.s.struct_size == sizeof info.s && info.s.n_layers >= 2);

    ARM(so);
    CHECK(lsk_session_options_init(&so.s, sizeof so.s) == LSK_OK && INTACT(so));
    so.s.context_length = 64;
    CHECK(lsk_session_new(model, &so.s, &s, &err) == LSK_OK);

    ARM(smp);
    CHECK(lsk_sampling_init(&smp.s, sizeof smp.s) == LSK_OK && INTACT(smp));
    ARM(go);
    CHECK(lsk_generate_options_init(&go.s, sizeof go.s) == LSK_OK && INTACT(go));
    go.s.max_new_tokens = 6;
    go.s.ignore_eos = 1;
    go.s.mode = LSK_MODE_SELF_SPECULATIVE;
    go.s.exit_layer = 1;
    go.s.draft_len = 2;
    go.s.sampling = &smp.s;
    ARM(res);
    CHECK(lsk_generate_result_init(&res.s, sizeof res.s) == LSK_OK && INTACT(res));
    CHECK(lsk_session_generate(s, prompt, 3, &go.s, count, &calls, &res.s, &err) == LSK_OK);
    CHECK(INTACT(res) && res.s.struct_size == sizeof res.s);
    CHECK(res.s.n_tokens == 6 && calls == 6 && res.s.prompt_tokens == 3);

    ARM(st);
    CHECK(lsk_stats_init(&st.s, sizeof st.s) == LSK_OK && INTACT(st));
    CHECK(lsk_session_stats(s, &st.s, &err) == LSK_OK && INTACT(st));
    CHECK(st.s.struct_size == sizeof st.s && st.s.drafted > 0);

    /* A batch, with the session freed while it is lent. */
    CHECK(lsk_batch_new(model, &batch, &err) == LSK_OK);
    CHECK(lsk_batch_add(batch, s, prompt, 3, &go.s, NULL, NULL, &id, &err) == LSK_OK);
    lsk_session_free(s);
    do {
        CHECK(lsk_batch_step(batch, &running, &err) == LSK_OK);
    } while (running > 0);
    ARM(res);
    CHECK(lsk_generate_result_init(&res.s, sizeof res.s) == LSK_OK);
    CHECK(lsk_batch_result(batch, id, &res.s, &err) == LSK_OK && INTACT(res));
    CHECK(res.s.n_tokens == 6);
    lsk_batch_free(batch);
    lsk_model_free(model);
    if (err) {
        fprintf(stderr, "error: %s\n", lsk_error_message(err));
        lsk_error_free(err);
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
