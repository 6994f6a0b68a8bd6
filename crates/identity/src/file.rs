//! Writing certificate and key files so a reader never sees half of one: the
//! bytes go to a temporary file beside it, synced, then renamed over it, with
//! the mode set when the file is made (never widened after the fact).

use std::fs;
use std::io::Write;
use std::path::Path;

/// Replaces `path` with `bytes`, created with `mode` (Unix permissions).
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The process id keeps two writers of the same directory apart.
    let temporary = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&temporary)?;
    file.write_all(bytes).and_then(|()| file.sync_all())?;
    fs::rename(&temporary, path)
}
