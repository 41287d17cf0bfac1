//! `layerskip costs`: the cost model of automatic (E, d) against rounds timed
//! as decoding runs them.

use crate::ModelArgs;

pub(crate) fn parse_round(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("expected E:D (exit layer and draft length), got `{s}`");
    let (e, d) = s.split_once(':').ok_or_else(bad)?;
    Ok((e.parse().map_err(|_| bad())?, d.parse().map_err(|_| bad())?))
}

pub(crate) fn run_costs(
    model: ModelArgs,
    rounds: Vec<(usize, usize)>,
    repeat: usize,
) -> layerskip::Result<()> {
    let model = model.load()?;
    let c = model.cost_model();
    println!("rows  layer_us  per_row  head_us  per_row  draft_head_us");
    for r in 1..=c.layer.len() {
        println!(
            "{r:>4} {:>9.1} {:>8.2} {:>8.1} {:>8.2} {:>14.1}",
            1e6 * c.layer(r),
            c.layer(r) / (r as f64 * c.layer(1)),
            1e6 * c.head(r),
            c.head(r) / (r as f64 * c.head(1)),
            1e6 * c.draft_head(r),
        );
    }
    println!(
        "full token {:.1} us ({} layers + head); measured in {:.0} ms",
        1e6 * c.full_token(),
        c.n_layers,
        1e3 * c.measure_seconds
    );
    let l = c.n_layers;
    let e = (l / 4).max(1);
    println!(
        "draft step at E={e}: {:.1} us with the draft head, {:.1} us with the full head ({:.2}x)",
        1e6 * c.draft_step(e),
        1e6 * (e as f64 * c.layer(1) + c.head(1)),
        (e as f64 * c.layer(1) + c.head(1)) / c.draft_step(e),
    );
    let rounds = if rounds.is_empty() {
        let mut exits: Vec<usize> = [l / 4, l / 2, 3 * l / 4]
            .into_iter()
            .filter(|e| (1..l).contains(e))
            .collect();
        exits.dedup();
        exits
            .into_iter()
            .flat_map(|e| [1, 2, 4, 8].map(|d| (e, d)))
            .collect()
    } else {
        rounds
    };
    let repeat = repeat.max(1);
    let timed = c.time_rounds(&model.engine, &model.timing_extras(), &rounds, repeat)?;
    let full = timed[0];
    println!(
        "\nas decoding runs them (median of {repeat}); x full = seconds over a full-depth step's"
    );
    println!(
        "round       measured_us  predicted_us  measured/predicted  x full: measured  predicted"
    );
    for t in &timed {
        let name = if t.drafts == 0 {
            "full depth".to_string()
        } else {
            format!("E={} d={}", t.exit, t.drafts)
        };
        println!(
            "{name:<11} {:>11.1} {:>13.1} {:>19.2} {:>17.2} {:>10.2}",
            1e6 * t.measured,
            1e6 * t.predicted,
            t.measured / t.predicted,
            t.measured / full.measured,
            t.predicted / full.predicted,
        );
    }
    Ok(())
}
