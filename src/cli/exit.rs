//! Exit codes: scripts and cron wrappers rely on them (README "Exit codes").

use crate::error::Error;

/// Everything done.
pub const SUCCESS: i32 = 0;
/// The operation failed; nothing was lost (an interrupted point is rolled back).
pub const FAILURE: i32 = 1;
/// The command line or the config file was wrong.
pub const USAGE: i32 = 2;
/// Done, but some paths were skipped or some metadata could not be applied: see the warnings.
pub const WARNINGS: i32 = 3;
/// Another run holds the store's lock.
pub const LOCKED: i32 = 4;
/// Damage found in the store (verify, or while reading a point). A `--target` or
/// `--skip-damaged` restore has written everything else; an in-place one without it, nothing.
pub const DAMAGED: i32 = 5;
/// A restore needs confirmation: no terminal to ask on and no `--yes`.
pub const NEEDS_CONFIRMATION: i32 = 6;
/// Admission control refused the snapshot (store ceiling or filesystem reserve), a restore was
/// refused (not enough free space on the target), or a boot area restore was refused (another
/// disk, or its layout changed), or a new store was refused (its disk is not mounted): nothing
/// written.
pub const REFUSED: i32 = 7;
/// The operator answered anything but `yes`, or pressed Ctrl-C: nothing was changed.
pub const CANCELLED: i32 = 8;

pub fn exit_code_for(e: &Error) -> i32 {
    match e {
        Error::Locked { .. } => LOCKED,
        Error::Damaged { .. } | Error::RemoteDamaged { .. } | Error::NoIndex { .. } => DAMAGED,
        Error::Config { .. } | Error::Usage(_) => USAGE,
        Error::Refused { .. }
        | Error::StoreNotMounted { .. }
        | Error::BootRefused { .. }
        | Error::RestoreRefused { .. }
        | Error::PruneRefused { .. }
        | Error::BareMetalRefused { .. }
        | Error::RestoreUnfinished { .. } => REFUSED,
        _ => FAILURE,
    }
}
