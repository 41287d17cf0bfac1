//! `step_all`: one round of many generations in batched passes.

use super::*;

/// A verification or a plain step of [`step_all`]'s last pass.
pub(super) struct Work {
    pub(super) gen: usize,
    pub(super) tokens: Vec<u32>,
    pub(super) exit: usize,
    pub(super) logits: Logits,
    pub(super) pick: Option<PickRule>,
    /// The deep frontier before a verification.
    pub(super) base: usize,
}

/// One call of a batched pass: generation `gen` feeds `tokens` through
/// layers `0..exit`, its head output selected by `logits` and, when only
/// tokens are needed, picked by `pick`.
pub(super) type Call<'t> = (usize, &'t [u32], usize, Logits, Option<PickRule>);

/// One batched pass over `calls` (ascending `gen`). Returns each call's result.
pub(super) fn pass<E: Engine, S: BorrowMut<Session<E>>>(
    gens: &mut [&mut Generation<'_, E, S>],
    calls: &[Call<'_>],
) -> Vec<Result<usize>> {
    let mut want = calls.iter().peekable();
    let mut items: Vec<BatchItem<'_, E>> = Vec::with_capacity(calls.len());
    for (i, g) in gens.iter_mut().enumerate() {
        if let Some(&(_, tokens, exit, logits, pick)) = want.next_if(|c| c.0 == i) {
            items.push(BatchItem {
                session: g.session.borrow_mut(),
                tokens,
                exit,
                logits,
                pick,
            });
        }
    }
    forward_batch(&mut items)
}

/// Advance every generation by one round, batched: prompts in one pass; then
/// the drafts of all speculating generations one position per pass through
/// their shallow layers; then one pass with every verification and every
/// plain step. A generation that fails stops with its error; the others go on.
pub fn step_all<E: Engine, S: BorrowMut<Session<E>>>(gens: &mut [&mut Generation<'_, E, S>]) {
    // Prompts.
    let mut idx: Vec<usize> = Vec::new();
    let mut prompts: Vec<(Vec<u32>, usize, Logits, PickRule)> = Vec::new();
    for (i, g) in gens.iter_mut().enumerate() {
        if g.is_done() || g.prompt.is_none() {
            continue;
        }
        let s: &mut Session<E> = g.session.borrow_mut();
        let exit = g.opts.mode.step_exit(s.model().config.num_layers);
        let prompt = g.prompt.take().expect("checked");
        let mut which = Logits::Last;
        if let Some((policy, cost)) = &g.auto {
            let (exits, rows) =
                policy.prompt_probes(cost, &s.spec().acceptance, prompt.len(), g.sink.budget);
            s.set_probes(&exits, rows);
            which = Logits::Tail(rows.max(1));
        }
        idx.push(i);
        let rule = g.next_rule();
        prompts.push((prompt, exit, which, rule));
    }
    if !idx.is_empty() {
        let calls: Vec<_> = idx
            .iter()
            .zip(&prompts)
            .map(|(&i, (p, exit, which, rule))| (i, &p[..], *exit, *which, Some(*rule)))
            .collect();
        let results = pass(gens, &calls);
        for (&i, r) in idx.iter().zip(results) {
            let g = &mut *gens[i];
            if g.auto.is_some() {
                score_step_probes(g.session.borrow_mut(), PROMPT_PROBE_WEIGHT);
            }
            g.prompt_seconds = g.start.elapsed().as_secs_f64();
            match r {
                Ok(_) => g.sample_next(),
                Err(e) => g.fail(e),
            }
        }
        // Prompted generations start their rounds in the next call.
    }

    // Plans for the generations that are running.
    let running = |i: usize, g: &Generation<'_, E, S>| !g.is_done() && !idx.contains(&i);
    let sharing = gens
        .iter()
        .enumerate()
        .filter(|(i, g)| running(*i, g))
        .count();
    let mut plans: Vec<Option<Plan>> = Vec::with_capacity(gens.len());
    for (i, g) in gens.iter_mut().enumerate() {
        plans.push(if running(i, g) {
            match g.plan(sharing - 1) {
                Ok(p) => Some(p),
                Err(e) => {
                    g.fail(e);
                    None
                }
            }
        } else {
            None
        });
    }
    let round_start = Instant::now();

    // Drafts: one position per pass for every generation still drafting.
    loop {
        let mut feeds: Vec<(usize, [u32; 1], usize)> = Vec::new();
        for (i, p) in plans.iter().enumerate() {
            if let Some(Plan::Speculate(d)) = p {
                if let Some(f) = d.feed() {
                    feeds.push((i, [f], d.exit));
                }
            }
        }
        if feeds.is_empty() {
            break;
        }
        let calls: Vec<_> = feeds
            .iter()
            .map(|(i, t, exit)| {
                let pick = greedy_pick(&gens[*i].opts.sampling);
                (*i, &t[..], *exit, Logits::Draft, pick)
            })
            .collect();
        let results = pass(gens, &calls);
        for ((i, _, _), r) in feeds.iter().zip(results) {
            let g = &mut *gens[*i];
            let Some(Plan::Speculate(d)) = &mut plans[*i] else {
                unreachable!("drafting")
            };
            match r {
                Ok(_) => d.take(
                    g.session.borrow().head_output(),
                    &g.opts.sampling,
                    &mut g.rng,
                ),
                Err(e) => {
                    // The round fails whole: the drafts it made go too.
                    g.session.borrow_mut().drop_drafts();
                    g.fail(e);
                    plans[*i] = None;
                }
            }
        }
    }
    let draft_seconds = round_start.elapsed().as_secs_f64();

    // Verifications and plain steps, in one pass.
    let mut work: Vec<Work> = Vec::new();
    for (i, p) in plans.iter_mut().enumerate() {
        let g = &mut *gens[i];
        match p {
            Some(Plan::Step(exit)) => {
                let rule = g.next_rule();
                work.push(Work {
                    gen: i,
                    tokens: vec![g.next],
                    exit: *exit,
                    logits: Logits::Last,
                    pick: Some(rule),
                    base: 0,
                })
            }
            Some(Plan::Speculate(d)) => {
                let n_layers = g.session.borrow().model().config.num_layers;
                match g.session.borrow_mut().verify_begin(g.next, &d.drafts) {
                    Ok((base, feed)) => work.push(Work {
                        gen: i,
                        tokens: feed,
                        exit: n_layers,
                        logits: Logits::All,
                        pick: greedy_pick(&g.opts.sampling),
                        base,
                    }),
                    Err(e) => {
                        g.fail(e);
                        *p = None;
                    }
                }
            }
            None => {}
        }
    }
    let verify_start = Instant::now();
    let calls: Vec<_> = work
        .iter()
        .map(|w| (w.gen, &w.tokens[..], w.exit, w.logits, w.pick))
        .collect();
    let results = pass(gens, &calls);
    let verify_seconds = verify_start.elapsed().as_secs_f64();
    let round_seconds = round_start.elapsed().as_secs_f64();

    for (Work { gen: i, base, .. }, r) in work.iter().zip(results) {
        let g = &mut *gens[*i];
        match plans[*i].take() {
            Some(Plan::Step(exit)) => {
                if g.auto.is_some() {
                    score_step_probes(g.session.borrow_mut(), 1.0);
                }
                if let Err(e) = r {
                    g.fail(e);
                    continue;
                }
                if let Some((policy, cost)) = g.auto.as_mut().filter(|_| sharing == 1) {
                    policy.observe_time(cost, Choice { exit, draft_len: 0 }, 0, 1, round_seconds);
                }
                g.sample_next();
            }
            Some(Plan::Speculate(d)) => {
                let s: &mut Session<E> = g.session.borrow_mut();
                let verdict = s.verify_end(*base, r, &d.drafts, &g.opts.sampling, &mut g.rng);
                let stats = &mut s.spec_mut().stats;
                stats.draft_seconds += draft_seconds;
                stats.verify_seconds += verify_seconds;
                let verdict = match verdict {
                    Ok(v) => v,
                    Err(e) => {
                        s.set_probes(&[], 0);
                        g.fail(e);
                        continue;
                    }
                };
                if let Some((policy, cost)) = &mut g.auto {
                    let mut probes = s.take_probes();
                    s.set_probes(&[], 0);
                    // Rows past the first rejected draft read a token the
                    // model did not write: agreement there says nothing about
                    // drafting, where the current exit's own acceptance also
                    // stops counting.
                    probes.retain(|p| p.pos <= *base + verdict.accepted);
                    let (pos0, full) = std::mem::take(&mut s.spec_mut().verified);
                    s.spec_mut()
                        .acceptance
                        .score_probes(&probes, pos0, &full, 1.0);
                    if d.drafts.confidence.len() == d.drafts.tokens.len() {
                        s.spec_mut().acceptance.observe_drafts(
                            d.exit,
                            &d.drafts.confidence,
                            verdict.accepted,
                        );
                    } else {
                        s.spec_mut().acceptance.observe_round(
                            d.exit,
                            d.drafts.tokens.len(),
                            verdict.accepted,
                        );
                    }
                    let choice = Choice {
                        exit: d.exit,
                        draft_len: d.drafts.tokens.len().max(1),
                    };
                    // A shared round's time is every session's work, not this one's.
                    if sharing == 1 {
                        policy.observe_time(
                            cost,
                            choice,
                            d.drafts.tokens.len(),
                            verdict.accepted + 1,
                            round_seconds,
                        );
                    }
                }
                let mut going = true;
                for &t in &d.drafts.tokens[..verdict.accepted] {
                    going = g.emit(t);
                    if !going {
                        break;
                    }
                }
                if going {
                    g.next = verdict.token_after;
                    g.emit(verdict.token_after);
                }
            }
            None => {}
        }
    }
    for g in gens.iter_mut() {
        if g.is_done() {
            g.session.borrow_mut().set_probes(&[], 0);
        }
    }
}

/// Weight of a probe on the prompt. The prompt is text the model did not
/// write: its exits agree with the full model there less often than on the
/// model's own continuation (on the bundled model's code prompts, ~0.67
/// against ~0.88 at exit 5), so prompt probes are a weak first guess. At
/// 0.25 they still pulled the model's shared estimates of exits 2-4 down to
/// 0.44-0.73 against 0.71-0.83 measured by drafting with them; at 0.05 the
/// estimates were 0.60-0.87.
pub(super) const PROMPT_PROBE_WEIGHT: f64 = 0.05;

/// Score the probes of a full-depth pass against its own logits, then stop probing.
pub(super) fn score_step_probes<E: Engine>(session: &mut Session<E>, weight: f64) {
    let probes = session.take_probes();
    session.set_probes(&[], 0);
    if probes.is_empty() {
        return;
    }
    let full = session.head_output().tokens();
    let pos0 = session.logits_pos0();
    session
        .spec_mut()
        .acceptance
        .score_probes(&probes, pos0, &full, weight);
}
