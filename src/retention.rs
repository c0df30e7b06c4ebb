//! Which points retention removes: a pure function of the policy, the points, the sizes and
//! `now`, so every rule is tested over a grid of cases.
//!
//! Precedence, strongest first: (1) the latest point is always kept; (2) a pinned point is
//! kept; (3) a point an unfinished in-place restore needs is kept; (4) the `min_points`
//! newest are kept; (5) points younger than `age_floor` are kept; (6) otherwise, oldest first,
//! points are removed while the store is larger than `ceiling_ratio` × the latest point's data.
//! A point kept by (2) or (3) does not stop the walk: the points after it can still go, merged
//! into their successors (`prune::remove_point`).

use std::time::Duration;

use chrono::{DateTime, FixedOffset};

use crate::model::human_size as bytes;
use crate::model::PointId;

/// Added to every ceiling: block rounding and the store's own files are a fixed cost that
/// would otherwise make a small tree look over its ceiling forever.
pub const SLACK: u64 = 1 << 20;

/// The most the store's data (replica and packs) may take: ratio × the replica, plus SLACK.
pub fn ceiling(policy: &Policy, replica: u64) -> u64 {
    (policy.ceiling_ratio * replica as f64) as u64 + SLACK
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub ceiling_ratio: f64,
    pub min_points: usize,
    pub age_floor: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PointInfo {
    pub id: PointId,
    pub created: DateTime<FixedOffset>,
    /// Bytes of this point's pack.
    pub stored_bytes: u64,
    /// `system_snapshot pin`: never removed by retention.
    pub pinned: bool,
    /// The point an unfinished in-place restore converges to, when it needs this one (as its
    /// target or its safety point).
    pub needed_by_restore: Option<PointId>,
    /// What merging this point into its successor would free (`prune::retention_inputs`
    /// estimates it from the frames of the paths both changed: only those keep one old
    /// version instead of two).
    pub merge_frees: u64,
    /// Why an attempt to remove it failed in this run, if one did: it is kept.
    pub unremovable: Option<String>,
}

/// The retention inputs of complete points (oldest first); a point whose date cannot be read
/// is left out rather than guessed at. `needed`: (point, the point being restored) for every
/// point an unfinished restore needs (`prune::needed_by_restores`).
pub fn point_infos(
    points: &[crate::store::Point],
    needed: &[(PointId, PointId)],
) -> Vec<PointInfo> {
    points
        .iter()
        .filter_map(|p| {
            let created = DateTime::parse_from_rfc3339(&p.created_at).ok()?;
            Some(PointInfo {
                id: p.id,
                created,
                stored_bytes: p.stored_bytes,
                pinned: p.pinned,
                needed_by_restore: needed.iter().find(|(n, _)| *n == p.id).map(|(_, r)| *r),
                merge_frees: 0,
                unremovable: None,
            })
        })
        .collect()
}

/// The store's size against its ceiling when a rule was applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sizes {
    pub store: u64,
    pub ratio: f64,
    pub data: u64,
    pub ceiling: u64,
}

/// Why a point is kept or removed: the rule that decided, with its figures.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    Latest,
    Pinned,
    NeededByRestore {
        restoring: PointId,
    },
    /// Removing it failed (damage, no space): it stays, and the failure is a warning.
    RemovalFailed(String),
    /// Merging it into its successor would free too little to be worth its history: the two
    /// points changed different paths.
    MergeFreesLittle {
        frees: u64,
        pack: u64,
    },
    MinPoints(usize),
    AgeFloor(Duration),
    WithinCeiling(Sizes),
    OverCeiling(Sizes),
}

