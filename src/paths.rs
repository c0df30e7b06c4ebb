//! Paths as the commands give them and as the store records them: a source or path given on
//! the command line as a path relative to the root, and whether a path lies inside a directory
//! (the store inside the root, a restore target inside the store), resolved through symlinks.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::RelPath;

/// `path` relative to `root`, when it lies inside it. A path that does not exist yet is
/// resolved through its nearest existing ancestor, so a directory about to be created inside
/// the store is seen to be there.
pub fn within(root: &Path, path: &Path) -> Option<RelPath> {
    let root = root.canonicalize().ok()?;
    let path = resolve_lexically_below(path)?;
    Some(
        path.strip_prefix(&root)
            .ok()?
            .as_os_str()
            .as_encoded_bytes()
            .to_vec(),
    )
}

/// `path` made absolute: its existing part canonicalized (symlinks followed), the rest (which
/// cannot hold symlinks, since it does not exist) joined component by component.
fn resolve_lexically_below(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = path.canonicalize() {
        return Some(p);
    }
    let abs = std::env::current_dir().ok()?.join(path);
    let mut rest = Vec::new();
    let mut p = abs.as_path();
    let mut base = loop {
        if let Ok(c) = p.canonicalize() {
            break c;
        }
        rest.push(p.file_name().map(|n| n.to_os_string()));
        p = p.parent()?;
    };
    // `file_name` is None for a trailing `..`: climb instead.
    let comps: Vec<Option<std::ffi::OsString>> = rest.into_iter().rev().collect();
    for c in comps {
        match c {
            Some(n) => base.push(n),
            None => {
                base.pop();
            }
        }
    }
    Some(base)
}

/// A source given on the command line (`/etc`, `etc`, `/`) as a path relative to the root.
pub fn source_rel(s: &str) -> Result<RelPath> {
    let trimmed = s.trim_matches('/');
    if trimmed.split('/').any(|c| c == ".." || c == ".") {
        return Err(Error::Invalid(format!(
            "source {s:?}: use a plain path under the root, without . or .."
        )));
    }
    let mut out = Vec::new();
    for c in trimmed.split('/').filter(|c| !c.is_empty()) {
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(c.as_bytes());
    }
    Ok(out)
}
