// host_loop: a serving framework's scheduler driving layerskip one round at
// a time with lsk_sessions_round.
//
// Requests arrive over time, each with its own mode (full depth, early exit,
// self-speculation with fixed or automatic E and d) and sampling; the loop
// admits them up to a concurrency limit, advances every admitted request by
// one round per call, applies its own stop rules (token budget, EOS ids)
// and retires finished requests, whose sessions are freed at once. Then it
// runs every request alone, checks that each output is identical, runs the
// same requests through lsk_batch, and prints the throughput of all three.
//
//   c++ -std=c++17 -O2 -Iinclude examples/host_loop/host_loop.cpp
//       -Ltarget/release -llayerskip -Wl,-rpath,target/release -o host_loop
//   ./host_loop assets/layerskip-pycode-8l --requests 16 --concurrency 8
//
// Options: --requests N (16), --concurrency C (8), --max-new-tokens T (48),
// --arrive-every R rounds (1), --quantize none|int8|bf16 (none),
// --modes LIST of full,early,spec,auto,full-sampled,spec-sampled (all).
// Exit status 0 only when every output matches its solo run.
#include "layerskip.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Kind {
    const char* name;
    uint32_t mode, exit_layer, draft_len;
    float temperature;
};

const Kind kKinds[] = {
    {"full", LSK_MODE_FULL, 0, 0, 0.0f},
    {"early", LSK_MODE_EARLY_EXIT, 0, 0, 0.0f},
    {"spec", LSK_MODE_SELF_SPECULATIVE, 0, 4, 0.0f},
    {"auto", LSK_MODE_SELF_SPECULATIVE, LSK_AUTO, LSK_AUTO, 0.0f},
    {"full-sampled", LSK_MODE_FULL, 0, 0, 0.8f},
    {"spec-sampled", LSK_MODE_SELF_SPECULATIVE, 0, 4, 0.8f},
};

const char* kPrompts[] = {
    "def fibonacci(n):", "class Stack:", "import os\n", "def add(a, b):",
    "for i in range(10):", "def is_prime(n):", "class Node:", "def read_file(path):",
};

struct Request {
    int id = 0;
    const Kind* kind = nullptr;
    std::vector<int32_t> prompt;
    uint32_t budget = 0;
    int arrives = 0;  // the scheduler round it arrives in
};

// A request being served: its session, what it feeds next, what it made.
struct Live {
    const Request* req;
    std::unique_ptr<layerskip::Session> session;
    layerskip::Sampling sampling;
    std::vector<int32_t> input, out, buf;
    lsk_error* error = nullptr;  // a failed round's error (the loop then exits)
    bool done = false;
};

struct Options {
    std::string model;
    int requests = 16, concurrency = 8, arrive_every = 1;
    uint32_t max_new_tokens = 48, quantize = LSK_QUANTIZE_NONE;
    std::vector<const Kind*> kinds;
};

std::unique_ptr<Live> admit(const layerskip::Model& model, const Request& r) {
    auto l = std::make_unique<Live>();
    l->req = &r;
    layerskip::SessionOptions so;
    so.seed = static_cast<uint64_t>(r.id);  // rounds draw from the session's generator
    l->session = std::make_unique<layerskip::Session>(model, so);
    l->sampling.temperature = r.kind->temperature;
    l->sampling.top_k = 40;
    l->sampling.top_p = 0.95f;
    l->input = r.prompt;
    l->buf.resize(r.budget);
    return l;
}

// This loop's round options for `l`: its mode, its remaining budget, EOS ids.
layerskip::Round round_of(Live& l, const std::vector<int32_t>& eos) {
    layerskip::Round r;
    r.session = l.session->get();
    r.input = l.input.data();
    r.n_input = l.input.size();
    r.mode = l.req->kind->mode;
    r.exit_layer = l.req->kind->exit_layer;
    r.draft_len = l.req->kind->draft_len;
    r.sampling = &l.sampling;
    r.max_tokens = l.req->budget - static_cast<uint32_t>(l.out.size());
    r.tokens = l.buf.data();
    r.stop_ids = eos.data();
    r.n_stop_ids = eos.size();
    r.err = &l.error;
    return r;
}

// Take a round's tokens; the stop rules: the budget and EOS ids.
void take(Live& l, const layerskip::Round& r, const std::vector<int32_t>& eos) {
    if (r.result != LSK_OK) {
        std::fprintf(stderr, "request %d: round failed: %s\n", l.req->id,
                     l.error ? lsk_error_message(l.error) : lsk_result_name(r.result));
        std::exit(1);
    }
    l.out.insert(l.out.end(), l.buf.begin(), l.buf.begin() + r.n_tokens);
    int32_t last = l.out.back();
    bool eos_hit = false;
    for (int32_t e : eos) eos_hit = eos_hit || e == last;
    l.done = eos_hit || l.out.size() >= l.req->budget;
    l.input.assign(1, last);
}

