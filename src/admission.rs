//! Admission control: before a snapshot writes anything, its growth is estimated; the snapshot
//! is refused when the store would stay over its ceiling even after retention removed all it
//! may, or when the store's filesystem would be left with less than its reserve free. A pure
//! decision over numbers, tested over cases; the snapshot gathers the numbers.

use chrono::{DateTime, FixedOffset};

use crate::model::human_size as bytes;

use crate::retention::{decide, PointInfo, Policy};

/// The share of the store's filesystem that must stay free (5 %).
pub const RESERVE_PERCENT: u64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// Bytes the store is expected to grow by (new content in the replica, old content in the pack).
    pub growth: u64,
    /// Size of the new point's data (the replica's size once it is recorded).
    pub data_after: u64,
    /// Bytes written beside the store's data (the recovery kit's new copies): they take the
    /// filesystem's space, not the store's ceiling.
    pub kit: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub store_bytes: u64,
    pub fs_free: u64,
    pub fs_size: u64,
}

/// Why a snapshot is refused, or Ok.
pub fn check(
    policy: Option<&Policy>,
    points: &[PointInfo],
    est: Estimate,
    space: Space,
    now: DateTime<FixedOffset>,
) -> Result<(), String> {
    let reserve = space.fs_size / 100 * RESERVE_PERCENT;
    let needed = est.growth.saturating_add(est.kit);
    if space.fs_free < needed.saturating_add(reserve) {
        let what = if est.kit > 0 {
            format!(
                "the new point and the recovery kit's new binaries need about {} ({} + {})",
                bytes(needed),
                bytes(est.growth),
                bytes(est.kit)
            )
        } else {
            format!("the new point needs about {}", bytes(needed))
        };
        let kit_hint = if est.kit > 0 {
            ", or turn the kit off ([boot] kit = false)"
        } else {
            ""
        };
        return Err(format!(
            "{what} but the store's filesystem has {} free, and {} ({RESERVE_PERCENT} %) must stay free; free some space or remove points (system_snapshot prune --oldest N){kit_hint}",
            bytes(space.fs_free),
            bytes(reserve)
        ));
    }
    let Some(policy) = policy else { return Ok(()) };
    let after = space.store_bytes + est.growth;
    let ceiling = crate::retention::ceiling(policy, est.data_after);
    // Retention runs after the new point exists: it is then the latest.
    let mut with_new = points.to_vec();
    with_new.push(PointInfo {
        id: crate::model::PointId(i64::MAX),
        created: now,
        stored_bytes: est.growth,
        pinned: false,
        needed_by_restore: None,
        merge_frees: 0,
        unremovable: None,
    });
    let freed: u64 = decide(policy, &with_new, after, est.data_after, now)
        .iter()
        .map(|d| d.frees)
        .sum();
    // Only a point that takes the store across the ceiling is refused: one that min_points or
    // the age floor already keep above it stays so by those rules, and refusing every later
    // point would leave the machine without restore points.
    let (before_pruned, after_pruned) = (
        space.store_bytes.saturating_sub(freed),
        after.saturating_sub(freed),
    );
    if after_pruned > ceiling && before_pruned <= ceiling {
        return Err(format!(
            "the new point needs about {}: the store would be {} after removing every point retention allows, over its ceiling of {} ({} × {} of replica + 1 MiB); raise [retention] ceiling_ratio, lower min_points or age_floor, or exclude more",
            bytes(est.growth),
            bytes(after.saturating_sub(freed)),
            bytes(ceiling),
            policy.ceiling_ratio,
            bytes(est.data_after)
        ));
    }
    Ok(())
}

/// The store against its ceiling, as a snapshot run states it before it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The store's data: replica and packs, as allocated.
    pub used: u64,
    /// The replica and the ceiling it sets; None while the store has no point.
    pub ceiling: Option<Ceiling>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ceiling {
    pub replica: u64,
    /// `ceiling_ratio` × the replica + `retention::SLACK`.
    pub bytes: u64,
    /// The data exceeds it: retention removes the oldest points after the next one.
    pub over: bool,
}

