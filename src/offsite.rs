//! Copies of the store's points off the machine, in object storage: S3 and what speaks its
//! protocol (AWS, Ceph RGW, Garage, MinIO), or a directory (`file://`, for a mounted disk and
//! for tests), through the `object_store` crate (docs/DESIGN.md "Off-site copies").
//!
//! The remote holds content, not the local reverse deltas: every object is written once under
//! a name that is the BLAKE3 of its bytes, so a reader checks what it got against its name, a
//! killed push leaves nothing but objects that a later push writes again identically, and
//! nothing ever needs a conditional write (Garage has none).
//!
//! - `data/<hh>/<hash>`: a bundle, several MiB of zstd frames, one per piece of content (a
//!   file's content in pieces of at most 8 MiB).
//! - `catalog/<hash>`: which pieces, in which bundles, make each content hash; written after
//!   the bundles it names.
//! - `points/<id>-<hash>.db.zst`: the point's manifest, an SQLite database (the point's row and
//!   every path's entry), written last: a point is off site once its manifest is there.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::os::fd::AsFd;
use std::sync::Arc;

use futures_util::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::error::{Error, IoContext, Result};
use crate::model::{display_path, Hash, Kind};
use crate::store::{PointId, Store};

pub mod in_place;
pub use in_place::{name_remote, InPlaceRequest};

/// A bundle is uploaded once it holds this many bytes.
const BUNDLE: usize = 8 << 20;
/// Content is compressed in pieces of at most this many bytes.
const PIECE: usize = 8 << 20;
const MARKER: &str = "restorepoint-offsite.json";

/// A remote store.
pub struct Remote {
    objects: Arc<dyn ObjectStore>,
    prefix: String,
    rt: tokio::runtime::Runtime,
    pub url: String,
}

fn remote_err(url: &str, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Remote {
        url: url.to_string(),
        what: what.to_string(),
        message: e.to_string(),
    }
}

impl Remote {
    /// `s3://BUCKET[/PREFIX]` (credentials, region and endpoint from the environment, as the
    /// AWS tools take them: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
    /// AWS_ENDPOINT_URL) or `file:///DIR`.
    pub fn open(url: &str) -> Result<Remote> {
        Remote::open_with(url, None)
    }

    /// `open`, with the S3 credentials read from `credentials` (an AWS-style shared
    /// credentials file) when the environment has none; without it, from
    /// `AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials` when that exists.
    pub fn open_with(url: &str, credentials: Option<&std::path::Path>) -> Result<Remote> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ctx(|| "starting the I/O runtime".to_string())?;
        let (objects, prefix): (Arc<dyn ObjectStore>, String) =
            if let Some(rest) = url.strip_prefix("s3://") {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                // The server checks each upload's SHA-256: a body damaged on the way is refused.
                let mut b = object_store::aws::AmazonS3Builder::from_env();
                let mut endpoint = std::env::var("AWS_ENDPOINT_URL").ok();
                if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
                    if let Some(c) = shared_credentials(credentials)? {
                        b = b
                            .with_access_key_id(c.key_id)
                            .with_secret_access_key(c.secret);
                        if let Some(t) = c.token {
                            b = b.with_token(t);
                        }
                        if let (Some(r), None) = (c.region, std::env::var_os("AWS_REGION")) {
                            b = b.with_region(r);
                        }
                        endpoint = endpoint.or(c.endpoint);
                    }
                }
                let mut b = b
                    .with_bucket_name(bucket)
                    .with_checksum_algorithm(object_store::aws::Checksum::SHA256)
                    .with_conditional_put(object_store::aws::S3ConditionalPut::Disabled);
                if let Some(ep) = endpoint {
                    b = b
                        .with_allow_http(ep.starts_with("http://"))
                        .with_endpoint(ep)
                        .with_virtual_hosted_style_request(false);
                }
                let s3 = b.build().map_err(|e| remote_err(url, "opening", e))?;
                (Arc::new(s3), prefix.trim_matches('/').to_string())
            } else if let Some(dir) = url.strip_prefix("file://") {
                std::fs::create_dir_all(dir).ctx(|| format!("creating {dir}"))?;
                // Synced before each rename: a disk unplugged after a push keeps what it said.
                let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| remote_err(url, "opening", e))?
                    .with_fsync(true);
                (Arc::new(fs), String::new())
            } else {
                return Err(Error::Usage(format!(
                    "{url} is not a remote store: use s3://BUCKET/PREFIX or file:///DIR"
                )));
            };
        Ok(Remote {
            objects,
            prefix,
            rt,
            url: url.to_string(),
        })
    }

    fn path(&self, key: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(key)
        } else {
            ObjPath::from(format!("{}/{key}", self.prefix))
        }
    }

    fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        let p = self.path(key);
        self.rt
            .block_on(self.objects.put(&p, PutPayload::from(bytes)))
            .map(|_| ())
            .map_err(|e| remote_err(&self.url, &format!("writing {key} to"), e))
    }

    /// The object's bytes; None when there is none.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let p = self.path(key);
        let got = self.rt.block_on(async {
            match self.objects.get(&p).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        got.map(|b| b.map(|b| b.to_vec()))
            .map_err(|e| remote_err(&self.url, &format!("reading {key} from"), e))
    }

    /// Bytes `range` of an object.
    fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        let p = self.path(key);
        self.rt
            .block_on(self.objects.get_range(&p, range))
            .map(|b| b.to_vec())
            .map_err(|e| remote_err(&self.url, &format!("reading {key} from"), e))
    }

    /// The names (below `dir/`) and sizes of the objects in `dir`.
    fn list(&self, dir: &str) -> Result<Vec<(String, u64)>> {
        let p = self.path(dir);
        let metas: Vec<object_store::ObjectMeta> = self
            .rt
            .block_on(self.objects.list(Some(&p)).try_collect())
            .map_err(|e| remote_err(&self.url, &format!("listing {dir} in"), e))?;
        let base = format!("{}/", p.as_ref());
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let name = m.location.as_ref().strip_prefix(&base)?.to_string();
                Some((name, m.size))
            })
            .collect())
    }

    /// An object named by the BLAKE3 of its bytes, checked against its name.
    fn get_checked(&self, key: &str, hex: &str) -> Result<Vec<u8>> {
        let bytes = self.get(key)?.ok_or_else(|| Error::Damaged {
            what: format!("{key} is missing from {}", self.url),
        })?;
        if blake3::hash(&bytes).to_hex().as_str() != hex {
            return Err(Error::Damaged {
                what: format!("{key} in {} does not match its hash", self.url),
            });
        }
        Ok(bytes)
    }
}

/// S3 credentials from a shared credentials file.
struct Credentials {
    key_id: String,
    secret: String,
    token: Option<String>,
    region: Option<String>,
    endpoint: Option<String>,
}

