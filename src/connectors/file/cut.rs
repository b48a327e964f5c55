//! An output file cut back to a length on a thread of its own, so that a run does not wait for
//! the kernel to drop the pages of what an earlier run wrote there before it starts, and
//! written back to the disk as it grows, so that its end does not wait for that either.
//!
//! - Cutting a 206 MB output file of an earlier run (`File::create` or `set_len(0)`) took 48 ms
//!   on this machine, all of it before the run's first reading, on a run of 1.2–1.6 s. The cut
//!   now starts when the file is opened and runs while the run starts; the first write (or
//!   flush, sync, or drop) waits for it to have ended. Nothing is written before the cut.
//! - Every [`WRITEBACK_EVERY`] bytes written, the kernel is asked to start writing them back
//!   (`sync_file_range`, which does not wait for the disk), while the writing thread has little
//!   else to do. Before, all of the output was still in the page cache at the end: a
//!   checkpoint's final sync of the 200 MB aq1 output took 81–83 ms (4.5 ms now), and without a
//!   sync ext4 writes back a file that was cut to nothing when it is closed (`auto_da_alloc`),
//!   which took the sink thread's last 100 ms of the run.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;
use std::thread::JoinHandle;

/// An output file, cut back to a length on a thread of its own and written back as it grows;
/// see the module.
pub struct CutFile {
    file: File,
    cut: Cut,
    /// The file's offset (where the next write goes).
    at: u64,
    /// Where the kernel was last asked to start writing back from.
    written_back_to: u64,
}

/// Bytes written between two requests to start writing them back.
pub const WRITEBACK_EVERY: u64 = 8 << 20;

/// Where the cut is.
enum Cut {
    Done,
    Running(JoinHandle<io::Result<()>>),
    /// It failed on the opening thread (no thread could be had for it).
    Failed(io::Error),
}

impl CutFile {
    /// Opens (creating it if need be) `path` for writing and starts cutting it back to
    /// `length` bytes. Errors of the opening come here; an error of the cut comes from the
    /// first operation that waits for it.
    pub fn open(path: &Path, length: u64) -> io::Result<CutFile> {
        let file = OpenOptions::new().create(true).write(true).truncate(false).open(path)?;
        Ok(CutFile::cut(file, length))
    }

    /// Starts cutting `file` back to `length` bytes (at once, on this thread, when no thread
    /// can be had for it; not at all when it already has that length).
    pub fn cut(file: File, length: u64) -> CutFile {
        if file.metadata().is_ok_and(|m| m.len() == length) {
            return CutFile::with(file, Cut::Done);
        }
        let running = file.try_clone().ok().and_then(|other| {
            std::thread::Builder::new()
                .name("output cut".into())
                .spawn(move || other.set_len(length))
                .ok()
        });
        let cut = match running {
            Some(handle) => Cut::Running(handle),
            None => match file.set_len(length) {
                Ok(()) => Cut::Done,
                Err(error) => Cut::Failed(error),
            },
        };
        CutFile::with(file, cut)
    }

    fn with(mut file: File, cut: Cut) -> CutFile {
        // (0 for a file just opened; the writeback is a hint, so a failed query costs nothing)
        let at = file.stream_position().unwrap_or(0);
        CutFile {
            file,
            cut,
            at,
            written_back_to: at,
        }
    }

    /// Asks the kernel to start writing back what was written since the last time, once that is
    /// [`WRITEBACK_EVERY`] bytes. A hint: it does not wait for the disk, and a write error shows
    /// at the next sync, which reports it.
    fn start_writeback(&mut self) {
        if self.at < self.written_back_to + WRITEBACK_EVERY {
            return;
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let (from, length) = (self.written_back_to, self.at - self.written_back_to);
            // SAFETY: a plain syscall on a file descriptor this value owns; no memory is passed.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    from as libc::off64_t,
                    length as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
        self.written_back_to = self.at;
    }

    /// The file, once the cut has ended. A failed cut fails every call, not only the first:
    /// nothing is ever written after bytes that should have been cut away.
    pub fn file(&mut self) -> io::Result<&mut File> {
        if matches!(self.cut, Cut::Running(_))
            && let Cut::Running(handle) = std::mem::replace(&mut self.cut, Cut::Done)
            && let Err(error) = handle
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the thread cutting the file panicked")))
        {
            self.cut = Cut::Failed(error);
        }
        match &self.cut {
            Cut::Failed(error) => Err(io::Error::new(
                error.kind(),
                format!("cutting the file back failed: {error}"),
            )),
            _ => Ok(&mut self.file),
        }
    }
}

impl Write for CutFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = self.file()?.write(bytes)?;
        self.at += n as u64;
        self.start_writeback();
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file()?.flush()
    }
}

impl Seek for CutFile {
    /// Does not wait for the cut: the position is the file's own, which the cut leaves alone.
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let at = self.file.seek(to)?;
        if at != self.at {
            (self.at, self.written_back_to) = (at, at);
        }
        Ok(at)
    }
}

impl Drop for CutFile {
    fn drop(&mut self) {
        // a file dropped unwritten is still cut before the process can end
        if let Err(error) = self.file() {
            tracing::warn!(%error, "an output file could not be cut back");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_earlier_runs_bytes_are_cut_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, vec![b'x'; 3 << 20]).unwrap();
        let mut out = CutFile::open(&path, 0).unwrap();
        out.write_all(b"new\n").unwrap();
        out.flush().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new\n");

        // to a checkpointed length: the kept bytes stay, the write goes after them
        std::fs::write(&path, b"kept\nlost\n").unwrap();
        let mut out = CutFile::open(&path, 5).unwrap();
        out.seek(SeekFrom::Start(5)).unwrap();
        out.write_all(b"next\n").unwrap();
        drop(out);
        assert_eq!(std::fs::read(&path).unwrap(), b"kept\nnext\n");

        // dropped without a write: still cut
        std::fs::write(&path, vec![b'x'; 1 << 20]).unwrap();
        drop(CutFile::open(&path, 0).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);

        // written back as it grows: a request every WRITEBACK_EVERY bytes, from where the last
        // one ended (a seek starts the count again where it lands)
        let mut out = CutFile::open(&path, 0).unwrap();
        let piece = vec![b'y'; 1 << 20];
        for _ in 0..20 {
            out.write_all(&piece).unwrap();
        }
        assert_eq!((out.at, out.written_back_to), (20 << 20, 2 * WRITEBACK_EVERY));
        out.seek(SeekFrom::Start(1 << 20)).unwrap();
        assert_eq!((out.at, out.written_back_to), (1 << 20, 1 << 20));
        drop(out);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 20 << 20);

        // a cut that fails fails every write, and nothing is written
        std::fs::write(&path, b"old\n").unwrap();
        let read_only = File::open(&path).unwrap();
        let mut out = CutFile::cut(read_only, 0);
        for _ in 0..2 {
            let error = out.write_all(b"new\n").unwrap_err();
            assert!(error.to_string().contains("cutting the file back failed"), "{error}");
        }
        assert!(out.flush().is_err());
        drop(out);
        assert_eq!(std::fs::read(&path).unwrap(), b"old\n");

        // a new file
        let fresh = dir.path().join("fresh.jsonl");
        let mut out = CutFile::open(&fresh, 0).unwrap();
        out.write_all(b"a\n").unwrap();
        drop(out);
        assert_eq!(std::fs::read(&fresh).unwrap(), b"a\n");
    }
}
