//! Newline-separated input: a JSON-lines (or influx line protocol) file, or standard input.
//!
//! Read in large chunks cut at line ends; the position after a chunk is its end's byte offset,
//! so a file can be resumed exactly where a checkpoint left it. With `pace: event_time` the
//! lines are released as the readings' event time passes, `speed` times faster than real time.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::connectors::SourceError;
use crate::decode::Decoder;
use crate::model::{BufferPool, ChunkData, LineBytes, Position};
use crate::runtime::ports::{ChunkFeeder, Shutdown};

/// Bytes made room for per read from stdin.
const STDIN_READ_BYTES: usize = 1 << 20;

/// A file is read into its chunk at most this much per read, so that each piece's lines are
/// routed while the piece is in the cache (a core's L2 holds half a MiB or more).
const READ_PIECE_BYTES: usize = 256 << 10;

/// Where the lines come from.
pub enum LineInput {
    File(PathBuf),
    Stdin,
}

/// Settings of a line source.
pub struct LineSource {
    pub input: LineInput,
    /// Start here (a checkpointed position): byte offset and the 1-based number of that line.
    pub start_offset: u64,
    pub start_line: u64,
    pub chunk_bytes: usize,
    /// `Some(speed)`: paced by event time.
    pub pace: Option<f64>,
}

