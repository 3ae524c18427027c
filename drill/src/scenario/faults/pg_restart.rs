//! Scenario 3: PostgreSQL restarted with a fast shutdown at 40 % of the load (at 30 %
//! and 70 % when the load lasts 40 s or more).

use std::time::Instant;

use super::super::outcome::Outcome;
use super::super::world::{Window, World};

pub(super) async fn run(
    w: &mut World<'_>,
    window: Window,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let ctx = w.ctx;
    let (start, d) = (window.start, window.secs);
    let at = |f: f64| window.at(f);
    let fractions: &[f64] = if d >= 40.0 { &[0.3, 0.7] } else { &[0.4] };
    for f in fractions {
        tokio::time::sleep_until(at(*f).into()).await;
        let t = Instant::now();
        ctx.stack.run("pg-restart").await?;
        out.notes.push(format!(
            "PostgreSQL restarted (fast shutdown) at {:.1} s, took {:.1} s",
            (t - start).as_secs_f64(),
            t.elapsed().as_secs_f64()
        ));
        w.begin_recovery().await;
    }
    Ok(())
}
