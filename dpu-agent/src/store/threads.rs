//! The store's own threads.
//!
//! A write's admission, the group commits (fsync), the reconcile engine's
//! status flushes and the event log's pages block, on the store's locks and
//! on the disk. They run here, not on tokio's blocking pool: the backends
//! share that pool (configfs writes, NVMe/TCP connects that may wait out
//! their timeout, devlink and rtnetlink requests), and the agent keeps it
//! small. So however many slow backend jobs are in flight, API writes never
//! queue behind them.
//!
//! A fixed number of threads ([`STORE_THREADS`]) starts on the first job.
//! No job waits for another job of this pool: a commit's leader commits
//! itself, and a synchronous [`super::Store::transact`] takes the commit lock
//! and commits itself too. So the fixed count can only queue jobs, never
//! deadlock them. The threads end once their store is dropped.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, mpsc};

/// How many threads a store runs its blocking work on: two admissions (the
/// API's admission slots), one commit leader and one flush or event page at
/// once.
pub const STORE_THREADS: usize = 4;

type Job = Box<dyn FnOnce() + Send>;

/// A job cut short: its thread could not run it to the end (the agent is
/// shutting down, or the job panicked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the store's job was interrupted")]
pub struct Interrupted;

/// The pool; see the module documentation.
#[derive(Debug, Default)]
pub(super) struct Threads {
    /// `None` until the first job (or while no thread could be started).
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
}

impl Threads {
    /// Runs `f` on one of the threads; the future resolves with its value.
    /// The job runs even when the future is dropped. Should no thread start
    /// (the system is out of threads), the job runs on tokio's blocking pool
    /// instead, or here outside a runtime.
    pub(super) fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = Result<T, Interrupted>> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // The receiver may be gone: the job ran anyway.
            let _ = tx.send(f());
        });
        if let Err(job) = self.send(job) {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(job)),
                Err(_) => job(),
            }
        }
        async move { rx.await.map_err(|_| Interrupted) }
    }

    /// Queues `job` for the threads, starting them first if need be;
    /// gives the job back when none runs.
    fn send(&self, job: Job) -> Result<(), Job> {
        let Ok(mut jobs) = self.jobs.lock() else {
            return Err(job);
        };
        if jobs.is_none() {
            *jobs = start();
        }
        match jobs.as_ref() {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }
}

/// Starts the threads; `None` when not one could be started.
fn start() -> Option<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    let mut started = 0;
    for i in 0..STORE_THREADS {
        let rx = rx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("store-{i}"))
            .spawn(move || serve(&rx));
        match spawned {
            Ok(_) => started += 1,
            Err(e) => tracing::warn!(error = %e, "cannot start a store thread"),
        }
    }
    (started > 0).then_some(tx)
}

/// One thread: runs jobs until the store (the sender) is gone.
fn serve(rx: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        let job = match rx.lock() {
            Ok(rx) => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
            Err(_) => return,
        };
        // A job that panics drops its reply sender, so its waiter gets
        // `Interrupted`; the thread stays for the next job.
        let _ = catch_unwind(AssertUnwindSafe(job));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_the_store_threads_and_a_panic_interrupts_only_its_own() {
        let threads = Threads::default();
        let name = threads
            .run(|| std::thread::current().name().map(str::to_owned))
            .await
            .unwrap();
        assert!(name.is_some_and(|n| n.starts_with("store-")));
        let panicked = threads.run(|| -> u8 { panic!("a job's bug") }).await;
        assert_eq!(panicked, Err(Interrupted));
        // Every thread is still there: as many jobs as threads, each waiting
        // for all the others, finish.
        let barrier = Arc::new(std::sync::Barrier::new(STORE_THREADS));
        let waits: Vec<_> = (0..STORE_THREADS)
            .map(|_| {
                let b = barrier.clone();
                threads.run(move || b.wait().is_leader())
            })
            .collect();
        let mut leaders = 0;
        for w in waits {
            leaders += usize::from(w.await.unwrap());
        }
        assert_eq!(leaders, 1);
    }

    /// Blocking backend jobs that hold every thread of tokio's blocking
    /// pool do not delay the store's jobs.
    #[test]
    fn a_full_blocking_pool_does_not_hold_up_the_store() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(1)
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let (release, held) = std::sync::mpsc::channel::<()>();
            let backend = tokio::task::spawn_blocking(move || held.recv());
            let threads = Threads::default();
            let job = threads.run(|| 7);
            let ran = tokio::time::timeout(std::time::Duration::from_secs(10), job).await;
            assert_eq!(ran, Ok(Ok(7)), "the store's job waited for the backend's");
            release.send(()).unwrap();
            backend.await.unwrap().unwrap();
        });
    }
}
