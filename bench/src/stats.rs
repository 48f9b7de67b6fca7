//! The few statistics the harness reports. Medians rather than means: one
//! round disturbed by a neighbour's build should not move the figure.

/// Median of `xs`; the mean of the middle two for an even count. `None`
/// for an empty slice or one holding a NaN.
pub fn median(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() || xs.iter().any(|x| x.is_nan()) {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// Median over rounds of `a[i] / b[i]`, for the rounds where both ran.
/// Pairing by round cancels noise that hit the whole round (a neighbour's
/// burst of I/O) instead of dividing two unrelated medians.
pub fn median_ratio(a: &[Option<f64>], b: &[Option<f64>]) -> Option<f64> {
    let ratios: Vec<f64> = a
        .iter()
        .zip(b)
        .filter_map(|(x, y)| match (x, y) {
            (Some(x), Some(y)) if *y > 0.0 => Some(x / y),
            _ => None,
        })
        .collect();
    median(&ratios)
}

/// Decimal megabytes per second, the unit `dd` prints.
pub fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

/// Per-round figures of a harness, by name; `None` where a variant did not
/// run in a round.
pub struct Figures {
    runs: usize,
    m: std::collections::BTreeMap<String, Vec<Option<f64>>>,
}

impl Figures {
    pub fn new(runs: usize) -> Figures {
        Figures {
            runs,
            m: std::collections::BTreeMap::new(),
        }
    }

    pub fn put(&mut self, key: &str, round: usize, v: f64) {
        let runs = self.runs;
        self.m
            .entry(key.to_owned())
            .or_insert_with(|| vec![None; runs])[round] = Some(v);
    }

    pub fn get(&self, key: &str) -> Vec<Option<f64>> {
        self.m
            .get(key)
            .cloned()
            .unwrap_or_else(|| vec![None; self.runs])
    }

    pub fn median(&self, key: &str) -> Option<f64> {
        let v: Vec<f64> = self.get(key).into_iter().flatten().collect();
        median(&v)
    }

    /// Median over rounds of `a / b`.
    pub fn ratio(&self, a: &str, b: &str) -> Option<f64> {
        median_ratio(&self.get(a), &self.get(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn ratio_pairs_by_round_and_skips_gaps() {
        let engine = [Some(900.0), Some(500.0), None, Some(1000.0)];
        let dd = [Some(1000.0), Some(1000.0), Some(1000.0), Some(1000.0)];
        // Rounds 0, 1 and 3: 0.9, 0.5, 1.0.
        assert_eq!(median_ratio(&engine, &dd), Some(0.9));
        assert_eq!(median_ratio(&[None], &[Some(1.0)]), None);
        assert_eq!(median_ratio(&[Some(1.0)], &[Some(0.0)]), None);
    }

    #[test]
    fn megabytes_are_decimal() {
        assert_eq!(mb_per_s(2_000_000, 1.0), 2.0);
        assert_eq!(mb_per_s(1 << 30, 2.0), 536.870912);
    }
}
