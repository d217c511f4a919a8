//! The content-addressed blob directory: `blobs/ab/cdef…` named by the
//! sha256 of the content.
//!
//! Writing a blob (steps, in order):
//! 1. stream the chunks into `blobs/tmp/<random>`, hashing as they pass
//!    (memory: one chunk plus tokio's file buffer), and stop with
//!    [`StoreError::DiskReserve`] as soon as the free-space reserve is
//!    reached (checked before the first chunk and after every
//!    [`CHECK_EVERY_BYTES`]; see `reserve.rs`);
//! 2. `fsync` the temp file;
//! 3. register the hash as *pending* (so GC leaves it alone until the
//!    caller's transaction referencing it has committed or failed);
//! 4. `rename` it to `blobs/ab/cdef…` (atomic; identical content if a blob
//!    with that name already exists) and `fsync` the directory.
//!
//! GC deletes a blob only when no version references it and it is not
//! pending; it runs inside the audit writer's transaction, so no commit can
//! add a reference between the check and the unlink.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::reserve::{CHECK_EVERY_BYTES, Reserve};
use super::{ByteStream, StoreError};

/// Read chunk size for streaming content out.
pub(crate) const READ_CHUNK: usize = 256 * 1024;

#[derive(Debug)]
pub(crate) struct Blobs {
    root: PathBuf,
    pending: Arc<Mutex<HashMap<String, usize>>>,
    reserve: Reserve,
}

