//! Which points retention removes: a pure function of the policy, the points, the sizes and
//! `now`, so every rule is tested over a grid of cases.
//!
//! Precedence, strongest first: (1) the latest point is always kept; (2) the `min_points`
//! newest are kept; (3) points younger than `age_floor` are kept; (4) otherwise, oldest first,
//! points are removed while the store is larger than `ceiling_ratio` × the latest point's data.
//! Only the oldest point can go (removing it drops its successor's pack), so the walk stops at
//! the first point a rule keeps.

use std::time::Duration;

use chrono::{DateTime, FixedOffset};

use crate::model::human_size as bytes;

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
    pub id: crate::model::PointId,
    pub created: DateTime<FixedOffset>,
    /// Bytes of this point's pack: what removing its predecessor frees.
    pub stored_bytes: u64,
}

/// The retention inputs of complete points (oldest first); a point whose date cannot be read
/// is left out rather than guessed at.
pub fn point_infos(points: &[crate::store::Point]) -> Vec<PointInfo> {
    points
        .iter()
        .filter_map(|p| {
            let created = DateTime::parse_from_rfc3339(&p.created_at).ok()?;
            Some(PointInfo {
                id: p.id,
                created,
                stored_bytes: p.stored_bytes,
            })
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    pub id: crate::model::PointId,
    pub remove: bool,
    pub reason: String,
}

/// Decisions for `points` (complete ones, oldest first), given the store's size on disk and
/// the size of the latest point's data.
pub fn decide(
    policy: &Policy,
    points: &[PointInfo],
    store_bytes: u64,
    data_bytes: u64,
    now: DateTime<FixedOffset>,
) -> Vec<Decision> {
    let ceiling = ceiling(policy, data_bytes);
    let mut size = store_bytes;
    let mut stopped = false;
    let n = points.len();
    let mut out = Vec::with_capacity(n);
    for (i, p) in points.iter().enumerate() {
        let newest_rank = n - i; // 1 for the latest
        let age = now
            .signed_duration_since(p.created)
            .to_std()
            .unwrap_or(Duration::ZERO);
        let keep_reason = if newest_rank == 1 {
            Some("kept: the latest point is never removed".to_string())
        } else if newest_rank <= policy.min_points {
            Some(format!(
                "kept: one of the {} newest points (min_points)",
                policy.min_points
            ))
        } else if age < policy.age_floor {
            Some(format!(
                "kept: younger than {} (age_floor)",
                human(policy.age_floor)
            ))
        } else if size <= ceiling {
            Some(format!(
                "kept: the store ({}) is within the ceiling ({} × {} + 1 MiB = {})",
                bytes(size),
                policy.ceiling_ratio,
                bytes(data_bytes),
                bytes(ceiling)
            ))
        } else {
            None
        };
        match keep_reason {
            Some(reason) => {
                stopped = true;
                out.push(Decision {
                    id: p.id,
                    remove: false,
                    reason,
                });
            }
            None if stopped => out.push(Decision {
                id: p.id,
                remove: false,
                reason: "kept: an older point is kept, and only the oldest can go".into(),
            }),
            None => {
                out.push(Decision {
                    id: p.id,
                    remove: true,
                    reason: format!(
                        "removed: the store ({}) is over the ceiling ({} × {} + 1 MiB = {})",
                        bytes(size),
                        policy.ceiling_ratio,
                        bytes(data_bytes),
                        bytes(ceiling)
                    ),
                });
                size = size.saturating_sub(points.get(i + 1).map_or(0, |s| s.stored_bytes));
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
        assert!(
            d[0].remove && d[0].reason.contains("over the ceiling"),
            "{d:?}"
        );
        assert!(
            d[1].reason.contains("age_floor") || d[1].reason.contains("ceiling"),
            "{d:?}"
        );
        assert!(d[2].reason.contains("min_points"), "{d:?}");
        assert!(d[3].reason.contains("latest"), "{d:?}");
    }
}
