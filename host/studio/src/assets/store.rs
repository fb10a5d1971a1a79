//! Content-addressed file store: each blob lives at `<root>/<first two hex>/<sha256>`. Bytes are
//! staged in `<root>/tmp`, hashed while written, synced, then renamed into place, so a blob that
//! exists is complete. It never overwrites a stored blob, and deletes one only when the library
//! deletes the last asset of that content ([`super::AssetLibrary::delete`]).

use crate::error::{Result, StudioError};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Opens the store, clearing staging files a crash may have left.
    pub fn open(root: &Path) -> Result<BlobStore> {
        let tmp = root.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        Ok(BlobStore {
            root: root.to_owned(),
        })
    }

    pub fn path_of(&self, sha256: &str) -> PathBuf {
        self.root.join(&sha256[..2]).join(sha256)
    }

    /// Starts a staged write; at most `limit` bytes are accepted.
    pub fn stage(&self, limit: Option<u64>) -> Result<Staged> {
        Ok(Staged {
            file: tempfile::NamedTempFile::new_in(self.root.join("tmp"))?,
            hasher: Sha256::new(),
            len: 0,
            limit,
        })
    }

    /// Deletes the blob `sha256` (absent already is fine).
    pub fn remove(&self, sha256: &str) -> Result<()> {
        match std::fs::remove_file(self.path_of(sha256)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Moves a finished staging file into place (a no-op when the content is already stored).
    pub fn commit(&self, staged: Finished) -> Result<PathBuf> {
        let dest = self.path_of(&staged.sha256);
        if !dest.exists() {
            std::fs::create_dir_all(dest.parent().expect("blob paths have a parent"))?;
            staged
                .file
                .persist(&dest)
                .map_err(|e| StudioError::from(e.error))?;
        }
        Ok(dest)
    }
}

/// A blob being written.
pub struct Staged {
    file: tempfile::NamedTempFile,
    hasher: Sha256,
    len: u64,
    limit: Option<u64>,
}

impl Staged {
    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.len += chunk.len() as u64;
        if let Some(limit) = self.limit
            && self.len > limit
        {
            return Err(StudioError::TooLarge { limit });
        }
        self.hasher.update(chunk);
        self.file.write_all(chunk)?;
        Ok(())
    }

    /// Copies all of `reader` into the stage.
    pub fn write_from(&mut self, mut reader: impl std::io::Read) -> Result<()> {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            self.write(&buf[..n])?;
        }
    }

    /// Flushes the bytes to disk and names them by their hash.
    pub fn finish(self) -> Result<Finished> {
        let mut file = self.file;
        file.flush()?;
        file.as_file().sync_all()?;
        Ok(Finished {
            file,
            sha256: hex::encode(self.hasher.finalize()),
            len: self.len,
        })
    }
}

/// A fully written staging file; dropped without commit, it is removed.
pub struct Finished {
    file: tempfile::NamedTempFile,
    pub sha256: String,
    pub len: u64,
}

impl Finished {
    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_is_named_by_sha256_and_staging_is_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut staged = store.stage(None).unwrap();
        staged.write(b"abc").unwrap();
        let done = staged.finish().unwrap();
        let sha = done.sha256.clone();
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let path = store.commit(done).unwrap();
        assert_eq!(std::fs::read(path).unwrap(), b"abc");
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn writes_past_the_limit_fail_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut staged = store.stage(Some(4)).unwrap();
        staged.write(b"abcd").unwrap();
        assert!(matches!(
            staged.write(b"e"),
            Err(StudioError::TooLarge { limit: 4 })
        ));
        drop(staged);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }
}
