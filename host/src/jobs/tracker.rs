//! What this host knows of the jobs it took and the jobs it accepted.
//!
//! The [`JobTracker`] knows every job queued or running here, with its
//! cancel token (fired by `DELETE /tasks/{id}`, by expiry, and by a drain
//! that runs out of time) and its done signal (awaited by `?wait=`). It only
//! ever holds queued and running jobs, so it is bounded by the queue and the
//! worker count.
//!
//! [`FollowedJobs`] is the other half when hosts share a deployment: the jobs
//! this host accepted into the deployment's stream, whichever host runs
//! them, each with a done signal (for `?wait=`) until its task ends. It is
//! bounded by the tenants' pending quotas, which the task store enforces.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

use super::LaneId;
use crate::tasks::TaskId;

#[derive(Default)]
pub struct JobTracker {
    jobs: Mutex<HashMap<TaskId, Tracked>>,
    /// Woken whenever the last job in flight ends.
    emptied: tokio::sync::Notify,
    /// Woken whenever a job ends.
    ended: tokio::sync::Notify,
}

struct Tracked {
    tenant: LaneId,
    cancel: CancellationToken,
    done: CancellationToken,
    /// Fired when a worker has marked the task running (for event streams).
    started: CancellationToken,
}

impl JobTracker {
    /// Starts tracking `tenant`'s job; returns its cancel token and its done
    /// signal.
    pub fn track(&self, tenant: &LaneId, id: TaskId) -> (CancellationToken, CancellationToken) {
        let tracked = Tracked {
            tenant: tenant.clone(),
            cancel: CancellationToken::new(),
            done: CancellationToken::new(),
            started: CancellationToken::new(),
        };
        let tokens = (tracked.cancel.clone(), tracked.done.clone());
        self.jobs.lock().unwrap().insert(id, tracked);
        tokens
    }

    /// Cancels a job if it is queued or running here; whether this call
    /// cancelled it. A running guest stops within one epoch tick.
    pub fn cancel(&self, id: TaskId) -> bool {
        match self.jobs.lock().unwrap().get(&id) {
            Some(t) if !t.cancel.is_cancelled() => {
                t.cancel.cancel();
                true
            }
            _ => false,
        }
    }

    pub fn cancel_all(&self) {
        for t in self.jobs.lock().unwrap().values() {
            t.cancel.cancel();
        }
    }

    /// Fires once the job has ended and its outcome is written; `None` if no
    /// such job is in flight here.
    pub fn done(&self, id: TaskId) -> Option<CancellationToken> {
        self.jobs.lock().unwrap().get(&id).map(|t| t.done.clone())
    }

    /// Fires once a worker has marked the job's task running; `None` if no
    /// such job is in flight here.
    pub fn started(&self, id: TaskId) -> Option<CancellationToken> {
        self.jobs.lock().unwrap().get(&id).map(|t| t.started.clone())
    }

    /// Says that the job's task is running now.
    pub fn mark_started(&self, id: TaskId) {
        if let Some(t) = self.jobs.lock().unwrap().get(&id) {
            t.started.cancel();
        }
    }

    /// Forgets a job that ended, waking anyone waiting on it.
    pub fn finished(&self, id: TaskId) {
        let mut jobs = self.jobs.lock().unwrap();
        let tracked = jobs.remove(&id);
        crate::support::capacity::give_back_spare(&mut jobs);
        let empty = jobs.is_empty();
        drop(jobs);
        if empty {
            self.emptied.notify_waiters();
        }
        self.ended.notify_waiters();
        if let Some(t) = tracked {
            t.done.cancel();
        }
    }

    /// Resolves when a job ends, or after `timeout`.
    pub async fn wait_for_an_end(&self, timeout: std::time::Duration) {
        let _ = tokio::time::timeout(timeout, self.ended.notified()).await;
    }

    /// Resolves once no job is queued or running.
    pub async fn wait_empty(&self) {
        loop {
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            // Register before looking, so an end between the look and the
            // wait is not missed.
            emptied.as_mut().enable();
            if self.is_empty() {
                return;
            }
            emptied.await;
        }
    }

    /// The tenant and task of every job queued or running.
    pub fn in_flight(&self) -> Vec<(String, TaskId)> {
        self.jobs.lock().unwrap().iter().map(|(id, t)| (t.tenant.to_string(), *id)).collect()
    }

    /// Jobs queued or running.
    pub fn len(&self) -> usize {
        self.jobs.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The jobs this host accepted into the deployment's stream, followed until
/// they end wherever they run (for `?wait=`).
#[derive(Default)]
pub struct FollowedJobs {
    jobs: Mutex<HashMap<TaskId, Followed>>,
}

struct Followed {
    tenant: String,
    done: CancellationToken,
}

impl FollowedJobs {
    /// Follows `tenant`'s job `id` until it ends (already followed, it goes
    /// on as it was); returns what fires when it does.
    pub fn follow(&self, tenant: &str, id: TaskId) -> CancellationToken {
        let mut jobs = self.jobs.lock().unwrap();
        let followed =
            jobs.entry(id).or_insert_with(|| Followed { tenant: tenant.to_string(), done: CancellationToken::new() });
        followed.done.clone()
    }

    /// Fires once the job has ended; `None` if it is not followed here.
    pub fn done(&self, id: TaskId) -> Option<CancellationToken> {
        self.jobs.lock().unwrap().get(&id).map(|f| f.done.clone())
    }

    /// The tenant and task of every job followed.
    pub fn followed(&self) -> Vec<(String, TaskId)> {
        self.jobs.lock().unwrap().iter().map(|(id, f)| (f.tenant.clone(), *id)).collect()
    }

    /// Stops following a job that ended, waking whoever waits on it.
    pub fn ended(&self, id: TaskId) {
        let mut jobs = self.jobs.lock().unwrap();
        if let Some(followed) = jobs.remove(&id) {
            followed.done.cancel();
        }
        crate::support::capacity::give_back_spare(&mut jobs);
    }
}
