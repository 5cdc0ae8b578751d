//! Crash-safe replacement of whole folders (single files: [`crate::model::io::write_atomic`]):
//! a reader always finds one complete copy, the old one or the new one.

use crate::{Error, Result};
use std::path::Path;

fn io(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

/// Flushes a directory entry list to disk (so a rename inside it survives a power cut).
/// Platforms where a directory cannot be opened for syncing are silently skipped.
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let d = std::fs::File::open(dir).map_err(io(format!("opening directory {} to sync it", dir.display())))?;
        d.sync_all()
            .map_err(io(format!("syncing directory {}", dir.display())))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The directory that holds `path` ("." for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Replaces the directory `target` by the complete directory `staged` (same parent), keeping
/// the old `target` as `backup` until the new one is in place:
/// `target → backup`, `staged → target`, then `backup` is removed. At every instant one
/// complete copy exists under `target` or `backup` (see [`pick_complete`]).
pub fn swap_dir(staged: &Path, target: &Path, backup: &Path) -> Result<()> {
    sync_dir(staged)?;
    if target.exists() {
        if backup.exists() {
            std::fs::remove_dir_all(backup).map_err(io(format!("removing {}", backup.display())))?;
        }
        std::fs::rename(target, backup).map_err(io(format!(
            "renaming {} to {}",
            target.display(),
            backup.display()
        )))?;
    }
    std::fs::rename(staged, target).map_err(io(format!("renaming {} to {}", staged.display(), target.display())))?;
    sync_dir(parent_dir(target))?;
    if backup.exists() {
        std::fs::remove_dir_all(backup).map_err(io(format!("removing {}", backup.display())))?;
    }
    Ok(())
}

/// The first of `candidates` that holds the file `marker` (written last, so its presence
/// means the folder is complete).
pub fn pick_complete<'a>(candidates: &[&'a Path], marker: &str) -> Option<&'a Path> {
    candidates.iter().copied().find(|d| d.join(marker).is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_dir_replaces_and_removes_the_backup() {
        let root = std::env::temp_dir().join(format!("kiln-swap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (staged, target, backup) = (root.join("new"), root.join("cur"), root.join("old"));
        for (dir, v) in [(&target, "1"), (&staged, "2")] {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("done"), v).unwrap();
        }
        assert_eq!(pick_complete(&[&target, &backup], "done"), Some(target.as_path()));
        swap_dir(&staged, &target, &backup).unwrap();
        assert_eq!(std::fs::read_to_string(target.join("done")).unwrap(), "2");
        assert!(!staged.exists() && !backup.exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
