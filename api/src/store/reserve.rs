//! The built-in store's free-space reserve: a call that writes new bytes
//! (a put, a metadata change, a new dataset) is refused while writing them
//! would leave less than `min_free` bytes free on the filesystem of the blob
//! directory or of the database, so a plugin that writes without end fills
//! neither the host's disk nor the room the audit store needs to record
//! that it was refused (SPEC §1.5, "exhaust the host: disk"). Deletes and
//! an admin's revert are never refused: they are how room is made again.
//!
//! The free space is what an unprivileged writer could still use
//! (`statvfs`: available blocks x fragment size), read when a call starts
//! and again after every [`CHECK_EVERY_BYTES`] of a streamed blob: written
//! content counts at once on tmpfs and on ext4 (delayed allocation reserves
//! its blocks), so a refused stream stops within that many bytes of the
//! reserve, and its temporary file is removed. Calls running at once each
//! see the same free space: together they can go at most
//! `max_concurrent_calls` x (4 MiB or one message) into the reserve.

use std::path::PathBuf;

use super::StoreError;

/// Bytes of a streamed blob written between two free-space checks.
pub(crate) const CHECK_EVERY_BYTES: u64 = 4 << 20;

/// The reserve and the directories whose filesystems it guards.
#[derive(Debug)]
pub(crate) struct Reserve {
    min_free: u64,
    paths: Vec<PathBuf>,
}

impl Reserve {
    /// Guards the filesystems of `paths` (existing directories; one check
    /// per filesystem). `min_free` 0 turns the reserve off.
    pub fn new(min_free: u64, paths: Vec<PathBuf>) -> Reserve {
        use std::os::unix::fs::MetadataExt;
        let mut seen = Vec::new();
        let mut kept = Vec::new();
        for p in paths {
            // A path that cannot be looked at is kept: its check will say why.
            match std::fs::metadata(&p) {
                Ok(m) if seen.contains(&m.dev()) => {}
                Ok(m) => {
                    seen.push(m.dev());
                    kept.push(p);
                }
                Err(_) => kept.push(p),
            }
        }
        Reserve {
            min_free,
            paths: kept,
        }
    }

    /// Refuses ([`StoreError::DiskReserve`]) when writing `more` bytes would
    /// leave less than the reserve free on any of the filesystems.
    pub fn check(&self, more: u64) -> Result<(), StoreError> {
        if self.min_free == 0 {
            return Ok(());
        }
        for path in &self.paths {
            let st = nix::sys::statvfs::statvfs(path.as_path()).map_err(|e| StoreError::Io {
                op: "statvfs",
                path: path.clone(),
                source: e.into(),
            })?;
            let free = st.blocks_available().saturating_mul(st.fragment_size());
            if free.saturating_sub(more) < self.min_free {
                return Err(StoreError::DiskReserve {
                    path: path.clone(),
                    free,
                    min_free: self.min_free,
                });
            }
        }
        Ok(())
    }
}