impl Reason {
    /// A short stable name, for JSON and scripts.
    pub fn rule(&self) -> &'static str {
        match self {
            Reason::Latest => "latest",
            Reason::Pinned => "pinned",
            Reason::NeededByRestore { .. } => "needed-by-restore",
            Reason::RemovalFailed(_) => "removal-failed",
            Reason::MergeFreesLittle { .. } => "merge-frees-little",
            Reason::MinPoints(_) => "min-points",
            Reason::AgeFloor(_) => "age-floor",
            Reason::WithinCeiling(_) => "within-ceiling",
            Reason::OverCeiling(_) => "over-ceiling",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sizes = |s: &Sizes, rel: &str| {
            format!(
                "the store ({}) is {rel} the ceiling ({} × {} + 1 MiB = {})",
                bytes(s.store),
                s.ratio,
                bytes(s.data),
                bytes(s.ceiling)
            )
        };
        match self {
            Reason::Latest => f.write_str("the latest point is never removed"),
            Reason::Pinned => f.write_str("pinned (system_snapshot unpin ID releases it)"),
            Reason::NeededByRestore { restoring } => write!(
                f,
                "the unfinished restore of point {restoring} needs it (run system_restore again to finish restoring point {restoring})"
            ),
            Reason::RemovalFailed(why) => write!(f, "removing it failed: {why}"),
            Reason::MergeFreesLittle { frees, pack } => write!(
                f,
                "merging it into the next point would free about {} of its {} (the two changed different files), so its history stays",
                bytes(*frees),
                bytes(*pack)
            ),
            Reason::MinPoints(n) => write!(f, "one of the {n} newest points (min_points)"),
            Reason::AgeFloor(d) => write!(f, "younger than {} (age_floor)", human(*d)),
            Reason::WithinCeiling(s) => f.write_str(&sizes(s, "within")),
            Reason::OverCeiling(s) => f.write_str(&sizes(s, "over")),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub id: PointId,
    pub remove: bool,
    pub reason: Reason,
    /// What removing it is expected to free (0 when kept): the estimate the ceiling rule used.
    pub frees: u64,
    /// What the removal found (versions already damaged, now recorded as lost).
    pub warnings: Vec<crate::model::Warning>,
}

impl Decision {
    /// The decision as a person reads it: "kept: …", "removed: …" (or "would be removed: …").
    pub fn describe(&self, dry_run: bool) -> String {
        let verb = match (self.remove, dry_run) {
            (false, _) => "kept",
            (true, false) => "removed",
            (true, true) => "would be removed",
        };
        format!("{verb}: {}", self.reason)
    }
}

impl serde::Serialize for Decision {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Decision", 5)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("remove", &self.remove)?;
        st.serialize_field("rule", self.reason.rule())?;
        st.serialize_field("reason", &self.describe(false))?;
        st.serialize_field("warnings", &self.warnings)?;
        st.end()
    }
}

/// Decisions for `points` (complete ones, oldest first), given the store's size on disk and
/// the size of the latest point's data.
///
/// Removing the oldest remaining point frees its successor's pack (the changes that only led
/// to it). Removing a point after a kept one merges its pack into its successor's: that frees
/// `merge_frees` (the paths both changed keep one old version instead of two); a merge that
/// would free less than a tenth of the point's own pack is not made (its history is worth
/// more than the bytes). Both are estimates; `prune::apply_retention` decides again from the
/// measured size after each removal.
pub fn decide(
    policy: &Policy,
    points: &[PointInfo],
    store_bytes: u64,
    data_bytes: u64,
    now: DateTime<FixedOffset>,
) -> Vec<Decision> {
    let ceiling = ceiling(policy, data_bytes);
    let mut size = store_bytes;
    let n = points.len();
    let mut out = Vec::with_capacity(n);
    // Whether some older point stays: then a removal is a merge into the successor.
    let mut older_kept = false;
    for (i, p) in points.iter().enumerate() {
        let newest_rank = n - i; // 1 for the latest
        let age = now
            .signed_duration_since(p.created)
            .to_std()
            .unwrap_or(Duration::ZERO);
        let sizes = Sizes {
            store: size,
            ratio: policy.ceiling_ratio,
            data: data_bytes,
            ceiling,
        };
        let keep = if newest_rank == 1 {
            Some(Reason::Latest)
        } else if p.pinned {
            Some(Reason::Pinned)
        } else if let Some(restoring) = p.needed_by_restore {
            Some(Reason::NeededByRestore { restoring })
        } else if let Some(why) = &p.unremovable {
            Some(Reason::RemovalFailed(why.clone()))
        } else if newest_rank <= policy.min_points {
            Some(Reason::MinPoints(policy.min_points))
        } else if age < policy.age_floor {
            Some(Reason::AgeFloor(policy.age_floor))
        } else if size <= ceiling {
            Some(Reason::WithinCeiling(sizes))
        } else if older_kept && p.merge_frees.saturating_mul(10) < p.stored_bytes.max(1) {
            Some(Reason::MergeFreesLittle {
                frees: p.merge_frees,
                pack: p.stored_bytes,
            })
        } else {
            None
        };
        match keep {
            Some(reason) => {
                older_kept = true;
                out.push(Decision {
                    id: p.id,
                    remove: false,
                    reason,
                    frees: 0,
                    warnings: Vec::new(),
                });
            }
            None => {
                let frees = if older_kept {
                    p.merge_frees
                } else {
                    points.get(i + 1).map_or(0, |s| s.stored_bytes)
                };
                out.push(Decision {
                    id: p.id,
                    remove: true,
                    reason: Reason::OverCeiling(sizes),
                    frees,
                    warnings: Vec::new(),
                });
                size = size.saturating_sub(frees);
            }
        }
    }
    out
}

pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".into(),
        s if s % 86400 == 0 && s >= 2 * 86400 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(hours_ago: i64) -> DateTime<FixedOffset> {
        now() - chrono::Duration::hours(hours_ago)
    }

