//! The run folder as one writer's property: an exclusive advisory lock held for a training
//! session's life, and the cleanup of what a killed session left behind.
//!
//! `train`, `finetune` and `train --resume` take the lock ([`RunLock::acquire`]) before they
//! read or write anything in the folder; a second writer is refused with the holder's process
//! id. Readers (`generate`, `finetune --from`) take no lock: a checkpoint is replaced
//! atomically ([`super::checkpoint`]), so they always find a complete one. The lock is the
//! operating system's (`flock` on Unix): it ends with the process, however the process ends,
//! so a killed run never leaves a stale lock.

use crate::{Error, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file inside the run folder; it holds the process id of the last writer.
pub const LOCK: &str = ".kiln.lock";

/// How long [`RunLock::acquire`] keeps trying a lock that this process's id holds (see there).
const SELF_HELD_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// An exclusive lock on a run folder, released when dropped (or when the process ends).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Locks the existing folder `run_dir`, or says which process holds it.
    pub fn acquire(run_dir: &Path) -> Result<RunLock> {
        let path = run_dir.join(LOCK);
        let io = |what: &str, e| Error::io(format!("{what} the run folder's lock file {}", path.display()), e);
        // The file is never deleted: a process that opened it just before a deletion would
        // lock an unlinked file while a third created and locked a new one.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io("opening", e))?;
        // The last writer's process id, as the lock file holds it.
        let last_writer = |file: &mut File| {
            let mut holder = String::new();
            let _ = file.rewind().and_then(|()| file.read_to_string(&mut holder));
            holder.trim().parse::<u32>().ok()
        };
        let mut locked = file.try_lock();
        // This process's own lock, just released, can still be held for a moment: a process that
        // another thread forks (to run a command) holds a copy of every open descriptor until it
        // executes its program, and the lock lasts while any copy is open. So a lock held in this
        // process's name is tried again for a while before it counts as held.
        let start = std::time::Instant::now();
        while matches!(locked, Err(TryLockError::WouldBlock))
            && last_writer(&mut file) == Some(std::process::id())
            && start.elapsed() < SELF_HELD_WAIT
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
            locked = file.try_lock();
        }
        match locked {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = match last_writer(&mut file) {
                    Some(pid) => format!("process {pid}"),
                    None => "another process".to_string(), // between its lock and its write
                };
                return Err(Error::Invalid {
                    op: "train",
                    msg: format!(
                        "{} is in use: kiln {holder} is writing to it (it holds {}). One run folder takes one \
                         writer at a time: wait for that run to end or stop it, or choose another --out",
                        run_dir.display(),
                        path.display()
                    ),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io("locking", e)),
        }
        let pid = std::process::id();
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{pid}"))
            .map_err(|e| io("writing", e))?;
        Ok(RunLock { _file: file })
    }
}

/// Creates the folder `run_dir` and whichever of its parents are missing; returns the folders
/// it made, outermost first, for [`remove_created`]. Each is made with `create_dir`, which
/// fails if another process made it first: of two processes starting at once, only the one
/// that made a folder may remove it.
pub fn create(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut dir = Some(run_dir);
    while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d.to_path_buf());
        dir = d.parent();
    }
    let mut made = Vec::new();
    for d in missing.into_iter().rev() {
        match std::fs::create_dir(&d) {
            Ok(()) => made.push(d),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => {
                remove_created(run_dir, &made);
                return Err(Error::io(format!("creating {}", d.display()), e));
            }
        }
    }
    if !run_dir.is_dir() {
        return Err(Error::Invalid {
            op: "train",
            msg: format!("--out {} is a file, not a folder", run_dir.display()),
        });
    }
    Ok(made)
}

/// Removes the folders [`create`] made for `run_dir`, after a start that failed: the run
/// folder, if it made it, with what the start wrote into it; its parents only while empty.
pub fn remove_created(run_dir: &Path, made: &[PathBuf]) {
    for d in made.iter().rev() {
        let _ = if d == run_dir {
            std::fs::remove_dir_all(d)
        } else {
            std::fs::remove_dir(d)
        };
    }
}

/// Whether `name` is a temporary file of [`crate::model::io::write_atomic`]: `.NAME.tmp-PID`.
fn is_temp_file(name: &str) -> bool {
    name.starts_with('.')
        && name
            .rsplit_once(".tmp-")
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Removes what a killed writer left in `run_dir`: the temporary files of interrupted atomic
/// writes and a half-written `checkpoint.tmp/`. Call it only while holding the [`RunLock`]
/// (no other writer can be mid-write then). Returns what it removed.
pub fn remove_leftovers(run_dir: &Path, staging_dir: &str) -> Result<Vec<PathBuf>> {
    let list = |e| Error::io(format!("listing {}", run_dir.display()), e);
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(run_dir).map_err(list)? {
        let entry = entry.map_err(list)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let is_dir = entry.file_type().map_err(list)?.is_dir();
        let result = if is_dir && name == staging_dir {
            std::fs::remove_dir_all(&path)
        } else if !is_dir && is_temp_file(&name) {
            std::fs::remove_file(&path)
        } else {
            continue;
        };
        result.map_err(|e| Error::io(format!("removing the leftover {}", path.display()), e))?;
        removed.push(path);
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_file_names_are_recognised() {
        for name in [".loss.svg.tmp-123", ".tokens.bin.tmp-9", ".metrics.jsonl.tmp-4194304"] {
            assert!(is_temp_file(name), "{name}");
        }
        for name in [
            "loss.svg",
            ".kiln.lock",
            ".x.tmp-",
            ".x.tmp-12a",
            "a.tmp-12",
            "checkpoint.tmp",
        ] {
            assert!(!is_temp_file(name), "{name}");
        }
    }

    /// An empty folder of its own under the temporary directory for test `name`.
    fn fresh_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kiln-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A lock this process released while a copy of its descriptor stays open a moment longer
    /// (as in a child forked by another thread, until it executes its program) is taken once
    /// the copy closes, not refused.
    #[test]
    fn a_lock_held_a_moment_by_a_copy_of_this_process_descriptor_is_waited_for() {
        let dir = fresh_dir("lock-copy");
        let first = RunLock::acquire(&dir).unwrap();
        let copy = first._file.try_clone().unwrap();
        drop(first);
        let closer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            drop(copy);
        });
        RunLock::acquire(&dir).expect("taken once the copy closed");
        closer.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_lock_in_one_process_is_refused_and_the_first_released_on_drop() {
        let dir = fresh_dir("lock");
        let first = RunLock::acquire(&dir).unwrap();
        let e = RunLock::acquire(&dir).unwrap_err().to_string();
        assert!(
            e.contains(&format!("kiln process {} is writing to it", std::process::id())),
            "{e}"
        );
        drop(first);
        let again = RunLock::acquire(&dir).unwrap();
        drop(again);
        std::fs::write(dir.join(".loss.svg.tmp-77"), "x").unwrap();
        std::fs::create_dir_all(dir.join("checkpoint.tmp/sub")).unwrap();
        std::fs::write(dir.join("metrics.jsonl"), "").unwrap();
        let removed = remove_leftovers(&dir, "checkpoint.tmp").unwrap();
        assert_eq!(removed, vec![dir.join(".loss.svg.tmp-77"), dir.join("checkpoint.tmp")]);
        assert!(dir.join("metrics.jsonl").exists() && dir.join(LOCK).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