/// Reads the profile `AWS_PROFILE` (else `default`) of the AWS-style credentials file
/// `path` (else `AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials` when it exists), as
/// the AWS tools do: `aws_access_key_id`, `aws_secret_access_key`, `aws_session_token`,
/// and, for other S3 servers, `region` and `endpoint_url`. The file must be its owner's
/// alone (no group or other permission bits): a secret others can read is refused.
fn shared_credentials(path: Option<&std::path::Path>) -> Result<Option<Credentials>> {
    use std::os::unix::fs::MetadataExt;
    let named = path
        .map(std::path::Path::to_path_buf)
        .or_else(|| std::env::var_os("AWS_SHARED_CREDENTIALS_FILE").map(Into::into));
    let path = match named {
        Some(p) => p,
        None => match std::env::var_os("HOME") {
            Some(h) if std::path::Path::new(&h).join(".aws/credentials").exists() => {
                // Found, not named: a file that will not do is said, and the credentials
                // come from where the S3 client looks next (an instance role).
                let p = std::path::Path::new(&h).join(".aws/credentials");
                return match shared_credentials(Some(&p)) {
                    Ok(c) => Ok(c),
                    Err(e) => {
                        eprintln!("warning: {e}; not using it");
                        Ok(None)
                    }
                };
            }
            _ => return Ok(None),
        },
    };
    let shown = path.display().to_string();
    let md = std::fs::metadata(&path).ctx(|| format!("reading the credentials file {shown}"))?;
    if md.mode() & 0o077 != 0 {
        return Err(Error::Usage(format!(
            "the credentials file {shown} can be read by others (mode {:o}): make it its owner's alone with `chmod 600 {shown}`",
            md.mode() & 0o777
        )));
    }
    if md.uid() != rustix::process::geteuid().as_raw() {
        return Err(Error::Usage(format!(
            "the credentials file {shown} belongs to uid {}, not to the user running this command: run it as that user, or give this user a credentials file of its own",
            md.uid()
        )));
    }
    let text =
        std::fs::read_to_string(&path).ctx(|| format!("reading the credentials file {shown}"))?;
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let mut in_profile = false;
    let mut values = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            in_profile = name == profile || name == format!("profile {profile}");
            continue;
        }
        if let (true, Some((k, v))) = (in_profile, line.split_once('=')) {
            values.insert(k.trim().to_lowercase(), v.trim().to_string());
        }
    }
    let (Some(key_id), Some(secret)) = (
        values.remove("aws_access_key_id"),
        values.remove("aws_secret_access_key"),
    ) else {
        return Err(Error::Usage(format!(
            "the credentials file {shown} has no aws_access_key_id and aws_secret_access_key in its [{profile}] profile"
        )));
    };
    Ok(Some(Credentials {
        key_id,
        secret,
        token: values.remove("aws_session_token"),
        region: values.remove("region"),
        endpoint: values.remove("endpoint_url"),
    }))
}

/// One piece of a content: where its zstd frame is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Piece {
    bundle: Hash,
    offset: u64,
    len: u64,
}

/// For each content hash, its pieces in order.
type Catalog = BTreeMap<Hash, Vec<Piece>>;

/// A catalog object's bytes.
fn encode_catalog(items: &BTreeMap<Hash, Vec<Piece>>) -> Vec<u8> {
    let mut raw = Vec::new();
    for (h, pieces) in items {
        raw.extend_from_slice(h);
        raw.extend_from_slice(&(pieces.len() as u32).to_le_bytes());
        for p in pieces {
            raw.extend_from_slice(&p.bundle);
            raw.extend_from_slice(&p.offset.to_le_bytes());
            raw.extend_from_slice(&p.len.to_le_bytes());
        }
    }
    zstd::bulk::compress(&raw, 3).expect("compressing into memory")
}

fn decode_catalog(bytes: &[u8]) -> Option<BTreeMap<Hash, Vec<Piece>>> {
    let raw = zstd::stream::decode_all(bytes).ok()?;
    let mut out = BTreeMap::new();
    let mut r = &raw[..];
    let mut take = |n: usize| -> Option<Vec<u8>> {
        if r.len() < n {
            return None;
        }
        let (a, b) = r.split_at(n);
        r = b;
        Some(a.to_vec())
    };
    while let Some(h) = take(32) {
        let h: Hash = h.try_into().ok()?;
        let n = u32::from_le_bytes(take(4)?.try_into().ok()?);
        let mut pieces = Vec::new();
        for _ in 0..n {
            let bundle: Hash = take(32)?.try_into().ok()?;
            let offset = u64::from_le_bytes(take(8)?.try_into().ok()?);
            let len = u64::from_le_bytes(take(8)?.try_into().ok()?);
            pieces.push(Piece {
                bundle,
                offset,
                len,
            });
        }
        out.insert(h, pieces);
    }
    Some(out)
}

fn hex(h: &Hash) -> String {
    blake3::Hash::from(*h).to_hex().to_string()
}

fn bundle_key(h: &Hash) -> String {
    let x = hex(h);
    format!("data/{}/{x}", &x[..2])
}

/// The points the remote holds: id -> manifest object name. A manifest is named
/// `<id>-<created, unix seconds>-<blake3>.db.zst`: the time tells one store's point from
/// another's with the same id.
fn remote_points(remote: &Remote) -> Result<BTreeMap<i64, String>> {
    Ok(remote
        .list("points")?
        .into_iter()
        .filter_map(|(name, _)| {
            let id = name.split_once('-')?.0.parse::<i64>().ok()?;
            name.ends_with(".db.zst").then_some((id, name))
        })
        .collect())
}

/// The newest point the remote holds.
pub fn latest(remote: &Remote) -> Result<Option<i64>> {
    Ok(remote_points(remote)?.keys().next_back().copied())
}

/// The creation time (unix seconds) a manifest's name carries, and its hash.
fn manifest_name_parts(name: &str) -> Option<(i64, &str)> {
    let mut parts = name.strip_suffix(".db.zst")?.splitn(3, '-');
    let (_, created, hash) = (parts.next()?, parts.next()?, parts.next()?);
    Some((created.parse().ok()?, hash))
}

fn created_secs(created_at: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(created_at).map_or(0, |t| t.timestamp())
}

/// Every content hash the remote's catalogs name, and where; and the catalogs that cannot be
/// read (their contents count as not there: a push sends them again, a restore that needs
/// one names the file).
fn remote_catalog(remote: &Remote) -> Result<(Catalog, Vec<String>)> {
    let mut all = BTreeMap::new();
    let mut damaged = Vec::new();
    for (name, _) in remote.list("catalog")? {
        let key = format!("catalog/{name}");
        match remote.get_checked(&key, &name) {
            Ok(bytes) => match decode_catalog(&bytes) {
                Some(items) => all.extend(items),
                None => damaged.push(format!("{key} cannot be read")),
            },
            Err(Error::Damaged { what }) => damaged.push(what),
            Err(e) => return Err(e),
        }
    }
    Ok((all, damaged))
}

/// What a push did.
#[derive(Debug, Default, serde::Serialize)]
pub struct PushReport {
    /// The points copied by this push.
    pub pushed: Vec<i64>,
    /// The points the remote already had.
    pub already: Vec<i64>,
    pub objects: u64,
    pub bytes: u64,
    /// Contents (distinct file contents) uploaded.
    pub contents: u64,
}

/// The bundle being filled, and the contents completed in it.
#[derive(Default)]
struct Bundler {
    buf: Vec<u8>,
    /// Contents whose pieces are all in uploaded bundles or in this one.
    done: Vec<(Hash, Vec<PieceAt>)>,
}

/// A piece in a bundle named now, or in the bundle being filled (None).
#[derive(Clone)]
struct PieceAt {
    bundle: Option<Hash>,
    offset: u64,
    len: u64,
}

