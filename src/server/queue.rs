//! The build queue: atoms waiting, the one building, and the recent outcomes.
//!
//! [`Queue`] is a plain state machine (no threads, no clock: times are passed in) so
//! every transition is unit-tested; [`SharedQueue`] wraps it in a mutex and a condvar
//! for the HTTP threads (enqueue, snapshot) and the single build worker (take, finish).
//!
//! Invariants: an atom is at most once among the pending and building jobs (a second
//! request is refused as a duplicate, HTTP 409); at most `capacity` jobs wait (HTTP
//! 429 beyond); once shut down nothing is accepted (HTTP 503) and the worker gets no
//! more jobs. Finished jobs are kept, newest first, up to `history`.

use std::collections::VecDeque;
use std::path::PathBuf;

use parking_lot::{Condvar, Mutex};
use serde::Serialize;

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    /// Taken by the worker, waiting for the seed's lock (another build holds it).
    Waiting,
    Building,
    Done,
    Failed,
}

impl JobState {
    /// The name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Waiting => "waiting",
            JobState::Building => "building",
            JobState::Done => "done",
            JobState::Failed => "failed",
        }
    }
}

/// One requested build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Job {
    pub id: u64,
    pub atom: String,
    pub state: JobState,
    /// Unix seconds.
    pub queued: u64,
    pub started: Option<u64>,
    pub ended: Option<u64>,
    /// emerge's exit status (128 + signal when killed); `None` until it ran.
    pub exit_status: Option<i32>,
    /// Why a job failed without an exit status (the namespace could not start...).
    pub error: Option<String>,
    pub log: PathBuf,
}

/// Why a request was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnqueueError {
    #[error("{atom} is already in the queue (job {id}, {})", state.as_str())]
    Duplicate {
        atom: String,
        id: u64,
        state: JobState,
    },
    #[error("the build queue is full ({capacity} waiting): try again later")]
    Full { capacity: usize },
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// How a finished build ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The command ran and exited with this status (0 = done).
    Exited(i32),
    /// It could not run.
    Error(String),
}

/// The queue as JSON (`GET /queue`).
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Waiting atoms, oldest first (the one building is not listed, as in genTree).
    pub pending: Vec<String>,
    pub capacity: usize,
    /// Waiting and building jobs, then finished ones, newest first.
    pub jobs: Vec<Job>,
}

/// The queue's state machine.
#[derive(Debug)]
pub struct Queue {
    capacity: usize,
    history: usize,
    next_id: u64,
    pending: VecDeque<Job>,
    building: Option<Job>,
    finished: VecDeque<Job>,
    shut: bool,
}

impl Queue {
    /// `first_id` numbers the first job (logs of an earlier run are not overwritten).
    pub fn new(capacity: usize, history: usize, first_id: u64) -> Queue {
        Queue {
            capacity,
            history,
            next_id: first_id,
            pending: VecDeque::new(),
            building: None,
            finished: VecDeque::new(),
            shut: false,
        }
    }