/// Reads the input to its end (or until `stop`), then tells the routers the source ended.
pub fn run(
    source: LineSource,
    mut feeder: ChunkFeeder,
    decoder: Arc<Decoder>,
    stop: Shutdown,
) -> Result<(), SourceError> {
    let name = feeder.name.to_string();
    let io_err = |operation, error| SourceError::Io {
        source_name: name.clone(),
        operation,
        error,
    };
    // a file's size, for the bytes left (`/metrics`; re-read per chunk: it may grow)
    let mut file_for_size: Option<File> = None;
    // a file is read straight into its chunk's spare room (see `read_into_spare`)
    let mut file_fd: Option<std::os::fd::RawFd> = None;
    let mut reader: Box<dyn Read> = match &source.input {
        LineInput::File(path) => {
            let mut f = File::open(path).map_err(|e| io_err("opening", e))?;
            file_for_size = f.try_clone().ok();
            if source.start_offset > 0 {
                f.seek(SeekFrom::Start(source.start_offset))
                    .map_err(|e| io_err("seeking", e))?;
            }
            file_fd = Some(std::os::fd::AsRawFd::as_raw_fd(&f));
            Box::new(f)
        }
        LineInput::Stdin => Box::new(std::io::stdin()),
    };
    let mut offset = source.start_offset;
    let mut line = source.start_line.max(1);
    let mut carry: Vec<u8> = Vec::new();
    let pool = BufferPool::default();
    let mut eof = false;
    let mut pacer = source.pace.map(Pacer::new);
    // a chunk holds at least one whole line of the longest payload decoded: a line that does
    // not end within a chunk is longer than that, and is skipped
    let full_chunk = source.chunk_bytes.max(decoder.max_payload_bytes + 1);
    // a file's first chunks are smaller (a sixteenth of a chunk, doubling up to a whole one),
    // in buffers of the whole size: the shards start on the first lines while the source reads
    // on, not once a whole 16 MiB chunk has been read and routed
    let mut next_chunk = match source.input {
        LineInput::File(_) => (full_chunk / 16).max(decoder.max_payload_bytes + 1).min(full_chunk),
        LineInput::Stdin => full_chunk,
    };
    let health = feeder.health();
    let line_router = feeder.line_router().cloned();
    let report_backlog = |offset: u64| {
        if let Some(size) = file_for_size.as_ref().and_then(|f| f.metadata().ok()).map(|m| m.len()) {
            health.set_backlog("bytes", size.saturating_sub(offset) as i64);
        }
    };
    while !eof && !stop.is_requested() {
        report_backlog(offset);
        let permit = feeder.wait_for_room();
        let chunk_bytes = next_chunk;
        next_chunk = (next_chunk * 2).min(full_chunk);
        // stdin sends what one read gave (up to a line end): no need to make room for a whole
        // chunk each time (zeroing it would cost more than the data)
        let room = match source.input {
            LineInput::Stdin => chunk_bytes.min(STDIN_READ_BYTES),
            LineInput::File(_) => full_chunk,
        };
        // a file's chunks are filled in buffers the routers gave back (see `LineBytes`)
        let mut buf = match source.input {
            LineInput::File(_) => {
                let mut buf = pool.take(room);
                buf.extend_from_slice(&carry);
                carry.clear();
                buf
            }
            _ => std::mem::take(&mut carry),
        };
        // (room for `room` bytes in all: a pooled buffer holds exactly a chunk)
        buf.reserve(room.saturating_sub(buf.len()));
        // the chunk's lines are routed (or, with one shard, counted) piece by piece as they are
        // read, while each piece is in the cache (see `PartialRouting`)
        let mut routing = match (&line_router, &pacer) {
            (Some(router), None) => router.start(buf.capacity()),
            _ => None,
        };
        let mut newlines = 0u64;
        // fill the buffer (a pipe or terminal gives less per read)
        while buf.len() < chunk_bytes {
            let start = buf.len();
            let want = chunk_bytes.min(start + room).min(start + READ_PIECE_BYTES) - start;
            let read = match file_fd {
                // (`reader` owns the file, and has no buffer of its own: the same position)
                Some(fd) => read_into_spare(fd, &mut buf, want),
                None => {
                    buf.resize(start + want, 0);
                    reader.read(&mut buf[start..])
                }
            };
            match read {
                Ok(0) => {
                    buf.truncate(start);
                    eof = true;
                    break;
                }
                Ok(n) => {
                    buf.truncate(start + n);
                    match (&mut routing, &line_router) {
                        (Some(routing), Some(router)) => routing.add_whole_lines(router, &buf),
                        _ => newlines += memchr::memchr_iter(b'\n', &buf[start..]).count() as u64,
                    }
                    if matches!(source.input, LineInput::Stdin) && memchr::memchr(b'\n', &buf[start..]).is_some() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => buf.truncate(start),
                Err(e) => return Err(io_err("reading", e)),
            }
        }
        let cut = if eof {
            buf.len()
        } else {
            match memchr::memrchr(b'\n', &buf) {
                Some(i) => i + 1,
                None if buf.len() < chunk_bytes => {
                    // (stdin gave part of a line: read on)
                    carry = buf;
                    drop(permit);
                    continue;
                }
                None => {
                    // a line longer than a chunk, so longer than decode.max_payload_bytes: skip
                    // to its end (reading on, keeping nothing), and let the routers report it
                    // as a dead letter with its first bytes; the position after it is durable
                    // like any other, so a resumed run does not meet it again
                    let prefix = buf[..buf.len().min(decoder.max_dead_letter_bytes)].to_vec();
                    let mut length = buf.len() as u64;
                    let Some((rest, ended)) = skip_to_line_end(&mut reader, &mut buf, &mut length, &stop)
                        .map_err(|e| io_err("reading", e))?
                    else {
                        // stopped inside the line: the position stays at its start
                        break;
                    };
                    eof = !ended;
                    carry = rest;
                    let start = offset;
                    offset += length;
                    let skipped_line = line;
                    if ended {
                        line += 1;
                        length -= 1; // (the line's own length, as the routers report lines)
                    }
                    tracing::warn!(
                        source = %name,
                        line = skipped_line,
                        bytes = length,
                        limit = decoder.max_payload_bytes,
                        "a line longer than decode.max_payload_bytes was skipped (a dead letter)"
                    );
                    feeder.send(
                        ChunkData::SkippedLine {
                            line: skipped_line,
                            start_offset: start,
                            length,
                            prefix,
                        },
                        Position::File { offset, line },
                        permit,
                    );
                    continue;
                }
            }
        };
        carry = buf.split_off(cut);
        if buf.is_empty() {
            break;
        }
        if let Some(pacer) = pacer.as_mut() {
            // release the chunk in slices as their event time comes
            drop(permit);
            pacer.slices(&buf, &decoder, &stop, &mut |slice, lines| {
                let start = offset;
                offset += slice.len() as u64;
                let first_line = line;
                line += lines;
                let permit = feeder.wait_for_room();
                feeder.send(
                    ChunkData::Lines {
                        bytes: slice.into(),
                        first_line,
                        start_offset: start,
                    },
                    Position::File { offset, line },
                    permit,
                );
            });
            continue;
        }
        let start = offset;
        offset += buf.len() as u64;
        let first_line = line;
        // (the bytes after the cut, carried to the next chunk, hold no newline)
        let routing = match (routing, &line_router) {
            (Some(routing), Some(router)) => {
                newlines = routing.newlines();
                Some(routing.finish(router, &buf))
            }
            _ => None,
        };
        line += newlines;
        let data = ChunkData::Lines {
            bytes: LineBytes::pooled(buf, &pool),
            first_line,
            start_offset: start,
        };
        match routing {
            Some(routing) => feeder.send_routed(data, routing, Position::File { offset, line }, permit),
            None => feeder.send(data, Position::File { offset, line }, permit),
        }
    }
    report_backlog(offset);
    feeder.end();
    Ok(())
}

/// Reads on past the end of an over-long line, reusing `buf` for each read and adding what it
/// skips to `length` (the newline included). Returns the bytes read after the line and whether
/// the line ended (otherwise the input did); `None` if a stop was requested first.
fn skip_to_line_end(
    reader: &mut dyn Read,
    buf: &mut Vec<u8>,
    length: &mut u64,
    stop: &Shutdown,
) -> std::io::Result<Option<(Vec<u8>, bool)>> {
    buf.resize(buf.len().clamp(1, 1 << 20), 0);
    while !stop.is_requested() {
        match reader.read(buf) {
            Ok(0) => return Ok(Some((Vec::new(), false))),
            Ok(n) => match memchr::memchr(b'\n', &buf[..n]) {
                Some(i) => {
                    *length += i as u64 + 1;
                    return Ok(Some((buf[i + 1..n].to_vec(), true)));
                }
                None => *length += n as u64,
            },
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Releases lines as their event time passes (scaled by `speed`).
struct Pacer {
    speed: f64,
    started: Instant,
    first_ts: Option<i64>,
}

impl Pacer {
    fn new(speed: f64) -> Self {
        Pacer {
            speed: if speed > 0.0 { speed } else { 1.0 },
            started: Instant::now(),
            first_ts: None,
        }
    }

    /// Cuts `buf` into slices of about 50 ms of (scaled) event time, sleeping before each.
    fn slices(&mut self, buf: &[u8], decoder: &Decoder, stop: &Shutdown, emit: &mut dyn FnMut(Vec<u8>, u64)) {
        let mut current: Vec<u8> = Vec::new();
        let mut lines = 0u64;
        let mut due_of_current: Option<Duration> = None;
        // (decoded as the routers will: a line whose time they refuse paces nothing)
        let now = crate::clock::now_ms();
        for raw in buf.split_inclusive(|&b| b == b'\n') {
            let ts = decoder
                .decode(raw.trim_ascii_end(), None, now)
                .ok()
                .map(|d| d.reading.ts);
            if let Some(ts) = ts {
                let first = *self.first_ts.get_or_insert(ts);
                let due = Duration::from_secs_f64(((ts - first).max(0) as f64 / 1000.0) / self.speed);
                match due_of_current {
                    Some(d) if due > d + Duration::from_millis(50) => {
                        self.sleep_until(d, stop);
                        emit(std::mem::take(&mut current), lines);
                        lines = 0;
                        due_of_current = Some(due);
                    }
                    None => due_of_current = Some(due),
                    _ => {}
                }
            }
            current.extend_from_slice(raw);
            lines += 1;
        }
        if !current.is_empty() {
            if let Some(d) = due_of_current {
                self.sleep_until(d, stop);
            }
            emit(current, lines);
        }
    }

    fn sleep_until(&self, due: Duration, stop: &Shutdown) {
        while !stop.is_requested() {
            let elapsed = self.started.elapsed();
            if elapsed >= due {
                return;
            }
            std::thread::sleep((due - elapsed).min(Duration::from_millis(100)));
        }
    }
}

/// Reads up to `want` bytes from the file `fd` onto the end of `buf`, into its spare capacity:
/// the bytes are not zeroed first (a `resize` before each read wrote every byte of a 16 MiB
/// chunk once more only for the read to overwrite it: about 1 % of a two-shard run's CPU,
/// BENCHMARKS.md). The vector grows by the bytes read.
fn read_into_spare(fd: std::os::fd::RawFd, buf: &mut Vec<u8>, want: usize) -> std::io::Result<usize> {
    buf.reserve(want);
    let spare = buf.spare_capacity_mut();
    let want = want.min(spare.len());
    // SAFETY: `read(2)` writes at most `want` bytes through a raw pointer into the vector's
    // spare capacity (no reference to uninitialized bytes is made); `fd` is open (the caller's
    // reader owns the file).
    let n = unsafe { libc::read(fd, spare.as_mut_ptr().cast(), want) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: the kernel initialized the first `n` bytes of the spare capacity (`n <= want`).
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn reads_into_spare_room_append_the_file_bytes_in_order_and_end_with_zero() {
        let mut file = tempfile::tempfile().unwrap();
        let text: Vec<u8> = (0..100_000u32).flat_map(|i| format!("{i}\n").into_bytes()).collect();
        file.write_all(&text).unwrap();
        file.seek(SeekFrom::Start(7)).unwrap();
        // a buffer that already holds bytes (a carried partial line), and pieces of odd sizes
        let mut buf = b"carried".to_vec();
        let mut sizes = [1usize, 4096, 777, 65_536, 3].into_iter().cycle();
        loop {
            let before = buf.len();
            let n = read_into_spare(file.as_raw_fd(), &mut buf, sizes.next().unwrap()).unwrap();
            assert_eq!(buf.len(), before + n);
            if n == 0 {
                break;
            }
        }
        assert_eq!(&buf[..7], b"carried");
        assert_eq!(&buf[7..], &text[7..]);
    }

    #[test]
    fn a_read_into_spare_room_that_fails_says_why_and_adds_nothing() {
        let mut buf = b"kept".to_vec();
        let e = read_into_spare(-1, &mut buf, 16).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
        assert_eq!(buf, b"kept");
    }
}