/// Copies every complete point of `store` that `remote` does not hold yet.
/// With `keep` (`[offsite] keep_points`), only the newest `keep` points of the remote and the
/// store together are pushed, and pinned points whatever their age; the remote's others are
/// expired afterwards (`expire`): a point expired there is never sent again.
pub fn push(store: &Store, remote: &Remote, keep: Option<usize>) -> Result<PushReport> {
    let mut report = PushReport::default();
    if remote.get(MARKER)?.is_none() {
        remote.put(MARKER, br#"{"format":1}"#.to_vec())?;
    }
    let there = remote_points(remote)?;
    let mut known: HashSet<Hash> = remote_catalog(remote)?.0.into_keys().collect();
    let points = store.index.complete_points()?;
    let oldest_kept = keep.and_then(|k| {
        let mut ids: Vec<i64> = there.keys().copied().collect();
        ids.extend(points.iter().map(|p| p.id.0));
        ids.sort_unstable();
        ids.dedup();
        ids.len().checked_sub(k).map(|i| ids[i])
    });
    for point in points {
        let id = point.id;
        if oldest_kept.is_some_and(|o| id.0 < o) && !point.pinned {
            continue;
        }
        // Per point: the chains it caches are of changes after this point only.
        let mut packs = crate::restore::Packs::default();
        if let Some(name) = there.get(&id.0) {
            let theirs = manifest_name_parts(name).map(|(c, _)| c);
            if theirs != Some(created_secs(&point.created_at)) {
                return Err(Error::Usage(format!(
                    "{} holds a point {} that is not this store's (made at another time): another store pushes there; push this one to a prefix of its own",
                    remote.url, id.0
                )));
            }
            report.already.push(id.0);
            continue;
        }
        let state = crate::restore::point_state(store, id)?;
        let mut b = Bundler::default();
        let mut current: Vec<PieceAt> = Vec::new();
        for (path, e) in state.iter().filter(|(_, e)| e.kind == Kind::File) {
            let Some(h) = e.hash else { continue };
            if known.contains(&h) {
                continue;
            }
            let mut body =
                crate::restore::rebuild(store, &mut packs, id, path, e, store.staging())?;
            let what = || format!("reading {} of point {id}", display_path(path));
            let mut r = body.reader().ctx(what)?;
            let mut raw = vec![0u8; PIECE];
            loop {
                let n = crate::fsio::read_full(&mut r, &mut raw).ctx(what)?;
                if n == 0 && !current.is_empty() {
                    break;
                }
                let z = zstd::bulk::compress(&raw[..n], 3).ctx(what)?;
                current.push(PieceAt {
                    bundle: None,
                    offset: b.buf.len() as u64,
                    len: z.len() as u64,
                });
                b.buf.extend_from_slice(&z);
                if b.buf.len() >= BUNDLE {
                    flush(remote, &mut b, &mut current, &mut report)?;
                }
                if n < PIECE {
                    break;
                }
            }
            b.done.push((h, std::mem::take(&mut current)));
            known.insert(h);
            report.contents += 1;
        }
        flush(remote, &mut b, &mut current, &mut report)?;
        let manifest = manifest(store, id, &state)?;
        let z = zstd::bulk::compress(&manifest, 3).ctx(|| "compressing a manifest".into())?;
        let name = format!(
            "points/{}-{}-{}.db.zst",
            id.0,
            created_secs(&point.created_at),
            blake3::hash(&z).to_hex()
        );
        report.objects += 1;
        report.bytes += z.len() as u64;
        remote.put(&name, z)?;
        crate::failpoint::hit("push-after-manifest");
        report.pushed.push(id.0);
    }
    push_kit(store, remote, &mut report)?;
    Ok(report)
}

/// The RECOVERY the remote holds: how to rebuild a machine from it alone, then the store's
/// own RECOVERY (its steps and recorded disk layout).
fn remote_recovery(store: &Store, url: &str) -> String {
    let local = std::fs::read_to_string(store.dir.join("kit/RECOVERY")).unwrap_or_default();
    format!(
        "RESTOREPOINT OFF-SITE COPY: {url}\n\
         \n\
         This remote holds restore points of the machine, each with its files, its disk layout\n\
         and its boot area. To rebuild the machine on a blank disk from a rescue system:\n\
         \n\
         1. Fetch kit/system_restore from this remote with any S3 client (aws s3 cp, s3cmd,\n\
         \x20  rclone, mc), then: chmod +x system_restore; ln system_restore system_snapshot\n\
         2. Export the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, and\n\
         \x20  AWS_ENDPOINT_URL for servers other than AWS), or put them in ~/.aws/credentials\n\
         \x20  (mode 600).\n\
         3. ./system_snapshot list --store {url}\n\
         4. ./system_restore --store {url} --point N --bare-metal --device /dev/sdX\n\
         \x20  It shows the plan (partition table, filesystems with their UUIDs and labels, mount\n\
         \x20  points) and erases /dev/sdX only after the typed word yes. Then reboot.\n\
         \n\
         Files only, into a directory: ./system_restore --store {url} --point N --target DIR\n\
         \n\
         The store's own recovery notes, as of the last push, follow.\n\
         ------------------------------------------------------------------------------\n\
         {local}"
    )
}

/// The program and RECOVERY as `kit/system_restore` and `kit/RECOVERY` on the remote, so a
/// rescue system needs only an S3 client and the credentials. They are sent when they differ
/// from what `kit/manifest.json` (written after them) says the remote holds.
fn push_kit(store: &Store, remote: &Remote, report: &mut PushReport) -> Result<()> {
    let program_path = crate::boot::kit::source()?;
    let program =
        std::fs::read(&program_path).ctx(|| format!("reading {}", program_path.display()))?;
    let recovery = remote_recovery(store, &remote.url).into_bytes();
    let want = serde_json::json!({
        "system_restore": blake3::hash(&program).to_hex().to_string(),
        "RECOVERY": blake3::hash(&recovery).to_hex().to_string(),
    });
    let have = remote
        .get("kit/manifest.json")?
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    if have.as_ref() == Some(&want) {
        return Ok(());
    }
    for (key, bytes) in [("kit/system_restore", program), ("kit/RECOVERY", recovery)] {
        report.objects += 1;
        report.bytes += bytes.len() as u64;
        remote.put(key, bytes)?;
    }
    remote.put("kit/manifest.json", want.to_string().into_bytes())?;
    report.objects += 1;
    Ok(())
}

/// Uploads the bundle being filled, then the catalog of the contents it completes.
fn flush(
    remote: &Remote,
    b: &mut Bundler,
    current: &mut [PieceAt],
    report: &mut PushReport,
) -> Result<()> {
    // The bundle may be empty when the last content filled the one before it: its catalog
    // still has to go out.
    let name: Option<Hash> = if b.buf.is_empty() {
        None
    } else {
        let bytes = std::mem::take(&mut b.buf);
        let name: Hash = *blake3::hash(&bytes).as_bytes();
        report.objects += 1;
        report.bytes += bytes.len() as u64;
        remote.put(&bundle_key(&name), bytes)?;
        crate::failpoint::hit("push-after-bundle");
        for p in current.iter_mut().filter(|p| p.bundle.is_none()) {
            p.bundle = Some(name);
        }
        Some(name)
    };
    let items = std::mem::take(&mut b.done)
        .into_iter()
        .map(|(h, pieces)| {
            let pieces = pieces
                .into_iter()
                .map(|p| Piece {
                    bundle: p.bundle.or(name).expect("a piece of an uploaded bundle"),
                    offset: p.offset,
                    len: p.len,
                })
                .collect();
            (h, pieces)
        })
        .collect::<BTreeMap<Hash, Vec<Piece>>>();
    if !items.is_empty() {
        let cat = encode_catalog(&items);
        let cname = format!("catalog/{}", blake3::hash(&cat).to_hex());
        report.objects += 1;
        report.bytes += cat.len() as u64;
        remote.put(&cname, cat)?;
    }
    Ok(())
}

/// The point's manifest: an SQLite database of its row and every path's entry, as bytes.
fn manifest(
    store: &Store,
    id: PointId,
    state: &[(Vec<u8>, crate::model::Entry)],
) -> Result<Vec<u8>> {
    let point = store.index.point(id)?;
    let tmp = tempfile::NamedTempFile::new_in(store.dir.join("staging"))
        .ctx(|| "creating a manifest".into())?;
    let db = |e: rusqlite::Error| Error::Refused {
        why: format!("writing the manifest of point {id}: {e}"),
    };
    let conn = rusqlite::Connection::open(tmp.path()).map_err(db)?;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=OFF; CREATE TABLE point (id INTEGER, created TEXT, kind TEXT, label TEXT, files INTEGER, bytes INTEGER, sources TEXT, excludes TEXT);
         CREATE TABLE entries (path BLOB PRIMARY KEY, {});
         CREATE TABLE boot (disk TEXT, capture TEXT);
         CREATE TABLE blobs (hash TEXT PRIMARY KEY, bytes BLOB);",
        crate::store::ENTRY_COLS
    ))
    .map_err(db)?;
    conn.execute(
        "INSERT INTO point VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        rusqlite::params![
            id.0,
            point.created_at,
            point.kind.as_str(),
            point.label,
            point.files as i64,
            point.bytes as i64,
            serde_json::to_string(&point.sources).expect("sources serialize"),
            point
                .excludes
                .as_ref()
                .map(|x| serde_json::to_string(x).expect("excludes serialize"))
        ],
    )
    .map_err(db)?;
    // The disk records and boot area travel with the point: a bare-metal restore from the
    // remote needs nothing else from the machine that is gone.
    let (captures, _) = crate::boot::of_point(store, id)?;
    for c in &captures {
        conn.execute(
            "INSERT INTO boot VALUES (?1, ?2)",
            rusqlite::params![
                c.disk,
                serde_json::to_string(c).expect("capture serializes")
            ],
        )
        .map_err(db)?;
        let hashes = c
            .pieces
            .iter()
            .map(|p| &p.hash)
            .chain(c.records.iter().map(|r| &r.hash));
        for h in hashes {
            let bytes = crate::store::blobs::get(&store.dir, h)?;
            conn.execute(
                "INSERT OR IGNORE INTO blobs VALUES (?1, ?2)",
                rusqlite::params![h, bytes],
            )
            .map_err(db)?;
        }
    }
    let tx = conn.unchecked_transaction().map_err(db)?;
    {
        let n = crate::store::ENTRY_COLS.split(", ").count();
        let marks: Vec<String> = (1..=n + 1).map(|i| format!("?{i}")).collect();
        let mut st = tx
            .prepare(&format!(
                "INSERT INTO entries VALUES ({})",
                marks.join(", ")
            ))
            .map_err(db)?;
        for (path, e) in state {
            let mut values = vec![rusqlite::types::Value::Blob(path.clone())];
            values.extend(crate::store::entry_values(Some(e)));
            st.execute(rusqlite::params_from_iter(values)).map_err(db)?;
        }
    }
    tx.commit().map_err(db)?;
    conn.close().map_err(|(_, e)| db(e))?;
    std::fs::read(tmp.path()).ctx(|| "reading a manifest".into())
}

