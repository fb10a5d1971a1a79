//! An [`Mp4Writer`] on a thread of its own, fed one frame at a time, for producers that make
//! frames while earlier ones are coded (the finish: GPU stages, then H.264 on the CPU). Frames
//! gather into whole keyframe groups, coded on every core at once ([`Mp4Writer::push_all`]), so
//! a 4K stream is coded several groups at a time instead of at one core's pace. The frames held
//! (a batch being gathered or coded, and one group in the channel) stay within a memory budget.

use super::mp4::Mp4Writer;
use anyhow::{Context, Result, anyhow};
use image::RgbImage;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Bytes of frames a batch may hold; it is always at least one keyframe group.
const BATCH_BYTES: usize = 4 << 30;

pub struct BackgroundMp4Writer {
    frames: Option<SyncSender<RgbImage>>,
    coder: Option<JoinHandle<Result<Mp4Writer>>>,
    /// Set when the writer is dropped unfinished: the coder leaves what it has not coded.
    abandoned: Arc<AtomicBool>,
}

impl BackgroundMp4Writer {
    /// Codes what is pushed into `writer` (its sound track, if any, already set) on a thread.
    pub fn start(writer: Mp4Writer) -> Result<Self> {
        let period = writer.keyframe_period();
        let frame_bytes = writer.frame_bytes().max(1);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let groups = (BATCH_BYTES / (period * frame_bytes)).clamp(1, cores);
        // The channel holds up to one group, so the producer runs ahead while a batch is coded.
        let (frames, received) = sync_channel(period);
        let abandoned = Arc::new(AtomicBool::new(false));
        let stop = abandoned.clone();
        let coder = std::thread::Builder::new()
            .name("mp4-coder".into())
            .spawn(move || code(writer, received, groups * period, &stop))
            .context("starting the H.264 coding thread")?;
        Ok(Self {
            frames: Some(frames),
            coder: Some(coder),
            abandoned,
        })
    }

    /// Queues a frame; waits while the coder is a batch and a group behind. A coding error of an
    /// earlier frame is returned here (or from [`finish`](Self::finish)).
    pub fn push(&mut self, frame: RgbImage) -> Result<()> {
        let sent = self
            .frames
            .as_ref()
            .expect("frames are sent until finish")
            .send(frame);
        match sent {
            Ok(()) => Ok(()),
            // The coder stopped, which it does only on an error: say which.
            Err(_) => Err(self.join().err().unwrap_or_else(|| {
                anyhow!("the H.264 coding thread stopped before the last frame")
            })),
        }
    }

    /// Codes what is left and writes the file, as [`Mp4Writer::finish`].
    pub fn finish(mut self, metadata: &serde_json::Value) -> Result<()> {
        self.join()?.finish(metadata)
    }

    /// Closes the channel and waits for the coder: the writer once every frame is coded.
    fn join(&mut self) -> Result<Mp4Writer> {
        self.frames = None;
        let coder = self
            .coder
            .take()
            .context("the H.264 coding thread was joined")?;
        coder
            .join()
            .map_err(|_| anyhow!("the H.264 coding thread panicked"))?
    }
}

impl Drop for BackgroundMp4Writer {
    /// Unfinished (an error or a cancel upstream): the coder stops and nothing is written.
    fn drop(&mut self) {
        if self.coder.is_some() {
            self.abandoned.store(true, Ordering::Relaxed);
            let _ = self.join();
        }
    }
}

/// The coding thread: batches of `batch` frames through `push_all`, then what is left once the
/// channel closes, unless `abandoned`.
fn code(
    mut writer: Mp4Writer,
    frames: Receiver<RgbImage>,
    batch: usize,
    abandoned: &AtomicBool,
) -> Result<Mp4Writer> {
    let mut gathered = Vec::with_capacity(batch);
    for frame in frames {
        gathered.push(frame);
        if gathered.len() == batch {
            writer.push_all(&gathered)?;
            gathered.clear();
        }
    }
    if !abandoned.load(Ordering::Relaxed) {
        writer.push_all(&gathered)?;
    }
    Ok(writer)
}