    /// Appends a validated atom; `log` names the job's log from its id.
    pub fn enqueue(
        &mut self,
        atom: &str,
        now: u64,
        log: impl FnOnce(u64) -> PathBuf,
    ) -> Result<Job, EnqueueError> {
        if self.shut {
            return Err(EnqueueError::ShuttingDown);
        }
        if let Some(j) = self
            .building
            .iter()
            .chain(self.pending.iter())
            .find(|j| j.atom == atom)
        {
            return Err(EnqueueError::Duplicate {
                atom: atom.to_owned(),
                id: j.id,
                state: j.state,
            });
        }
        if self.pending.len() >= self.capacity {
            return Err(EnqueueError::Full {
                capacity: self.capacity,
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        let job = Job {
            id,
            atom: atom.to_owned(),
            state: JobState::Queued,
            queued: now,
            started: None,
            ended: None,
            exit_status: None,
            error: None,
            log: log(id),
        };
        self.pending.push_back(job.clone());
        Ok(job)
    }

    /// The oldest waiting job, now building; `None` when idle, busy or shut down.
    pub fn start_next(&mut self, now: u64) -> Option<Job> {
        if self.shut || self.building.is_some() {
            return None;
        }
        let mut job = self.pending.pop_front()?;
        job.state = JobState::Building;
        job.started = Some(now);
        self.building = Some(job.clone());
        Some(job)
    }

    /// Marks the worker's job `id` as waiting for the seed (`true`) or building.
    pub fn set_waiting(&mut self, id: u64, waiting: bool) {
        if let Some(job) = self.building.as_mut().filter(|j| j.id == id) {
            job.state = if waiting {
                JobState::Waiting
            } else {
                JobState::Building
            };
        }
    }

    /// Records the end of the building job `id` (ignored for any other id).
    pub fn finish(&mut self, id: u64, outcome: Outcome, now: u64) {
        let Some(mut job) = self.building.take_if(|j| j.id == id) else {
            return;
        };
        job.ended = Some(now);
        match outcome {
            Outcome::Exited(code) => {
                job.exit_status = Some(code);
                job.state = if code == 0 {
                    JobState::Done
                } else {
                    JobState::Failed
                };
            }
            Outcome::Error(e) => {
                job.error = Some(e);
                job.state = JobState::Failed;
            }
        }
        self.finished.push_front(job);
        self.finished.truncate(self.history);
    }

    /// Refuses new jobs and hands out no more; waiting jobs stay listed.
    pub fn shut_down(&mut self) {
        self.shut = true;
    }

    pub fn is_shut_down(&self) -> bool {
        self.shut
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            pending: self.pending.iter().map(|j| j.atom.clone()).collect(),
            capacity: self.capacity,
            jobs: self
                .pending
                .iter()
                .chain(self.building.iter())
                .chain(self.finished.iter())
                .cloned()
                .collect(),
        }
    }
}

/// The queue shared by the HTTP threads and the worker.
#[derive(Debug)]
pub struct SharedQueue {
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl SharedQueue {
    pub fn new(queue: Queue) -> SharedQueue {
        SharedQueue {
            queue: Mutex::new(queue),
            wake: Condvar::new(),
        }
    }

    pub fn enqueue(
        &self,
        atom: &str,
        log: impl FnOnce(u64) -> PathBuf,
    ) -> Result<(Job, Snapshot), EnqueueError> {
        let mut q = self.queue.lock();
        let job = q.enqueue(atom, now_secs(), log)?;
        let snap = q.snapshot();
        drop(q);
        self.wake.notify_all();
        Ok((job, snap))
    }

    /// Blocks until a job can start (returns it, now building) or the queue is shut
    /// down (`None`).
    pub fn take(&self) -> Option<Job> {
        let mut q = self.queue.lock();
        loop {
            if q.is_shut_down() {
                return None;
            }
            if let Some(job) = q.start_next(now_secs()) {
                return Some(job);
            }
            self.wake.wait(&mut q);
        }
    }

    pub fn set_waiting(&self, id: u64, waiting: bool) {
        self.queue.lock().set_waiting(id, waiting);
    }

    pub fn finish(&self, id: u64, outcome: Outcome) {
        self.queue.lock().finish(id, outcome, now_secs());
        self.wake.notify_all();
    }

    pub fn shut_down(&self) {
        self.queue.lock().shut_down();
        self.wake.notify_all();
    }

    pub fn snapshot(&self) -> Snapshot {
        self.queue.lock().snapshot()
    }
}

fn now_secs() -> u64 {
    crate::layers::store::now_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(id: u64) -> PathBuf {
        PathBuf::from(format!("/logs/{id}.log"))
    }

    #[test]
    fn jobs_run_in_order_and_record_their_outcome() {
        let mut q = Queue::new(4, 10, 7);
        let a = q.enqueue("cat/a", 100, log).unwrap();
        assert_eq!(
            (a.id, a.state, a.log.clone()),
            (7, JobState::Queued, log(7))
        );
        q.enqueue("cat/b", 101, log).unwrap();
        assert_eq!(q.snapshot().pending, ["cat/a", "cat/b"]);

        let a = q.start_next(110).unwrap();
        assert_eq!(
            (a.atom.as_str(), a.state, a.started),
            ("cat/a", JobState::Building, Some(110))
        );
        // One build at a time.
        assert_eq!(q.start_next(111), None);
        // The building atom is no longer pending, but is still listed as a job.
        let s = q.snapshot();
        assert_eq!(s.pending, ["cat/b"]);
        assert_eq!(
            s.jobs.iter().map(|j| j.state).collect::<Vec<_>>(),
            [JobState::Queued, JobState::Building]
        );

        // Waiting for the seed's lock, then building; only the worker's job changes.
        q.set_waiting(a.id, true);
        q.set_waiting(999, true);
        assert_eq!(
            q.snapshot()
                .jobs
                .iter()
                .map(|j| j.state)
                .collect::<Vec<_>>(),
            [JobState::Queued, JobState::Waiting]
        );
        assert!(matches!(
            q.enqueue("cat/a", 112, log),
            Err(EnqueueError::Duplicate { .. })
        ));
        q.set_waiting(a.id, false);
        assert_eq!(q.snapshot().jobs[1].state, JobState::Building);

        q.finish(a.id, Outcome::Exited(1), 120);
        let b = q.start_next(121).unwrap();
        q.finish(999, Outcome::Exited(0), 122); // not the building job: ignored
        assert_eq!(q.start_next(123), None);
        q.finish(b.id, Outcome::Exited(0), 130);

        let s = q.snapshot();
        assert!(s.pending.is_empty());
        let got: Vec<_> = s
            .jobs
            .iter()
            .map(|j| (j.atom.as_str(), j.state, j.exit_status, j.ended))
            .collect();
        assert_eq!(
            got,
            [
                ("cat/b", JobState::Done, Some(0), Some(130)),
                ("cat/a", JobState::Failed, Some(1), Some(120)),
            ]
        );
    }

    #[test]
    fn duplicates_full_queue_and_shutdown_are_refused_without_change() {
        let mut q = Queue::new(2, 10, 1);
        q.enqueue("cat/a", 1, log).unwrap();
        let dup = q.enqueue("cat/a", 2, log).unwrap_err();
        assert!(matches!(
            dup,
            EnqueueError::Duplicate {
                id: 1,
                state: JobState::Queued,
                ..
            }
        ));
        q.enqueue("cat/b", 3, log).unwrap();
        assert_eq!(
            q.enqueue("cat/c", 4, log),
            Err(EnqueueError::Full { capacity: 2 })
        );
        assert_eq!(q.snapshot().pending, ["cat/a", "cat/b"]);

        // Building counts as a duplicate too; once it finished, the atom may come again.
        let a = q.start_next(5).unwrap();
        assert!(matches!(
            q.enqueue("cat/a", 6, log),
            Err(EnqueueError::Duplicate {
                state: JobState::Building,
                ..
            })
        ));
        q.finish(a.id, Outcome::Error("no namespace".into()), 7);
        let again = q.enqueue("cat/a", 8, log).unwrap();
        assert_eq!(again.id, 3, "refused requests use no id");
        let failed = q.snapshot().jobs.into_iter().find(|j| j.id == 1).unwrap();
        assert_eq!(failed.state, JobState::Failed);
        assert_eq!(failed.error.as_deref(), Some("no namespace"));

        q.shut_down();
        assert_eq!(q.enqueue("cat/z", 9, log), Err(EnqueueError::ShuttingDown));
        assert_eq!(q.start_next(10), None);
        assert_eq!(q.snapshot().pending, ["cat/b", "cat/a"]);
    }

    #[test]
    fn history_is_bounded_newest_first() {
        let mut q = Queue::new(10, 2, 1);
        for atom in ["c/a", "c/b", "c/c"] {
            q.enqueue(atom, 0, log).unwrap();
            let j = q.start_next(0).unwrap();
            q.finish(j.id, Outcome::Exited(0), 0);
        }
        let atoms: Vec<_> = q.snapshot().jobs.into_iter().map(|j| j.atom).collect();
        assert_eq!(atoms, ["c/c", "c/b"]);
    }

    #[test]
    fn the_worker_blocks_until_a_job_or_shutdown() {
        let shared = std::sync::Arc::new(SharedQueue::new(Queue::new(4, 4, 1)));
        let s2 = shared.clone();
        let worker = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while let Some(job) = s2.take() {
                seen.push(job.atom.clone());
                s2.finish(job.id, Outcome::Exited(0));
            }
            seen
        });
        shared.enqueue("c/a", log).unwrap();
        shared.enqueue("c/b", log).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while shared
            .snapshot()
            .jobs
            .iter()
            .any(|j| j.state != JobState::Done)
        {
            assert!(std::time::Instant::now() < deadline, "worker stuck");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        shared.shut_down();
        assert_eq!(worker.join().unwrap(), ["c/a", "c/b"]);
    }
}
