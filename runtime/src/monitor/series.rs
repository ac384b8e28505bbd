//! [`Thinned`]: a series that keeps at most a fixed number of points of
//! any length of run, evenly spread: once full, every other point is
//! dropped and from then on only every second (then fourth, ...) new point
//! is kept. A week-long job's loss curve stays a few hundred kilobytes and
//! keeps its shape; the newest point is always shown.

use std::collections::VecDeque;

/// A bounded, evenly thinned series.
#[derive(Debug, Clone)]
pub(crate) struct Thinned<T> {
    kept: VecDeque<T>,
    /// The newest point when it falls between kept ones.
    latest: Option<T>,
    capacity: usize,
    stride: u64,
    seen: u64,
}

impl<T: Clone> Thinned<T> {
    /// An empty series keeping at most `capacity` points (at least 2).
    pub(crate) fn new(capacity: usize) -> Self {
        Thinned {
            kept: VecDeque::new(),
            latest: None,
            capacity: capacity.max(2),
            stride: 1,
            seen: 0,
        }
    }

    /// Adds a point.
    pub(crate) fn push(&mut self, point: T) {
        if self.seen.is_multiple_of(self.stride) {
            if self.kept.len() == self.capacity {
                let mut i = 0;
                self.kept.retain(|_| {
                    i += 1;
                    i % 2 == 1
                });
                self.stride *= 2;
            }
            self.kept.push_back(point);
            self.latest = None;
        } else {
            self.latest = Some(point);
        }
        self.seen += 1;
    }

    /// Points added in all.
    pub(crate) fn seen(&self) -> u64 {
        self.seen
    }

    /// The newest point.
    pub(crate) fn last(&self) -> Option<&T> {
        self.latest.as_ref().or_else(|| self.kept.back())
    }

    /// The kept points, oldest first, and the newest one.
    #[cfg(test)]
    pub(crate) fn points(&self) -> Vec<T> {
        self.points_after(|_| true)
    }

    /// [`Thinned::points`] from the first for which `newer` holds (the
    /// points are in order, so the rest are newer too).
    pub(crate) fn points_after(&self, newer: impl Fn(&T) -> bool) -> Vec<T> {
        let from = self.kept.partition_point(|p| !newer(p));
        let mut out: Vec<T> = self.kept.range(from..).cloned().collect();
        out.extend(self.latest.clone().filter(|p| newer(p)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_run_is_thinned_evenly_and_keeps_its_ends() {
        let mut s = Thinned::new(8);
        for i in 0..5 {
            s.push(i);
        }
        assert_eq!(s.points(), vec![0, 1, 2, 3, 4]);
        for i in 5..100 {
            s.push(i);
        }
        let p = s.points();
        assert!(p.len() <= 9, "{p:?}");
        assert_eq!(p[0], 0);
        assert_eq!(*p.last().unwrap(), 99);
        assert_eq!(s.seen(), 100);
        let gaps: Vec<i32> = p.windows(2).map(|w| w[1] - w[0]).collect();
        // Even spacing but for the newest point.
        assert!(
            gaps[..gaps.len() - 1].windows(2).all(|g| g[0] == g[1]),
            "{p:?}"
        );
        // A reader that has the points up to 80 gets the rest.
        let rest = s.points_after(|&x| x > 80);
        assert_eq!(
            rest,
            p.iter().copied().filter(|&x| x > 80).collect::<Vec<_>>()
        );
        assert_eq!(s.points_after(|&x| x > 99), Vec::<i32>::new());
    }
}
