//! Load generators that run from the client side: 1-row transactions at an offered
//! rate (or as fast as the connections go), and interleaved transaction pairs whose
//! commit order differs from their begin order.

use std::time::Duration;

use uuid::Uuid;

use crate::db::{connect, LOAD_APP};

/// An offered rate of events per second, or as fast as the generator can.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    Fixed(u32),
    Max,
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "max" => Ok(Rate::Max),
            n => match n.trim_end_matches("/s").parse::<u32>() {
                Ok(v) if v > 0 => Ok(Rate::Fixed(v)),
                _ => Err(format!("{s:?} is not a rate (events/s, e.g. 1000, or max)")),
            },
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rate::Fixed(r) => write!(f, "{r}/s"),
            Rate::Max => f.write_str("max"),
        }
    }
}

const INSERT: &str = "insert into outbox (id, aggregate_type, aggregate_id, event_type, payload) \
                      values ($1, 'bench', $2, 'BenchEvent', $3::text::jsonb)";

/// A JSON payload of about `bytes` bytes: `{"seq":N,"pad":"<random hex>"}`.
pub fn payload(seq: u64, bytes: usize) -> String {
    let head = format!("{{\"seq\":{seq},\"pad\":\"");
    let want = bytes.saturating_sub(head.len() + 2).max(1);
    let mut pad = String::with_capacity(want + 32);
    while pad.len() < want {
        pad.push_str(&Uuid::new_v4().simple().to_string());
    }
    pad.truncate(want);
    format!("{head}{pad}\"}}")
}

/// What a paced run sent.
#[derive(Debug, Clone, Copy)]
pub struct Generated {
    pub sent: u64,
    pub seconds: f64,
}

impl Generated {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.seconds.max(1e-9)
    }
}

/// Inserts 1-row transactions (autocommit, synchronous commit) for `duration` at
/// `rate`, spread over `conns` connections: event k is due at k / rate; a connection
/// that falls behind sends its next event at once (open loop, bounded concurrency).
pub async fn paced(
    url: &str,
    rate: Rate,
    duration: Duration,
    payload_bytes: usize,
    conns: usize,
) -> anyhow::Result<Generated> {
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns {
        let c = connect(url, LOAD_APP).await?;
        let stmt = c.prepare(INSERT).await?;
        clients.push((c, stmt));
    }
    let start = tokio::time::Instant::now();
    let end = start + duration;
    let mut tasks = Vec::new();
    for (j, (c, stmt)) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut k = j as u64;
            let mut sent = 0u64;
            loop {
                let due = match rate {
                    Rate::Fixed(r) => start + Duration::from_secs_f64(k as f64 / f64::from(r)),
                    Rate::Max => tokio::time::Instant::now(),
                };
                if due >= end {
                    return Ok::<u64, anyhow::Error>(sent);
                }
                tokio::time::sleep_until(due).await;
                let agg = format!("agg-{}", k % 64);
                c.execute(&stmt, &[&Uuid::now_v7(), &agg, &payload(k, payload_bytes)])
                    .await?;
                sent += 1;
                k += conns as u64;
            }
        }));
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await??;
    }
    Ok(Generated {
        sent,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Writes `pairs` interleavings: T1 begins and inserts, T2 inserts and commits, then
/// T1 commits. The generator issues the commits itself, one after the other, so it
/// knows the commit order: each row's `seq` is its position in it (T2 = 2i, T1 = 2i+1).
pub async fn interleaved_pairs(url: &str, pairs: u64) -> anyhow::Result<u64> {
    let t1 = connect(url, LOAD_APP).await?;
    let t2 = connect(url, LOAD_APP).await?;
    let (s1, s2) = (t1.prepare(INSERT).await?, t2.prepare(INSERT).await?);
    for i in 0..pairs {
        t1.batch_execute("begin").await?;
        t1.execute(
            &s1,
            &[
                &Uuid::now_v7(),
                &format!("agg-{}", 2 * i + 1),
                &payload(2 * i + 1, 100),
            ],
        )
        .await?;
        t2.execute(
            &s2,
            &[
                &Uuid::now_v7(),
                &format!("agg-{}", 2 * i),
                &payload(2 * i, 100),
            ],
        )
        .await?;
        t1.batch_execute("commit").await?;
    }
    Ok(2 * pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_asked_size_and_are_json() {
        for bytes in [100, 1024, 16384] {
            let p = payload(7, bytes);
            assert_eq!(p.len(), bytes);
            let v: serde_json::Value = serde_json::from_str(&p).unwrap();
            assert_eq!(v["seq"], 7);
        }
        assert_ne!(payload(1, 100), payload(1, 100), "random padding");
    }

    #[test]
    fn rates_parse() {
        assert_eq!("1000".parse::<Rate>(), Ok(Rate::Fixed(1000)));
        assert_eq!("5000/s".parse::<Rate>(), Ok(Rate::Fixed(5000)));
        assert_eq!("max".parse::<Rate>(), Ok(Rate::Max));
        assert!("0".parse::<Rate>().is_err());
        assert!("fast".parse::<Rate>().is_err());
    }
}
