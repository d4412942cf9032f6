//! The database's neighbours on disk: files only their owner may read, names beside the
//! database, and the fsyncs that make a rename durable.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Result, StoreError};

/// Creates the database file with mode 0600 before SQLite does, unless it exists, so that it
/// never exists readable by others; SQLite gives its `-wal` and `-shm` files the same mode.
pub(super) fn create_private(path: &Path) -> Result<()> {
    match private_file(path, true) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Create {
            path: path.to_path_buf(),
            source: Arc::new(e),
        }),
    }
}

/// Opens a file only its owner may read: a new one (`new`), or one created if missing
/// (mode 0600 either way, when it is created).
pub(super) fn private_file(path: &Path, new: bool) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).mode(0o600);
    if new {
        options.create_new(true);
    } else {
        options.create(true).truncate(false);
    }
    options.open(path)
}

/// `path` with `suffix` appended to its file name.
pub(super) fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The folder of `path` (`.` for a bare file name).
pub(super) fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

pub(super) fn sync_file(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error(path, e))
}

/// Makes a rename in `path`'s folder durable.
pub(super) fn sync_dir(path: &Path) -> Result<()> {
    let dir = parent(path);
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error(dir, e))
}

pub(super) fn io_error(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::File {
        path: path.to_path_buf(),
        source: Arc::new(e),
    }
}