/// A point the remote holds, as its manifest says.
#[derive(Debug, serde::Serialize)]
pub struct RemotePoint {
    pub id: i64,
    pub created_at: String,
    pub kind: String,
    pub label: Option<String>,
    pub files: u64,
    pub bytes: u64,
}

/// What `expire` removed from a remote.
#[derive(Debug, Default, serde::Serialize)]
pub struct Expired {
    pub points: Vec<i64>,
    /// Catalogs deleted (those that kept some live contents were first written again
    /// without the others, under their new hash).
    pub catalogs: u64,
    pub bundles: u64,
    pub bytes: u64,
}

impl Remote {
    /// Catalog `name`'s items; None when it is damaged (does not match its name or decode).
    /// Any other error (the network, the credentials) is returned.
    fn catalog(&self, name: &str) -> Result<Option<Catalog>> {
        match self.get_checked(&format!("catalog/{name}"), name) {
            Ok(b) => Ok(decode_catalog(&b)),
            Err(Error::Damaged { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn delete(&self, key: &str) -> Result<()> {
        let p = self.path(key);
        match self.rt.block_on(self.objects.delete(&p)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(remote_err(&self.url, &format!("deleting {key} from"), e)),
        }
    }
}

/// Keeps the newest `keep` points of `remote` and deletes what only older ones needed.
///
/// Order, so that a kill at any moment leaves every remaining point whole: the expired
/// points' manifests first (from then on they are not off site); then each catalog that names
/// a content no remaining point has is written again with the live contents only, under its
/// new name, before the old one is deleted; bundles last, those no remaining catalog piece
/// lies in. A bundle is deleted only once no catalog names it, so a push never skips content
/// whose bytes are gone. Run again, it finishes what a killed run left.
pub fn expire(
    remote: &Remote,
    keep: usize,
    pinned: &HashSet<i64>,
    scratch: &std::path::Path,
) -> Result<Expired> {
    let mut out = Expired::default();
    let mut points = remote_points(remote)?;
    let older: Vec<i64> = points.keys().rev().skip(keep.max(1)).copied().collect();
    for id in older.into_iter().rev().filter(|id| !pinned.contains(id)) {
        let name = points.remove(&id).expect("listed above");
        remote.delete(&format!("points/{name}"))?;
        out.points.push(id);
    }
    crate::failpoint::hit("expire-after-manifests");
    let mut live: HashSet<Hash> = HashSet::new();
    for name in points.values() {
        let m = Manifest::open(remote, name, scratch)?;
        let mut st = m
            .conn
            .prepare("SELECT hash FROM entries WHERE hash IS NOT NULL AND link IS NULL")
            .map_err(|e| m.bad(&e))?;
        for h in st
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .map_err(|e| m.bad(&e))?
        {
            let h = h.map_err(|e| m.bad(&e))?;
            live.insert(
                h.try_into()
                    .map_err(|_| m.bad(&"a hash of the wrong length"))?,
            );
        }
    }
    let mut bundles_live: HashSet<Hash> = HashSet::new();
    let mut unreadable = false;
    for (name, _) in remote.list("catalog")? {
        let key = format!("catalog/{name}");
        // A damaged catalog is left for verify to report; while there is one, no bundle is
        // deleted: the bundles only it names may hold what a remaining point needs.
        let Some(items) = remote.catalog(&name)? else {
            unreadable = true;
            continue;
        };
        let kept: BTreeMap<Hash, Vec<Piece>> = items
            .iter()
            .filter(|(h, _)| live.contains(*h))
            .map(|(h, p)| (*h, p.clone()))
            .collect();
        bundles_live.extend(kept.values().flatten().map(|p| p.bundle));
        if kept.len() == items.len() {
            continue;
        }
        if !kept.is_empty() {
            let bytes = encode_catalog(&kept);
            let h = blake3::hash(&bytes).to_hex().to_string();
            remote.put(&format!("catalog/{h}"), bytes)?;
        }
        remote.delete(&key)?;
        out.catalogs += 1;
        crate::failpoint::hit("expire-after-catalog");
    }
    if unreadable {
        return Ok(out);
    }
    for (name, size) in remote.list("data")? {
        // `<hh>/<hash>`
        let Some(hexname) = name.rsplit('/').next() else {
            continue;
        };
        let mut h = [0u8; 32];
        if hexname.len() != 64
            || (0..32).any(|i| {
                u8::from_str_radix(&hexname[2 * i..2 * i + 2], 16)
                    .map(|b| h[i] = b)
                    .is_err()
            })
        {
            continue;
        }
        if !bundles_live.contains(&h) {
            remote.delete(&format!("data/{name}"))?;
            out.bundles += 1;
            out.bytes += size;
        }
    }
    Ok(out)
}

/// A manifest fetched, checked against its name and opened from a scratch file (deleted
/// with the handle).
struct Manifest {
    conn: rusqlite::Connection,
    _file: tempfile::NamedTempFile,
    name: String,
    url: String,
}

impl Manifest {
    fn open(remote: &Remote, name: &str, scratch: &std::path::Path) -> Result<Manifest> {
        let hexname = manifest_name_parts(name).map_or("", |(_, h)| h);
        let z = remote.get_checked(&format!("points/{name}"), hexname)?;
        let bad = |e: &dyn std::fmt::Display| Error::Damaged {
            what: format!("points/{name} in {}: {e}", remote.url),
        };
        let raw = zstd::stream::decode_all(&z[..]).map_err(|e| bad(&e))?;
        let file = tempfile::NamedTempFile::new_in(scratch).ctx(|| "reading a manifest".into())?;
        std::fs::write(file.path(), raw).ctx(|| "reading a manifest".into())?;
        let conn = rusqlite::Connection::open(file.path()).map_err(|e| bad(&e))?;
        Ok(Manifest {
            conn,
            _file: file,
            name: name.to_string(),
            url: remote.url.clone(),
        })
    }

    /// Every path's entry, in path order, each kept as `keep` makes it.
    fn entries<T>(
        &self,
        mut keep: impl FnMut(Vec<u8>, crate::model::Entry) -> T,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        self.each(false, |path, e| {
            out.push(keep(path, e));
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `f` with every path's entry, one at a time, in path order (`reverse`: deepest
    /// first), straight from the manifest file: memory does not grow with the point.
    fn each(
        &self,
        reverse: bool,
        mut f: impl FnMut(Vec<u8>, crate::model::Entry) -> Result<()>,
    ) -> Result<()> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT path, {} FROM entries ORDER BY path{}",
                crate::store::ENTRY_COLS,
                if reverse { " DESC" } else { "" }
            ))
            .map_err(|e| self.bad(&e))?;
        let mut rows = st.query([]).map_err(|e| self.bad(&e))?;
        while let Some(r) = rows.next().map_err(|e| self.bad(&e))? {
            let path: Vec<u8> = r.get(0).map_err(|e| self.bad(&e))?;
            let e = crate::store::entry_at(r, 1)
                .map_err(|e| self.bad(&e))?
                .ok_or_else(|| self.bad(&"an entry without a kind"))?;
            f(path, e)?;
        }
        Ok(())
    }

    /// Whether `table` of this manifest has `column` (manifests of older pushes lack some).
    fn has_column(&self, table: &str, column: &str) -> Result<bool> {
        let mut st = self
            .conn
            .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
            .map_err(|e| self.bad(&e))?;
        let names = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.bad(&e))?;
        for n in names {
            if n.map_err(|e| self.bad(&e))? == column {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn bad(&self, e: &dyn std::fmt::Display) -> Error {
        Error::Damaged {
            what: format!("points/{} in {}: {e}", self.name, self.url),
        }
    }
}

/// The points `remote` holds, oldest first; each manifest checked against its name.
pub fn list(remote: &Remote, scratch: &std::path::Path) -> Result<Vec<RemotePoint>> {
    let mut out = Vec::new();
    for (id, name) in remote_points(remote)? {
        let m = Manifest::open(remote, &name, scratch)?;
        let p = m
            .conn
            .query_row(
                "SELECT created, kind, label, files, bytes FROM point",
                [],
                |r| {
                    Ok(RemotePoint {
                        id,
                        created_at: r.get(0)?,
                        kind: r.get(1)?,
                        label: r.get(2)?,
                        files: r.get::<_, i64>(3)? as u64,
                        bytes: r.get::<_, i64>(4)? as u64,
                    })
                },
            )
            .map_err(|e| m.bad(&e))?;
        out.push(p);
    }
    Ok(out)
}

/// The plan that makes the tree at `root` equal to point `id` of `remote`, within the
/// point's sources and leaving out what it excluded, `protect` (database directories) and
/// `keep` (paths below the root never touched: a local store).
pub fn plan_in_place(
    remote: &Remote,
    id: i64,
    root: std::os::fd::BorrowedFd,
    protect: &[String],
    keep: Vec<crate::model::RelPath>,
    opts: crate::restore::PlanOptions,
    scratch: &std::path::Path,
) -> Result<crate::restore::RestorePlan> {
    let name = remote_points(remote)?
        .remove(&id)
        .ok_or(Error::NoSuchPoint { id })?;
    let m = Manifest::open(remote, &name, scratch)?;
    // Without its sources and exclusions a point cannot say what lies outside it: an
    // in-place restore would delete all of that. Manifests pushed before they were recorded
    // are refused for it.
    if !m.has_column("point", "excludes")? {
        return Err(Error::RestoreRefused {
            why: format!(
                "point {id} in {} was pushed by an older restorepoint, without its sources and exclusions, so an in-place restore cannot tell what it must leave alone; restore it into a new directory (--target DIR), or push a newer point",
                remote.url
            ),
        });
    }
    let (sources, excludes): (Option<String>, Option<String>) = m
        .conn
        .query_row("SELECT sources, excludes FROM point", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .map_err(|e| m.bad(&e))?;
    let sources: Vec<String> = match sources {
        Some(s) => serde_json::from_str(&s).map_err(|e| m.bad(&e))?,
        None => return Err(m.bad(&"the point's row has no sources")),
    };
    let mut patterns: Vec<String> = match excludes {
        Some(x) => serde_json::from_str(&x).map_err(|e| m.bad(&e))?,
        None => crate::exclude::DEFAULT_EXCLUDES
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    patterns.extend(protect.iter().cloned());
    let excludes = crate::exclude::ExcludeSet::new(&patterns, keep)?;
    let want = m.entries(|p, e| (p, crate::model::Packed::new(&e)))?;
    drop(m);
    let scopes: Vec<crate::model::RelPath> = sources
        .iter()
        .map(|s| s.trim_matches('/').as_bytes().to_vec())
        .collect();
    crate::restore::build_plan(
        crate::store::PointId(id),
        want,
        Some(root),
        &scopes,
        &excludes,
        opts,
    )
}

/// What a bare-metal restore from the remote needs of point `id` besides its files: the
/// disk records and boot area pushed with it, and its sources.
pub struct PointDisk {
    pub captures: Vec<crate::boot::Capture>,
    pub blobs: BTreeMap<String, Vec<u8>>,
    pub sources: Vec<String>,
    pub files: u64,
    pub bytes: u64,
}

pub fn point_disk(remote: &Remote, id: i64, scratch: &std::path::Path) -> Result<PointDisk> {
    let name = remote_points(remote)?
        .remove(&id)
        .ok_or(Error::NoSuchPoint { id })?;
    let m = Manifest::open(remote, &name, scratch)?;
    let has_boot = m
        .conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'boot'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(|e| m.bad(&e))?
        > 0;
    let (files, bytes, sources): (i64, i64, Option<String>) = m
        .conn
        .query_row(
            if has_boot {
                "SELECT files, bytes, sources FROM point"
            } else {
                "SELECT files, bytes, NULL FROM point"
            },
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(|e| m.bad(&e))?;
    let mut out = PointDisk {
        captures: Vec::new(),
        blobs: BTreeMap::new(),
        sources: match sources {
            Some(s) => serde_json::from_str(&s).map_err(|e| m.bad(&e))?,
            None => Vec::new(),
        },
        files: files as u64,
        bytes: bytes as u64,
    };
    if !has_boot {
        return Ok(out);
    }
    let mut st = m
        .conn
        .prepare("SELECT capture FROM boot")
        .map_err(|e| m.bad(&e))?;
    for c in st
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(|e| m.bad(&e))?
    {
        let c = c.map_err(|e| m.bad(&e))?;
        out.captures
            .push(serde_json::from_str(&c).map_err(|e| m.bad(&e))?);
    }
    let mut st = m
        .conn
        .prepare("SELECT hash, bytes FROM blobs")
        .map_err(|e| m.bad(&e))?;
    for row in st
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })
        .map_err(|e| m.bad(&e))?
    {
        let (h, b) = row.map_err(|e| m.bad(&e))?;
        if blake3::hash(&b).to_hex().as_str() != h {
            return Err(m.bad(&format!("boot record {h} does not match its hash")));
        }
        out.blobs.insert(h, b);
    }
    Ok(out)
}

/// The entries of point `id`'s manifest `name`, in path order, the manifest checked against
/// its name.
fn manifest_entries(
    remote: &Remote,
    name: &str,
    scratch: &std::path::Path,
) -> Result<Vec<(Vec<u8>, crate::model::Entry)>> {
    Manifest::open(remote, name, scratch)?.entries(|path, e| (path, e))
}

/// Bundles fetched whole, checked against their names; the last few kept (the pieces of one
/// content, and contents read in the order they were pushed, are neighbours).
struct Bundles<'a> {
    remote: &'a Remote,
    kept: Vec<(Hash, Vec<u8>)>,
    fetched: u64,
    /// Fetch byte ranges (a restore: the content's hash checks them) instead of whole
    /// bundles (verify).
    ranged: bool,
    /// A restore's last range: (bundle, where it starts, its bytes).
    window: Option<(Hash, u64, Vec<u8>)>,
    /// Where the last piece read ended: a piece starting there is read sequentially.
    next: Option<(Hash, u64)>,
    /// How far a read reaches past its piece: doubled while pieces come in bundle order, as
    /// they do when a restore goes in the order the push wrote them; none after a jump.
    reach: u64,
}

/// The furthest a restore reads ahead in a bundle.
const READ_AHEAD: u64 = 8 << 20;

impl Bundles<'_> {
    /// Piece `p`; `end` is where its bundle's last known piece ends (ranged reads only).
    fn piece(&mut self, p: &Piece, end: Option<u64>) -> Result<Vec<u8>> {
        if self.ranged {
            let sequential = self.next == Some((p.bundle, p.offset));
            self.next = Some((p.bundle, p.offset + p.len));
            let inside = |(b, start, bytes): &(Hash, u64, Vec<u8>)| {
                *b == p.bundle
                    && p.offset >= *start
                    && p.offset + p.len <= start + bytes.len() as u64
            };
            if !self.window.as_ref().is_some_and(inside) {
                self.reach = if sequential {
                    (self.reach * 2).clamp(1 << 20, READ_AHEAD)
                } else {
                    0
                };
                let stop =
                    (p.offset + p.len.max(self.reach)).min(end.unwrap_or(0).max(p.offset + p.len));
                let bytes = self
                    .remote
                    .get_range(&bundle_key(&p.bundle), p.offset..stop)?;
                self.fetched += 1;
                self.window = Some((p.bundle, p.offset, bytes));
            }
            let (_, start, bytes) = self.window.as_ref().expect("just read");
            let at = (p.offset - start) as usize;
            let frame = bytes
                .get(at..at + p.len as usize)
                .ok_or_else(|| Error::Damaged {
                    what: format!("a piece past the end of bundle {}", hex(&p.bundle)),
                })?;
            return zstd::stream::decode_all(frame).map_err(|e| Error::Damaged {
                what: format!("a piece of bundle {} does not decode: {e}", hex(&p.bundle)),
            });
        }
        if !self.kept.iter().any(|(h, _)| *h == p.bundle) {
            let bytes = self
                .remote
                .get_checked(&bundle_key(&p.bundle), &hex(&p.bundle))?;
            self.fetched += 1;
            if self.kept.len() >= 2 {
                self.kept.remove(0);
            }
            self.kept.push((p.bundle, bytes));
        }
        let (_, bytes) = self
            .kept
            .iter()
            .find(|(h, _)| *h == p.bundle)
            .expect("kept");
        let frame = usize::try_from(p.offset)
            .ok()
            .zip(usize::try_from(p.offset + p.len).ok())
            .and_then(|(a, b)| bytes.get(a..b))
            .ok_or_else(|| Error::Damaged {
                what: format!("a piece past the end of bundle {}", hex(&p.bundle)),
            })?;
        zstd::stream::decode_all(frame).map_err(|e| Error::Damaged {
            what: format!("a piece of bundle {} does not decode: {e}", hex(&p.bundle)),
        })
    }
}

/// The remote's catalogs gathered into an SQLite file in the scratch directory, so that a
/// restore's memory does not grow with the number of contents (deleted with the handle).
struct CatalogDb {
    conn: rusqlite::Connection,
    _file: tempfile::NamedTempFile,
}

impl CatalogDb {
    fn load(remote: &Remote, scratch: &std::path::Path) -> Result<CatalogDb> {
        let file =
            tempfile::NamedTempFile::new_in(scratch).ctx(|| "making a catalog file".into())?;
        let db =
            |e: rusqlite::Error| Error::io("writing the catalog file", std::io::Error::other(e));
        let conn = rusqlite::Connection::open(file.path()).map_err(db)?;
        conn.execute_batch(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;
             CREATE TABLE c (hash BLOB PRIMARY KEY, pieces BLOB) WITHOUT ROWID;
             CREATE TABLE e (bundle BLOB PRIMARY KEY, end INTEGER) WITHOUT ROWID;",
        )
        .map_err(db)?;
        let tx = conn.unchecked_transaction().map_err(db)?;
        for (name, _) in remote.list("catalog")? {
            // A damaged one counts as absent, as for a push: a content only it names is
            // reported damaged when a file needs it.
            let Some(items) = remote.catalog(&name)? else {
                continue;
            };
            let mut st = tx
                .prepare_cached("INSERT OR REPLACE INTO c VALUES (?1, ?2)")
                .map_err(db)?;
            let mut ends = tx
                .prepare_cached(
                    "INSERT INTO e VALUES (?1, ?2) ON CONFLICT (bundle) DO UPDATE SET end = max(end, excluded.end)",
                )
                .map_err(db)?;
            for (h, pieces) in items {
                let mut raw = Vec::with_capacity(pieces.len() * 48);
                for p in &pieces {
                    raw.extend_from_slice(&p.bundle);
                    raw.extend_from_slice(&p.offset.to_le_bytes());
                    raw.extend_from_slice(&p.len.to_le_bytes());
                    ends.execute(rusqlite::params![&p.bundle[..], (p.offset + p.len) as i64])
                        .map_err(db)?;
                }
                st.execute(rusqlite::params![&h[..], raw]).map_err(db)?;
            }
        }
        tx.commit().map_err(db)?;
        Ok(CatalogDb { conn, _file: file })
    }

    /// Where the last piece any catalog names in `bundle` ends.
    fn end_of(&self, bundle: &Hash) -> Result<Option<u64>> {
        let db =
            |e: rusqlite::Error| Error::io("reading the catalog file", std::io::Error::other(e));
        self.conn
            .prepare_cached("SELECT end FROM e WHERE bundle = ?1")
            .map_err(db)?
            .query_row([&bundle[..]], |r| r.get::<_, i64>(0))
            .map(|e| Some(e as u64))
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .map_err(db)
    }

    fn get(&self, h: &Hash) -> Result<Option<Vec<Piece>>> {
        let db =
            |e: rusqlite::Error| Error::io("reading the catalog file", std::io::Error::other(e));
        let raw: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT pieces FROM c WHERE hash = ?1")
            .map_err(db)?
            .query_row([&h[..]], |r| r.get(0))
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .map_err(db)?;
        Ok(raw.map(|raw| {
            raw.chunks_exact(48)
                .map(|c| Piece {
                    bundle: c[..32].try_into().expect("32 bytes"),
                    offset: u64::from_le_bytes(c[32..40].try_into().expect("8 bytes")),
                    len: u64::from_le_bytes(c[40..48].try_into().expect("8 bytes")),
                })
                .collect()
        }))
    }
}

/// File content read from a remote store for a restore, each piece by its own byte range,
/// each file checked against its hash.
pub struct RemoteContent<'a> {
    bundles: Bundles<'a>,
    catalog: CatalogDb,
}

impl<'a> RemoteContent<'a> {
    /// The content of every point of `remote`; its catalog kept in `scratch`.
    pub fn of(remote: &'a Remote, scratch: &std::path::Path) -> Result<RemoteContent<'a>> {
        Ok(RemoteContent {
            bundles: Bundles {
                remote,
                kept: Vec::new(),
                fetched: 0,
                ranged: true,
                window: None,
                next: None,
                reach: 0,
            },
            catalog: CatalogDb::load(remote, scratch)?,
        })
    }
}

impl crate::restore::ContentSource for RemoteContent<'_> {
    fn write(&mut self, path: &[u8], e: &crate::model::Entry, file: &std::fs::File) -> Result<u64> {
        let url = &self.bundles.remote.url;
        let h = e.hash.ok_or_else(|| Error::Damaged {
            what: format!("{} has no content hash", display_path(path)),
        })?;
        let pieces = self.catalog.get(&h)?.ok_or_else(|| Error::Damaged {
            what: format!("the content of {} is not in {url}", display_path(path)),
        })?;
        let url = url.clone();
        let mut with_ends = Vec::with_capacity(pieces.len());
        for p in pieces {
            let end = self.catalog.end_of(&p.bundle)?;
            with_ends.push((p, end));
        }
        let mut r = ContentReader {
            bundles: &mut self.bundles,
            pieces: with_ends.into_iter(),
            buf: Vec::new(),
            at: 0,
            hasher: blake3::Hasher::new(),
            damage: None,
        };
        let n = match crate::fsio::write_content(file, &mut r, e.sparse, e.flags) {
            Ok(n) => n,
            Err(err) => {
                return Err(match r.damage.take() {
                    Some(d) => Error::Damaged {
                        what: format!("{}: {d}", display_path(path)),
                    },
                    None => Error::io(format!("writing {}", display_path(path)), err),
                })
            }
        };
        if r.hasher.finalize().as_bytes() != &h || n != e.size {
            return Err(Error::Damaged {
                what: format!(
                    "{} read back from {url} does not match its hash",
                    display_path(path)
                ),
            });
        }
        Ok(n)
    }
}

/// A content read piece by piece, hashed as it goes.
struct ContentReader<'a, 'b> {
    bundles: &'a mut Bundles<'b>,
    /// Each piece, with where its bundle's known pieces end (for a ranged read).
    pieces: std::vec::IntoIter<(Piece, Option<u64>)>,
    buf: Vec<u8>,
    at: usize,
    hasher: blake3::Hasher,
    /// What was found damaged, when a read failed on it.
    damage: Option<String>,
}

impl Read for ContentReader<'_, '_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.buf.len() {
            let Some(p) = self.pieces.next() else {
                return Ok(0);
            };
            self.buf = self.bundles.piece(&p.0, p.1).map_err(|e| match e {
                Error::Damaged { what } => {
                    self.damage = Some(what.clone());
                    std::io::Error::other(what)
                }
                other => std::io::Error::other(other.to_string()),
            })?;
            self.hasher.update(&self.buf);
            self.at = 0;
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// What `verify` of a remote store found.
#[derive(Debug, Default, serde::Serialize)]
pub struct RemoteVerify {
    pub points: u64,
    pub contents: u64,
    pub bundles: u64,
    /// One line per damage: what, and which point or object.
    pub damaged: Vec<String>,
}

/// Reads every manifest, catalog and bundle of `remote` and checks each against its name,
/// and every content against its BLAKE3; a point that names a content no catalog has is
/// damaged.
pub fn verify(remote: &Remote, scratch: &std::path::Path) -> Result<RemoteVerify> {
    let mut report = RemoteVerify::default();
    let (catalog, damaged) = remote_catalog(remote)?;
    report.damaged.extend(damaged);
    for (id, name) in remote_points(remote)? {
        report.points += 1;
        match manifest_entries(remote, &name, scratch) {
            Ok(entries) => {
                for (path, e) in entries.iter().filter(|(_, e)| e.kind == Kind::File) {
                    if e.hash.is_some_and(|h| !catalog.contains_key(&h)) {
                        report.damaged.push(format!(
                            "point {id}: the content of {} is not in the remote store",
                            display_path(path)
                        ));
                    }
                }
            }
            Err(e) => report.damaged.push(format!("point {id}: {e}")),
        }
    }
    let mut bundles = Bundles {
        remote,
        kept: Vec::new(),
        fetched: 0,
        ranged: false,
        window: None,
        next: None,
        reach: 0,
    };
    let mut order: Vec<(&Hash, &Vec<Piece>)> = catalog.iter().collect();
    order.sort_by_key(|(_, p)| p.first().map(|p| (p.bundle, p.offset)));
    // One line per cause (a damaged bundle loses every content in it), with a count.
    let mut causes: BTreeMap<String, u64> = BTreeMap::new();
    for (h, pieces) in order {
        report.contents += 1;
        let mut r = ContentReader {
            bundles: &mut bundles,
            pieces: pieces
                .iter()
                .map(|p| (p.clone(), None))
                .collect::<Vec<_>>()
                .into_iter(),
            buf: Vec::new(),
            at: 0,
            hasher: blake3::Hasher::new(),
            damage: None,
        };
        match std::io::copy(&mut r, &mut std::io::sink()) {
            Err(e) => *causes.entry(e.to_string()).or_default() += 1,
            Ok(_) if r.hasher.finalize().as_bytes() != h => {
                *causes
                    .entry(format!("content {} does not match its hash", hex(h)))
                    .or_default() += 1
            }
            Ok(_) => {}
        }
    }
    for (cause, n) in causes {
        report
            .damaged
            .push(format!("{cause} ({n} file contents cannot be read)"));
    }
    report.bundles = bundles.fetched;
    Ok(report)
}

/// What a restore from a remote store did.
#[derive(Debug, Default, serde::Serialize)]
pub struct RemoteRestore {
    pub entries: u64,
    pub bytes: u64,
    /// Each as one line `PATH: MESSAGE` in JSON, as the report has always had them.
    #[serde(serialize_with = "warning_lines")]
    pub warnings: Vec<crate::model::Warning>,
}

fn warning_lines<S: serde::Serializer>(
    warnings: &[crate::model::Warning],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(
        warnings
            .iter()
            .map(|w| format!("{}: {}", w.path, w.message)),
    )
}

/// Metadata `path` could not be given, as the report's warnings (with the path, so that the
/// owners a user cannot set are summed up as a local restore's are).
fn note(report: &mut RemoteRestore, path: &[u8], messages: Vec<String>) {
    for message in messages {
        report.warnings.push(crate::model::Warning {
            path: display_path(path),
            message,
        });
    }
}

/// Materializes point `id` of `remote` into `target`, a directory that does not exist or is
/// empty, exactly (content checked against its hash, owner, mode, times, xattrs, inode flags,
/// hardlinks, device nodes). Damage names the remote (`name_remote`).
pub fn restore(
    remote: &Remote,
    id: i64,
    target: &std::path::Path,
    scratch: &std::path::Path,
) -> Result<RemoteRestore> {
    restore_into(remote, id, target, scratch, false).map_err(|e| name_remote(e, &remote.url))
}

/// Whether `dir` holds nothing but directories (a new filesystem's `lost+found`, the mount
/// points of the filesystems mounted below it).
fn only_directories(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .all(|e| e.file_type().is_ok_and(|t| t.is_dir()) && only_directories(&e.path()))
    })
}

/// `restore`, where `fresh` allows a target that holds only directories: the new filesystems
/// of a bare-metal restore, mounted under their root. Their directories take the point's
/// metadata.
pub fn restore_into(
    remote: &Remote,
    id: i64,
    target: &std::path::Path,
    scratch: &std::path::Path,
    fresh: bool,
) -> Result<RemoteRestore> {
    use crate::fsio::{self, DirCache};
    use crate::model::basename;
    use rustix::fs::{Mode, OFlags};
    let points = remote_points(remote)?;
    let name = points.get(&id).ok_or(Error::NoSuchPoint { id })?;
    // Both stay on disk in `scratch`: the entries are read one at a time, each content's
    // pieces looked up when its file is written.
    let m = Manifest::open(remote, name, scratch)?;
    let mut content = RemoteContent::of(remote, scratch)?;
    let t = || format!("writing {}", target.display());
    std::fs::create_dir_all(target).ctx(t)?;
    let empty = std::fs::read_dir(target).ctx(t)?.next().is_none();
    // A new filesystem holds lost+found, and the mount points of those below it.
    let fresh_dirs = fresh && only_directories(target);
    if !empty && !fresh_dirs {
        return Err(Error::Usage(format!(
            "{} is not empty: a restore from a remote store goes into a new directory",
            target.display()
        )));
    }
    let root = fsio::open_root(target).ctx(t)?;
    let mut cache = DirCache::default();
    let mut report = RemoteRestore::default();
    m.each(false, |path, e| {
        let (path, e) = (&path, &e);
        report.entries += 1;
        if path.is_empty() {
            return Ok(());
        }
        let what = || format!("restoring {}", display_path(path));
        let dir = cache.parent_of(root.as_fd(), path).ctx(what)?;
        let name = basename(path);
        match (e.kind, &e.link) {
            (Kind::File, Some(leader)) => {
                let ldir =
                    fsio::open_dir(root.as_fd(), crate::model::parent(leader).unwrap_or(b""))
                        .ctx(what)?;
                rustix::fs::linkat(
                    &ldir,
                    basename(leader),
                    dir,
                    name,
                    rustix::fs::AtFlags::empty(),
                )
                .map_err(std::io::Error::from)
                .ctx(what)?;
            }
            (Kind::File, None) => {
                let fd = rustix::fs::openat(
                    dir,
                    name,
                    OFlags::RDWR
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(std::io::Error::from)
                .ctx(what)?;
                let file = std::fs::File::from(fd);
                report.bytes += crate::restore::ContentSource::write(&mut content, path, e, &file)?;
                let mut warn = Vec::new();
                fsio::apply_meta_fd(std::os::fd::AsFd::as_fd(&file), e, &mut warn).ctx(what)?;
                note(&mut report, path, warn);
            }
            (Kind::Dir, _) => match fsio::create_node(dir, name, e) {
                Err(err) if fresh && err.kind() == std::io::ErrorKind::AlreadyExists => {}
                other => other.ctx(what)?,
            },
            _ => {
                fsio::create_node(dir, name, e).ctx(what)?;
                let mut warn = Vec::new();
                fsio::apply_meta_at(dir, name, e, &mut warn).ctx(what)?;
                note(&mut report, path, warn);
            }
        }
        Ok(())
    })?;
    // Directories once their contents stop changing, deepest first; inode flags last of all
    // (an immutable directory takes no more entries).
    m.each(true, |path, e| {
        let (path, e) = (&path, &e);
        let what = || format!("restoring {}", display_path(path));
        let at = |p: &[u8]| -> std::io::Result<(std::os::fd::OwnedFd, Vec<u8>)> {
            match crate::model::parent(p) {
                Some(par) => Ok((fsio::open_dir(root.as_fd(), par)?, basename(p).to_vec())),
                None => Ok((root.try_clone()?, b".".to_vec())),
            }
        };
        if e.kind == Kind::Dir {
            let (d, n) = at(path).ctx(what)?;
            let fd = rustix::fs::openat(
                &d,
                &n[..],
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(std::io::Error::from)
            .ctx(what)?;
            let mut warn = Vec::new();
            fsio::apply_meta_fd(std::os::fd::AsFd::as_fd(&fd), e, &mut warn).ctx(what)?;
            note(&mut report, path, warn);
        }
        Ok(())
    })?;
    m.each(true, |path, e| {
        let (path, e) = (&path, &e);
        if e.flags != 0 && matches!(e.kind, Kind::File | Kind::Dir) && e.link.is_none() {
            let what = || format!("restoring {}", display_path(path));
            let (d, n) = match crate::model::parent(path) {
                Some(par) => (
                    fsio::open_dir(root.as_fd(), par).ctx(what)?,
                    basename(path).to_vec(),
                ),
                None => (root.try_clone().ctx(what)?, b".".to_vec()),
            };
            let mut warn = Vec::new();
            fsio::apply_flags(std::os::fd::AsFd::as_fd(&d), &n, e.flags, &mut warn).ctx(what)?;
            note(&mut report, path, warn);
        }
        Ok(())
    })?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catalog_round_trips() {
        let mut items = BTreeMap::new();
        items.insert(
            [1u8; 32],
            vec![
                Piece {
                    bundle: [2; 32],
                    offset: 0,
                    len: 10,
                },
                Piece {
                    bundle: [3; 32],
                    offset: 7,
                    len: u64::MAX,
                },
            ],
        );
        items.insert([9u8; 32], vec![]);
        assert_eq!(decode_catalog(&encode_catalog(&items)), Some(items));
    }
}
