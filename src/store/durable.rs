//! Files and directories that must survive a power cut once plume says they exist.
//!
//! A `rename` changes the directory that holds the name, which an fsync of the file does not
//! cover: after a crash the new name can be missing, or point at a file whose data never reached
//! the disk. Every file or directory plume renames into place goes through here: the data is
//! synced first, then the rename, then the directory.

use std::io::Write;
use std::path::Path;

/// Syncs a directory (its entries: names created, renamed or removed in it). A filesystem that
/// cannot sync a directory (some network mounts, where Kafka hand-offs may live) makes its own
/// guarantees: that is not an error.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::File::open(dir)?.sync_all() {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::Unsupported
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Renames `from` to `to` (a synced file or directory) and syncs the directories of both names.
pub fn rename_durably(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::rename(from, to)?;
    let to_parent = to
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    sync_dir(to_parent)?;
    if let Some(from_parent) = from.parent().filter(|p| !p.as_os_str().is_empty())
        && from_parent != to_parent
    {
        sync_dir(from_parent)?;
    }
    Ok(())
}

/// Writes `bytes` to `path` through a synced temporary file renamed into place: a reader (or a
/// restart after a crash) sees the old file or the whole new one. `private`: readable by the
/// owner only (0600), for files that hold tokens.
pub fn write_file(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".partial");
    let tmp = path.with_file_name(tmp_name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    rename_durably(&tmp, path)
}

/// Syncs every file directly in `dir`, then `dir` itself (a directory about to be renamed into
/// place, whose files were written or copied without a sync).
pub fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::File::open(entry.path())?.sync_all()?;
        }
    }
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_written_through_here_replaces_the_old_one_whole_and_private_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subscribers.json");
        write_file(&path, b"old", false).unwrap();
        write_file(&path, b"new", true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["subscribers.json"], "no temporary file is left");
        let moved = dir.path().join("sub");
        std::fs::create_dir(&moved).unwrap();
        rename_durably(&path, &moved.join("s.json")).unwrap();
        sync_tree(&moved).unwrap();
        assert!(moved.join("s.json").exists());
    }
}