/// Keeps a blob safe from GC while alive.
#[derive(Debug)]
pub(crate) struct PendingBlob {
    pub hash: String,
    pub size: u64,
    pending: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for PendingBlob {
    fn drop(&mut self) {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = p.get_mut(&self.hash) {
            *n -= 1;
            if *n == 0 {
                p.remove(&self.hash);
            }
        }
    }
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

pub(crate) fn random_hex(bytes: usize) -> Result<String, StoreError> {
    let mut buf = vec![0u8; bytes];
    let path = Path::new("/dev/urandom");
    let mut f = std::fs::File::open(path).map_err(io("open", path))?;
    std::io::Read::read_exact(&mut f, &mut buf).map_err(io("read", path))?;
    Ok(hex::encode(buf))
}

async fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    let d = tokio::fs::File::open(dir)
        .await
        .map_err(io("open directory", dir))?;
    d.sync_all().await.map_err(io("fsync directory", dir))
}

impl Blobs {
    /// Creates `root` and `root/tmp` if missing; new content keeps
    /// `min_free` bytes free on the filesystems of `root` and of `also`
    /// (see `reserve.rs`).
    pub async fn open(root: PathBuf, min_free: u64, also: PathBuf) -> Result<Blobs, StoreError> {
        let tmp = root.join("tmp");
        tokio::fs::create_dir_all(&tmp)
            .await
            .map_err(io("create directory", &tmp))?;
        let reserve = Reserve::new(min_free, vec![root.clone(), also]);
        Ok(Blobs {
            root,
            pending: Arc::new(Mutex::new(HashMap::new())),
            reserve,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The free-space reserve new content keeps.
    pub fn reserve(&self) -> &Reserve {
        &self.reserve
    }

    pub fn path_of(&self, hash: &str) -> PathBuf {
        let (a, b) = hash.split_at(2.min(hash.len()));
        self.root.join(a).join(b)
    }

    /// Writes the stream to a blob (steps in the module doc).
    pub async fn write(&self, mut content: ByteStream) -> Result<PendingBlob, StoreError> {
        let tmp = self
            .root
            .join("tmp")
            .join(format!("put-{}", random_hex(16)?));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp)
                .await
                .map_err(io("create", &tmp))?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            let mut checked = 0u64;
            self.reserve.check(0)?;
            while let Some(chunk) = content.next().await {
                let chunk = chunk?;
                hasher.update(&chunk);
                size += chunk.len() as u64;
                file.write_all(&chunk).await.map_err(io("write", &tmp))?;
                if size - checked >= CHECK_EVERY_BYTES {
                    // What was written must count in the free space.
                    file.flush().await.map_err(io("write", &tmp))?;
                    self.reserve.check(0)?;
                    checked = size;
                }
            }
            file.flush().await.map_err(io("write", &tmp))?;
            file.sync_all().await.map_err(io("fsync", &tmp))?;
            Ok::<_, StoreError>((hex::encode(hasher.finalize()), size))
        }
        .await;
        let (hash, size) = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        let guard = self.mark_pending(hash, size);
        let dest = self.path_of(&guard.hash);
        let dir = dest
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        let renamed = async {
            if let Err(e) = tokio::fs::create_dir(&dir).await {
                if e.kind() != ErrorKind::AlreadyExists {
                    return Err(io("create directory", &dir)(e));
                }
            } else {
                fsync_dir(&self.root).await?;
            }
            tokio::fs::rename(&tmp, &dest)
                .await
                .map_err(io("rename blob to", &dest))?;
            fsync_dir(&dir).await
        }
        .await;
        if let Err(e) = renamed {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        Ok(guard)
    }

    /// Protects an existing blob from GC (e.g. while a restore references it).
    pub fn mark_pending(&self, hash: String, size: u64) -> PendingBlob {
        *self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(hash.clone())
            .or_insert(0) += 1;
        PendingBlob {
            hash,
            size,
            pending: self.pending.clone(),
        }
    }

    /// Opens a blob and streams it in chunks.
    pub async fn read(&self, hash: &str) -> Result<ByteStream, StoreError> {
        let path = self.path_of(hash);
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(io("open blob", &path))?;
        let stream = futures::stream::try_unfold((file, path), |(mut file, path)| async move {
            let mut buf = vec![0u8; READ_CHUNK];
            let n = file.read(&mut buf).await.map_err(io("read blob", &path))?;
            if n == 0 {
                return Ok(None);
            }
            buf.truncate(n);
            Ok(Some((buf, (file, path))))
        });
        Ok(stream.boxed())
    }

    /// Every blob file name (hash) on disk.
    pub async fn list(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let mut top = tokio::fs::read_dir(&self.root)
            .await
            .map_err(io("read directory", &self.root))?;
        while let Some(entry) = top
            .next_entry()
            .await
            .map_err(io("read directory", &self.root))?
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.len() != 2 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            let dir = entry.path();
            let mut sub = tokio::fs::read_dir(&dir)
                .await
                .map_err(io("read directory", &dir))?;
            while let Some(f) = sub.next_entry().await.map_err(io("read directory", &dir))? {
                let rest = f.file_name().to_string_lossy().into_owned();
                let hash = format!("{name}{rest}");
                if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    out.push(hash);
                }
            }
        }
        Ok(out)
    }

    /// Unlinks `hash` unless it is pending. Called inside the writer's
    /// transaction after checking that no version references it.
    pub fn remove_if_not_pending(&self, hash: &str) -> Result<bool, StoreError> {
        let pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.contains_key(hash) {
            return Ok(false);
        }
        let path = self.path_of(hash);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io("remove blob", &path)(e)),
        }
    }

    /// Whether `hash` is pending.
    pub fn is_pending(&self, hash: &str) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(hash)
    }

    /// Removes temp files older than `min_age` (left by a crash mid-write).
    pub async fn clean_tmp(&self, min_age: std::time::Duration) -> Result<u64, StoreError> {
        let tmp = self.root.join("tmp");
        let mut n = 0;
        let mut dir = tokio::fs::read_dir(&tmp)
            .await
            .map_err(io("read directory", &tmp))?;
        while let Some(entry) = dir.next_entry().await.map_err(io("read directory", &tmp))? {
            let old = entry
                .metadata()
                .await
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= min_age);
            if old && tokio::fs::remove_file(entry.path()).await.is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }
}