// Serve `reqs` with at most `concurrency` in flight; returns each output.
std::vector<std::vector<int32_t>> serve(const layerskip::Model& model, const std::vector<Request>& reqs,
                                        int concurrency, const std::vector<int32_t>& eos, size_t* rounds_run) {
    std::vector<std::vector<int32_t>> outputs(reqs.size());
    std::vector<std::unique_ptr<Live>> live;
    size_t next = 0, finished = 0;
    for (int tick = 0; finished < reqs.size(); tick++) {
        while (next < reqs.size() && reqs[next].arrives <= tick && static_cast<int>(live.size()) < concurrency) {
            live.push_back(admit(model, reqs[next++]));
        }
        if (live.empty()) continue;
        std::vector<layerskip::Round> rounds;
        for (auto& l : live) rounds.push_back(round_of(*l, eos));
        layerskip::sessions_round(rounds);
        if (rounds_run) ++*rounds_run;
        for (size_t i = 0; i < live.size(); i++) take(*live[i], rounds[i], eos);
        for (size_t i = 0; i < live.size();) {
            if (live[i]->done) {
                outputs[live[i]->req->id] = std::move(live[i]->out);
                live.erase(live.begin() + static_cast<long>(i));  // frees the session
                finished++;
            } else {
                i++;
            }
        }
    }
    return outputs;
}

// The same requests as lsk_batch generations (same arrivals and limit).
std::vector<std::vector<int32_t>> serve_batch(const layerskip::Model& model, const std::vector<Request>& reqs,
                                              int concurrency) {
    std::vector<std::vector<int32_t>> outputs(reqs.size());
    layerskip::Batch batch(model);
    std::vector<std::unique_ptr<layerskip::Session>> sessions(reqs.size());
    std::vector<std::pair<uint64_t, int>> running;
    size_t next = 0, finished = 0;
    for (int tick = 0; finished < reqs.size(); tick++) {
        while (next < reqs.size() && reqs[next].arrives <= tick && static_cast<int>(running.size()) < concurrency) {
            const Request& r = reqs[next++];
            sessions[r.id] = std::make_unique<layerskip::Session>(model);
            layerskip::GenerateOptions o;
            o.mode = r.kind->mode;
            o.exit_layer = r.kind->exit_layer;
            o.draft_len = r.kind->draft_len == 0 ? 4 : r.kind->draft_len;
            o.max_new_tokens = r.budget;
            o.sample.temperature = r.kind->temperature;
            o.sample.top_k = 40;
            o.sample.top_p = 0.95f;
            o.sample.seed = static_cast<uint64_t>(r.id);
            auto* out = &outputs[r.id];
            uint64_t id = batch.add(*sessions[r.id], r.prompt, o, [out](int32_t t, std::string_view) {
                out->push_back(t);
                return true;
            });
            running.emplace_back(id, r.id);
        }
        if (running.empty()) continue;
        batch.step();
        for (uint64_t id : batch.finished()) {
            batch.result(id);
            for (size_t i = 0; i < running.size(); i++) {
                if (running[i].first == id) {
                    sessions[running[i].second].reset();
                    running.erase(running.begin() + static_cast<long>(i));
                    break;
                }
            }
            finished++;
        }
    }
    return outputs;
}

double seconds_since(Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
}

size_t total(const std::vector<std::vector<int32_t>>& outs) {
    size_t n = 0;
    for (const auto& o : outs) n += o.size();
    return n;
}

