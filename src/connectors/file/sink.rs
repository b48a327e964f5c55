//! JSON lines appended to a file.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::cut::CutFile;
use crate::output::OutputRecord;
use crate::runtime::ports::{Sink, SinkError};

pub struct FileSink {
    path: PathBuf,
    writer: BufWriter<CutFile>,
    position: u64,
    /// Whether a flush syncs the file to the disk (a run with checkpoints: the length a
    /// checkpoint records must be on the disk); without checkpoints a flush hands the bytes to
    /// the kernel only, as the plain engine does: nothing could be resumed from them anyway,
    /// and syncing a 200 MB output took 80 ms at the end of a 1.3-s run.
    sync: bool,
}

impl FileSink {
    /// How checkpoints name the sink writing `path`.
    pub fn name_of(path: &Path) -> String {
        crate::model::SinkId::File(path.display().to_string()).to_string()
    }

    /// Opens `path` for appending, first cutting it to `keep_bytes` (what the last checkpoint
    /// covered) or to nothing for a fresh run: the cut runs on a thread of its own while the run
    /// starts, and the first write waits for it ([`CutFile`]). `sync`: whether a flush syncs
    /// the file (the run takes checkpoints).
    pub fn open(path: &Path, keep_bytes: u64, sync: bool) -> Result<Self, SinkError> {
        let err = |operation, source| SinkError::Io {
            sink: format!("file:{}", path.display()),
            operation,
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| err("creating its directory", e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(|e| err("opening", e))?;
        let length = file.metadata().map_err(|e| err("reading its length", e))?.len();
        if length < keep_bytes {
            return Err(err(
                "resuming",
                std::io::Error::other(format!(
                    "it is {length} bytes, shorter than the {keep_bytes} bytes the checkpoint covered: it was changed outside plume"
                )),
            ));
        }
        let mut writer = BufWriter::with_capacity(1 << 20, CutFile::cut(file, keep_bytes));
        use std::io::Seek;
        writer
            .seek(std::io::SeekFrom::Start(keep_bytes))
            .map_err(|e| err("seeking", e))?;
        Ok(FileSink {
            path: path.to_path_buf(),
            writer,
            position: keep_bytes,
            sync,
        })
    }

    fn err(&self, operation: &'static str, source: std::io::Error) -> SinkError {
        SinkError::Io {
            sink: self.describe(),
            operation,
            source,
        }
    }
}

impl Sink for FileSink {
    fn describe(&self) -> String {
        Self::name_of(&self.path)
    }

    fn write(&mut self, records: &[OutputRecord]) -> Result<(), SinkError> {
        for r in records {
            self.writer
                .write_all(r.json.as_bytes())
                .map_err(|e| self.err("writing", e))?;
            self.writer.write_all(b"\n").map_err(|e| self.err("writing", e))?;
            self.position += r.json.len() as u64 + 1;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<u64, SinkError> {
        self.writer.flush().map_err(|e| self.err("flushing", e))?;
        if self.sync {
            let synced = self.writer.get_mut().file().and_then(|file| file.sync_data());
            synced.map_err(|e| self.err("syncing", e))?;
        }
        Ok(self.position)
    }

    fn finish(&mut self) -> Result<u64, SinkError> {
        self.flush()
    }
}