    fn now() -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339("2026-11-22T12:00:00+00:00").unwrap()
    }

    /// Points 1..=n taken `gap` hours apart, the latest `latest_age` hours ago, each pack `pack` bytes.
    fn points(n: usize, gap: i64, latest_age: i64, pack: u64) -> Vec<PointInfo> {
        (0..n)
            .map(|i| PointInfo {
                id: crate::model::PointId(i as i64 + 1),
                created: at(latest_age + gap * (n - 1 - i) as i64),
                stored_bytes: pack,
                pinned: false,
                needed_by_restore: None,
                merge_frees: pack,
                unremovable: None,
            })
            .collect()
    }

    fn removed(d: &[Decision]) -> Vec<i64> {
        d.iter().filter(|d| d.remove).map(|d| d.id.0).collect()
    }

    #[test]
    fn grid_of_policies_points_and_sizes() {
        let day = Duration::from_secs(86400);
        let p = |ratio, min, floor| Policy {
            ceiling_ratio: ratio,
            min_points: min,
            age_floor: floor,
        };
        // (policy, points, store bytes, data bytes, expected removals)
        type Case = (Policy, Vec<PointInfo>, u64, u64, Vec<i64>);
        let cases: Vec<Case> = vec![
            // Within the ceiling: nothing goes.
            (p(1.5, 2, day), points(5, 48, 1, 100), 140, 100, vec![]),
            // Over it: oldest first until under (each removal frees 100).
            (
                p(1.5, 2, Duration::ZERO),
                points(5, 48, 1, 100),
                360,
                100,
                vec![1, 2, 3],
            ),
            (
                p(1.5, 2, Duration::ZERO),
                points(5, 48, 1, 100),
                260,
                100,
                vec![1, 2],
            ),
            // min_points holds even far over the ceiling.
            (
                p(1.0, 3, Duration::ZERO),
                points(5, 48, 1, 100),
                10_000,
                100,
                vec![1, 2],
            ),
            (
                p(1.0, 5, Duration::ZERO),
                points(5, 48, 1, 100),
                10_000,
                100,
                vec![],
            ),
            // The age floor holds: points 3..5 are younger than 24h.
            (
                p(1.0, 1, day),
                points(5, 10, 1, 100),
                10_000,
                100,
                vec![1, 2],
            ),
            // Everything young: nothing goes.
            (p(1.0, 1, day), points(5, 1, 1, 100), 10_000, 100, vec![]),
            // The latest point is never removed, even with min_points 1 and no floor.
            (
                p(1.0, 1, Duration::ZERO),
                points(3, 48, 100, 100),
                10_000,
                100,
                vec![1, 2],
            ),
            (
                p(1.0, 1, Duration::ZERO),
                points(1, 48, 100, 0),
                10_000,
                100,
                vec![],
            ),
            // No points at all.
            (p(1.0, 1, Duration::ZERO), vec![], 10_000, 100, vec![]),
            // A removal that frees nothing still counts toward min_points only.
            (
                p(1.5, 2, Duration::ZERO),
                points(4, 48, 1, 0),
                1000,
                100,
                vec![1, 2],
            ),
        ];
        for (i, (policy, pts, store, data, want)) in cases.into_iter().enumerate() {
            let d = decide(&policy, &pts, store + SLACK, data, now());
            assert_eq!(d.len(), pts.len(), "case {i}: one decision per point");
            assert_eq!(removed(&d), want, "case {i}: {d:#?}");
        }
    }

    #[test]
    fn reasons_name_the_rule() {
        let policy = Policy {
            ceiling_ratio: 1.5,
            min_points: 2,
            age_floor: Duration::from_secs(86400),
        };
        let d = decide(&policy, &points(4, 30, 1, 100), 500 + SLACK, 100, now());
        let r: Vec<String> = d.iter().map(|d| d.describe(false)).collect();
        assert!(
            d[0].remove && r[0].starts_with("removed: ") && r[0].contains("over the ceiling"),
            "{r:?}"
        );
        assert!(
            r[1].contains("age_floor") || r[1].contains("ceiling"),
            "{r:?}"
        );
        assert!(
            r[2].starts_with("kept: ") && r[2].contains("min_points"),
            "{r:?}"
        );
        assert!(r[3].contains("latest"), "{r:?}");
        assert_eq!(
            d[0].describe(true).split(':').next(),
            Some("would be removed")
        );
        assert_eq!(
            [d[0].reason.rule(), d[2].reason.rule(), d[3].reason.rule()],
            ["over-ceiling", "min-points", "latest"]
        );
    }

    #[test]
    fn a_pinned_or_needed_point_is_kept_and_later_ones_still_go() {
        let policy = Policy {
            ceiling_ratio: 1.0,
            min_points: 1,
            age_floor: Duration::ZERO,
        };
        let mut pts = points(6, 48, 1, 100);
        pts[0].pinned = true;
        pts[2].needed_by_restore = Some(PointId(9));
        // Far over the ceiling: everything unpinned and unneeded goes but the latest.
        let d = decide(&policy, &pts, SLACK + 10_000, 100, now());
        assert_eq!(removed(&d), vec![2, 4, 5], "{d:#?}");
        assert_eq!(d[0].reason, Reason::Pinned);
        assert_eq!(
            d[2].reason,
            Reason::NeededByRestore {
                restoring: PointId(9)
            }
        );
        assert!(d[2].describe(false).contains("point 9"), "{d:#?}");
        // After a kept point, a removal is a merge: it frees what the index estimates.
        pts[3].merge_frees = 40;
        let d = decide(&policy, &pts, SLACK + 10_000, 100, now());
        assert_eq!(d[1].frees, 100, "{d:#?}");
        assert_eq!(d[3].frees, 40, "{d:#?}");
        // A merge that frees little (the points changed different files) is not made.
        pts[3].merge_frees = 5;
        let d = decide(&policy, &pts, SLACK + 10_000, 100, now());
        assert_eq!(removed(&d), vec![2, 5], "{d:#?}");
        assert_eq!(d[3].reason.rule(), "merge-frees-little");
        pts[3].merge_frees = 40;
        // A point whose removal failed this run is kept, and said so.
        pts[4].unremovable = Some("damaged".into());
        let d = decide(&policy, &pts, SLACK + 10_000, 100, now());
        assert_eq!(removed(&d), vec![2, 4], "{d:#?}");
        assert!(d[4].describe(false).contains("removing it failed: damaged"));
        pts[4].unremovable = None;
        // The walk stops freeing once under the ceiling, pins or not.
        let d = decide(&policy, &pts, 220 + SLACK, 100, now());
        assert_eq!(removed(&d), vec![2, 4], "{d:#?}");
        // Without a pin the oldest goes first and frees its successor's pack.
        pts[0].pinned = false;
        let d = decide(&policy, &pts, SLACK + 10_000, 100, now());
        assert_eq!(removed(&d), vec![1, 2, 4, 5], "{d:#?}");
        assert_eq!(d[0].frees, 100);
    }
}
