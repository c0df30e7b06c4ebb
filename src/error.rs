//! The one public error type. Each variant names the operation and the path or point it was
//! about, so a message tells the administrator where to look and what to do next.

use std::io;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // -- store layer
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: io::Error,
    },
    #[error("store index {path}: {op}: {source}")]
    Db {
        path: PathBuf,
        op: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("store {store} is in use by another run (pid {holder}); wait for it to finish, or check that process")]
    Locked { store: PathBuf, holder: String },
    #[error("store {store} has schema version {found}, newer than this program ({supported}); use a newer restorepoint")]
    SchemaTooNew {
        store: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error(
        "{store} is not a restorepoint store (no index.db); check --store or the config's `store`"
    )]
    NoStore { store: PathBuf },
    #[error("{store} belongs to {owner} (mode {mode:04o}) and this user (uid {uid}) cannot {verb} it: run the command as root (sudo), or as the store's owner")]
    NoAccess {
        store: PathBuf,
        owner: String,
        mode: u32,
        uid: u32,
        verb: &'static str,
    },
    #[error(
        "store {store} has data ({what}) but no index.db: nothing was written. Run `system_snapshot repair --store {store}` to rebuild the index from index.log"
    )]
    NoIndex { store: PathBuf, what: String },
    /// A remote store could not be reached or read.
    #[error("{what} {url}: {message}. Check the URL, the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and the endpoint (AWS_ENDPOINT_URL)")]
    Remote {
        url: String,
        what: String,
        message: String,
    },
    #[error("no store was made at {store}: {why}. Nothing was written; {then}")]
    StoreNotMounted {
        store: PathBuf,
        why: String,
        then: String,
    },
    // -- points
    #[error("no restore point {id}; `system_snapshot list` shows the points there are")]
    NoSuchPoint { id: i64 },
    #[error("the store has no complete restore point yet; run system_snapshot first")]
    NoPoints,
    #[error("snapshot refused, nothing was written: {why}")]
    Refused { why: String },
    /// A `pre_snapshot` hook that is not optional failed: nothing was written.
    #[error("pre_snapshot {failure}; the snapshot was not taken")]
    PreSnapshotHook { failure: String },
    /// An in-place restore was interrupted: the tree is part old, part new until it is rerun.
    #[error("{op} refused, nothing was written: the in-place restore of point {point} into {target} (started {started}) is unfinished; run system_restore again to finish restoring point {point}")]
    RestoreUnfinished {
        op: String,
        point: crate::model::PointId,
        target: String,
        started: String,
    },
    #[error("boot area restore to {device} refused, nothing was written: {why}")]
    BootRefused { device: PathBuf, why: String },
    #[error("restore refused, nothing was written: {why}")]
    RestoreRefused { why: String },
    #[error("prune refused, nothing was removed: {why}")]
    PruneRefused { why: String },
    #[error("bare-metal restore onto {device} refused, nothing was written: {why}")]
    BareMetalRefused { device: PathBuf, why: String },
    /// A step of a bare-metal restore failed; `next` says how to go on.
    #[error("bare-metal restore onto {device} stopped at the step `{step}`: {message}. {next}")]
    BareMetalStep {
        device: PathBuf,
        step: String,
        message: String,
        next: String,
    },
    /// A restore stopped part way (the disk filled up); `next` says how to finish or go back.
    #[error("{what}: {source}. {next}")]
    Unfinished {
        what: String,
        #[source]
        source: io::Error,
        next: String,
    },
    // -- data
    #[error("damaged: {what}; run `system_snapshot verify --full` to see everything affected")]
    Damaged { what: String },
    /// Damage in a remote store (an object that does not match its name, a file its hash).
    #[error(
        "damaged: {what}; run `system_snapshot verify --store {url}` to see everything affected"
    )]
    RemoteDamaged { url: String, what: String },
    // -- input
    #[error("config {path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("{0}")]
    Invalid(String),
    /// A flag or path given on the command line that cannot work (exit 2).
    #[error("{0}")]
    Usage(String),
}

impl Error {
    pub fn io(op: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            op: op.into(),
            source,
        }
    }
}

/// Adds the operation (and path) to an io error.
pub trait IoContext<T> {
    fn ctx(self, op: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(op(), e))
    }
}

impl<T> IoContext<T> for rustix::io::Result<T> {
    fn ctx(self, op: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(op(), e.into()))
    }
}
