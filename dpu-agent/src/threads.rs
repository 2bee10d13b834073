//! Small fixed pools of threads for the agent's own blocking work.
//!
//! The store's work blocks, on the store's locks and on the disk: a write's
//! admission, the group commits (fsync), the reconcile engine's status
//! flushes and the event log's pages. It runs on pools of its own, not on
//! tokio's blocking pool: the backends share that pool (configfs writes,
//! NVMe/TCP connects that may wait out their timeout, devlink and rtnetlink
//! requests), and the agent keeps it small. So however many slow backend
//! jobs are in flight, API writes never queue behind them.
//!
//! Admission and commits have a pool each ([`crate::server::AppState`]'s
//! `admitters`, the store's own): a commit never waits for a free thread
//! behind admissions, nor admissions behind a commit.
//!
//! A job runs inside its caller's tokio runtime, as it would on tokio's
//! blocking pool. Admission needs that: a staged write spawns its commit
//! wait as a task there, and outside a runtime it would commit alone,
//! synchronously. A first version without it made commits one or two writes
//! each instead of twenty, and cost the closed-loop write rate almost two
//! thirds (dpu-agent/BENCHMARKS.md, "The store's threads").
//!
//! A pool's threads start on its first job. No job waits for another job
//! of its pool: a commit's leader commits itself, a synchronous
//! [`crate::store::Store::transact`] takes the commit lock and commits
//! itself too, and admission never waits for a commit. So the fixed count
//! can only queue jobs, never deadlock them. The threads end once their
//! pool is dropped.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex};

type Job = Box<dyn FnOnce() + Send>;

/// A job cut short: its thread could not run it to the end (the agent is
/// shutting down, or the job panicked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the job was interrupted")]
pub struct Interrupted;

/// A pool; see the module documentation.
#[derive(Debug)]
pub struct Threads {
    /// Its threads' names: `{name}-{i}`.
    name: &'static str,
    count: usize,
    shared: Arc<Shared>,
}

/// What the pool and its threads share.
#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when a job is queued or the pool closes.
    ready: Condvar,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// How many threads run (0 until the first job).
    threads: usize,
    /// The pool was dropped: the threads finish the queue and end.
    closed: bool,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("jobs", &self.jobs.len())
            .field("threads", &self.threads)
            .field("closed", &self.closed)
            .finish()
    }
}

impl Threads {
    /// A pool of `count` threads, none started yet.
    pub fn new(name: &'static str, count: usize) -> Threads {
        Threads {
            name,
            count,
            shared: Arc::default(),
        }
    }

    /// Runs `f` on one of the threads, inside the caller's tokio runtime if
    /// there is one; the future resolves with its value. The job runs even
    /// when the future is dropped. Should no thread start (the system is
    /// out of threads), the job runs on tokio's blocking pool instead, or
    /// here outside a runtime.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = Result<T, Interrupted>> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // The job runs in the caller's runtime, as on tokio's blocking pool:
        // what it spawns (a staged write's commit wait) is a task there.
        let rt = tokio::runtime::Handle::try_current().ok();
        let job: Job = Box::new(move || {
            let _entered = rt.as_ref().map(tokio::runtime::Handle::enter);
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
        let Ok(mut queue) = self.shared.queue.lock() else {
            return Err(job);
        };
        if queue.threads == 0 {
            queue.threads = self.start();
            if queue.threads == 0 {
                return Err(job);
            }
        }
        queue.jobs.push_back(job);
        drop(queue);
        self.shared.ready.notify_one();
        Ok(())
    }

    /// Starts the threads; returns how many started.
    fn start(&self) -> usize {
        let mut started = 0;
        for i in 0..self.count {
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{}-{i}", self.name))
                .spawn(move || serve(&shared));
            match spawned {
                Ok(_) => started += 1,
                Err(e) => tracing::warn!(error = %e, pool = self.name, "cannot start a thread"),
            }
        }
        started
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        if let Ok(mut queue) = self.shared.queue.lock() {
            queue.closed = true;
        }
        self.shared.ready.notify_all();
    }
}

/// One thread: takes jobs in turn until the pool is dropped and its queue
/// is empty.
fn serve(shared: &Shared) {
    loop {
        let job = {
            let Ok(mut queue) = shared.queue.lock() else {
                return;
            };
            loop {
                if let Some(job) = queue.jobs.pop_front() {
                    break job;
                }
                if queue.closed {
                    return;
                }
                queue = match shared.ready.wait(queue) {
                    Ok(q) => q,
                    Err(_) => return,
                };
            }
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
    async fn jobs_run_on_the_pool_and_a_panic_interrupts_only_its_own() {
        const COUNT: usize = 3;
        let threads = Threads::new("test", COUNT);
        let name = threads
            .run(|| std::thread::current().name().map(str::to_owned))
            .await
            .unwrap();
        assert!(name.is_some_and(|n| n.starts_with("test-")));
        let in_runtime = threads.run(|| tokio::runtime::Handle::try_current().is_ok());
        assert_eq!(
            in_runtime.await,
            Ok(true),
            "a job runs in its caller's runtime"
        );
        let panicked = threads.run(|| -> u8 { panic!("a job's bug") }).await;
        assert_eq!(panicked, Err(Interrupted));
        // Every thread is still there: as many jobs as threads, each waiting
        // for all the others, finish.
        let barrier = Arc::new(std::sync::Barrier::new(COUNT));
        let waits: Vec<_> = (0..COUNT)
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
    /// pool do not delay a pool's jobs.
    #[test]
    fn a_full_blocking_pool_does_not_hold_up_a_pool() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(1)
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let (release, held) = std::sync::mpsc::channel::<()>();
            let backend = tokio::task::spawn_blocking(move || held.recv());
            let threads = Threads::new("test", 1);
            let job = threads.run(|| 7);
            let ran = tokio::time::timeout(std::time::Duration::from_secs(10), job).await;
            assert_eq!(ran, Ok(Ok(7)), "the pool's job waited for the backend's");
            release.send(()).unwrap();
            backend.await.unwrap().unwrap();
        });
    }
}
