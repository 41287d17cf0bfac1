// Exercises the C++ wrapper. Same arguments as api_test.c.
#include "layerskip.hpp"

#include <cstdio>
#include <stdexcept>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

std::string second_tu_decode(const layerskip::Model& model, const std::vector<int32_t>& ids);

static int passed = 0, failed = 0;
#define CHECK(cond)                                                           \
    do {                                                                      \
        if (cond) passed++;                                                   \
        else {                                                                \
            failed++;                                                         \
            std::fprintf(stderr, "FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                     \
    } while (0)

template <class F>
static lsk_result error_code_of(F&& f) {
    try {
        f();
    } catch (const layerskip::Error& e) {
        return e.what()[0] ? e.code() : LSK_OK;
    }
    return LSK_OK;
}

// The message of the layerskip::Error that `f` throws ("" if none): the
// library's own text, never just the code's name.
template <class F>
static std::string message_of(F&& f) {
    try {
        f();
    } catch (const layerskip::Error& e) {
        return e.what();
    }
    return "";
}

static bool has(const std::string& text, const char* part) {
    bool ok = text.find(part) != std::string::npos;
    if (!ok) std::fprintf(stderr, "message \"%s\" lacks \"%s\"\n", text.c_str(), part);
    return ok;
}

static std::vector<int32_t> parse(const char* s) {
    std::vector<int32_t> v;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) v.push_back(std::atoi(item.c_str()));
    return v;
}

int main(int argc, char** argv) {
    if (argc != 6) return 2;
    const auto prompt = parse(argv[3]);
    const auto full = parse(argv[4]);

    CHECK(error_code_of([] { layerskip::Model m("/no/such/model"); }) == LSK_ERR_IO);
    CHECK(error_code_of([&] { layerskip::Model m(argv[2]); }) == LSK_ERR_WEIGHTS);

    {
        // Options: int8 products load and decodes; a bad value throws.
        lsk_model_options mo;
        lsk_model_options_init(&mo, sizeof mo);
        mo.quantize = 5;
        CHECK(error_code_of([&] { layerskip::Model m(argv[1], mo); }) == LSK_ERR_INVALID_ARGUMENT);
        mo.quantize = LSK_QUANTIZE_INT8;
        layerskip::Model q(argv[1], mo);
        layerskip::Session s(q);
        layerskip::GenerateOptions o;
        o.max_new_tokens = 3;
        o.ignore_eos = 1;
        CHECK(s.generate(prompt, o, [](int32_t, std::string_view) { return true; }).n_tokens == 3);
    }

    layerskip::Model model(argv[1]);
    const auto info = model.info();
    CHECK(info.n_layers >= 2);

    auto ids = model.tokenize("def f(x):");
    CHECK(!ids.empty());
    CHECK(second_tu_decode(model, ids) == "def f(x):");

    // Generate with a lambda; the model may move, the session keeps it alive.
    layerskip::Model moved = std::move(model);
    layerskip::Session session(moved);
    layerskip::GenerateOptions opts;
    opts.max_new_tokens = static_cast<uint32_t>(full.size());
    opts.ignore_eos = 1;
    opts.mode = LSK_MODE_SELF_SPECULATIVE;
    opts.exit_layer = 1;
    opts.draft_len = 3;
    std::vector<int32_t> got;
    std::string text;
    auto res = session.generate(prompt, opts, [&](int32_t t, std::string_view piece) {
        got.push_back(t);
        text += piece;
        return true;
    });
    CHECK(got == full);
    CHECK(res.n_tokens == full.size());
    CHECK(text == moved.detokenize(got));
    CHECK(session.stats().drafted > 0);

    // Automatic (E, d): lossless, and the chosen spans are reported.
    layerskip::Session s_auto(moved);
    layerskip::GenerateOptions auto_opts = opts;
    auto_opts.exit_layer = LSK_AUTO;
    auto_opts.draft_len = LSK_AUTO;
    std::vector<int32_t> got_auto;
    s_auto.generate(prompt, auto_opts, [&](int32_t t, std::string_view) {
        got_auto.push_back(t);
        return true;
    });
    CHECK(got_auto == full);
    auto spans = s_auto.choices();
    CHECK(!spans.empty() && spans.front().first_token == 1);

    // Stop from the lambda; an exception from the lambda propagates.
    layerskip::Session s2(moved);
    int calls = 0;
    res = s2.generate(prompt, opts, [&](int32_t, std::string_view) { return ++calls < 4; });
    CHECK(calls == 4 && res.stop_reason == LSK_STOP_CALLBACK);
    layerskip::Session s3(moved);
    bool thrown = false;
    try {
        s3.generate(prompt, opts, [](int32_t, std::string_view) -> bool { throw std::runtime_error("boom"); });
    } catch (const std::runtime_error& e) {
        thrown = std::string(e.what()) == "boom";
    }
    CHECK(thrown);

    // A batch of generations through the wrapper: the same tokens as alone.
    {
        layerskip::Batch batch(moved);
        layerskip::Session a(moved), b(moved);
        std::vector<int32_t> ta, tb;
        uint64_t ia = batch.add(a, prompt, opts, [&](int32_t t, std::string_view) {
            ta.push_back(t);
            return true;
        });
        layerskip::GenerateOptions auto_opts2 = opts;
        auto_opts2.exit_layer = LSK_AUTO;
        auto_opts2.draft_len = LSK_AUTO;
        uint64_t ib = batch.add(b, prompt, auto_opts2, [&](int32_t t, std::string_view) {
            tb.push_back(t);
            return true;
        });
        while (batch.step() > 0) {
        }
        auto done = batch.finished();
        CHECK(done.size() == 2);
        CHECK(batch.result(ia).n_tokens == full.size() && batch.result(ib).n_tokens == full.size());
        CHECK(ta == full && tb == full);
        bool busy = false;
        try {
            batch.result(ia);  // collected already
        } catch (const layerskip::Error& e) {
            busy = e.code() == LSK_ERR_INVALID_ARGUMENT;
        }
        CHECK(busy);
    }

    // Step-by-step, draft/verify, logits, rewind, and errors as exceptions.
    layerskip::Session s4(moved);
    int32_t next = s4.prefill(prompt);
    CHECK(next == full[0]);
    CHECK(s4.logits().size() == info.vocab_size);
    auto drafts = s4.draft(next, 1, 4);
    auto v = s4.verify(next, drafts);
    CHECK(v.accepted <= drafts.size());
    CHECK(s4.logits(-1) == s4.logits(static_cast<int32_t>(drafts.size())));
    CHECK(has(message_of([&] { s4.logits(100); }), "logits row 100 is out of range"));
    CHECK(error_code_of([&] { s4.step(-1); }) == LSK_ERR_INVALID_ARGUMENT);
    CHECK(error_code_of([&] { s4.draft(next, 0, 4); }) == LSK_ERR_INVALID_ARGUMENT);
    s4.rewind(prompt.size());
    CHECK(s4.step(full[0]) == full[1]);
    layerskip::Session s5 = std::move(s4);
    CHECK(s5.stats().shallow_len == prompt.size() + 1);

    // Every wrapper call with a bad argument throws the library's message.
    {
        lsk_model_options bad;
        lsk_model_options_init(&bad, sizeof bad);
        bad.quantize = 7;
        CHECK(has(message_of([&] { layerskip::Model m(argv[1], bad); }), "unknown quantize value 7"));
        CHECK(has(message_of([] { layerskip::Model m("/no/such/model"); }), "/no/such/model"));
        layerskip::SessionOptions so;
        so.context_length = 1u << 30;
        CHECK(has(message_of([&] { layerskip::Session s(moved, so); }), "context length"));
        layerskip::Session s6(moved);
        CHECK(has(message_of([&] { s6.step(-5); }), "token id -5 is out of range"));
        CHECK(has(message_of([&] { s6.prefill({-2}); }), "token id -2 is out of range"));
        CHECK(has(message_of([&] { s6.draft(-3, 1, 4); }), "token id -3 is out of range"));
        CHECK(has(message_of([&] { s6.draft(full[0], 1, 0); }), "max_drafts must be at least 1"));
        CHECK(has(message_of([&] { s6.verify(full[0], {-4}); }), "token id -4 is out of range"));
        CHECK(has(message_of([&] { s6.rewind(1000000); }), "1000000"));
        CHECK(has(message_of([&] { s6.step(full[0], 999); }), "999"));
        CHECK(has(message_of([&] { moved.detokenize({-6}); }), "-6"));
        layerskip::GenerateOptions go;
        go.mode = 9;
        CHECK(has(message_of([&] { s6.generate(prompt, go); }), "unknown mode 9"));
        layerskip::Batch batch(moved);
        CHECK(has(message_of([&] { batch.add(s6, {-7}, opts); }), "token id -7 is out of range"));
        CHECK(has(message_of([&] { batch.cancel(42); }), "no running generation 42"));
        CHECK(has(message_of([&] { batch.result(43); }), "no finished generation 43"));
        // A callback's exception in a batch stops that generation and comes
        // back from result().
        uint64_t id = batch.add(s6, prompt, opts, [](int32_t, std::string_view) -> bool {
            throw std::runtime_error("batch boom");
        });
        while (batch.step() > 0) {
        }
        bool rethrown = false;
        try {
            batch.result(id);
        } catch (const std::runtime_error& e) {
            rethrown = std::string(e.what()) == "batch boom";
        }
        CHECK(rethrown);
    }

    // Abort callback, batched steps and host-driven rounds.
    {
        layerskip::Session a(moved), b(moved);
        a.set_abort([] { return true; });
        CHECK(has(message_of([&] { a.prefill(prompt); }), "abort"));
        CHECK(error_code_of([&] { a.prefill(prompt); }) == LSK_ERR_ABORTED);
        a.set_abort([]() -> bool { throw std::runtime_error("abort boom"); });
        CHECK(error_code_of([&] { a.prefill(prompt); }) == LSK_ERR_ABORTED);
        a.set_abort(nullptr);
        CHECK(a.stats().shallow_len == 0);

        std::vector<lsk_result> codes;
        auto next = layerskip::sessions_step({&a, &b}, {prompt, {-9}}, {}, layerskip::Sampling(), &codes);
        CHECK(next[0] == full[0] && next[1] == -1);
        CHECK(codes[0] == LSK_OK && codes[1] == LSK_ERR_INVALID_ARGUMENT);
        CHECK(has(message_of([&] { layerskip::sessions_step({&a}, {}); }), "one token list"));

        // Rounds: a full-depth session and a self-speculative one, from the
        // same prompt, each give the greedy stream; a bad round says why.
        layerskip::Session c(moved);
        std::vector<layerskip::Round> rounds(3);
        std::vector<int32_t> out[3], in[3], tok[3];
        lsk_error* bad = nullptr;
        layerskip::Session* who[3] = {&b, &c, &a};
        for (int k = 0; k < 3; k++) {
            tok[k].resize(full.size());
            in[k] = prompt;
            rounds[k].session = who[k]->get();
        }
        rounds[1].mode = LSK_MODE_SELF_SPECULATIVE;
        rounds[1].exit_layer = 1;
        rounds[1].draft_len = 3;
        rounds[2].err = &bad;  // max_tokens stays 0: fails alone
        rounds[2].input = prompt.data();
        rounds[2].n_input = prompt.size();
        rounds[2].tokens = tok[2].data();
        for (int r = 0; r < 100 && (out[0].size() < full.size() || out[1].size() < full.size()); r++) {
            std::vector<layerskip::Round> live;
            std::vector<int> idx;
            for (int k = 0; k < 2; k++) {
                if (out[k].size() >= full.size()) continue;
                rounds[k].input = in[k].data();
                rounds[k].n_input = in[k].size();
                rounds[k].tokens = tok[k].data();
                rounds[k].max_tokens = static_cast<uint32_t>(full.size() - out[k].size());
                live.push_back(rounds[k]);
                idx.push_back(k);
            }
            if (r == 0) live.push_back(rounds[2]);
            layerskip::sessions_round(live);
            for (size_t j = 0; j < idx.size(); j++) {
                int k = idx[j];
                CHECK(live[j].result == LSK_OK && live[j].n_tokens >= 1);
                out[k].insert(out[k].end(), tok[k].begin(), tok[k].begin() + live[j].n_tokens);
                in[k] = {out[k].back()};
            }
            if (r == 0) CHECK(live.back().result == LSK_ERR_INVALID_ARGUMENT);
        }
        CHECK(out[0] == full && out[1] == full);
        CHECK(bad != nullptr && has(lsk_error_message(bad), "max_tokens must be at least 1"));
        lsk_error_free(bad);
        std::vector<layerskip::Round> mixed(2);
        mixed[1].struct_size = 8;
        CHECK(has(message_of([&] { layerskip::sessions_round(mixed); }), "rounds[1].struct_size is 8"));
        moved.reset_policy();
    }

    std::printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
