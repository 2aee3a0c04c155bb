//! A stream's position: a `pg_snapshot` (`xmin:xmax:xip,…`), which is also
//! the SSE event id a client resumes from with `Last-Event-ID`.

/// A `pg_snapshot` (`xmin:xmax:xip,…`), parsed with PostgreSQL's own rules,
/// so a stream's position is checked without a round trip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    xmin: u64,
    xmax: u64,
    /// In progress when the snapshot was taken; ascending, no duplicates.
    xip: Vec<u64>,
}

impl Snapshot {
    /// The snapshot before any transaction: replays everything.
    pub fn beginning() -> Self {
        Self { xmin: 3, xmax: 3, xip: Vec::new() }
    }

    /// Parses the text form; `None` for anything PostgreSQL would refuse.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.trim().splitn(3, ':');
        let xmin: u64 = parts.next()?.parse().ok()?;
        let xmax: u64 = parts.next()?.parse().ok()?;
        let list = parts.next()?;
        if xmin == 0 || xmax < xmin {
            return None;
        }
        let mut xip: Vec<u64> = Vec::new();
        if !list.is_empty() {
            for x in list.split(',') {
                let x: u64 = x.parse().ok()?;
                if x < xmin || x >= xmax || xip.last().is_some_and(|&l| x < l) {
                    return None;
                }
                if xip.last() != Some(&x) {
                    xip.push(x);
                }
            }
        }
        Some(Self { xmin, xmax, xip })
    }

    /// Whether this snapshot sees transactions `other` has not started yet.
    pub fn is_after(&self, other: &Snapshot) -> bool {
        self.xmax > other.xmax
    }

    /// Whether transaction `xid`'s rows are visible in this snapshot.
    pub fn visible(&self, xid: u64) -> bool {
        xid < self.xmin || (xid < self.xmax && self.xip.binary_search(&xid).is_err())
    }
}

impl std::fmt::Display for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:", self.xmin, self.xmax)?;
        for (i, x) in self.xip.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Snapshot;

    #[test]
    fn snapshots_parse_like_postgresql() {
        let s = Snapshot::parse("10:20:12,15").unwrap();
        assert_eq!(s.to_string(), "10:20:12,15");
        assert!(s.visible(9) && s.visible(11) && s.visible(19));
        assert!(!s.visible(12) && !s.visible(15) && !s.visible(20) && !s.visible(25));
        assert_eq!(Snapshot::parse("3:3:"), Some(Snapshot::beginning()));
        assert_eq!(Snapshot::parse("10:20:12,12").unwrap().to_string(), "10:20:12");
        for bad in
            ["garbage", "", "0:5:", "5:4:", "10:20:9", "10:20:20", "10:20:15,12", "1:2", "a:b:", "10:20:x"]
        {
            assert_eq!(Snapshot::parse(bad), None, "{bad:?}");
        }
    }
}