/// The store's data `used` against the ceiling `replica` sets (None: no point yet, no ceiling).
pub fn budget(policy: &Policy, used: u64, replica: Option<u64>) -> Budget {
    Budget {
        used,
        ceiling: replica.map(|replica| {
            let bytes = crate::retention::ceiling(policy, replica);
            Ceiling {
                replica,
                bytes,
                over: used > bytes,
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn now() -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339("2026-11-22T12:00:00+00:00").unwrap()
    }

    fn old_points(n: i64, pack: u64) -> Vec<PointInfo> {
        (1..=n)
            .map(|i| PointInfo {
                id: crate::model::PointId(i),
                created: now() - chrono::Duration::days(30 - i),
                stored_bytes: pack,
                pinned: false,
                needed_by_restore: None,
                merge_frees: pack,
                unremovable: None,
            })
            .collect()
    }

    #[test]
    fn the_budget_states_the_ceiling_once_there_is_a_point() {
        let policy = Policy {
            ceiling_ratio: 1.5,
            min_points: 2,
            age_floor: Duration::ZERO,
        };
        let mib = 1 << 20;
        let b = budget(&policy, 5 * mib, None);
        assert_eq!(b.ceiling, None);
        let b = budget(&policy, 5 * mib, Some(2 * mib));
        let c = b.ceiling.unwrap();
        assert_eq!(c.bytes, 4 * mib, "1.5 × 2 MiB + 1 MiB");
        assert!(c.over);
        assert!(
            !budget(&policy, 4 * mib, Some(2 * mib))
                .ceiling
                .unwrap()
                .over
        );
    }

    #[test]
    fn refuses_only_what_cannot_fit() {
        const MB: u64 = 1 << 20;
        let policy = Policy {
            ceiling_ratio: 1.5,
            min_points: 2,
            age_floor: Duration::ZERO,
        };
        let space = |store_mb: u64| Space {
            store_bytes: store_mb * MB,
            fs_free: 1000 * MB,
            fs_size: 2000 * MB,
        };
        let est = |growth_mb: u64, data_mb: u64| Estimate {
            growth: growth_mb * MB,
            data_after: data_mb * MB,
            kit: 0,
        };
        // Ceiling for 100 MB of replica: 150 MB + 1 MiB slack.
        assert!(check(
            Some(&policy),
            &old_points(3, 10 * MB),
            est(10, 100),
            space(120),
            now()
        )
        .is_ok());
        // Over the ceiling, but retention can free enough (each removal frees 40 MB).
        assert!(check(
            Some(&policy),
            &old_points(5, 40 * MB),
            est(40, 100),
            space(140),
            now()
        )
        .is_ok());
        // Over the ceiling even after retention: min_points keeps everything there is.
        let err = check(
            Some(&policy),
            &old_points(1, 0),
            est(90, 100),
            space(100),
            now(),
        )
        .unwrap_err();
        assert!(err.contains("ceiling"), "{err}");
        // The age floor keeps the points that could have gone.
        let young = Policy {
            age_floor: Duration::from_secs(90 * 86400),
            ..policy
        };
        assert!(check(
            Some(&young),
            &old_points(5, 40 * MB),
            est(40, 100),
            space(140),
            now()
        )
        .is_err());
        // Already over the ceiling (kept there by min_points): small points are still taken.
        assert!(check(
            Some(&policy),
            &old_points(1, 0),
            est(1, 100),
            space(200),
            now()
        )
        .is_ok());
        // No ceiling check for safety points, only the reserve.
        assert!(check(None, &old_points(1, 0), est(90, 100), space(100), now()).is_ok());
        // The filesystem reserve (5 % of 2000 MB = 100 MB).
        let tight = Space {
            store_bytes: MB,
            fs_free: 150 * MB,
            fs_size: 2000 * MB,
        };
        assert!(check(None, &[], est(40, 1), tight, now()).is_ok());
        let err = check(None, &[], est(60, 1), tight, now()).unwrap_err();
        assert!(err.contains("must stay free"), "{err}");
        // The kit's copies count against the filesystem, not the store's ceiling.
        let with_kit = Estimate {
            kit: 20 * MB,
            ..est(40, 1)
        };
        let err = check(None, &[], with_kit, tight, now()).unwrap_err();
        assert!(err.contains("recovery kit"), "{err}");
        let big_kit = Estimate {
            kit: 500 * MB,
            ..est(1, 100)
        };
        assert!(check(Some(&policy), &old_points(1, 0), big_kit, space(120), now()).is_ok());
    }
}
