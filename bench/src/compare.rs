//! Side-by-side measurement: ours (A) and the raw baseline (B), alternately, round after round, each
//! round's ratio kept, so slow phases of a shared machine hit both sides alike. The result is the
//! median of the per-round ratios with their range, beside each side's median.

use std::{fmt::Write as _, future::Future};

use serde::Serialize;

/// Which way a figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Lower,
    Higher,
}

/// One figure measured for ours and for the raw baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub name: String,
    pub unit: String,
    pub better: Better,
    /// The target on the median ratio ours / raw: at most this when lower is better, at least
    /// this when higher is better.
    pub target: Option<f64>,
    pub ours: Vec<f64>,
    pub raw: Vec<f64>,
}

impl Comparison {
    pub fn new(name: &str, unit: &str, better: Better, target: Option<f64>) -> Self {
        Self {
            name: name.to_owned(),
            unit: unit.to_owned(),
            better,
            target,
            ours: Vec::new(),
            raw: Vec::new(),
        }
    }

    /// Per-round ratios ours / raw.
    pub fn ratios(&self) -> Vec<f64> {
        self.ours
            .iter()
            .zip(&self.raw)
            .filter(|(_, raw)| **raw > 0.0)
            .map(|(ours, raw)| ours / raw)
            .collect()
    }

    /// The median per-round ratio, and the smallest and largest.
    pub fn ratio(&self) -> Option<(f64, f64, f64)> {
        let ratios = self.ratios();
        let median = median(&ratios)?;
        let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some((median, min, max))
    }

    /// Whether the median ratio meets the target (None without a target or figures).
    pub fn met(&self) -> Option<bool> {
        let target = self.target?;
        let (ratio, _, _) = self.ratio()?;
        Some(match self.better {
            Better::Lower => ratio <= target,
            Better::Higher => ratio >= target,
        })
    }
}

/// The median of `values` (None if empty).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    })
}

/// Runs `ours` and `raw` one after the other, `ours` first in even rounds and `raw` first in odd
/// ones (ABBA over rounds); returns (ours, raw).
pub async fn in_turn<A, B>(
    round: usize,
    ours: impl Future<Output = anyhow::Result<A>>,
    raw: impl Future<Output = anyhow::Result<B>>,
) -> anyhow::Result<(A, B)> {
    if round.is_multiple_of(2) {
        let a = ours.await?;
        Ok((a, raw.await?))
    } else {
        let b = raw.await?;
        Ok((ours.await?, b))
    }
}

/// Runs `ours` and `raw` alternately for `rounds` rounds (ABBA order, so neither side always goes
/// first), each call returning one figure, into `comparison`.
pub async fn interleave<A, B, FA, FB>(
    comparison: &mut Comparison,
    rounds: usize,
    mut ours: A,
    mut raw: B,
) -> anyhow::Result<()>
where
    A: FnMut() -> FA,
    B: FnMut() -> FB,
    FA: Future<Output = anyhow::Result<f64>>,
    FB: Future<Output = anyhow::Result<f64>>,
{
    for round in 0..rounds {
        let (a, b) = in_turn(round, ours(), raw()).await?;
        comparison.ours.push(a);
        comparison.raw.push(b);
    }
    Ok(())
}

/// The comparisons as a table: each side's median, the median ratio with its range, the target.
pub fn table(comparisons: &[Comparison]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<58} {:>12} {:>12} {:>8} {:>17} {:>8} {:>4}",
        "benchmark", "ours", "raw", "ratio", "ratio range", "target", "met"
    );
    for c in comparisons {
        let ours = median(&c.ours).map_or("-".into(), |v| format!("{v:.3}"));
        let raw = median(&c.raw).map_or("-".into(), |v| format!("{v:.3}"));
        let (ratio, range) = match c.ratio() {
            Some((median, min, max)) => (format!("{median:.3}"), format!("{min:.3}-{max:.3}")),
            None => ("-".into(), "-".into()),
        };
        let target = match (c.target, c.better) {
            (Some(t), Better::Lower) => format!("<={t}"),
            (Some(t), Better::Higher) => format!(">={t}"),
            (None, _) => "-".into(),
        };
        let met = match c.met() {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        let name = format!("{} ({})", c.name, c.unit);
        let _ = writeln!(
            out,
            "{name:<58} {ours:>12} {raw:>12} {ratio:>8} {range:>17} {target:>8} {met:>4}"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        let mut c = Comparison::new("x", "ms", Better::Lower, Some(1.15));
        c.ours = vec![1.1, 1.2, 1.0];
        c.raw = vec![1.0, 1.0, 1.0];
        let (ratio, min, max) = c.ratio().expect("figures");
        assert!((ratio - 1.1).abs() < 1e-9 && (min - 1.0).abs() < 1e-9 && (max - 1.2).abs() < 1e-9);
        assert_eq!(c.met(), Some(true));
        c.better = Better::Higher;
        assert_eq!(c.met(), Some(false));
        assert!(table(&[c]).contains("NO"));
    }

    #[tokio::test]
    async fn interleaving_alternates_which_side_goes_first() {
        let order = std::sync::Mutex::new(Vec::new());
        let mut c = Comparison::new("x", "s", Better::Lower, None);
        interleave(
            &mut c,
            4,
            || async {
                order.lock().expect("lock").push('A');
                Ok(2.0)
            },
            || async {
                order.lock().expect("lock").push('B');
                Ok(1.0)
            },
        )
        .await
        .expect("rounds");
        assert_eq!(
            order.into_inner().expect("lock").iter().collect::<String>(),
            "ABBAABBA"
        );
        assert_eq!(c.ratio().map(|r| r.0), Some(2.0));
    }
}
