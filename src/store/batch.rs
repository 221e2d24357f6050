//! Rows written in batches by one background task: the audit log of the login
//! path and the shared live-session table. A caller never waits for the write,
//! and a busy node takes the database's write lock once per batch instead of
//! once per row.
//!
//! The writer owns the order and the batching only; what a batch becomes in the
//! database (and what a failed write means) is the write function's business.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

/// How a [`BatchWriter`] gathers rows.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// How long the writer waits after the first row before writing what came
    /// meanwhile: one wake-up per interval on a busy node, even when rows come
    /// one at a time.
    pub delay: Duration,
    /// Rows per write at most.
    pub max_batch: usize,
    /// Rows waiting at most; past this, [`BatchWriter::push`] refuses rows
    /// rather than letting memory grow while the database is down.
    pub max_queued: usize,
}

/// One batch's write; it logs its own failures.
pub type WriteBatch<T> = Box<dyn FnMut(Vec<T>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

enum Message<T> {
    Row(T),
    /// Answered once every row queued before it is written (or failed).
    Flush(oneshot::Sender<()>),
}

/// The writer's half before its task starts.
type Idle<T> = (mpsc::UnboundedReceiver<Message<T>>, WriteBatch<T>);

/// A queue of rows and the task that writes them, started with the first row
/// pushed inside a tokio runtime.
pub struct BatchWriter<T> {
    batching: Batching,
    sender: mpsc::UnboundedSender<Message<T>>,
    /// Taken when the writer task starts.
    writer: Mutex<Option<Idle<T>>>,
    queued: Arc<AtomicUsize>,
}

impl<T: Send + 'static> BatchWriter<T> {
    pub fn new(batching: Batching, write: WriteBatch<T>) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        Self {
            batching,
            sender,
            writer: Mutex::new(Some((receiver, write))),
            queued: Arc::default(),
        }
    }

    /// Queues a row; `false` when the queue is full and the row was dropped.
    pub fn push(&self, row: T) -> bool {
        if let Ok(runtime) = tokio::runtime::Handle::try_current()
            && let Some((receiver, write)) = self.writer.lock().ok().and_then(|mut w| w.take())
        {
            runtime.spawn(run(self.batching, receiver, write, self.queued.clone()));
        }
        if self.queued.load(Ordering::Relaxed) >= self.batching.max_queued {
            return false;
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.sender.send(Message::Row(row)).is_ok()
    }

    /// Resolves once every row pushed so far is written (at once when nothing
    /// was ever pushed).
    pub async fn flush(&self) {
        let started = self.writer.lock().map(|w| w.is_none()).unwrap_or(true);
        if !started {
            return;
        }
        let (done, written) = oneshot::channel();
        if self.sender.send(Message::Flush(done)).is_ok() {
            let _ = written.await;
        }
    }
}

/// The writer: after the first row it waits [`Batching::delay`] for more, then
/// writes up to [`Batching::max_batch`] rows at a time until the queue is
/// empty; a flush request is answered once the rows before it are written.
async fn run<T>(
    batching: Batching,
    mut receiver: mpsc::UnboundedReceiver<Message<T>>,
    mut write: WriteBatch<T>,
    queued: Arc<AtomicUsize>,
) {
    while let Some(first) = receiver.recv().await {
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        match first {
            Message::Row(row) => {
                batch.push(row);
                tokio::time::sleep(batching.delay).await;
            }
            Message::Flush(done) => flushes.push(done),
        }
        loop {
            while batch.len() < batching.max_batch && flushes.is_empty() {
                match receiver.try_recv() {
                    Ok(Message::Row(row)) => batch.push(row),
                    Ok(Message::Flush(done)) => flushes.push(done),
                    Err(_) => break,
                }
            }
            let full = batch.len() >= batching.max_batch;
            if !batch.is_empty() {
                queued.fetch_sub(batch.len(), Ordering::Relaxed);
                write(std::mem::take(&mut batch)).await;
            }
            for done in flushes.drain(..) {
                let _ = done.send(());
            }
            if !full {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Batches = Arc<Mutex<Vec<Vec<u32>>>>;

    /// A writer that records its batches; 200 ms gathering delay.
    fn recording(max_batch: usize, max_queued: usize) -> (BatchWriter<u32>, Batches) {
        let batches = Batches::default();
        let record = batches.clone();
        let batching = Batching {
            delay: Duration::from_millis(200),
            max_batch,
            max_queued,
        };
        let writer = BatchWriter::new(
            batching,
            Box::new(move |rows| {
                let record = record.clone();
                Box::pin(async move { record.lock().unwrap().push(rows) })
            }),
        );
        (writer, batches)
    }

    #[tokio::test(start_paused = true)]
    async fn rows_pushed_within_the_delay_are_one_write_and_a_flush_waits_for_them() {
        let (writer, batches) = recording(3, 10);
        writer.flush().await;
        for n in 0..5 {
            assert!(writer.push(n));
        }
        writer.flush().await;
        assert_eq!(*batches.lock().unwrap(), vec![vec![0, 1, 2], vec![3, 4]]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses_rows() {
        let (writer, batches) = recording(10, 2);
        assert!(writer.push(1));
        assert!(writer.push(2));
        assert!(!writer.push(3));
        writer.flush().await;
        assert!(writer.push(4));
        writer.flush().await;
        assert_eq!(*batches.lock().unwrap(), vec![vec![1, 2], vec![4]]);
    }
}