Options parse(int argc, char** argv) {
    Options o;
    if (argc < 2) {
        std::fprintf(stderr, "usage: host_loop MODEL [--requests N] [--concurrency C] [--max-new-tokens T] "
                             "[--arrive-every R] [--quantize none|int8|bf16] [--modes a,b,...]\n");
        std::exit(2);
    }
    o.model = argv[1];
    std::string modes = "full,early,spec,auto,full-sampled,spec-sampled";
    for (int i = 2; i + 1 < argc; i += 2) {
        std::string k = argv[i], v = argv[i + 1];
        if (k == "--requests") o.requests = std::atoi(v.c_str());
        else if (k == "--concurrency") o.concurrency = std::atoi(v.c_str());
        else if (k == "--max-new-tokens") o.max_new_tokens = static_cast<uint32_t>(std::atoi(v.c_str()));
        else if (k == "--arrive-every") o.arrive_every = std::atoi(v.c_str());
        else if (k == "--modes") modes = v;
        else if (k == "--quantize") o.quantize = v == "bf16" ? LSK_QUANTIZE_BF16 : v == "int8" ? LSK_QUANTIZE_INT8 : LSK_QUANTIZE_NONE;
        else {
            std::fprintf(stderr, "unknown option %s\n", k.c_str());
            std::exit(2);
        }
    }
    std::stringstream ss(modes);
    std::string m;
    while (std::getline(ss, m, ',')) {
        for (const Kind& k : kKinds) {
            if (m == k.name) o.kinds.push_back(&k);
        }
    }
    if (o.kinds.empty() || o.requests < 1 || o.concurrency < 1 || o.max_new_tokens < 1) {
        std::fprintf(stderr, "bad options\n");
        std::exit(2);
    }
    return o;
}

}  // namespace

int main(int argc, char** argv) {
    Options opt = parse(argc, argv);
    lsk_model_options mo;
    lsk_model_options_init(&mo, sizeof mo);
    mo.quantize = opt.quantize;
    layerskip::Model model(opt.model, mo);
    lsk_model_summary info = model.info();
    std::vector<int32_t> eos(info.eos_token_ids, info.eos_token_ids + info.n_eos_token_ids);

    std::vector<Request> reqs(static_cast<size_t>(opt.requests));
    for (int i = 0; i < opt.requests; i++) {
        Request& r = reqs[static_cast<size_t>(i)];
        r.id = i;
        r.kind = opt.kinds[static_cast<size_t>(i) % opt.kinds.size()];
        r.prompt = model.tokenize(kPrompts[i % (sizeof kPrompts / sizeof *kPrompts)]);
        // Budgets differ, so requests leave at different times.
        r.budget = opt.max_new_tokens / 2 + static_cast<uint32_t>(i * 7) % (opt.max_new_tokens / 2 + 1);
        r.arrives = i * opt.arrive_every;
    }

    // Warm up with one request of each kind (the automatic policy measures
    // the model's costs once, on its first use).
    size_t warm = std::min(reqs.size(), opt.kinds.size());
    serve(model, std::vector<Request>(reqs.begin(), reqs.begin() + static_cast<long>(warm)), 1, eos, nullptr);

    size_t rounds_run = 0;
    auto t = Clock::now();
    auto together = serve(model, reqs, opt.concurrency, eos, &rounds_run);
    double t_together = seconds_since(t);

    std::vector<std::vector<int32_t>> alone(reqs.size());
    t = Clock::now();
    for (const Request& r : reqs) {
        auto l = admit(model, r);
        while (!l->done) {
            std::vector<layerskip::Round> one{round_of(*l, eos)};
            layerskip::sessions_round(one);
            take(*l, one[0], eos);
        }
        alone[static_cast<size_t>(r.id)] = std::move(l->out);
    }
    double t_alone = seconds_since(t);

    t = Clock::now();
    auto batched = serve_batch(model, reqs, opt.concurrency);
    double t_batch = seconds_since(t);

    int mismatches = 0;
    for (size_t i = 0; i < reqs.size(); i++) {
        if (together[i] != alone[i]) {
            std::printf("request %zu (%s): differs from its solo run\n", i, reqs[i].kind->name);
            mismatches++;
        }
        // Greedy requests must also match lsk_batch's generation.
        if (reqs[i].kind->temperature == 0.0f && batched[i] != alone[i]) {
            std::printf("request %zu (%s): differs from lsk_batch\n", i, reqs[i].kind->name);
            mismatches++;
        }
    }
    size_t n = total(together);
    std::printf("requests %d, concurrency %d, tokens %zu, scheduler rounds %zu\n", opt.requests,
                opt.concurrency, n, rounds_run);
    std::printf("host loop (lsk_sessions_round): %.1f tok/s\n", n / t_together);
    std::printf("one by one:                     %.1f tok/s\n", total(alone) / t_alone);
    std::printf("lsk_batch:                      %.1f tok/s\n", total(batched) / t_batch);
    std::printf("host loop / one by one: %.2fx, host loop / lsk_batch: %.2fx\n",
                (n / t_together) / (total(alone) / t_alone), (n / t_together) / (total(batched) / t_batch));
    std::printf("identical to solo runs: %s\n", mismatches == 0 ? "yes" : "NO");
    return mismatches == 0 ? 0 : 1;
}
